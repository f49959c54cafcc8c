//! The admin API's OpenAPI 3.0 description, served at `/admin/openapi.json` and rendered
//! by `/admin/docs`.

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn json_response(description: &str, schema: Value, example: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema, "example": example}}})
}

pub fn document() -> Value {
    let mut doc = paths();
    guard_responses(&mut doc);
    doc
}

/// The refusals of `guard` apply to every route with data or effects; adding them here
/// keeps each route's own description about what it does.
fn guard_responses(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        if !path.starts_with("/admin/") {
            continue;
        }
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            // Path items also hold `parameters`; only operations have responses.
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            responses.insert("421".into(), error_response("The Host is not localhost, an IP address or a name in admin.allowed_hosts (a DNS rebinding guard)."));
            if matches!(path.as_str(), "/admin/docs" | "/admin/openapi.json") {
                continue;
            }
            let writes = method != "get" && path != "/admin/check";
            responses.insert("403".into(), error_response(if writes {
                "The token has the read role (this needs write), or Origin (or Referer) names a web site other than the admin listener itself and the origins in admin.allowed_origins."
            } else {
                "Origin (or Referer) names a web site other than the admin listener itself and the origins in admin.allowed_origins."
            }));
            if method != "get" {
                responses.insert(
                    "415".into(),
                    error_response("A write without Content-Type: application/json."),
                );
            }
        }
    }
}

