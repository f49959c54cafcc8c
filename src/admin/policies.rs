//! `/admin/policies`: rate limit policies created at runtime, kept in the store and applied
//! fleet-wide. Policies of the config file are listed too, and are read-only here (`409`).
//! A policy is validated by the file's own validator, merged with the file and the other
//! runtime policies, and nothing changes unless all of it is valid (`422`, with each
//! field's path). Writes are conditional on the ETag from `GET` (`If-Match`; `412`).

use super::{Admin, Reply, Request};
use crate::config::runtime::{self, RuntimePolicy};
use crate::config::{LimitConfig, Problem};
use crate::store::{StoredPolicy, Written};
use serde_json::{json, Value};

/// `GET /admin/policies`: every policy, from the file and from the API.
pub fn list(admin: &Admin) -> Reply {
    let file = admin.reloader.file_config();
    let mut out: Vec<Value> = file
        .limits
        .iter()
        .map(|(name, spec)| {
            let routes: Vec<&str> = file
                .routes
                .iter()
                .filter(|r| r.limits.contains(name))
                .map(|r| r.prefix.as_str())
                .collect();
            describe_file(admin, name, spec, &routes)
        })
        .collect();
    if let Some(store) = &admin.gateway.load().store {
        out.extend(store.policies().policies.iter().map(describe_api));
    }
    Reply::Json(200, json!({"policies": out}))
}

/// `GET /admin/policies/{name}`, with the ETag of an API policy.
pub fn show(admin: &Admin, name: &str) -> Reply {
    let file = admin.reloader.file_config();
    if let Some(spec) = file.limits.get(name) {
        let routes: Vec<&str> = file
            .routes
            .iter()
            .filter(|r| r.limits.iter().any(|l| l == name))
            .map(|r| r.prefix.as_str())
            .collect();
        return Reply::Json(200, describe_file(admin, name, spec, &routes));
    }
    match find(admin, name) {
        Some(stored) => Reply::JsonWith(200, describe_api(&stored), vec![etag(stored.revision)]),
        None => unknown(name),
    }
}

/// `POST /admin/policies`: creates a policy; `409` if the name is taken.
pub async fn create(admin: &Admin, req: &Request) -> Reply {
    let body = match body_json(req) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let Some(name) = body.get("name").and_then(Value::as_str).map(str::to_string) else {
        return invalid(vec![Problem::at("name", "missing: the policy's name")]);
    };
    if let Err(why) = runtime::check_name(&name) {
        return invalid(vec![Problem::at("name", why)]);
    }
    write(admin, req, &name, &body, None).await
}

/// `PUT /admin/policies/{name}`: creates or replaces a policy; with `If-Match`, only the
/// revision it names.
pub async fn replace(admin: &Admin, name: &str, req: &Request) -> Reply {
    let body = match body_json(req) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    if let Err(why) = runtime::check_name(name) {
        return invalid(vec![Problem::at("name", why)]);
    }
    if body.get("name").is_some_and(|n| n.as_str() != Some(name)) {
        return invalid(vec![Problem::at(
            "name",
            format!("differs from the name in the URL (`{name}`)"),
        )]);
    }
    let expected = match if_match(req) {
        Ok(expected) => expected,
        Err(reply) => return reply,
    };
    write(admin, req, name, &body, Some(expected)).await
}

/// `DELETE /admin/policies/{name}`: with `If-Match`, only the revision it names.
pub async fn delete(admin: &Admin, name: &str, req: &Request) -> Reply {
    if admin.reloader.file_config().limits.contains_key(name) {
        return in_file(admin, name);
    }
    let expected = match if_match(req) {
        Ok(expected) => expected,
        Err(reply) => return reply,
    };
    let gateway = admin.gateway.load_full();
    let Some(store) = gateway.store.as_ref() else {
        return unknown(name);
    };
    match store.delete_policy(name, expected, &req.actor()).await {
        Ok(Written::Done { .. }) => {
            let applied = admin.reloader.apply_runtime_policies().await;
            Reply::Json(200, json!({"deleted": name, "applied": applied.is_ok()}))
        }
        Ok(Written::Missing) => unknown(name),
        Ok(Written::Stale { current }) => stale(name, current),
        Ok(Written::Exists) => unknown(name),
        Err(e) => super::api::store_unavailable(e),
    }
}

