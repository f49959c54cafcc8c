//! The request path, in Pingora's phases. Read top to bottom:
//! `request_filter` (health, normalize, route) → `upstream_peer` (pick a backend) →
//! `upstream_request_filter` (rewrite for the backend) → `response_filter` →
//! `logging` (metrics, access log). Failures go through `fail_to_connect` (retry elsewhere)
//! and `fail_to_proxy` (the JSON error the client sees).

mod admission;
mod ctx;
mod failure;
pub mod framing;
mod headers;
mod hop_by_hop;
mod respond;

pub use ctx::{LocalAnswer, RequestCtx};

use crate::access_log::{self, AccessLog};
use crate::decisions::record::{InlineText, Limits, Record, RequestId, Verb};
use crate::decisions::{DecisionHub, Kind, WANT_DASHBOARD};
use crate::gateway::SharedGateway;
use crate::identity::Lookup;
use crate::lifecycle::InFlight;
use crate::limit::meter::Meter;
use crate::limit::RequestFacts;
use crate::metrics::{method_label, Metrics};
use crate::path;
use crate::routing::strip_prefix;
use admission::Admission;
use async_trait::async_trait;
use bytes::Bytes;
use failure::Verdict;
use framing::Refusal;
use http::HeaderValue;
use pingora_core::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora_core::Result;
use pingora_error::{Error, ErrorSource};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Clone)]
pub struct Proxy {
    gateway: SharedGateway,
    metrics: Arc<Metrics>,
    access_log: Option<Arc<AccessLog>>,
    in_flight: InFlight,
    decisions: Arc<DecisionHub>,
    /// Whether Pingora's default downstream modules (a disabled compressor) stay in.
    downstream_modules: bool,
}

impl Proxy {
    /// Hands the request's decision to the dashboard's series, the live stream and the
    /// per-client log, when any of them wants it: a fixed-size record, nothing formatted.
    fn record_decision(&self, session: &Session, ctx: &mut RequestCtx, status: u16) {
        let wants = self.decisions.wants();
        if wants == 0 {
            return;
        }
        let Some(route) = &ctx.route else {
            return;
        };
        // The log and the stream carry what limits decided; the dashboard counts every
        // request of a route.
        let limits = match (&ctx.summary, ctx.client_ip) {
            (Some(s), Some(_)) => Some(
                Limits::new(
                    s.policy.and_then(|i| route.policy_ids.get(i).copied()),
                    s.outcome,
                    s.remaining,
                )
                .with_settled_cost(ctx.settled_cost),
            ),
            _ if wants & WANT_DASHBOARD == 0 => return,
            _ => None,
        };
        let refused_by_limit = ctx.answer == Some(LocalAnswer::Refused)
            && ctx.summary.as_ref().is_some_and(|s| s.policy.is_some());
        let kind = if refused_by_limit {
            Kind::Limited
        } else if status >= 500 {
            Kind::Error
        } else {
            Kind::Allowed
        };
        let req = session.req_header();
        let request_id = match ctx.request_number {
            Some(n) => RequestId::ours(n),
            None => RequestId::Given(InlineText::new(ctx.request_id.to_str().unwrap_or(""))),
        };
        let client = ctx
            .client_ip
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        self.decisions.push(Record {
            unix_ms: crate::clock::now_ms(),
            request_id,
            client,
            key: ctx.api_key.take(),
            user: ctx.verified.take(),
            route: route.id,
            status,
            kind,
            method: Verb::of(&req.method),
            limits,
            path: InlineText::new(req.uri.path()),
        });
    }

    pub fn new(
        gateway: SharedGateway,
        metrics: Arc<Metrics>,
        access_log: Option<Arc<AccessLog>>,
        in_flight: InFlight,
        decisions: Arc<DecisionHub>,
        downstream_modules: bool,
    ) -> Self {
        Proxy {
            gateway,
            metrics,
            access_log,
            in_flight,
            decisions,
            downstream_modules,
        }
    }
}

