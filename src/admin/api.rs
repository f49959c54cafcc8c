//! The admin API's handlers.

use super::{Admin, Reply, Request};
use crate::decisions::Entry;
use crate::identity::{registry, Lookup};
use crate::limit::inspect::{self, InspectError};
use crate::limit::{headers, Policy, RequestFacts};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// `GET /admin/config`: the running config with secrets redacted, the last reload, and
/// what each TLS listener serves (with the located error of refused certificate files).
pub fn config(admin: &Admin) -> Reply {
    let gateway = admin.gateway.load();
    Reply::Json(
        200,
        json!({
            "source": admin.reloader.path().display().to_string(),
            "reload": admin.reloader.status(),
            "tls": admin.reloader.certs().status(),
            "config": super::config_view::redacted_json(&gateway.config),
        }),
    )
}

/// `POST /admin/reload`.
pub async fn reload(admin: &Admin) -> Reply {
    let status = admin.reloader.reload("api").await;
    let code = if status.result == "ok" { 200 } else { 422 };
    Reply::Json(code, json!(status))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    /// A route prefix, or give `path`.
    route: Option<String>,
    path: Option<String>,
    /// The request's host, for routes that name one.
    host: Option<String>,
    #[serde(default = "default_method")]
    method: String,
    client_ip: Option<String>,
    api_key: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// The claims of a verified token, for `jwt:CLAIM` keys.
    claims: Option<serde_json::Value>,
    /// Overrides the policies' own cost.
    cost: Option<u64>,
    #[serde(default)]
    dry_run: bool,
}

fn default_method() -> String {
    "GET".into()
}

fn bad_request(detail: impl Into<String>) -> Reply {
    Reply::error(400, "bad_request", detail)
}

