//! The admin listener: Prometheus metrics, the dashboard, and the admin API under
//! `/admin/*` (JSON in and out, described by `/admin/openapi.json`).
//!
//! Every `/admin/*` route needs the bearer token when one is configured (also accepted as
//! `?access_token=` on `GET /admin/events`, for browsers' EventSource); the process refuses
//! to start an admin listener reachable from other hosts without one. Each client address
//! is rate limited. Before any of that, `guard` keeps other web sites out (Host, Origin,
//! CORS), and writes must be JSON.

mod api;
pub mod config_view;
mod guard;
mod openapi;
mod overrides;
mod policies;
mod stats;

use crate::config::tokens::AdminRole;
use crate::decisions::DecisionHub;
use crate::gateway::SharedGateway;
use crate::limit::algorithm::Bucket;
use crate::limit::sketch::TatSketch;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use async_trait::async_trait;
use bytes::Bytes;
use guard::Screen;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;

const DASHBOARD: &str = include_str!("assets/dashboard.html");
const DOCS: &str = include_str!("assets/docs.html");

/// The largest request body the admin API reads.
const MAX_BODY: usize = 1 << 20;

pub struct Admin {
    gateway: SharedGateway,
    metrics: Arc<Metrics>,
    decisions: Arc<DecisionHub>,
    reloader: Arc<Reloader>,
    started: Instant,
    /// Requests per client address to the admin listener.
    limiter: TatSketch,
}

