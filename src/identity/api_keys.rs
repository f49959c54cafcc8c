//! API keys: looked up by their SHA-256 digest and confirmed with a constant-time
//! comparison, so how long a refusal takes says nothing about how close a guess was.
//! Only digests are kept in memory; a key's public id is a prefix of its digest.

use crate::config::ApiKeysConfig;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub type KeyDigest = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    digest: KeyDigest,
    /// A non-secret id: the first 16 hex digits of the digest.
    pub id: String,
    pub tenant: String,
    pub tier: Option<String>,
}

/// What a request's key header amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Missing,
    Unknown,
    Known(Arc<KeyRecord>),
}

pub struct ApiKeyStore {
    header: http::HeaderName,
    by_digest: HashMap<KeyDigest, Arc<KeyRecord>>,
}

pub fn digest(secret: &[u8]) -> KeyDigest {
    Sha256::digest(secret).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl KeyRecord {
    pub fn new(secret: &str, tenant: &str, tier: Option<&str>) -> KeyRecord {
        let digest = digest(secret.as_bytes());
        KeyRecord {
            id: hex(&digest[..8]),
            digest,
            tenant: tenant.to_string(),
            tier: tier.map(str::to_string),
        }
    }
}

impl ApiKeyStore {
    pub fn from_config(config: &ApiKeysConfig) -> Self {
        let header = http::HeaderName::from_bytes(config.header.as_bytes())
            .unwrap_or(http::HeaderName::from_static("x-api-key"));
        let by_digest = config
            .keys
            .iter()
            .map(|(secret, spec)| {
                let record = KeyRecord::new(secret, &spec.tenant, spec.tier.as_deref());
                (record.digest, Arc::new(record))
            })
            .collect();
        ApiKeyStore { header, by_digest }
    }

    pub fn header(&self) -> &http::HeaderName {
        &self.header
    }

    pub fn lookup(&self, headers: &HeaderMap) -> Lookup {
        let Some(presented) = headers.get(&self.header) else {
            return Lookup::Missing;
        };
        let presented = digest(presented.as_bytes());
        match self.by_digest.get(&presented) {
            Some(record) if bool::from(record.digest.ct_eq(&presented)) => {
                Lookup::Known(record.clone())
            }
            _ => Lookup::Unknown,
        }
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKeyConfig;

    fn store() -> ApiKeyStore {
        let mut config = ApiKeysConfig::default();
        config.keys.insert(
            "demo-free-key".into(),
            ApiKeyConfig {
                tenant: "demo".into(),
                tier: Some("free".into()),
            },
        );
        ApiKeyStore::from_config(&config)
    }

    fn with_key(k: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", k.parse().unwrap());
        h
    }

    #[test]
    fn known_unknown_and_missing() {
        let s = store();
        match s.lookup(&with_key("demo-free-key")) {
            Lookup::Known(r) => {
                assert_eq!(r.tenant, "demo");
                assert_eq!(r.tier.as_deref(), Some("free"));
                assert_eq!(r.id.len(), 16);
                assert!(!r.id.contains("demo"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.lookup(&with_key("demo-free-kez")), Lookup::Unknown);
        assert_eq!(s.lookup(&HeaderMap::new()), Lookup::Missing);
    }
}
