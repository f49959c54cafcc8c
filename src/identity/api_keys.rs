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

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRecord {
    #[serde(skip)]
    pub digest: KeyDigest,
    /// A non-secret id: the first 16 hex digits of the digest.
    pub id: String,
    pub tenant: String,
    pub tier: Option<String>,
    /// The application's name, for registered keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When a registered key was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
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
        KeyRecord::from_digest(digest(secret.as_bytes()), tenant, tier)
    }

    pub fn from_digest(digest: KeyDigest, tenant: &str, tier: Option<&str>) -> KeyRecord {
        KeyRecord {
            id: hex(&digest[..8]),
            digest,
            tenant: tenant.to_string(),
            tier: tier.map(str::to_string),
            name: None,
            created: None,
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
        match self.presented(headers) {
            None => Lookup::Missing,
            Some(d) => self.find(&d).map_or(Lookup::Unknown, Lookup::Known),
        }
    }

    /// The digest of the key a request presents, if it presents one.
    pub fn presented(&self, headers: &HeaderMap) -> Option<KeyDigest> {
        headers.get(&self.header).map(|v| digest(v.as_bytes()))
    }

    pub fn find(&self, presented: &KeyDigest) -> Option<Arc<KeyRecord>> {
        find(&self.by_digest, presented)
    }

    pub fn records(&self) -> impl Iterator<Item = &Arc<KeyRecord>> {
        self.by_digest.values()
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// Finds a key by digest, confirming the match in constant time.
pub fn find(
    keys: &HashMap<KeyDigest, Arc<KeyRecord>>,
    presented: &KeyDigest,
) -> Option<Arc<KeyRecord>> {
    keys.get(presented)
        .filter(|record| bool::from(record.digest.ct_eq(presented)))
        .cloned()
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