/// What a handler answers.
pub enum Reply {
    Json(u16, Value),
    Body {
        status: u16,
        content_type: &'static str,
        body: Bytes,
    },
    /// A Server-Sent Events stream of decisions, optionally filtered.
    Events(api::EventFilter),
    /// JSON with response headers of its own (an ETag).
    JsonWith(u16, Value, Vec<(&'static str, String)>),
}

impl Reply {
    pub fn error(status: u16, error: &str, detail: impl Into<String>) -> Reply {
        Reply::Json(status, json!({"error": error, "detail": detail.into()}))
    }
}

/// A parsed admin request.
pub struct Request {
    pub method: http::Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Bytes,
    pub client: Option<IpAddr>,
    pub caller: Caller,
    /// The `If-Match` header, for conditional writes.
    pub if_match: Option<String>,
}

/// Who sent a request: the name of the token it carried, and that token's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `None` on a listener without tokens (loopback only), which trusts everyone.
    pub token: Option<String>,
    pub role: AdminRole,
}

impl Request {
    /// The audit trail's actor: the token's name and the client's address.
    pub fn actor(&self) -> String {
        let who = self.caller.token.as_deref().unwrap_or("anonymous");
        match self.client {
            Some(ip) => format!("{who}@{ip}"),
            None => who.to_string(),
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits and percent-decodes a query string.
fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decodes a URL component (`+` as space in queries is not used by our clients).
pub fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(v) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Admin {
    pub fn new(
        gateway: SharedGateway,
        metrics: Arc<Metrics>,
        decisions: Arc<DecisionHub>,
        reloader: Arc<Reloader>,
    ) -> Self {
        Admin {
            gateway,
            metrics,
            decisions,
            reloader,
            started: Instant::now(),
            limiter: TatSketch::new(4096),
        }
    }

    /// Who the request's token names, or `None` when it carries none of the configured
    /// tokens. Without tokens everyone may write (the listener is then loopback only).
    /// The query is read only where `query_allowed` (the event stream): a token in a URL
    /// ends up in browser history and in the logs of proxies in between.
    fn caller(
        &self,
        session: &ServerSession,
        query: &[(String, String)],
        query_allowed: bool,
    ) -> Option<Caller> {
        let tokens = self.gateway.load().config.admin.resolved_tokens();
        if tokens.is_empty() {
            return Some(Caller {
                token: None,
                role: AdminRole::Write,
            });
        }
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::to_string)
            .or_else(|| {
                query
                    .iter()
                    .filter(|_| query_allowed)
                    .find(|(k, _)| k == "access_token")
                    .map(|(_, v)| v.clone())
            });
        let presented = crate::identity::digest(presented?.as_bytes());
        // Digests have equal length whatever was sent, and every token is compared, so the
        // time taken says nothing about how much of any token was right.
        let mut found = None;
        for token in tokens {
            let matches = crate::identity::digest(token.secret.as_bytes()).ct_eq(&presented);
            if bool::from(matches) {
                found = Some(Caller {
                    token: Some(token.name),
                    role: token.role,
                });
            }
        }
        found
    }

    fn rate_limited(&self, client: Option<IpAddr>) -> Option<u64> {
        let rate = self.gateway.load().config.admin.rate_limit;
        let bucket = Bucket {
            count: rate.count,
            per_ns: rate.per.as_nanos() as u64,
            burst: rate.count.saturating_mul(2),
        };
        let key =
            crate::limit::key::fnv1a(client.map(|c| c.to_string()).unwrap_or_default().as_bytes());
        let v = self
            .limiter
            .check(key, 1, bucket, crate::limit::link::unix_ns());
        (!v.allowed).then_some(v.retry_after_ms.div_ceil(1000).max(1))
    }

    async fn route(&self, req: &Request) -> Reply {
        use http::Method as M;
        let segments: Vec<String> = req.path.split('/').skip(1).map(decode).collect();
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (&req.method, segs.as_slice()) {
            (&M::GET, ["admin", "openapi.json"]) => Reply::Json(200, openapi::document()),
            (&M::GET, ["admin", "docs"]) => html(DOCS),
            (&M::GET, ["admin", "config"]) => api::config(self),
            (&M::POST, ["admin", "reload"]) => api::reload(self).await,
            (&M::POST, ["admin", "check"]) => api::check(self, req).await,
            (&M::GET, ["admin", "stats"]) => stats::snapshot(self),
            (&M::GET, ["admin", "limits", policy, key]) => {
                api::limit_usage(self, policy, key, req).await
            }
            (&M::DELETE, ["admin", "limits", policy, key]) => {
                api::limit_reset(self, policy, key, req).await
            }
            (&M::GET, ["admin", "keys"]) => api::list_keys(self),
            (&M::POST, ["admin", "keys"]) => api::register_key(self, req).await,
            (&M::DELETE, ["admin", "keys", id]) => api::revoke_key(self, id, req).await,
            (&M::GET, ["admin", "audit"]) => api::audit(self, req).await,
            (&M::GET, ["admin", "overrides"]) => overrides::list(self),
            (&M::GET, ["admin", "overrides", policy, subject]) => {
                overrides::show(self, policy, subject)
            }
            (&M::PUT, ["admin", "overrides", policy, subject]) => {
                overrides::put(self, policy, subject, req).await
            }
            (&M::DELETE, ["admin", "overrides", policy, subject]) => {
                overrides::delete(self, policy, subject, req).await
            }
            (&M::GET, ["admin", "policies"]) => policies::list(self),
            (&M::POST, ["admin", "policies"]) => policies::create(self, req).await,
            (&M::GET, ["admin", "policies", name]) => policies::show(self, name),
            (&M::PUT, ["admin", "policies", name]) => policies::replace(self, name, req).await,
            (&M::DELETE, ["admin", "policies", name]) => policies::delete(self, name, req).await,
            (&M::GET, ["admin", "logs"]) => api::logs(self, req).await,
            (&M::GET, ["admin", "events"]) => Reply::Events(api::EventFilter::from(req)),
            (_, ["admin", ..]) if known_path(&segs) => Reply::error(
                405,
                "method_not_allowed",
                format!("{} is not allowed here", req.method),
            ),
            _ => Reply::Json(404, json!({"error": "not_found", "path": req.path})),
        }
    }
}

/// Whether a request may change something: everything but reads and the dry-run check.
fn writes(method: &http::Method, path: &str) -> bool {
    !(matches!(*method, http::Method::GET | http::Method::HEAD)
        || (method == http::Method::POST && path == "/admin/check"))
}

fn known_path(segs: &[&str]) -> bool {
    matches!(
        segs,
        [
            "admin",
            "openapi.json"
                | "docs"
                | "config"
                | "reload"
                | "check"
                | "stats"
                | "keys"
                | "audit"
                | "policies"
                | "overrides"
                | "logs"
                | "events"
        ] | ["admin", "limits", _, _]
            | ["admin", "keys", _]
            | ["admin", "policies", _]
            | ["admin", "overrides", _, _]
    )
}

fn html(page: &'static str) -> Reply {
    Reply::Body {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: Bytes::from_static(page.as_bytes()),
    }
}

async fn read_body(session: &mut ServerSession) -> Result<Bytes, Reply> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(Reply::error(
                        413,
                        "body_too_large",
                        "the admin API reads at most 1 MiB",
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(body)),
            Err(e) => {
                return Err(Reply::error(
                    400,
                    "bad_request",
                    format!("cannot read the body: {e}"),
                ))
            }
        }
    }
}

async fn write(
    session: &mut ServerSession,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&'static str, String)],
) {
    let Ok(mut header) = ResponseHeader::build(status, Some(7 + extra.len())) else {
        return;
    };
    let _ = header.insert_header(http::header::CONTENT_TYPE, content_type);
    let _ = header.insert_header(http::header::CONTENT_LENGTH, body.len());
    let _ = header.insert_header(http::header::CACHE_CONTROL, "no-store");
    let _ = header.insert_header("x-content-type-options", "nosniff");
    if content_type.starts_with("text/html") {
        // Framed by another site, the dashboard's own buttons would be its writes
        // (clickjacking); no page of the admin listener may be framed.
        let _ = header.insert_header("x-frame-options", "DENY");
        let _ = header.insert_header("content-security-policy", "frame-ancestors 'none'");
    }
    for (k, v) in extra {
        let _ = header.insert_header(*k, v);
    }
    if session
        .write_response_header(Box::new(header))
        .await
        .is_ok()
        && !body.is_empty()
    {
        let _ = session.write_response_body(body, true).await;
    }
}

#[async_trait]
impl HttpServerApp for Admin {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            _ => return None,
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let header = session.req_header();
        let path = header.uri.path().to_string();
        let query = parse_query(header.uri.query());
        let method = header.method.clone();
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());

