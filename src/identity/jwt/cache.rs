//! Tokens already verified, by a keyed digest of the token, until they expire: a client
//! that reuses its token costs a hash and a lookup, not a signature check.
//!
//! The digest is SipHash-2-4 with 128-bit output under a random key drawn when the cache
//! is made. A hit hands out the claims verified for whichever token had that digest, so a
//! client must not be able to make a token whose digest equals a cached one: SipHash is a
//! PRF, and without the key (never shown, and new in every process) finding such a token
//! takes about 2^128 tries against a live proxy. SHA-256 would also do, but it was most of
//! what a warm request on a JWT route cost (about 20,000 instructions for a 270-byte token,
//! against about 1,400 here); see docs/identity.md and BENCHMARKS.md.

use super::Verified;
use parking_lot::Mutex;
use rand::RngCore;
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
        let (h1, h2) = siphash24_128(self.key.0, self.key.1, token.as_bytes());
        u128::from(h1) | u128::from(h2) << 64
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

/// SipHash-2-4 with 128-bit output (Aumasson and Bernstein, and the reference code's
/// `siphash.c` with `outlen` 16), as the two output words.
///
/// Written out rather than called through the `siphasher` crate, which the tests check it
/// against: that crate's generic rounds are compiled in this crate, and in the dev profile
/// (`opt-level = 1`, generics shared with the dependencies) its `rotate_left` stayed a call
/// per rotation, seven times the cost. Plain shifts and built-in slice patterns compile to
/// the same straight-line code in every profile.
fn siphash24_128(k0: u64, k1: u64, mut msg: &[u8]) -> (u64, u64) {
    // Not `rotate_left`: in the dev profile its intrinsic was a call (see above).
    #[inline(always)]
    #[allow(clippy::manual_rotate)]
    const fn rotl(x: u64, b: u32) -> u64 {
        (x << b) | (x >> (64 - b))
    }
    let mut v0 = k0 ^ 0x736f_6d65_7073_6575;
    let mut v1 = k1 ^ 0x646f_7261_6e64_6f6d ^ 0xee;
    let mut v2 = k0 ^ 0x6c79_6765_6e65_7261;
    let mut v3 = k1 ^ 0x7465_6462_7974_6573;
    macro_rules! round {
        () => {
            v0 = v0.wrapping_add(v1);
            v1 = rotl(v1, 13);
            v1 ^= v0;
            v0 = rotl(v0, 32);
            v2 = v2.wrapping_add(v3);
            v3 = rotl(v3, 16);
            v3 ^= v2;
            v0 = v0.wrapping_add(v3);
            v3 = rotl(v3, 21);
            v3 ^= v0;
            v2 = v2.wrapping_add(v1);
            v1 = rotl(v1, 17);
            v1 ^= v2;
            v2 = rotl(v2, 32);
        };
    }
    let length = msg.len() as u64;
    // A slice pattern, not `split_first_chunk` or `chunks_exact`: their checks became calls
    // per word in the dev profile; this is one load.
    while let [b0, b1, b2, b3, b4, b5, b6, b7, rest @ ..] = msg {
        let m = u64::from_le_bytes([*b0, *b1, *b2, *b3, *b4, *b5, *b6, *b7]);
        v3 ^= m;
        round!();
        round!();
        v0 ^= m;
        msg = rest;
    }
    let mut tail = [0u8; 8];
    tail[..msg.len()].copy_from_slice(msg);
    let b = length << 56 | u64::from_le_bytes(tail);
    v3 ^= b;
    round!();
    round!();
    v0 ^= b;
    v2 ^= 0xee;
    round!();
    round!();
    round!();
    round!();
    let h1 = v0 ^ v1 ^ v2 ^ v3;
    v1 ^= 0xdd;
    round!();
    round!();
    round!();
    round!();
    (h1, v0 ^ v1 ^ v2 ^ v3)
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
    fn siphash_matches_the_reference_crate_and_vectors() {
        use siphasher::sip128::{Hasher128, SipHasher24};
        // The reference code's first 128-bit vector: key 00..0f, empty message.
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let (h1, h2) = siphash24_128(k0, k1, b"");
        let mut out = h1.to_le_bytes().to_vec();
        out.extend(h2.to_le_bytes());
        assert_eq!(
            out,
            [
                0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55,
                0x02, 0x93
            ]
        );
        // Every length across several words, and keys with high bits set.
        let msg: Vec<u8> = (0..=255u8).cycle().take(600).collect();
        for (k0, k1) in [(k0, k1), (u64::MAX, 0x8000_0000_0000_0001), (0, 0)] {
            for len in 0..msg.len() {
                let expected = SipHasher24::new_with_keys(k0, k1).hash(&msg[..len]);
                assert_eq!(
                    siphash24_128(k0, k1, &msg[..len]),
                    (expected.h1, expected.h2),
                    "length {len}"
                );
                let mut streamed = SipHasher24::new_with_keys(k0, k1);
                std::hash::Hasher::write(&mut streamed, &msg[..len]);
                assert_eq!(streamed.finish128().h1, expected.h1);
            }
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