/// `POST /admin/check`: a decision for a described request, without proxying it.
pub async fn check(admin: &Admin, req: &Request) -> Reply {
    let body: CheckRequest = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return bad_request(format!("the body is not a check request: {e}")),
    };
    let gateway = admin.gateway.load_full();
    let path = match (&body.path, &body.route) {
        (Some(p), _) => p.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => return bad_request("give `path` (like /a/x) or `route` (like /a)"),
    };
    // `path` may carry a query, for `query:NAME` keys.
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path, None),
    };
    let path = match crate::path::normalize(&path) {
        Ok(p) => p.into_owned(),
        Err(e) => return bad_request(format!("path: {e}")),
    };
    let host = body
        .host
        .as_deref()
        .and_then(crate::routing::normalize_host);
    let Some(route) = gateway.router.lookup(host.as_deref(), &path).cloned() else {
        return Reply::Json(404, json!({"error": "no_route", "path": path}));
    };
    let client_ip: IpAddr = match body.client_ip.as_deref().unwrap_or("127.0.0.1").parse() {
        Ok(ip) => ip,
        Err(_) => return bad_request("client_ip is not an IP address"),
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in &body.headers {
        match (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            (Ok(k), Ok(v)) => {
                headers.append(k, v);
            }
            _ => return bad_request(format!("header `{k}` is not valid")),
        }
    }
    if let Some(key) = &body.api_key {
        match http::HeaderValue::from_str(key) {
            Ok(v) => {
                headers.insert(gateway.identity.api_keys.header().clone(), v);
            }
            Err(_) => return bad_request("api_key is not a valid header value"),
        }
    }
    let method = body.method.to_ascii_uppercase();
    let allowed_method = http::Method::from_bytes(method.as_bytes())
        .map(|m| route.methods.allows(&m))
        .unwrap_or(false);
    if !allowed_method {
        return Reply::Json(
            200,
            json!({"route": route.label, "allowed": false, "status": 405,
                   "reason": "method_not_allowed", "allow": route.methods.allow_header(),
                   "decisions": []}),
        );
    }
    let key = gateway.lookup_api_key(&headers);
    let record = match &key {
        Lookup::Known(r) => Some(r.clone()),
        _ => None,
    };
    if route.require_api_key && record.is_none() {
        return Reply::Json(
            200,
            json!({"route": route.label, "allowed": false, "status": 401,
                   "reason": if matches!(key, Lookup::Missing) { "missing_api_key" } else { "invalid_api_key" },
                   "decisions": []}),
        );
    }
    let facts = RequestFacts {
        client_ip,
        api_key_id: record.as_ref().map(|r| r.id.as_str()),
        tenant: record.as_ref().map(|r| r.tenant.as_str()),
        tier: record.as_ref().and_then(|r| r.tier.as_deref()),
        path: &path,
        method: &method,
        route: &route.label,
        host: host.as_deref(),
        headers: &headers,
        query: query.as_deref(),
        claims: body.claims.as_ref(),
    };
    let mut decisions = Vec::new();
    let mut allowed = true;
    let mut status = 200;
    let mut response_headers = BTreeMap::new();
    let link = gateway.redis.as_deref();
    // As on the proxy, a refused request consumes nothing from the policies before.
    let mut taken: Vec<crate::limit::receipt::Taken> = Vec::new();
    for policy in &route.limits {
        let limiter = policy.limiter_for(facts.api_key_id, facts.tenant, facts.tier);
        // The same checks as the proxy's, which answers these with 400 invalid_cost.
        let cost = match body.cost {
            Some(c) => Policy::within_quota(c, limiter),
            None => policy.cost_of(&headers, limiter),
        };
        let cost = match cost {
            Ok(c) => c,
            Err(e) => {
                crate::limit::receipt::hand_back(taken, link).await;
                return bad_request(e.to_string());
            }
        };
        let key_text = crate::limit::key::text(&policy.key, &facts);
        let (verdict, outcome) = if body.dry_run {
            match policy
                .usage(limiter, &key_text, gateway.redis.as_deref())
                .await
            {
                Ok(usage) => {
                    let v = inspect::dry_verdict(&usage, cost);
                    let outcome = if v.allowed {
                        "allowed"
                    } else if policy.mode == crate::config::Mode::Shadow {
                        "shadow_limited"
                    } else {
                        "limited"
                    };
                    (v, outcome)
                }
                Err(e) => return inspect_error(e),
            }
        } else {
            // The admin API answers at once: a request the policy would delay is refused.
            let check = policy.refuse_deferred(policy.check(limiter, &facts, cost, link).await);
            taken.push((policy, limiter, check.receipt.clone()));
            let outcome = check.outcome.name();
            (check.verdict, outcome)
        };
        decisions.push(json!({
            "policy": &*policy.name,
            "key": key_text,
            "tier": limiter.tier,
            "cost": cost,
            "allowed": verdict.allowed,
            "outcome": outcome,
            "limit": verdict.limit,
            "remaining": verdict.remaining,
            "reset_seconds": verdict.reset_ms.div_ceil(1000),
            "retry_after_seconds": if verdict.allowed { 0 } else { headers::retry_after_seconds(&verdict) },
        }));
        if allowed && matches!(outcome, "limited" | "unavailable") {
            allowed = false;
            status = if outcome == "limited" {
                policy.status
            } else {
                503
            };
            for (k, v) in limiter.fields.fields(&verdict) {
                response_headers.insert(
                    k.to_ascii_lowercase(),
                    v.to_str().unwrap_or_default().to_string(),
                );
            }
            if !body.dry_run {
                // Like the proxy, the first refusal ends the evaluation.
                crate::limit::receipt::hand_back(std::mem::take(&mut taken), link).await;
                break;
            }
        }
    }
    Reply::Json(
        200,
        json!({
            "route": route.label,
            "upstream": route.upstream.name,
            "allowed": allowed,
            "status": status,
            "dry_run": body.dry_run,
            "decisions": decisions,
            "headers": response_headers,
        }),
    )
}