impl Proxy {
    /// Notes the HSTS header of the request's listener, and returns the HTTPS port to
    /// redirect to when the listener redirects (every path but `/health`, so load
    /// balancers' plain health checks keep working).
    fn apply_listener_policy(&self, session: &Session, ctx: &mut RequestCtx) -> Option<u16> {
        let local = *session
            .digest()?
            .socket_digest
            .as_ref()?
            .local_addr()?
            .as_inet()?;
        let policy = ctx.gateway.listener_policy(local)?;
        ctx.hsts = policy.hsts.clone();
        let port = policy.redirect_https?;
        (session.req_header().uri.path() != "/health").then_some(port)
    }
}

/// `308` to the same host and target over HTTPS (nginx's `return 308 https://$host$request_uri`).
async fn redirect_to_https(session: &mut Session, ctx: &mut RequestCtx, port: u16) -> Result<bool> {
    ctx.answer = Some(LocalAnswer::Redirect);
    let req = session.req_header();
    let Some(host) = request_host(req) else {
        let body = serde_json::json!({"error": "bad_request", "detail": "a redirect to HTTPS needs a Host header"});
        respond::json(session, ctx, 400, &body, &[]).await?;
        return Ok(true);
    };
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        let body = serde_json::json!({"error": "bad_request", "detail": "the request target cannot be redirected"});
        respond::json(session, ctx, 400, &body, &[]).await?;
        return Ok(true);
    };
    let body =
        serde_json::json!({"error": "https_required", "location": location.to_str().unwrap_or("")});
    respond::json(session, ctx, 308, &body, &[("location", location)]).await?;
    Ok(true)
}

/// Whether the client connection is TLS (HTTP/1.1 or HTTP/2 over it).
fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// Answers a request refused for its size or framing.
async fn refuse_message(
    session: &mut Session,
    ctx: &mut RequestCtx,
    refusal: Refusal,
) -> Result<bool> {
    ctx.answer = Some(LocalAnswer::BadMessage);
    if refusal.closes_connection() {
        session.set_keepalive(None);
    }
    respond::json(session, ctx, refusal.status(), &refusal.body(), &[]).await?;
    Ok(true)
}