        // Prometheus and load balancers reach these by any name; they reveal nothing an
        // attacker's page could use and change nothing.
        if path == "/health" {
            return respond(session, Reply::Json(200, json!({"status": "ok"})), &[]).await;
        }
        if path == "/metrics" {
            self.gateway.load().publish_backend_health(&self.metrics);
            let metrics = Reply::Body {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: Bytes::from(self.metrics.render()),
            };
            return respond(session, metrics, &[]).await;
        }
        let page = guard::is_page(&path);
        if !page && !path.starts_with("/admin/") && path != "/admin" {
            let missing = Reply::Json(404, json!({"error": "not_found", "path": path}));
            return respond(session, missing, &[]).await;
        }

        let screened = {
            let header = session.req_header();
            let facts = guard::Facts {
                method: &method,
                path: &path,
                target_authority: header.uri.authority().map(|a| a.as_str()),
                headers: &header.headers,
                token_in_query: query.iter().any(|(k, _)| k == "access_token"),
            };
            guard::screen(&facts, &self.gateway.load().config.admin)
        };
        let cors = match screened {
            Screen::Refuse(refusal) => {
                return respond(session, refusal.into(), &[]).await;
            }
            Screen::Preflight { origin } => {
                let allow = guard::preflight_headers(&origin, &session.req_header().headers);
                let empty = Reply::Body {
                    status: 204,
                    content_type: "text/plain",
                    body: Bytes::new(),
                };
                return respond(session, empty, &allow).await;
            }
            Screen::Pass { cors } => cors,
        };
        // Every answer to a listed foreign origin names it, so its page can read the answer.
        let mut extra: Vec<(&'static str, String)> = Vec::new();
        if let Some(origin) = cors {
            extra.push(("access-control-allow-origin", origin));
            extra.push(("vary", "Origin".into()));
        }

        let reply = if page {
            if matches!(method, http::Method::GET | http::Method::HEAD) {
                html(DASHBOARD)
            } else {
                Reply::error(
                    405,
                    "method_not_allowed",
                    format!("{method} is not allowed here"),
                )
            }
        } else if let Some(retry) = self.rate_limited(client) {
            extra.push(("retry-after", retry.to_string()));
            Reply::Json(429, json!({"error": "rate_limited", "retry_after": retry}))
        } else {
            let query_allowed = guard::token_may_be_in_query(&method, &path);
            match self.caller(&session, &query, query_allowed) {
                None => {
                    extra.push((
                        "www-authenticate",
                        "Bearer realm=\"tollgate admin\"".to_string(),
                    ));
                    Reply::error(
                        401,
                        "unauthorized",
                        "send the admin token as `Authorization: Bearer <token>`",
                    )
                }
                Some(caller) if caller.role == AdminRole::Read && writes(&method, &path) => {
                    Reply::error(
                        403,
                        "forbidden",
                        format!(
                            "the token `{}` has the read role; {method} {path} needs one with the write role",
                            caller.token.unwrap_or_default()
                        ),
                    )
                }
                Some(caller) => {
                    if let Err(refusal) =
                        guard::check_media_type(&method, &session.req_header().headers)
                    {
                        refusal.into()
                    } else {
                        match read_body(&mut session).await {
                            Err(reply) => reply,
                            Ok(body) => {
                                let if_match = session
                                    .req_header()
                                    .headers
                                    .get(http::header::IF_MATCH)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string);
                                let req = Request {
                                    method,
                                    path,
                                    query,
                                    body,
                                    client,
                                    caller,
                                    if_match,
                                };
                                self.route(&req).await
                            }
                        }
                    }
                }
            }
        };