fn inspect_error(e: InspectError) -> Reply {
    match e {
        InspectError::BadKey(detail) => Reply::error(400, "bad_key", detail),
        InspectError::Redis(detail) => Reply::error(503, "redis_unavailable", detail),
    }
}

fn find_policy(admin: &Admin, name: &str) -> Result<std::sync::Arc<crate::limit::Policy>, Reply> {
    let gateway = admin.gateway.load();
    gateway.policies.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = gateway.policies.keys().map(String::as_str).collect();
        Reply::Json(
            404,
            json!({"error": "unknown_policy", "policy": name, "policies": known}),
        )
    })
}

/// `GET /admin/limits/{policy}/{key}`.
pub async fn limit_usage(admin: &Admin, policy: &str, key: &str, req: &Request) -> Reply {
    let policy = match find_policy(admin, policy) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    let limiter = policy.limiter(req.param("tier"));
    let gateway = admin.gateway.load_full();
    match policy.usage(limiter, key, gateway.redis.as_deref()).await {
        Ok(usage) => Reply::Json(200, json!(usage)),
        Err(e) => inspect_error(e),
    }
}

/// `DELETE /admin/limits/{policy}/{key}`: resets the key fleet-wide (all tiers).
pub async fn limit_reset(admin: &Admin, policy: &str, key: &str, _req: &Request) -> Reply {
    let policy = match find_policy(admin, policy) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    let gateway = admin.gateway.load_full();
    match policy
        .reset(&policy.base, key, gateway.redis.as_deref())
        .await
    {
        Ok(()) => Reply::Json(
            200,
            json!({"reset": true, "policy": &*policy.name, "key": key, "scope": if policy.scope == crate::config::Scope::Global { "fleet" } else { "node" }}),
        ),
        Err(e) => inspect_error(e),
    }
}

