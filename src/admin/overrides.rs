//! `/admin/overrides/{policy}/{tenant:NAME | key:ID}`: other numbers (`rate`, `burst`,
//! `limit`) for one tenant or one API key on one policy, the deal sales signs without a
//! redeploy. An override beats the tier. Kept in the store, validated with the whole
//! config like a policy, applied fleet-wide, and audited.

use super::{Admin, Reply, Request};
use crate::config::runtime::{self, RuntimeOverride};
use crate::config::{Problem, TierConfig};
use serde_json::{json, Value};

/// `GET /admin/overrides`: every override.
pub fn list(admin: &Admin) -> Reply {
    let gateway = admin.gateway.load();
    let all: Vec<Value> = gateway
        .store
        .as_ref()
        .map(|s| s.runtime_overrides())
        .unwrap_or_default()
        .iter()
        .map(describe)
        .collect();
    Reply::Json(200, json!({"overrides": all}))
}

/// `GET /admin/overrides/{policy}/{subject}`.
pub fn show(admin: &Admin, policy: &str, subject: &str) -> Reply {
    let gateway = admin.gateway.load();
    let found = gateway.store.as_ref().and_then(|s| {
        s.runtime_overrides()
            .into_iter()
            .find(|o| o.policy == policy && o.subject == subject)
    });
    match found {
        Some(o) => Reply::Json(200, describe(&o)),
        None => unknown(policy, subject),
    }
}

/// `PUT /admin/overrides/{policy}/{subject}`: sets the numbers, creating or replacing.
pub async fn put(admin: &Admin, policy: &str, subject: &str, req: &Request) -> Reply {
    if let Err(why) = runtime::check_subject(subject) {
        return super::policies::invalid(vec![Problem::at("subject", why)]);
    }
    let gateway = admin.gateway.load_full();
    if !gateway.policies.contains_key(policy) {
        return Reply::Json(404, json!({"error": "unknown_policy", "name": policy}));
    }
    let numbers: TierConfig = match parse(&req.body) {
        Ok(n) => n,
        Err(problems) => return super::policies::invalid(problems),
    };
    let Some(store) = gateway.store.as_ref() else {
        return super::api::store_unavailable("this process has no store");
    };
    let next = RuntimeOverride {
        policy: policy.to_string(),
        subject: subject.to_string(),
        numbers,
    };
    let mut candidate = store.runtime_overrides();
    candidate.retain(|o| !(o.policy == policy && o.subject == subject));
    candidate.push(next.clone());
    let file = admin.reloader.file_config();
    if let Err(problems) = runtime::resolve(&file, &store.runtime_policies(), &candidate) {
        let object = format!("limits.{policy}.overrides.{subject}");
        return super::policies::invalid(runtime::relative_to(&object, problems));
    }
    match store.put_override(next.clone(), &req.actor()).await {
        Ok(()) => {
            let applied = admin.reloader.apply_runtime_policies().await;
            let mut shown = describe(&next);
            shown["applied"] = json!(applied.is_ok());
            Reply::Json(200, shown)
        }
        Err(e) => super::api::store_unavailable(e),
    }
}

/// `DELETE /admin/overrides/{policy}/{subject}`.
pub async fn delete(admin: &Admin, policy: &str, subject: &str, req: &Request) -> Reply {
    let gateway = admin.gateway.load_full();
    let Some(store) = gateway.store.as_ref() else {
        return unknown(policy, subject);
    };
    match store.delete_override(policy, subject, &req.actor()).await {
        Ok(true) => {
            let applied = admin.reloader.apply_runtime_policies().await;
            Reply::Json(
                200,
                json!({"deleted": format!("{policy}/{subject}"), "applied": applied.is_ok()}),
            )
        }
        Ok(false) => unknown(policy, subject),
        Err(e) => super::api::store_unavailable(e),
    }
}

/// The body's numbers, with the file's messages.
fn parse(body: &[u8]) -> Result<TierConfig, Vec<Problem>> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| vec![Problem::at("", format!("the body is not JSON: {e}"))])?;
    if !value.is_object() {
        return Err(vec![Problem::at(
            "",
            "the body must be an object such as {\"rate\": \"1000/1m\"}",
        )]);
    }
    runtime::from_fields(&value)
}

fn describe(o: &RuntimeOverride) -> Value {
    let mut v = serde_json::to_value(&o.numbers).unwrap_or_default();
    v["policy"] = json!(o.policy);
    v["subject"] = json!(o.subject);
    v
}

fn unknown(policy: &str, subject: &str) -> Reply {
    Reply::Json(
        404,
        json!({"error": "unknown_override", "policy": policy, "subject": subject}),
    )
}