/// The host the request names, as routing compares it: the request target's authority
/// (HTTP/2's `:authority`, or an absolute-form HTTP/1.1 target), else the `Host` header.
fn request_host(req: &RequestHeader) -> Option<std::borrow::Cow<'_, str>> {
    let raw = match req.uri.authority() {
        Some(authority) => authority.as_str(),
        None => req.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    crate::routing::normalize_host(raw)
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn init_downstream_modules(&self, modules: &mut pingora_core::modules::http::HttpModules) {
        // Pingora adds a disabled response compressor by default, which still costs a
        // context per request and a call on every header and body chunk.
        if self.downstream_modules {
            modules.add_module(
                pingora_core::modules::http::compression::ResponseCompressionBuilder::enable(0),
            );
        }
    }

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.gateway.load_full(), self.in_flight.enter())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        (ctx.request_id, ctx.request_number) = headers::request_id(session.req_header());

        let raw_header = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes());
        let limits = &ctx.gateway.config.http;
        if let Err(refusal) = framing::check(session.req_header(), raw_header.as_deref(), limits) {
            return refuse_message(session, ctx, refusal).await;
        }

        if !ctx.gateway.listener_policies.is_empty() {
            if let Some(port) = self.apply_listener_policy(session, ctx) {
                return redirect_to_https(session, ctx, port).await;
            }
        }

        let raw_path = session.req_header().uri.path();
        if raw_path == "/health" {
            ctx.answer = Some(LocalAnswer::Health);
            respond::json(session, ctx, 200, &respond::health_body(), &[]).await?;
            return Ok(true);
        }

        let path = match path::normalize(raw_path) {
            Ok(p) => p,
            Err(why) => {
                ctx.answer = Some(LocalAnswer::BadPath);
                let body = respond::bad_path_body(&why.to_string());
                respond::json(session, ctx, 400, &body, &[]).await?;
                return Ok(true);
            }
        };

        let host = request_host(session.req_header());
        let Some(route) = ctx.gateway.router.lookup(host.as_deref(), &path).cloned() else {
            ctx.answer = Some(LocalAnswer::NoRoute);
            let body = respond::no_route_body(&path);
            respond::json(session, ctx, 404, &body, &[]).await?;
            return Ok(true);
        };
        if !route.methods.allows(&session.req_header().method) {
            ctx.answer = Some(LocalAnswer::MethodNotAllowed);
            let allow = HeaderValue::from_str(route.methods.allow_header())
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            let body = respond::method_not_allowed_body(session.req_header().method.as_str());
            ctx.route = Some(route);
            respond::json(session, ctx, 405, &body, &[("allow", allow)]).await?;
            return Ok(true);
        }

        let forwarded = if route.strip_prefix {
            strip_prefix(&path, &route.prefix)
        } else {
            &path
        };
        if forwarded != raw_path {
            ctx.upstream_path = Some(forwarded.to_string());
        }
        if let Err(refusal) =
            framing::check_declared_body(session.req_header(), route.max_body_size)
        {
            ctx.route = Some(route);
            return refuse_message(session, ctx, refusal).await;
        }
        ctx.route = Some(route.clone());

        let gateway = ctx.gateway.clone();
        let req = session.req_header();
        let client = gateway
            .identity
            .client_ip
            .resolve(client_ip(session), &req.headers);
        ctx.client_ip = Some(client);
        let key = gateway.lookup_api_key(&req.headers);
        if let Lookup::Known(record) = &key {
            ctx.api_key = Some(record.clone());
        }
        // A route without `auth` pays nothing here.
        let token = match &route.auth {
            None => Ok(None),
            Some(auth) => admission::check_token(auth, &req.headers, req.uri.query()),
        };
        let header_name = gateway.identity.api_keys.header().as_str();
        let admission = match (token, admission::require_key(&route, &key, header_name)) {
            (Err(refusal), _) | (Ok(_), Some(refusal)) => refusal,
            (Ok(verified), None) if route.limits.is_empty() => {
                ctx.verified = verified;
                return Ok(false);
            }
            (Ok(verified), None) => {
                ctx.verified = verified;
                let verified = ctx.verified.as_deref();
                let record = match &key {
                    Lookup::Known(r) => Some(r.as_ref()),
                    _ => None,
                };
                let (tenant, tier) = admission::tenant_and_tier(record, verified);
                let facts = RequestFacts {
                    client_ip: client,
                    api_key_id: record.map(|r| r.id.as_str()),
                    tenant,
                    tier,
                    path: &path,
                    method: req.method.as_str(),
                    route: &route.label,
                    host: host.as_deref(),
                    headers: &req.headers,
                    query: req.uri.query(),
                    claims: verified.map(|v| &v.claims),
                };
                admission::evaluate(&route, &gateway, &facts).await
            }
        };
        match admission {
            Admission::Pass {
                headers,
                guards,
                summary,
                uncounted,
            } => {
                ctx.rate_headers = headers;
                ctx._guards = guards;
                ctx.summary = summary;
                if !uncounted.is_empty() {
                    let costs = uncounted
                        .iter()
                        .filter_map(|(i, _)| route.limits.get(*i))
                        .map(|p| &p.cost);
                    ctx.meter = Meter::new(costs).map(Box::new);
                }
                ctx.uncounted = uncounted;
                Ok(false)
            }
            Admission::Refuse {
                status,
                body,
                headers,
                summary,
            } => {
                ctx.answer = Some(LocalAnswer::Refused);
                ctx.summary = Some(summary);
                respond::json(session, ctx, status, &body, &headers).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let limit = ctx.route.as_ref().and_then(|r| r.max_body_size);
        let chunk = body.as_ref().map_or(0, Bytes::len);
        if let Err(refusal) = framing::count_body(&mut ctx.body_received, chunk, limit) {
            ctx.answer = Some(LocalAnswer::BadMessage);
            return Error::e_explain(
                pingora_error::ErrorType::HTTPStatus(refusal.status()),
                format!("request body over {limit:?} bytes"),
            );
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = &ctx.route else {
            return Error::e_explain(
                pingora_error::ErrorType::InternalError,
                "upstream_peer without a route",
            );
        };
        match route.upstream.select(&ctx.tried) {
            Some(addr) => {
                ctx.tried.push(addr);
                // Built in its box: an `HttpPeer` is large to move.
                let peer = Box::new(route.upstream.peer(addr));
                ctx.strip_hop_by_hop = peer.options.http_upstream_request_policy
                    == HttpUpstreamRequestPolicy::preserve();
                Ok(peer)
            }
            None => Error::e_explain(
                failure::NO_BACKEND,
                format!("every backend of `{}` failed", route.upstream.name),
            ),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // First, where Pingora's own strip would have run (it runs just before this filter).
        if ctx.strip_hop_by_hop {
            let http11 = session.req_header().version == http::Version::HTTP_11;
            hop_by_hop::strip(upstream_request, http11)?;
        }
        if let Some(path) = &ctx.upstream_path {
            let uri = match upstream_request.uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            let uri = uri.parse::<http::Uri>().map_err(|e| {
                Error::because(pingora_error::ErrorType::InternalError, "rewritten uri", e)
            })?;
            upstream_request.set_uri(uri);
        }
        let proto = if is_tls(session) { "https" } else { "http" };
        headers::add_to_request(
            upstream_request,
            client_ip(session),
            proto,
            &ctx.request_id,
            ctx.gateway.config.http.preserve_header_case,
        )?;
        if let Some(auth) = ctx.route.as_ref().and_then(|r| r.auth.as_ref()) {
            // Only verified claims reach the backend under these names.
            for name in &auth.provider.forward_headers {
                upstream_request.remove_header(name);
            }
            for (name, value) in ctx.verified.iter().flat_map(|v| &v.forward) {
                upstream_request.insert_header(name.clone(), value.clone())?;
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        headers::add_to_response(
            upstream_response,
            &ctx.request_id,
            ctx.hsts.as_ref(),
            std::mem::take(&mut ctx.rate_headers),
            ctx.gateway.config.http.preserve_header_case,
        )?;
        if let Some(meter) = &mut ctx.meter {
            meter.on_header(&upstream_response.headers);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        // Read as it goes by: the chunk is forwarded as it is, at once.
        if let Some(meter) = &mut ctx.meter {
            if let Some(chunk) = body {
                meter.on_body(chunk);
            }
            if end_of_stream {
                meter.on_end();
            }
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(route) = &ctx.route {
            self.metrics
                .upstream_errors
                .with_label_values(&[
                    route.upstream.name.as_str(),
                    failure::upstream_error_kind(&e),
                ])
                .inc();
            // Nothing reached the backend, so any method is safe to send elsewhere.
            if ctx.tried.len() < route.upstream.size() {
                e.set_retry(true);
            }
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let verdict = failure::classify(e);
        if let (Some(route), Verdict::Upstream(..)) = (&ctx.route, verdict) {
            if !failure::is_connect_error(e) {
                // Connect failures were counted per attempt in `fail_to_connect`.
                self.metrics
                    .upstream_errors
                    .with_label_values(&[
                        route.upstream.name.as_str(),
                        failure::upstream_error_kind(e),
                    ])
                    .inc();
            }
        }
        let already_answered = session.response_written().is_some();
        if !already_answered {
            // The connection is not reused after a failure (below), so the answer says so:
            // a client that reused it would meet a reset instead of its next response.
            session.set_keepalive(None);
        }
        let code = match verdict {
            Verdict::Silent => 0,
            Verdict::Status(code) => {
                if !already_answered {
                    let limit = ctx.route.as_ref().and_then(|r| r.max_body_size);
                    match (code, limit) {
                        (413, Some(limit)) => {
                            // The rest of the body is still on the wire.
                            session.set_keepalive(None);
                            let body = Refusal::BodyTooLarge { limit }.body();
                            let _ = respond::json(session, ctx, 413, &body, &[]).await;
                        }
                        _ => {
                            let _ = session.respond_error(code).await;
                        }
                    }
                }
                code
            }
            Verdict::Upstream(code, answer) => {
                ctx.answer = Some(answer);
                if !already_answered {
                    let upstream = ctx
                        .route
                        .as_ref()
                        .map(|r| r.upstream.name.as_str())
                        .unwrap_or("");
                    let error = match answer {
                        LocalAnswer::UpstreamTimeout => "upstream_timeout",
                        LocalAnswer::UpstreamUnavailable => "upstream_unavailable",
                        _ => "bad_gateway",
                    };
                    let body = respond::upstream_body(error, upstream);
                    let _ = respond::json(session, ctx, code, &body, &[]).await;
                }
                code
            }
        };
        ctx.failure_status = (code > 0).then_some(code);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        Some(Box::new(crate::header_deadline::KeptAlive))
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        context: Box<dyn std::any::Any + Send + Sync>,
    ) {
        // Pingora calls this once the header is parsed: the header deadline can stand down.
        crate::header_deadline::HeaderRead::mark(context);
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        // Upstream failures are answered, counted and logged once below; a client that went
        // away is not an error of ours.
        ctx.route.is_some() && error.esource() == &ErrorSource::Upstream
            || matches!(failure::classify(error), Verdict::Silent)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.failure_status)
            .unwrap_or(499);
        if let (false, Some(route)) = (ctx.uncounted.is_empty(), ctx.route.clone()) {
            let key = ctx.api_key.clone();
            let verified = ctx.verified.clone();
            let uncounted = std::mem::take(&mut ctx.uncounted);
            let meter = ctx.meter.take();
            ctx.settled_cost = admission::settle(
                &route,
                &ctx.gateway,
                key.as_deref(),
                verified.as_deref(),
                uncounted,
                status,
                meter.as_deref(),
            )
            .await;
        }
        let elapsed = ctx.started.elapsed();
        let method = method_label(&session.req_header().method);
        let route = ctx.route_label();
        let mut status_text = itoa::Buffer::new();
        self.metrics
            .requests
            .with_label_values(&[route, method, status_text.format(status)])
            .inc();
        match &ctx.route {
            Some(r) => r.duration.observe(elapsed.as_secs_f64()),
            None => self
                .metrics
                .request_duration
                .with_label_values(&[route])
                .observe(elapsed.as_secs_f64()),
        }
        if let (Some(err), Some(r)) = (e, &ctx.route) {
            if err.esource() == &ErrorSource::Upstream {
                tracing::warn!(
                    request_id = ctx.request_id.to_str().unwrap_or(""),
                    upstream = r.upstream.name.as_str(),
                    backend = ?ctx.backend(),
                    status,
                    "upstream request failed: {err}"
                );
            }
        }
        if let Some(log) = &self.access_log {
            let req = session.req_header();
            let entry = access_log::Entry {
                ts: access_log::now_rfc3339(),
                request_id: ctx.request_id.to_str().unwrap_or(""),
                client: client_ip(session)
                    .map(|ip| ip.to_string())
                    .unwrap_or_default(),
                method: req.method.as_str(),
                uri: req.uri.to_string(),
                status,
                route,
                upstream: ctx.route.as_ref().map(|r| r.upstream.name.as_str()),
                backend: ctx
                    .backend()
                    .zip(ctx.route.as_ref())
                    .map(|(addr, r)| r.upstream.label_of(&addr).to_string()),
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                bytes_sent: session.body_bytes_sent(),
                error: e.map(|e| e.etype().as_str().to_string()),
                limited_by: ctx
                    .summary
                    .as_ref()
                    .filter(|_| ctx.answer == Some(LocalAnswer::Refused))
                    .and_then(|s| s.policy)
                    .zip(ctx.route.as_ref())
                    .and_then(|(i, r)| r.limits.get(i))
                    .map(|p| &*p.name),
            };
            log.record(&entry);
        }
        // Last: it moves the request's API key into the record.
        self.record_decision(session, ctx, status);
    }
}