/// `GET /admin/keys`: every key's public record, never a secret.
pub fn list_keys(admin: &Admin) -> Reply {
    let gateway = admin.gateway.load();
    let mut keys: Vec<Value> = gateway
        .identity
        .api_keys
        .records()
        .map(|r| json!({"id": r.id, "tenant": r.tenant, "tier": r.tier, "source": "config"}))
        .collect();
    if let Some(store) = &gateway.store {
        keys.extend(store.keys().values().map(|r| {
            json!({"id": r.id, "name": r.name, "tenant": r.tenant, "tier": r.tier, "created": r.created, "source": "registered"})
        }));
    }
    keys.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Reply::Json(200, json!({"keys": keys}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    name: String,
    tenant: Option<String>,
    tier: Option<String>,
}

/// `POST /admin/keys`: registers an application and returns its new key (shown once).
pub async fn register_key(admin: &Admin, req: &Request) -> Reply {
    let body: RegisterRequest = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => {
            return bad_request(format!(
                "the body must be {{\"name\": ..., \"tenant\": ..., \"tier\": ...}}: {e}"
            ))
        }
    };
    let name = body.name.trim();
    if name.is_empty() || name.len() > 128 {
        return bad_request("name must be 1 to 128 characters");
    }
    let tenant = body.tenant.as_deref().unwrap_or(name).trim().to_string();
    let gateway = admin.gateway.load_full();
    let Some(store) = gateway.store.as_ref() else {
        return store_unavailable("this process has no store");
    };
    let (secret, record) = registry::new_key(name, &tenant, body.tier.as_deref());
    match store.register(record.clone(), &req.actor()).await {
        Ok(()) => Reply::Json(
            201,
            json!({"id": record.id, "key": secret, "name": record.name, "tenant": record.tenant,
                   "tier": record.tier, "created": record.created,
                   "note": "store the key now: only its digest is kept"}),
        ),
        Err(e) => store_unavailable(e),
    }
}

/// `503` for a write the store could not take; nothing changed.
pub(super) fn store_unavailable(why: impl std::fmt::Display) -> Reply {
    Reply::error(
        503,
        "store_unavailable",
        format!("{why}; nothing changed, try again"),
    )
}

/// `DELETE /admin/keys/{id}`: revokes a registered key fleet-wide.
pub async fn revoke_key(admin: &Admin, id: &str, req: &Request) -> Reply {
    let gateway = admin.gateway.load_full();
    if gateway.identity.api_keys.records().any(|r| r.id == id) {
        return Reply::error(
            409,
            "defined_in_config",
            "this key is in the config file; remove it there",
        );
    }
    let Some(store) = gateway.store.as_ref() else {
        return Reply::Json(404, json!({"error": "unknown_key", "id": id}));
    };
    match store.revoke(id, &req.actor()).await {
        Ok(true) => Reply::Json(200, json!({"revoked": id})),
        Ok(false) => Reply::Json(404, json!({"error": "unknown_key", "id": id})),
        Err(e) => store_unavailable(e),
    }
}

/// `GET /admin/audit?since=&after=&object=&limit=`: changes to what the store holds, oldest
/// first. `since` is an RFC 3339 time or unix milliseconds, `after` an entry's `seq` (to
/// page on), `object` one object (`key:<id>`).
pub async fn audit(admin: &Admin, req: &Request) -> Reply {
    let since_ms = match req.param("since").filter(|s| !s.is_empty()) {
        None => 0,
        Some(text) => match parse_time_ms(text) {
            Some(ms) => ms,
            None => {
                return bad_request(format!(
                    "since: `{text}` is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor unix milliseconds"
                ))
            }
        },
    };
    let after_seq = match req.param("after").map(str::parse::<i64>) {
        None => 0,
        Some(Ok(n)) if n >= 0 => n,
        Some(_) => return bad_request("after must be an entry's seq (a whole number)"),
    };
    let limit = match req.param("limit").map(str::parse::<i64>) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return bad_request("limit must be between 1 and 1000"),
    };
    let object = req.param("object").unwrap_or("").to_string();
    let gateway = admin.gateway.load_full();
    let Some(store) = gateway.store.as_ref() else {
        return store_unavailable("this process has no store");
    };
    let query = crate::store::AuditQuery {
        after_seq,
        since_ms,
        object,
        limit,
    };
    match store.audit(&query).await {
        Ok(entries) => {
            let entries: Vec<Value> = entries
                .into_iter()
                .map(|e| {
                    let at = chrono::DateTime::from_timestamp_millis(e.at_ms)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                    let mut v = json!(e);
                    v["at"] = json!(at);
                    v
                })
                .collect();
            Reply::Json(200, json!({"entries": entries}))
        }
        Err(e) => Reply::error(503, "store_unavailable", format!("{e}; try again")),
    }
}

