//! Tokens already verified, by a keyed digest of the token, until they expire: a client
//! that reuses its token costs a hash and a lookup, not a signature check.
//!
//! The digest is SipHash-2-4 with 128-bit output under a random key drawn when the cache
//! is made. A hit hands out the claims verified for whichever token had that digest, so a
//! client must not be able to make a token whose digest equals a cached one: SipHash is a
//! PRF, and without the key (never shown, and new in every process) finding such a token
//! takes about 2^128 tries against a live proxy. SHA-256 would also do, but it was most of
//! what a warm request on a JWT route cost; see docs/identity.md and BENCHMARKS.md. The
//! `siphasher` crate (already in the tree, through chrono-tz) computes it.

use super::Verified;
use parking_lot::Mutex;
use rand::RngCore;
use siphasher::sip128::SipHasher24;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Tokens kept per provider. At a few hundred bytes of claims each, about 10 MB at most.
pub const CAPACITY: usize = 20_000;

pub type TokenDigest = u128;

pub struct TokenCache {
    map: Mutex<HashMap<TokenDigest, Arc<Verified>, BuildHasherDefault<DigestHasher>>>,
    /// The secret SipHash key.
    key: (u64, u64),
    capacity: usize,
}

/// The map's hasher: the digest is already uniform and unknown to clients, so its low bits
/// place it in the table as they are (hashing it again would buy nothing).
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than `u128`; none exist, but stay a correct hasher.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, digest: u128) {
        self.0 = digest as u64;
    }
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        let mut rng = rand::rngs::OsRng;
        TokenCache {
            map: Mutex::new(HashMap::default()),
            key: (rng.next_u64(), rng.next_u64()),
            capacity,
        }
    }

    /// The token's digest under this cache's key.
    pub fn digest(&self, token: &str) -> TokenDigest {
        let digest = SipHasher24::new_with_keys(self.key.0, self.key.1).hash(token.as_bytes());
        u128::from(digest.h1) | u128::from(digest.h2) << 64
    }

    /// The verified token, while it is still valid at `now` (Unix seconds).
    pub fn get(&self, digest: TokenDigest, now: u64) -> Option<Arc<Verified>> {
        let map = self.map.lock();
        map.get(&digest).filter(|v| v.until > now).cloned()
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
        cache.insert(cache.digest("a"), verified(100), 10);
        assert!(cache.get(cache.digest("a"), 99).is_some());
        assert!(cache.get(cache.digest("a"), 100).is_none());
        cache.insert(cache.digest("b"), verified(50), 10);
        cache.insert(cache.digest("c"), verified(500), 10);
        // Full: the expired ones go first.
        cache.insert(cache.digest("d"), verified(500), 60);
        assert_eq!(cache.len(), 3);
        assert!(cache.get(cache.digest("b"), 60).is_none());
        for i in 0..10 {
            cache.insert(cache.digest(&i.to_string()), verified(500), 60);
            assert!(cache.len() <= 3);
        }
    }

    #[test]
    fn digests_are_keyed_per_cache_and_tell_tokens_apart() {
        let (one, two) = (TokenCache::new(3), TokenCache::new(3));
        assert_eq!(
            one.digest("header.claims.sig"),
            one.digest("header.claims.sig")
        );
        // A different random key: a digest learned from one process says nothing of another.
        assert_ne!(
            one.digest("header.claims.sig"),
            two.digest("header.claims.sig")
        );
        // Tokens differing in one byte, or only in length, do not share an entry.
        assert_ne!(
            one.digest("header.claims.sig"),
            one.digest("header.claims.sih")
        );
        assert_ne!(
            one.digest("header.claims.sig"),
            one.digest("header.claims.sig\0")
        );
        one.insert(one.digest("a.b.c"), verified(500), 10);
        assert!(one.get(one.digest("a.b.d"), 10).is_none());
    }
}
