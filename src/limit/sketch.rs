//! Fixed-size local estimators, so a node's memory does not grow with the number of keys
//! clients invent. Both over-estimate under collisions (never under), so a flood of
//! distinct keys can make limits stricter, never looser.
//!
//! Windows are aligned to the Unix epoch like the global windows, which pingora-limits'
//! `Rate` is not (its windows start at process start); the counting itself is
//! pingora-limits' count-min `Estimator`.

use super::algorithm::{self, Bucket, Span, Verdict};
use parking_lot::Mutex;
use pingora_limits::estimator::Estimator;
use std::sync::atomic::{AtomicU64, Ordering};

const HASHES: usize = 4;

/// Counts per key in the current and previous aligned windows.
pub struct WindowSketch {
    estimators: [Estimator; 2],
    /// The window the estimator at `current % 2` counts.
    current: AtomicU64,
    /// Whether the other estimator holds the window just before `current`.
    previous_valid: AtomicU64,
    roll: Mutex<()>,
}

impl WindowSketch {
    /// Windows are given to it by the limiter (`Limiter::window_at`), epoch or calendar.
    pub fn new(slots: usize) -> Self {
        WindowSketch {
            estimators: [Estimator::new(HASHES, slots), Estimator::new(HASHES, slots)],
            current: AtomicU64::new(0),
            previous_valid: AtomicU64::new(0),
            roll: Mutex::new(()),
        }
    }

    /// Moves to the window `span` if time has passed into a new one.
    fn roll(&self, span: Span) -> u64 {
        let window = span.id;
        let current = self.current.load(Ordering::Acquire);
        if window <= current {
            return current;
        }
        let _guard = self.roll.lock();
        let current = self.current.load(Ordering::Acquire);
        if window > current {
            // The estimator for the new window last counted `window - 2`: clear it. After a
            // gap of two windows or more, the previous window saw nothing either.
            self.estimators[(window % 2) as usize].reset();
            let contiguous = window == current + 1;
            if !contiguous {
                self.estimators[((window + 1) % 2) as usize].reset();
            }
            self.previous_valid
                .store(u64::from(contiguous), Ordering::Release);
            self.current.store(window, Ordering::Release);
        }
        window
    }

    /// Counts `cost` for `key` if the limit allows it; refused requests are not counted.
    pub fn check(
        &self,
        key: u64,
        cost: u64,
        limit: u64,
        now_ms: u64,
        span: Span,
        sliding: bool,
    ) -> Verdict {
        let window = self.roll(span);
        let current = &self.estimators[(window % 2) as usize];
        let after = current.incr(key, cost as isize).max(0) as u64;
        let before = after.saturating_sub(cost);
        let verdict = if sliding {
            let prev = if self.previous_valid.load(Ordering::Acquire) == 1 {
                self.estimators[((window + 1) % 2) as usize].get(key).max(0) as u64
            } else {
                0
            };
            algorithm::sliding_window_in(prev, before, cost, limit, now_ms, span)
        } else {
            algorithm::fixed_window_in(before, cost, limit, now_ms, span)
        };
        if !verdict.allowed {
            current.decr(key, cost as isize);
        }
        verdict
    }

    /// Takes back `cost` counted for `key` in `window`, if that is still one of the two
    /// windows kept.
    pub fn refund(&self, key: u64, cost: u64, window: u64) {
        let current = self.current.load(Ordering::Acquire);
        let kept = window == current
            || (window + 1 == current && self.previous_valid.load(Ordering::Acquire) == 1);
        if kept {
            self.estimators[(window % 2) as usize].decr(key, cost as isize);
        }
    }

    /// Counts `extra` more for `key` in `window` whatever the limit (a response cost more
    /// than its admission held), if that window is still kept.
    pub fn surcharge(&self, key: u64, extra: u64, window: u64) {
        let current = self.current.load(Ordering::Acquire);
        let kept = window == current
            || (window + 1 == current && self.previous_valid.load(Ordering::Acquire) == 1);
        if kept {
            self.estimators[(window % 2) as usize].incr(key, extra as isize);
        }
    }

    /// This node's counts for `key` in the window `span` and the one before.
    pub fn peek_both(&self, key: u64, span: Span) -> (u64, u64) {
        let window = self.roll(span);
        let prev = if self.previous_valid.load(Ordering::Acquire) == 1 {
            self.estimators[((window + 1) % 2) as usize].get(key).max(0) as u64
        } else {
            0
        };
        (
            prev,
            self.estimators[(window % 2) as usize].get(key).max(0) as u64,
        )
    }

    /// Takes `key`'s counts out (an admin reset). Keys sharing its counters lose as much,
    /// which can only make their limits more lenient for the rest of the window.
    pub fn forget(&self, key: u64, span: Span) {
        let (prev, cur) = self.peek_both(key, span);
        let window = self.roll(span);
        self.estimators[(window % 2) as usize].decr(key, cur as isize);
        if prev > 0 {
            self.estimators[((window + 1) % 2) as usize].decr(key, prev as isize);
        }
    }

    /// This node's count for `key` in the window `span` (without counting anything).
    pub fn peek(&self, key: u64, span: Span) -> u64 {
        let window = self.roll(span);
        self.estimators[(window % 2) as usize].get(key).max(0) as u64
    }
}