/// Unix milliseconds from an RFC 3339 time or a number of milliseconds.
fn parse_time_ms(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return (ms >= 0).then_some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// `GET /admin/logs?client=...&limit=N`: a client's most recent decisions, newest first.
/// `client` is an address, or `key:<id>` for an API key.
pub async fn logs(admin: &Admin, req: &Request) -> Reply {
    let Some(client) = req.param("client").filter(|c| !c.is_empty()) else {
        return bad_request("give ?client=<address> or ?client=key:<id>");
    };
    let gateway = admin.gateway.load_full();
    let max = gateway.config.admin.decision_log.max_per_client;
    let limit = match req.param("limit").map(str::parse::<usize>) {
        None => 100.min(max),
        Some(Ok(n)) if (1..=max).contains(&n) => n,
        Some(_) => return bad_request(format!("limit must be between 1 and {max}")),
    };
    let Some(link) = gateway.redis.as_ref() else {
        return Reply::error(
            409,
            "no_redis",
            "decision logs are kept in Redis; configure a `redis` section",
        );
    };
    let Some(mut connection) = link.connection() else {
        return Reply::error(
            503,
            "redis_unavailable",
            "Redis is not reachable; try again",
        );
    };
    let key = crate::decision_log::list_key(&link.config.key_prefix, client);
    let mut cmd = redis::cmd("LRANGE");
    cmd.arg(&key).arg(0).arg(limit as i64 - 1);
    match tokio::time::timeout(
        Duration::from_secs(2),
        cmd.query_async::<Vec<String>>(&mut connection),
    )
    .await
    {
        Ok(Ok(entries)) => {
            let entries: Vec<Value> = entries
                .iter()
                .filter_map(|e| serde_json::from_str(e).ok())
                .collect();
            Reply::Json(
                200,
                json!({"client": client, "count": entries.len(), "entries": entries}),
            )
        }
        Ok(Err(e)) => Reply::error(503, "redis_unavailable", e.to_string()),
        Err(_) => Reply::error(503, "redis_unavailable", "no answer within 2s"),
    }
}

/// Which decisions an event stream carries.
pub struct EventFilter {
    client: Option<String>,
    route: Option<String>,
    policy: Option<String>,
    outcome: Option<String>,
}

impl From<&Request> for EventFilter {
    fn from(req: &Request) -> Self {
        let get = |k: &str| req.param(k).filter(|v| !v.is_empty()).map(str::to_string);
        EventFilter {
            client: get("client"),
            route: get("route"),
            policy: get("policy"),
            outcome: get("outcome"),
        }
    }
}

impl EventFilter {
    fn matches(&self, d: &Entry) -> bool {
        self.client
            .as_ref()
            .is_none_or(|c| *c == d.client.to_string() || Some(c.as_str()) == d.api_key_id)
            && self.route.as_ref().is_none_or(|r| r == d.route)
            && self
                .policy
                .as_ref()
                .is_none_or(|p| Some(p.as_str()) == d.policy)
            && self.outcome.as_ref().is_none_or(|o| o == d.outcome)
    }
}

/// How often an idle event stream sends a comment, so proxies in between keep it open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// `GET /admin/events`: Server-Sent Events, one `decision` event per request decided.
pub async fn stream_events(
    admin: &Admin,
    session: &mut ServerSession,
    filter: EventFilter,
    shutdown: &ShutdownWatch,
    extra: &[(&'static str, String)],
) {
    let mut subscription = admin.decisions.subscribe();
    let Ok(mut header) = ResponseHeader::build(200, Some(4 + extra.len())) else {
        return;
    };
    for (k, v) in extra {
        let _ = header.insert_header(*k, v);
    }
    let _ = header.insert_header(http::header::CONTENT_TYPE, "text/event-stream");
    let _ = header.insert_header(http::header::CACHE_CONTROL, "no-store");
    let _ = header.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    session.set_keepalive(None);
    if session
        .write_response_header(Box::new(header))
        .await
        .is_err()
    {
        return;
    }
    if session
        .write_response_body(
            bytes::Bytes::from_static(b": tollgate decisions\n\n"),
            false,
        )
        .await
        .is_err()
    {
        return;
    }
    let mut shutdown = shutdown.clone();
    loop {
        let chunk = tokio::select! {
            event = subscription.events.recv() => match event {
                Ok(batch) => {
                    let names = admin.decisions.names();
                    let mut chunk = String::new();
                    for entry in batch.iter().filter_map(|r| Entry::of(r, &names)) {
                        if filter.matches(&entry) {
                            chunk.push_str("event: decision\ndata: ");
                            chunk.push_str(&entry.to_json());
                            chunk.push_str("\n\n");
                        }
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    chunk
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => format!(": {n} batches of decisions dropped (slow reader)\n\n"),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = tokio::time::sleep(KEEPALIVE) => ": keepalive\n\n".to_string(),
            _ = shutdown.changed() => break,
        };
        if session
            .write_response_body(bytes::Bytes::from(chunk), false)
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = session.write_response_body(bytes::Bytes::new(), true).await;
}