        if let Reply::Events(filter) = reply {
            api::stream_events(self, &mut session, filter, shutdown, &extra).await;
            return None;
        }
        respond(session, reply, &extra).await
    }
}

impl From<guard::Refusal> for Reply {
    fn from(r: guard::Refusal) -> Reply {
        Reply::error(r.status, r.error, r.detail)
    }
}

/// Writes a finished reply and hands the connection back for the next request.
async fn respond(
    mut session: ServerSession,
    reply: Reply,
    extra: &[(&'static str, String)],
) -> Option<ReusedHttpStream> {
    let mut extra = extra.to_vec();
    let (status, content_type, body) = match reply {
        Reply::JsonWith(status, value, headers) => {
            extra.extend(headers);
            (
                status,
                "application/json",
                Bytes::from(serde_json::to_vec_pretty(&value).unwrap_or_default()),
            )
        }
        Reply::Json(status, value) => (
            status,
            "application/json",
            Bytes::from(serde_json::to_vec_pretty(&value).unwrap_or_default()),
        ),
        Reply::Body {
            status,
            content_type,
            body,
        } => (status, content_type, body),
        // Streams are answered by `api::stream_events` before this; none arrives here.
        Reply::Events(_) => (500, "application/json", Bytes::new()),
    };
    write(&mut session, status, content_type, body, &extra).await;
    finish(session).await
}

async fn finish(session: ServerSession) -> Option<ReusedHttpStream> {
    let settings = HttpPersistentSettings::for_session(&session);
    match session.finish().await {
        Ok(stream) => stream.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
        Err(_) => None,
    }
}
