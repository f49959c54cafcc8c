//! The running config as the admin API shows it.

use crate::config::Config;

/// The config as JSON, with secrets out: API keys by public id, the admin token and the
/// Redis and store passwords as `***`.
pub fn redacted_json(config: &Config) -> serde_json::Value {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    if config.admin.token.is_some() {
        value["admin"]["token"] = serde_json::json!("***");
    }
    for (i, token) in config.admin.tokens.iter().enumerate() {
        if token.token.is_some() {
            value["admin"]["tokens"][i]["token"] = serde_json::json!("***");
        }
    }
    if let Some(url) = config.redis.as_ref().and_then(|r| r.url.as_deref()) {
        value["redis"]["url"] = serde_json::json!(crate::config::redis::redact_url(url));
    }
    if let Some(url) = &config.store.url {
        value["store"]["url"] = serde_json::json!(crate::config::redis::redact_url(url));
    }
    let keys: Vec<serde_json::Value> = config
        .api_keys
        .keys
        .iter()
        .map(|(secret, spec)| {
            let record =
                crate::identity::KeyRecord::new(secret, &spec.tenant, spec.tier.as_deref());
            serde_json::json!({"id": record.id, "tenant": spec.tenant, "tier": spec.tier})
        })
        .collect();
    value["api_keys"]["keys"] = serde_json::json!(keys);
    value
}
