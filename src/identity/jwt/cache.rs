//! Tokens already verified, by a digest of the token, until they expire: a client that
//! reuses its token costs a hash and a lookup, not a signature check.

use super::Verified;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Tokens kept per provider. At a few hundred bytes of claims each, about 10 MB at most.
pub const CAPACITY: usize = 20_000;

pub type TokenDigest = [u8; 32];

pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

pub struct TokenCache {
    map: Mutex<HashMap<TokenDigest, Arc<Verified>, ahash::RandomState>>,
    capacity: usize,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            map: Mutex::new(HashMap::default()),
            capacity,
        }
    }

    /// The verified token, while it is still valid at `now` (Unix seconds).
    pub fn get(&self, digest: &TokenDigest, now: u64) -> Option<Arc<Verified>> {
        let map = self.map.lock();
        map.get(digest).filter(|v| v.until > now).cloned()
    }

    /// Keeps a verified token. A full cache first drops what has expired; if that frees
    /// nothing, it starts over (the next requests verify again), so memory stays bounded
    /// whatever tokens clients invent — only valid signed tokens get here.
    pub fn insert(&self, digest: TokenDigest, verified: Arc<Verified>, now: u64) {
        let mut map = self.map.lock();
        if map.len() >= self.capacity {
            map.retain(|_, v| v.until > now);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(digest, verified);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(until: u64) -> Arc<Verified> {
        Arc::new(Verified {
            claims: serde_json::json!({}),
            user: None,
            tier: None,
            tenant: None,
            forward: Vec::new(),
            until,
        })
    }

    #[test]
    fn entries_end_at_their_expiry_and_the_cache_stays_bounded() {
        let cache = TokenCache::new(3);
        cache.insert(digest("a"), verified(100), 10);
        assert!(cache.get(&digest("a"), 99).is_some());
        assert!(cache.get(&digest("a"), 100).is_none());
        cache.insert(digest("b"), verified(50), 10);
        cache.insert(digest("c"), verified(500), 10);
        // Full: the expired ones go first.
        cache.insert(digest("d"), verified(500), 60);
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&digest("b"), 60).is_none());
        for i in 0..10 {
            cache.insert(digest(&i.to_string()), verified(500), 60);
            assert!(cache.len() <= 3);
        }
    }
}
