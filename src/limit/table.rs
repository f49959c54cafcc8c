//! A bounded, sharded map from key hashes to per-key state. The request path takes one
//! shard lock for a few hundred nanoseconds at most; background tasks walk the shards one
//! at a time. When the table is full, new keys are refused (the caller falls back to the
//! fixed-size estimators) instead of memory growing with every key a client invents.

use parking_lot::Mutex;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const SHARDS: usize = 64;

/// `u64` keys are already well-mixed hashes; hashing them again would only cost time.
#[derive(Default, Clone, Copy)]
pub struct PassThrough;

impl std::hash::BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;
    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

pub struct PassThroughHasher(u64);

impl std::hash::Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Shard<V> = Mutex<HashMap<u64, V, PassThrough>>;

pub struct KeyTable<V> {
    shards: Box<[Shard<V>]>,
    len: AtomicUsize,
    /// Adjustable, so that a reload that changes `max_keys` keeps the table's keys.
    capacity: AtomicUsize,
}

impl<V> KeyTable<V> {
    pub fn new(capacity: usize) -> Self {
        KeyTable {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            len: AtomicUsize::new(0),
            capacity: AtomicUsize::new(capacity),
        }
    }

    fn shard(&self, hash: u64) -> &Shard<V> {
        // The low bits pick the bucket inside a shard's map; use high bits for the shard.
        &self.shards[(hash >> 58) as usize % SHARDS]
    }

    /// Runs `f` on the entry for `hash`, creating it with `make` if there is room.
    /// Returns `None` when the key is new and the table is full.
    #[inline]
    pub fn with<R>(
        &self,
        hash: u64,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> Option<R> {
        let mut shard = self.shard(hash).lock();
        // One call of `f`, so that it is inlined here: the decision is most of it.
        let value = match shard.entry(hash) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                if self.len.load(Ordering::Relaxed) >= self.capacity.load(Ordering::Relaxed) {
                    return None;
                }
                self.len.fetch_add(1, Ordering::Relaxed);
                entry.insert(make())
            }
        };
        Some(f(value))
    }

    /// Runs `f` on an existing entry.
    #[inline]
    pub fn get<R>(&self, hash: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        // An empty table (a local policy's lease table, always) needs no shard lock.
        if self.is_empty() {
            return None;
        }
        self.shard(hash).lock().get_mut(&hash).map(f)
    }

    /// Visits every entry shard by shard; entries for which `keep` returns false are removed.
    pub fn retain(&self, mut keep: impl FnMut(u64, &mut V) -> bool) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let before = shard.len();
            shard.retain(|k, v| keep(*k, v));
            let removed = before - shard.len();
            if removed > 0 {
                self.len.fetch_sub(removed, Ordering::Relaxed);
            }
        }
    }

    /// Visits every entry, one shard lock at a time.
    pub fn for_each(&self, mut f: impl FnMut(u64, &mut V)) {
        for shard in self.shards.iter() {
            for (k, v) in shard.lock().iter_mut() {
                f(*k, v);
            }
        }
    }

    /// Visits the entries of shard `index` (of [`SHARDS`]).
    pub fn for_each_in_shard(&self, index: usize, mut f: impl FnMut(u64, &mut V)) {
        if let Some(shard) = self.shards.get(index) {
            for (k, v) in shard.lock().iter_mut() {
                f(*k, v);
            }
        }
    }

    /// Removes one entry.
    pub fn remove(&self, hash: u64) -> Option<V> {
        let removed = self.shard(hash).lock().remove(&hash);
        if removed.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Room for `capacity` keys from now on; keys already in stay.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_retainable() {
        let t: KeyTable<u32> = KeyTable::new(3);
        for k in 0..3u64 {
            assert_eq!(
                t.with(
                    k << 60 | k,
                    || 0,
                    |v| {
                        *v += 1;
                        *v
                    }
                ),
                Some(1)
            );
        }
        assert_eq!(t.with(99, || 0, |v| *v), None, "full");
        assert_eq!(t.with(0, || 0, |v| *v), Some(1), "existing keys still work");
        t.retain(|k, _| k != 0);
        assert_eq!(t.len(), 2);
        assert_eq!(t.with(99, || 7, |v| *v), Some(7));
        assert_eq!(t.remove(99), Some(7));
        assert_eq!(t.len(), 2);
    }
}