async fn write(
    admin: &Admin,
    req: &Request,
    name: &str,
    body: &Value,
    expected: Option<Option<i64>>,
) -> Reply {
    let file = admin.reloader.file_config();
    if file.limits.contains_key(name) {
        return in_file(admin, name);
    }
    let (spec, routes) = match runtime::parse_body(body) {
        Ok(parsed) => parsed,
        Err(problems) => return invalid(problems),
    };
    let policy = RuntimePolicy {
        name: name.to_string(),
        spec,
        routes,
    };
    let gateway = admin.gateway.load_full();
    let Some(store) = gateway.store.as_ref() else {
        return super::api::store_unavailable("this process has no store");
    };
    // The whole config as it would run, checked by the file's validator.
    let mut candidate = store.runtime_policies();
    candidate.retain(|p| p.name != name);
    candidate.push(policy.clone());
    if let Err(problems) = runtime::resolve(&file, &candidate, &store.runtime_overrides()) {
        return invalid(runtime::relative_to(&format!("limits.{name}"), problems));
    }
    match store.put_policy(policy, expected, &req.actor()).await {
        Ok(Written::Done { revision, .. }) => {
            let applied = admin.reloader.apply_runtime_policies().await;
            let stored = find(admin, name);
            let mut shown = stored.as_ref().map(describe_api).unwrap_or_default();
            shown["applied"] = json!(applied.is_ok());
            if let Err(errors) = applied {
                shown["errors"] = json!(errors);
            }
            let status = if revision == 1 { 201 } else { 200 };
            Reply::JsonWith(status, shown, vec![etag(revision)])
        }
        Ok(Written::Exists) => Reply::error(
            409,
            "exists",
            format!("a policy `{name}` exists; PUT /admin/policies/{name} replaces it"),
        ),
        Ok(Written::Stale { current }) => stale(name, current),
        Ok(Written::Missing) => unknown(name),
        Err(e) => super::api::store_unavailable(e),
    }
}

fn find(admin: &Admin, name: &str) -> Option<StoredPolicy> {
    let gateway = admin.gateway.load();
    let store = gateway.store.as_ref()?;
    store
        .policies()
        .policies
        .iter()
        .find(|p| p.policy.name == name)
        .cloned()
}

fn describe_file(admin: &Admin, name: &str, spec: &LimitConfig, routes: &[&str]) -> Value {
    let mut v = serde_json::to_value(spec).unwrap_or_default();
    v["name"] = json!(name);
    v["routes"] = json!(routes);
    v["source"] = json!("file");
    v["file"] = json!(admin.reloader.path().display().to_string());
    v
}

fn describe_api(stored: &StoredPolicy) -> Value {
    let mut v = serde_json::to_value(&stored.policy.spec).unwrap_or_default();
    v["name"] = json!(stored.policy.name);
    v["routes"] = json!(stored.policy.routes);
    v["source"] = json!("api");
    v["revision"] = json!(stored.revision);
    v["etag"] = json!(etag(stored.revision).1);
    v
}

fn etag(revision: i64) -> (&'static str, String) {
    ("etag", format!("\"{revision}\""))
}

/// `None` without `If-Match` (write whatever is there), the revision it names otherwise.
fn if_match(req: &Request) -> Result<Option<i64>, Reply> {
    let Some(header) = req.if_match.as_deref() else {
        return Ok(None);
    };
    let tag = header.trim().trim_start_matches("W/");
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| {
            Reply::error(
                400,
                "bad_request",
                format!("If-Match: `{header}` is not an ETag from GET /admin/policies/{{name}}, such as \"3\""),
            )
        })
}

fn body_json(req: &Request) -> Result<Value, Reply> {
    serde_json::from_slice(&req.body)
        .map_err(|e| invalid(vec![Problem::at("", format!("the body is not JSON: {e}"))]))
}

pub(super) fn invalid(problems: Vec<Problem>) -> Reply {
    let errors: Vec<Value> = problems
        .into_iter()
        .map(|p| json!({"path": p.path, "message": p.message}))
        .collect();
    Reply::Json(
        422,
        json!({"error": "invalid_policy", "errors": errors, "detail": "nothing changed"}),
    )
}

fn in_file(admin: &Admin, name: &str) -> Reply {
    Reply::error(
        409,
        "defined_in_config",
        format!(
            "`{name}` is defined in {}; change it there",
            admin.reloader.path().display()
        ),
    )
}

fn stale(name: &str, current: Option<i64>) -> Reply {
    Reply::Json(
        412,
        json!({"error": "precondition_failed",
               "detail": format!("`{name}` changed since that ETag was read; GET it again"),
               "etag": current.map(|r| etag(r).1)}),
    )
}

fn unknown(name: &str) -> Reply {
    Reply::Json(404, json!({"error": "unknown_policy", "name": name}))
}