/// GCRA theoretical arrival times per key, in a count-min layout: each row keeps, per slot,
/// the latest arrival time of the keys hashed there; the estimate is the earliest over rows.
pub struct TatSketch {
    rows: Box<[Box<[AtomicU64]>]>,
    slots: usize,
}

impl TatSketch {
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        TatSketch {
            rows: (0..HASHES)
                .map(|_| (0..slots).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            slots,
        }
    }

    fn slot(&self, key: u64, row: usize) -> usize {
        // Double hashing from one 64-bit key hash (Kirsch–Mitzenmacher).
        let h1 = key as u32 as u64;
        let h2 = (key >> 32) | 1;
        (h1.wrapping_add((row as u64).wrapping_mul(h2)) % self.slots as u64) as usize
    }

    /// The estimated theoretical arrival time of `key` (0 for a full bucket).
    pub fn peek(&self, key: u64) -> u64 {
        (0..HASHES)
            .map(|row| self.rows[row][self.slot(key, row)].load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// Fills `key`'s bucket again (an admin reset); keys sharing its slots are refilled too.
    pub fn forget(&self, key: u64) {
        for row in 0..HASHES {
            self.rows[row][self.slot(key, row)].store(0, Ordering::Release);
        }
    }

    /// Gives back the `cost` tokens an admission took. Keys sharing its slots get them too,
    /// which can only make their limits more lenient by as much.
    pub fn refund(&self, key: u64, cost: u64, bucket: Bucket) {
        let back = cost.saturating_mul(bucket.interval_ns());
        for row in 0..HASHES {
            let cell = &self.rows[row][self.slot(key, row)];
            let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some(old.saturating_sub(back))
            });
        }
    }

    /// Takes `extra` more tokens whatever the bucket holds (a response cost more than its
    /// admission held): the bucket goes into debt, which refills before anything else.
    pub fn surcharge(&self, key: u64, extra: u64, bucket: Bucket, now_ns: u64) {
        let added = extra.saturating_mul(bucket.interval_ns());
        for row in 0..HASHES {
            let cell = &self.rows[row][self.slot(key, row)];
            let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some(old.max(now_ns).saturating_add(added))
            });
        }
    }

    pub fn check(&self, key: u64, cost: u64, bucket: Bucket, now_ns: u64) -> Verdict {
        let estimate = (0..HASHES)
            .map(|row| self.rows[row][self.slot(key, row)].load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        let (verdict, tat) = algorithm::gcra(estimate, cost, bucket, now_ns);
        if verdict.allowed {
            let added = tat - estimate.max(now_ns);
            for row in 0..HASHES {
                let cell = &self.rows[row][self.slot(key, row)];
                // Each row moves forward by what this key used, from wherever it stands.
                let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                    Some(old.max(now_ns).saturating_add(added))
                });
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(now: u64) -> Span {
        Span::epoch(now, 1_000)
    }

    #[test]
    fn window_sketch_counts_per_key_and_rolls_on_epoch_boundaries() {
        let s = WindowSketch::new(1024);
        for _ in 0..3 {
            assert!(s.check(1, 1, 3, 5_100, ep(5_100), false).allowed);
        }
        assert!(!s.check(1, 1, 3, 5_999, ep(5_999), false).allowed);
        assert!(
            s.check(2, 1, 3, 5_999, ep(5_999), false).allowed,
            "another key has its own count"
        );
        assert_eq!(s.peek(1, ep(5_999)), 3, "a refused request is not counted");
        assert!(
            s.check(1, 1, 3, 6_000, ep(6_000), false).allowed,
            "a new aligned window"
        );
    }

    #[test]
    fn window_sketch_sliding_uses_the_previous_window() {
        let s = WindowSketch::new(1024);
        for _ in 0..10 {
            assert!(s.check(7, 1, 10, 9_500, ep(9_500), true).allowed);
        }
        // 10% into the next window, 90% of the previous 10 still count.
        assert!(s.check(7, 1, 10, 10_100, ep(10_100), true).allowed);
        assert!(!s.check(7, 1, 10, 10_100, ep(10_100), true).allowed);
        // Two windows later nothing of it is left.
        assert!(s.check(7, 5, 10, 12_000, ep(12_000), true).allowed);
    }

    #[test]
    fn tat_sketch_follows_gcra() {
        let s = TatSketch::new(1024);
        let b = Bucket {
            count: 10,
            per_ns: 1_000_000_000,
            burst: 3,
        };
        let now = 1_000_000_000_000;
        for _ in 0..3 {
            assert!(s.check(42, 1, b, now).allowed);
        }
        assert!(!s.check(42, 1, b, now).allowed);
        assert!(s.check(43, 1, b, now).allowed);
        assert!(s.check(42, 1, b, now + 100_000_000).allowed);
    }

    #[test]
    fn collisions_only_make_limits_stricter() {
        // One slot per row: every key shares all counters.
        let s = WindowSketch::new(1);
        assert!(s.check(1, 2, 3, 0, ep(0), false).allowed);
        assert!(!s.check(2, 2, 3, 0, ep(0), false).allowed);
    }
}