fn paths() -> Value {
    let unauthorized = error_response("The bearer token is missing or wrong.");
    let limited = error_response("Too many admin requests from this address (see Retry-After).");
    let redis_down = error_response("Redis is needed and not reachable.");
    let store_down = error_response("The store is not reachable; nothing changed.");
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "tollgate admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Operate a tollgate node: its config and reloads, rate limit decisions and usage, API keys, per-client decision logs and a live stream of decisions. Every /admin route needs `Authorization: Bearer <token>` when a token is configured (`admin.token`, or named tokens in `admin.tokens`, each with the role `read` or `write`: a read token may GET and POST /admin/check, anything else gets 403) (`access_token` as a query parameter is accepted on GET /admin/events only, for EventSource; elsewhere it gets 400). Each client address is rate limited (`admin.rate_limit`).\n\nOther web sites are kept out: a Host other than localhost, an IP address or a name in `admin.allowed_hosts` gets 421 (DNS rebinding); a request whose Origin (or, without one, Referer) is neither the admin listener's own origin nor in `admin.allowed_origins` gets 403, except GETs of this document and the docs page; writes (POST, DELETE) must carry `Content-Type: application/json` (415), which a page of another origin cannot send without a CORS preflight, and preflights are answered only for `admin.allowed_origins`. DELETE without a body may leave Content-Type out."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/admin/config": {"get": {
                "summary": "The running config",
                "description": "The effective config, with secrets redacted (API keys appear by id, the admin token and Redis password as ***), the file it came from, the last reload's time and result (with located errors when the file on disk is invalid), and under `tls` what each TLS listener serves: every certificate's names and expiry, and the located errors of certificate files that were refused (the previous certificates keep serving).",
                "responses": {"200": json_response("The config", json!({"type": "object"}), json!({"source": "config.yaml", "reload": {"time": "2026-11-22T07:14:05.723Z", "result": "ok", "trigger": "file", "generation": 3}, "tls": [{"listener": "0.0.0.0:443", "result": "ok", "loaded_at": "2026-11-22T07:14:05.723Z", "certs": [{"cert": "/etc/tollgate/example.pem", "names": ["example.com", "*.example.com"], "not_after": "2027-02-20T00:00:00+00:00"}]}], "config": {"listen": ["0.0.0.0:8000"]}})), "401": unauthorized, "429": limited}
            }},
            "/admin/reload": {"post": {
                "summary": "Reload the config file now",
                "description": "Validates and builds the file completely, then swaps it in atomically. An invalid file changes nothing. The file is also watched (changes apply within a second) and SIGHUP reloads too.",
                "responses": {
                    "200": json_response("Reloaded", json!({"$ref": "#/components/schemas/ReloadStatus"}), json!({"time": "2026-11-22T07:14:05.723Z", "result": "ok", "trigger": "api", "generation": 4})),
                    "422": json_response("The file is invalid; the running config is unchanged", json!({"$ref": "#/components/schemas/ReloadStatus"}), json!({"time": "2026-11-22T07:14:05.723Z", "result": "error", "trigger": "api", "generation": 3, "error": {"message": "config.yaml is not valid", "errors": ["config.yaml:12:15: routes[1].upstream: unknown upstream `c` (defined upstreams: service_a, service_b)"]}})),
                    "401": unauthorized, "429": limited
                }
            }},
            "/admin/check": {"post": {
                "summary": "Decide a request without proxying it",
                "description": "Runs the route's policies for a described request, so services that are not behind the proxy can ask for a decision. With `dry_run` the decision is computed from current usage and nothing is consumed.",
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/CheckRequest"},
                    "example": {"path": "/a/orders", "method": "GET", "client_ip": "203.0.113.7", "api_key": "demo-pro-key", "headers": {"x-user": "alice"}, "cost": 1, "dry_run": true}
                }}},
                "responses": {
                    "200": json_response("The decision", json!({"$ref": "#/components/schemas/CheckResult"}), json!({"route": "/a", "upstream": "service_a", "allowed": true, "status": 200, "dry_run": true, "decisions": [{"policy": "per_client", "key": "203.0.113.7", "tier": null, "cost": 1, "allowed": true, "outcome": "allowed", "limit": 100, "remaining": 87, "reset_seconds": 41, "retry_after_seconds": 0}], "headers": {}})),
                    "400": error_response("The request description is invalid."),
                    "404": error_response("No route matches the path."),
                    "401": unauthorized, "429": limited, "503": redis_down
                }
            }},
            "/admin/stats": {"get": {
                "summary": "A snapshot for the dashboard",
                "description": "Per-route requests allowed, limited and failed per second over the last minute, the clients limited most, each policy's decisions and active keys, Redis health and sync latency, backend health and the last reload.",
                "responses": {"200": json_response("The snapshot", json!({"type": "object"}), json!({"time": "2026-11-22T07:14:05.723Z", "series": {"seconds": [1795333000], "routes": {"/a": {"allowed": [12], "limited": [3], "errors": [0]}}}})), "401": unauthorized, "429": limited}
            }},
            "/admin/limits/{policy}/{key}": {
                "parameters": [
                    {"name": "policy", "in": "path", "required": true, "schema": {"type": "string"}, "example": "per_client"},
                    {"name": "key", "in": "path", "required": true, "schema": {"type": "string"}, "description": "The key as text: for client_ip the client's network in CIDR form (2001:db8:1:1::/64, URL-encoded) or any address in it (an IPv4 client at /32 is its address), parts joined by | for composite keys, - for a missing part.", "example": "127.0.0.1"}
                ],
                "get": {
                    "summary": "One key's current usage",
                    "description": "Used, remaining and time to reset. Global policies report the fleet's count from Redis (including quota nodes have reserved); local ones this node's.",
                    "parameters": [{"name": "tier", "in": "query", "required": false, "schema": {"type": "string"}, "description": "Use a tier's numbers."}],
                    "responses": {"200": json_response("Usage", json!({"$ref": "#/components/schemas/Usage"}), json!({"policy": "per_client", "key": "127.0.0.1", "tier": null, "algorithm": "sliding_window", "scope": "global", "sync": "async", "source": "redis", "limit": 100, "window_ms": 60000, "window_start_ms": 1764683940000_u64, "window_end_ms": 1764684000000_u64, "period": null, "timezone": null, "used": 12, "remaining": 88, "reset_ms": 4200, "window": {"current": 10, "previous": 5, "elapsed_ms": 5800}, "bucket": null})), "400": error_response("The key does not fit the policy's key."), "404": error_response("No such policy."), "401": unauthorized, "429": limited, "503": redis_down}
                },
                "delete": {
                    "summary": "Reset one key",
                    "description": "Global policies: deletes the key's state in Redis and every node drops its lease for it within a heartbeat. Local policies: this node's count.",
                    "responses": {"200": json_response("Reset", json!({"type": "object"}), json!({"reset": true, "policy": "per_client", "key": "127.0.0.1", "scope": "fleet"})), "400": error_response("The key does not fit the policy's key."), "404": error_response("No such policy."), "401": unauthorized, "429": limited, "503": redis_down}
                }
            },
            "/admin/keys": {
                "get": {"summary": "List API keys", "description": "Keys from the config and keys registered through this API, by id. Secrets are never shown.", "responses": {"200": json_response("The keys", json!({"type": "object"}), json!({"keys": [{"id": "3f2a9c0e1b7d4a55", "name": "my-app", "tenant": "my-app", "tier": "pro", "created": "2026-11-22T07:14:05.723Z", "source": "registered"}]})), "401": unauthorized, "429": limited}},
                "post": {
                    "summary": "Register an application",
                    "description": "Creates a new API key with a tenant and tier. The key is returned once; the store keeps only its digest, every node of the fleet honours it within a second, and the audit trail records who registered it.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RegisterRequest"}, "example": {"name": "my-app", "tenant": "acme", "tier": "pro"}}}},
                    "responses": {"201": json_response("Registered", json!({"type": "object"}), json!({"id": "3f2a9c0e1b7d4a55", "key": "tg_...", "name": "my-app", "tenant": "acme", "tier": "pro", "created": "2026-11-22T07:14:05.723Z"})), "400": error_response("Invalid body."), "401": unauthorized, "429": limited, "503": store_down}
                }
            },
            "/admin/keys/{id}": {"delete": {
                "summary": "Revoke a registered key",
                "description": "Removes the key on every node within a second; the audit trail records who revoked it and the key's record before.",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": json_response("Revoked", json!({"type": "object"}), json!({"revoked": "3f2a9c0e1b7d4a55"})), "404": error_response("No such registered key."), "409": error_response("The key is defined in the config file."), "401": unauthorized, "429": limited, "503": store_down}
            }},
            "/admin/policies": {
                "get": {"summary": "List rate limit policies", "description": "The config file's policies (source file, read-only through the API) and those created through it (source api, with revision and etag).", "responses": {"200": json_response("The policies", json!({"type": "object"}), json!({"policies": [{"name": "per_ip", "key": "client_ip", "algorithm": "fixed_window", "rate": "5/1m", "routes": ["/a"], "source": "api", "revision": 1, "etag": "\"1\""}]})), "401": unauthorized, "429": limited}},
                "post": {
                    "summary": "Create a policy",
                    "description": "The fields of `limits.<name>` in the config file, plus `name` and `routes` (prefixes of the routes that apply it after their own policies). Validated with the file and every other policy by the file's validator; applied on this node before the answer and on every node sharing the store within a second. Audited.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}, "example": {"name": "per_ip", "key": "client_ip", "algorithm": "fixed_window", "rate": "5/1m", "routes": ["/a"]}}}},
                    "responses": {"201": json_response("Created (ETag header)", json!({"type": "object"}), json!({"name": "per_ip", "revision": 1, "etag": "\"1\"", "applied": true})), "409": error_response("The name is taken, in the file or through the API."), "422": json_response("Invalid; nothing changed", json!({"type": "object"}), json!({"error": "invalid_policy", "errors": [{"path": "rate", "message": "..."}]})), "401": unauthorized, "429": limited, "503": store_down}
                }
            },
            "/admin/policies/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": {"summary": "One policy", "responses": {"200": json_response("The policy (ETag header for API policies)", json!({"type": "object"}), json!({"name": "per_ip", "source": "api", "revision": 2, "etag": "\"2\""})), "404": error_response("No such policy."), "401": unauthorized, "429": limited}},
                "put": {
                    "summary": "Create or replace a policy",
                    "description": "With `If-Match: \"<etag>\"` only if the policy is still at that revision; otherwise 412 with the current etag, so two operators cannot overwrite each other silently.",
                    "parameters": [{"name": "If-Match", "in": "header", "required": false, "schema": {"type": "string"}, "example": "\"1\""}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}, "example": {"key": "client_ip", "algorithm": "fixed_window", "rate": "10/1m", "routes": ["/a"]}}}},
                    "responses": {"200": json_response("Replaced (ETag header)", json!({"type": "object"}), json!({"name": "per_ip", "revision": 2})), "201": error_response("Created."), "409": error_response("The policy is defined in the config file."), "412": error_response("The ETag is stale."), "422": error_response("Invalid; nothing changed."), "401": unauthorized, "429": limited, "503": store_down}
                },
                "delete": {
                    "summary": "Delete a policy",
                    "parameters": [{"name": "If-Match", "in": "header", "required": false, "schema": {"type": "string"}}],
                    "responses": {"200": json_response("Deleted", json!({"type": "object"}), json!({"deleted": "per_ip", "applied": true})), "404": error_response("No such policy."), "409": error_response("The policy is defined in the config file."), "412": error_response("The ETag is stale."), "401": unauthorized, "429": limited, "503": store_down}
                }
            },
            "/admin/overrides": {"get": {"summary": "List overrides", "description": "Every override: other numbers for one tenant or one API key on one policy.", "responses": {"200": json_response("The overrides", json!({"type": "object"}), json!({"overrides": [{"policy": "per_tenant", "subject": "tenant:acme", "rate": "5000/1m"}]})), "401": unauthorized, "429": limited}}},
            "/admin/overrides/{policy}/{subject}": {
                "parameters": [
                    {"name": "policy", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "subject", "in": "path", "required": true, "schema": {"type": "string"}, "description": "tenant:NAME or key:ID (an API key's 16-digit id)", "example": "tenant:acme"}
                ],
                "get": {"summary": "One override", "responses": {"200": json_response("The override", json!({"type": "object"}), json!({"policy": "per_tenant", "subject": "tenant:acme", "rate": "5000/1m"})), "404": error_response("No such override."), "401": unauthorized, "429": limited}},
                "put": {
                    "summary": "Set an override",
                    "description": "Other `rate`, `burst` or `limit` for one tenant or one API key on a policy of the file or the API. It beats the tier; the key's count carries on. Validated with the whole config (422 with field paths), applied fleet-wide within a second, audited.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TierNumbers"}, "example": {"rate": "5000/1m"}}}},
                    "responses": {"200": json_response("Set", json!({"type": "object"}), json!({"policy": "per_tenant", "subject": "tenant:acme", "rate": "5000/1m", "applied": true})), "404": error_response("No such policy."), "422": error_response("Invalid; nothing changed."), "401": unauthorized, "429": limited, "503": store_down}
                },
                "delete": {"summary": "Remove an override", "responses": {"200": json_response("Removed", json!({"type": "object"}), json!({"deleted": "per_tenant/tenant:acme", "applied": true})), "404": error_response("No such override."), "401": unauthorized, "429": limited, "503": store_down}}
            },
            "/admin/audit": {"get": {
                "summary": "The audit trail",
                "description": "Every change to what the store holds, oldest first: when, who (the admin token's name and the client's address), the action, the object, and its public fields before and after. Secrets never appear. Page on with `after` set to the last entry's seq.",
                "parameters": [
                    {"name": "since", "in": "query", "required": false, "schema": {"type": "string"}, "description": "Only entries at or after this time: RFC 3339 or unix milliseconds.", "example": "2026-12-01T00:00:00Z"},
                    {"name": "after", "in": "query", "required": false, "schema": {"type": "integer", "default": 0}, "description": "Only entries after this seq."},
                    {"name": "object", "in": "query", "required": false, "schema": {"type": "string"}, "description": "Only this object, such as key:<id>.", "example": "key:3f2a9c0e1b7d4a55"},
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "default": 100, "minimum": 1, "maximum": 1000}}
                ],
                "responses": {"200": json_response("The entries", json!({"type": "object"}), json!({"entries": [{"seq": 1, "at": "2026-12-01T10:00:00.000Z", "at_ms": 1796119200000_u64, "actor": "ci-deployer@10.0.0.7", "action": "register", "object": "key:3f2a9c0e1b7d4a55", "before": null, "after": {"id": "3f2a9c0e1b7d4a55", "name": "my-app", "tenant": "acme", "tier": "pro", "created": "2026-12-01T10:00:00.000Z"}}]})), "400": error_response("A parameter does not parse."), "401": unauthorized, "429": limited, "503": error_response("The store is not reachable.")}
            }},
            "/admin/logs": {"get": {
                "summary": "A client's recent decisions",
                "description": "The most recent decisions for a client, newest first (up to admin.decision_log.max_per_client, 1000 by default), written to Redis in batches off the request path.",
                "parameters": [
                    {"name": "client", "in": "query", "required": true, "schema": {"type": "string"}, "description": "A client address, or key:<id> for an API key.", "example": "127.0.0.1"},
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "default": 100}}
                ],
                "responses": {"200": json_response("The entries", json!({"type": "object"}), json!({"client": "127.0.0.1", "count": 1, "entries": [{"ts": "2026-11-22T07:14:05.723Z", "route": "/a", "client": "127.0.0.1", "method": "GET", "path": "/a/x", "status": 429, "policy": "per_client", "outcome": "limited", "remaining": 0}]})), "400": error_response("Missing client."), "401": unauthorized, "429": limited, "503": redis_down}
            }},
            "/admin/events": {"get": {
                "summary": "Live decisions (Server-Sent Events)",
                "description": "One `decision` event per request decided by a route with limits or an API key requirement. Optional filters: client, route, policy, outcome.",
                "parameters": [
                    {"name": "client", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "route", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "policy", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "outcome", "in": "query", "required": false, "schema": {"type": "string", "enum": ["allowed", "limited", "shadow_limited", "failed_open", "unavailable", "unauthorized"]}}
                ],
                "responses": {"200": {"description": "An event stream", "content": {"text/event-stream": {"schema": {"type": "string"}, "example": "event: decision\ndata: {\"route\":\"/a\",\"outcome\":\"limited\"}\n\n"}}}, "401": unauthorized, "429": limited}
            }},
            "/admin/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.0"}}}},
            "/admin/docs": {"get": {"summary": "This document, browsable", "responses": {"200": {"description": "HTML"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "Text exposition format"}}}},
            "/health": {"get": {"summary": "Liveness of the admin listener", "security": [], "responses": {"200": {"description": "ok"}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}, "required": ["error"]},
                "ReloadStatus": {"type": "object", "properties": {
                    "time": {"type": "string", "format": "date-time"}, "result": {"type": "string", "enum": ["ok", "error"]},
                    "trigger": {"type": "string", "enum": ["startup", "file", "sighup", "api"]}, "generation": {"type": "integer"},
                    "error": {"type": "object", "properties": {"message": {"type": "string"}, "errors": {"type": "array", "items": {"type": "string"}}}},
                    "restart_required": {"type": "array", "items": {"type": "string"}},
                    "warnings": {"type": "array", "items": {"type": "string"}}
                }},
                "CheckRequest": {"type": "object", "properties": {
                    "path": {"type": "string", "description": "The request path; or give route"}, "route": {"type": "string"},
                    "host": {"type": "string", "description": "The request's host, for routes that name one"},
                    "method": {"type": "string", "default": "GET"}, "client_ip": {"type": "string", "default": "127.0.0.1"},
                    "api_key": {"type": "string"}, "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "cost": {"type": "integer", "description": "Overrides the policies' cost"}, "dry_run": {"type": "boolean", "default": false},
                    "claims": {"type": "object", "description": "A verified token's claims, for jwt:CLAIM key parts (the path may carry a query, for query:NAME parts)"}
                }},
                "CheckResult": {"type": "object", "properties": {
                    "route": {"type": "string"}, "upstream": {"type": "string"}, "allowed": {"type": "boolean"}, "status": {"type": "integer"},
                    "dry_run": {"type": "boolean"}, "decisions": {"type": "array", "items": {"type": "object"}}, "headers": {"type": "object"}
                }},
                "TierNumbers": {"type": "object", "properties": {
                    "rate": {"type": "string", "example": "5000/1m"},
                    "burst": {"type": "integer"},
                    "limit": {"type": "integer"}
                }},
                "RegisterRequest": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string"}, "tenant": {"type": "string", "description": "Defaults to the name"}, "tier": {"type": "string"}
                }},
                "Usage": {"type": "object", "properties": {
                    "policy": {"type": "string"}, "key": {"type": "string"}, "tier": {"type": "string", "nullable": true},
                    "algorithm": {"type": "string"}, "scope": {"type": "string"}, "sync": {"type": "string"}, "source": {"type": "string", "enum": ["redis", "local"]},
                    "limit": {"type": "integer"}, "window_ms": {"type": "integer", "nullable": true, "description": "The current window's length; for a calendar period this one's (a 28-day February, a 23-hour day)."},
                    "window_start_ms": {"type": "integer", "nullable": true, "description": "Unix ms the current window began (windows only)."},
                    "window_end_ms": {"type": "integer", "nullable": true, "description": "Unix ms the next window begins."},
                    "period": {"type": "string", "nullable": true, "enum": ["1d", "1w", "1mo", null], "description": "The calendar period of a day, week or month quota."},
                    "timezone": {"type": "string", "nullable": true, "description": "The IANA time zone calendar periods are counted in."}, "used": {"type": "integer"},
                    "remaining": {"type": "integer"}, "reset_ms": {"type": "integer"},
                    "window": {"type": "object", "nullable": true}, "bucket": {"type": "object", "nullable": true},
                    "blocked_until_ms": {"type": "integer", "description": "When a block_for penalty on this key ends (Unix ms), as this node knows it; absent when not blocked"}
                }}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_with_data_lists_the_cross_site_refusals() {
        let doc = document();
        let responses = |path: &str, method: &str| doc["paths"][path][method]["responses"].clone();
        let keys = responses("/admin/keys", "post");
        for code in ["403", "415", "421", "401"] {
            assert!(keys[code].is_object(), "POST /admin/keys lacks {code}");
        }
        let limits = responses("/admin/limits/{policy}/{key}", "get");
        assert!(limits["403"].is_object() && limits["415"].is_null());
        let docs = responses("/admin/docs", "get");
        assert!(docs["421"].is_object() && docs["403"].is_null());
        assert!(responses("/metrics", "get")["421"].is_null());
    }
}
