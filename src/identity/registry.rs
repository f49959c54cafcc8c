//! API keys registered through the admin API, kept in Redis so every node honours them.
//!
//! Redis holds only digests: a hash `{prefix}:apikeys` maps the hex digest of each key to
//! its record, and `{prefix}:apikeys:version` changes with every registration or
//! revocation, so nodes reload the set only when it changed (checked on each heartbeat).

use super::api_keys::{digest, hex, KeyDigest, KeyRecord};
use crate::access_log::now_rfc3339;
use rand::Rng;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::sync::Arc;

pub fn hash_key(prefix: &str) -> String {
    format!("{prefix}:apikeys")
}

pub fn version_key(prefix: &str) -> String {
    format!("{prefix}:apikeys:version")
}

/// A new secret: `tg_` and 40 random alphanumerics (≈238 bits).
pub fn new_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let body: String = (0..40)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("tg_{body}")
}

/// Registers a key; returns its secret (shown once) and record.
pub async fn register(
    connection: &mut MultiplexedConnection,
    prefix: &str,
    name: &str,
    tenant: &str,
    tier: Option<&str>,
) -> redis::RedisResult<(String, KeyRecord)> {
    let secret = new_secret();
    let digest = digest(secret.as_bytes());
    let mut record = KeyRecord::from_digest(digest, tenant, tier);
    record.name = Some(name.to_string());
    record.created = Some(now_rfc3339());
    let json = serde_json::to_string(&record).unwrap_or_default();
    redis::pipe()
        .cmd("HSET")
        .arg(hash_key(prefix))
        .arg(hex(&digest))
        .arg(json)
        .ignore()
        .cmd("INCR")
        .arg(version_key(prefix))
        .ignore()
        .query_async::<()>(connection)
        .await?;
    Ok((secret, record))
}

/// Every registered key, by digest.
pub async fn load(
    connection: &mut MultiplexedConnection,
    prefix: &str,
) -> redis::RedisResult<HashMap<KeyDigest, Arc<KeyRecord>>> {
    let raw: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(hash_key(prefix))
        .query_async(connection)
        .await?;
    Ok(raw
        .into_iter()
        .filter_map(|(digest_hex, json)| {
            let digest = parse_digest(&digest_hex)?;
            let mut record: KeyRecord = serde_json::from_str(&json).ok()?;
            record.digest = digest;
            Some((digest, Arc::new(record)))
        })
        .collect())
}

/// Revokes the registered key with public id `id`; false when there is none.
pub async fn revoke(
    connection: &mut MultiplexedConnection,
    prefix: &str,
    id: &str,
) -> redis::RedisResult<bool> {
    let keys = load(connection, prefix).await?;
    let Some(digest) = keys.values().find(|r| r.id == id).map(|r| r.digest) else {
        return Ok(false);
    };
    let (removed,): (u64,) = redis::pipe()
        .cmd("HDEL")
        .arg(hash_key(prefix))
        .arg(hex(&digest))
        .cmd("INCR")
        .arg(version_key(prefix))
        .ignore()
        .query_async(connection)
        .await?;
    Ok(removed > 0)
}

fn parse_digest(text: &str) -> Option<KeyDigest> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_prefixed() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("tg_") && a.len() == 43);
    }

    #[test]
    fn digests_round_trip_through_hex() {
        let d = digest(b"secret");
        assert_eq!(parse_digest(&hex(&d)), Some(d));
        assert_eq!(parse_digest("zz"), None);
    }
}
