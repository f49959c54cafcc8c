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
mod respond;

pub use ctx::{LocalAnswer, RequestCtx};

use crate::access_log::{self, AccessLog};
use crate::decisions::{Decision, DecisionHub, Kind};
use crate::gateway::SharedGateway;
use crate::identity::Lookup;
use crate::lifecycle::InFlight;
use crate::limit::RequestFacts;
use crate::metrics::{method_label, Metrics};
use crate::path;
use crate::routing::strip_prefix;
use admission::Admission;
use async_trait::async_trait;
use bytes::Bytes;
use failure::Verdict;
use framing::Refusal;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_error::{Error, ErrorSource};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::IpAddr;
use std::sync::Arc;

pub struct Proxy {
    gateway: SharedGateway,
    metrics: Arc<Metrics>,
    access_log: Option<Arc<AccessLog>>,
    in_flight: InFlight,
    decisions: Arc<DecisionHub>,
}

impl Proxy {
    /// Feeds the dashboard's series, the live stream and the per-client log.
    fn record_decision(&self, session: &Session, ctx: &RequestCtx, status: u16) {
        let Some(route) = &ctx.route else {
            return;
        };
        let now_s = crate::limit::link::unix_ms() / 1000;
        let refused_by_limit = ctx.answer == Some(LocalAnswer::Refused)
            && ctx.summary.as_ref().is_some_and(|s| s.policy.is_some());
        let kind = if refused_by_limit {
            Kind::Limited
        } else if status >= 500 {
            Kind::Error
        } else {
            Kind::Allowed
        };
        route.series.record(now_s, kind);
        let (Some(summary), Some(client)) = (&ctx.summary, ctx.client_ip) else {
            return;
        };
        if refused_by_limit {
            if let Some(policy) = &summary.policy {
                self.decisions.note_limited(client, policy, now_s);
            }
        }
        if !self.decisions.wants_detail() {
            return;
        }
        let req = session.req_header();
        self.decisions.publish(Decision {
            ts: crate::access_log::now_rfc3339(),
            request_id: ctx.request_id.to_str().unwrap_or("").to_string(),
            route: route.prefix.clone(),
            client,
            api_key_id: ctx.api_key.as_ref().map(|k| k.id.clone()),
            tenant: ctx.api_key.as_ref().map(|k| k.tenant.clone()),
            method: req.method.as_str().to_string(),
            path: req.uri.path().to_string(),
            status,
            policy: summary.policy.as_deref().map(str::to_string),
            outcome: summary.outcome,
            remaining: summary.remaining,
        });
    }

    pub fn new(
        gateway: SharedGateway,
        metrics: Arc<Metrics>,
        access_log: Option<Arc<AccessLog>>,
        in_flight: InFlight,
        decisions: Arc<DecisionHub>,
    ) -> Self {
        Proxy {
            gateway,
            metrics,
            access_log,
            in_flight,
            decisions,
        }
    }
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
    respond::json(
        session,
        refusal.status(),
        &refusal.body(),
        &ctx.request_id,
        &[],
    )
    .await?;
    Ok(true)
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

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.gateway.load_full(), self.in_flight.enter())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = headers::request_id(session.req_header());

        let raw_header = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes());
        let limits = &ctx.gateway.config.http;
        if let Err(refusal) = framing::check(session.req_header(), raw_header.as_deref(), limits) {
            return refuse_message(session, ctx, refusal).await;
        }

        let raw_path = session.req_header().uri.path();
        if raw_path == "/health" {
            ctx.answer = Some(LocalAnswer::Health);
            respond::json(session, 200, &respond::health_body(), &ctx.request_id, &[]).await?;
            return Ok(true);
        }

        let path = match path::normalize(raw_path) {
            Ok(p) => p,
            Err(why) => {
                ctx.answer = Some(LocalAnswer::BadPath);
                let body = respond::bad_path_body(&why.to_string());
                respond::json(session, 400, &body, &ctx.request_id, &[]).await?;
                return Ok(true);
            }
        };

        let Some(route) = ctx.gateway.router.lookup(&path).cloned() else {
            ctx.answer = Some(LocalAnswer::NoRoute);
            let body = respond::no_route_body(&path);
            respond::json(session, 404, &body, &ctx.request_id, &[]).await?;
            return Ok(true);
        };

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
        let header_name = gateway.identity.api_keys.header().as_str();
        let admission = match admission::require_key(&route, &key, header_name) {
            Some(refusal) => refusal,
            None if route.limits.is_empty() => return Ok(false),
            None => {
                let record = match &key {
                    Lookup::Known(r) => Some(r.as_ref()),
                    _ => None,
                };
                let facts = RequestFacts {
                    client_ip: client,
                    api_key_id: record.map(|r| r.id.as_str()),
                    tenant: record.map(|r| r.tenant.as_str()),
                    tier: record.and_then(|r| r.tier.as_deref()),
                    path: &path,
                    method: req.method.as_str(),
                    route: &route.prefix,
                    headers: &req.headers,
                };
                admission::evaluate(&route, &gateway, &facts).await
            }
        };
        match admission {
            Admission::Pass {
                headers,
                guards,
                summary,
            } => {
                ctx.rate_headers = headers;
                ctx._guards = guards;
                ctx.summary = summary;
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
                respond::json(session, status, &body, &ctx.request_id, &headers).await?;
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
                Ok(Box::new(route.upstream.peer(addr)))
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
        headers::remove_hop_by_hop(upstream_request, session.is_upgrade_req());
        headers::add_forwarding(upstream_request, client_ip(session), "http");
        upstream_request.insert_header(headers::X_REQUEST_ID, &ctx.request_id)?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_response.insert_header(headers::X_REQUEST_ID, &ctx.request_id)?;
        for (name, value) in std::mem::take(&mut ctx.rate_headers) {
            upstream_response.insert_header(name, value)?;
        }
        Ok(())
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
                            let _ = respond::json(session, 413, &body, &ctx.request_id, &[]).await;
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
                    let _ = respond::json(session, code, &body, &ctx.request_id, &[]).await;
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
        self.record_decision(session, ctx, status);
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
                    .and_then(|s| s.policy.as_deref()),
            };
            log.record(&entry);
        }
    }
}
