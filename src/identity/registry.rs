//! API keys registered through the admin API: new secrets, and the set an older tollgate
//! kept in Redis (`{prefix}:apikeys`, digest to record), read once to import it into the
//! store (see `crate::store`).

use super::api_keys::{digest, KeyDigest, KeyRecord};
use crate::access_log::now_rfc3339;
use crate::redis_store::Connection;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;

/// Where an older tollgate kept registered keys.
pub fn hash_key(prefix: &str) -> String {
    format!("{prefix}:apikeys")
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

/// A new key for an application: its secret (shown once) and the record kept of it.
pub fn new_key(name: &str, tenant: &str, tier: Option<&str>) -> (String, KeyRecord) {
    let secret = new_secret();
    let mut record = KeyRecord::from_digest(digest(secret.as_bytes()), tenant, tier);
    record.name = Some(name.to_string());
    record.created = Some(now_rfc3339());
    (secret, record)
}

/// The keys an older tollgate registered in Redis, by digest.
pub async fn load(
    connection: &mut Connection,
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

/// A digest from its 64 hex digits.
pub fn parse_digest(text: &str) -> Option<KeyDigest> {
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
    use crate::identity::hex;

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
