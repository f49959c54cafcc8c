//! The limit math, as pure functions of counts and an injected clock (unix milliseconds or
//! nanoseconds). Local estimators, Redis leases and the Lua scripts all follow these
//! definitions; the state types here are the exact reference the tests pin them to.

use std::collections::VecDeque;

/// The outcome of one check, with what the response headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The quota (`q`): requests per window, bucket size, or requests in flight.
    pub limit: u64,
    /// Quota left after this request (`r`).
    pub remaining: u64,
    /// Milliseconds until the quota is whole again (`t` for allowed requests).
    pub reset_ms: u64,
    /// Milliseconds until this request could pass; 0 when allowed.
    pub retry_after_ms: u64,
}

/// The window a moment falls in, aligned to the Unix epoch so every node agrees.
pub fn window_of(now_ms: u64, window_ms: u64) -> u64 {
    now_ms / window_ms.max(1)
}

/// One period of a window limit: its id and its bounds in Unix ms. Consecutive periods
/// have consecutive ids (the lease and sketch code relies on `id - 1` being the previous
/// period), whether they are epoch windows of a fixed length or calendar periods of
/// varying length (see `calendar.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub id: u64,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Span {
    /// The epoch-aligned window of `window_ms` holding `now_ms`.
    #[inline]
    pub fn epoch(now_ms: u64, window_ms: u64) -> Span {
        let w = window_ms.max(1);
        let id = now_ms / w;
        let start_ms = id * w;
        Span {
            id,
            start_ms,
            end_ms: start_ms.saturating_add(w),
        }
    }

    #[inline]
    pub fn len_ms(&self) -> u64 {
        self.end_ms.saturating_sub(self.start_ms).max(1)
    }

    /// Milliseconds since the period began, within `[0, len)`.
    #[inline]
    pub fn elapsed_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.start_ms).min(self.len_ms() - 1)
    }

    /// Milliseconds until the next period, within `[1, len]`.
    #[inline]
    pub fn left_ms(&self, now_ms: u64) -> u64 {
        self.len_ms() - self.elapsed_ms(now_ms)
    }
}

/// Fixed window: at most `limit` per aligned window. `used` is what the window already
/// admitted; refused requests are not counted.
pub fn fixed_window(used: u64, cost: u64, limit: u64, now_ms: u64, window_ms: u64) -> Verdict {
    fixed_window_in(used, cost, limit, now_ms, Span::epoch(now_ms, window_ms))
}

/// [`fixed_window`] in the period `span`, which holds `now_ms`.
#[inline]
pub fn fixed_window_in(used: u64, cost: u64, limit: u64, now_ms: u64, span: Span) -> Verdict {
    let reset_ms = span.left_ms(now_ms);
    let allowed = used.saturating_add(cost) <= limit;
    let after = if allowed { used + cost } else { used };
    Verdict {
        allowed,
        limit,
        remaining: limit.saturating_sub(after),
        reset_ms,
        retry_after_ms: if allowed { 0 } else { reset_ms },
    }
}

/// Sliding window counter (Cloudflare's): the previous window's count weighted by the part
/// of it still inside the sliding window, plus the current window's count:
/// `estimate = prev × (window − elapsed) / window + cur`. Admits when
/// `estimate + cost ≤ limit`, compared in exact integer arithmetic.
///
/// It assumes the previous window's requests were spread evenly; the error is bounded by
/// how uneven they were, and it never admits more than `2 × limit` in any span of one
/// window (the fixed window allows that at every boundary).
pub fn sliding_window(
    prev: u64,
    cur: u64,
    cost: u64,
    limit: u64,
    now_ms: u64,
    window_ms: u64,
) -> Verdict {
    sliding_window_in(
        prev,
        cur,
        cost,
        limit,
        now_ms,
        Span::epoch(now_ms, window_ms),
    )
}

/// [`sliding_window`] in the period `span`, which holds `now_ms`. Calendar periods differ
/// in length (a month after February): the previous period is weighted by the part of
/// the current one still to come, so it has slid out exactly when the current one ends.
#[inline]
pub fn sliding_window_in(
    prev: u64,
    cur: u64,
    cost: u64,
    limit: u64,
    now_ms: u64,
    span: Span,
) -> Verdict {
    // `prev × (w − e) / w + cur + cost ≤ limit` holds exactly when it holds with the
    // weighted part rounded up, for whole `cur + cost` and `limit`: one 64-bit division.
    let elapsed = span.elapsed_ms(now_ms);
    let weighted = weighted_previous_in(prev, now_ms, span);
    let allowed = cur.saturating_add(cost).saturating_add(weighted) <= limit;
    let after = if allowed { cur + cost } else { cur };
    let remaining = limit.saturating_sub(after).saturating_sub(weighted);
    let reset_ms = span.left_ms(now_ms);
    let retry_after_ms = if allowed {
        0
    } else {
        sliding_retry_after(prev, cur, cost, limit, elapsed, span.len_ms())
    };
    Verdict {
        allowed,
        limit,
        remaining,
        reset_ms,
        retry_after_ms,
    }
}

/// The previous window's count weighted by the part of it still inside the sliding window
/// at `now_ms`, rounded up: `⌈prev × (window − elapsed) / window⌉`.
#[inline]
pub fn weighted_previous(prev: u64, now_ms: u64, window_ms: u64) -> u64 {
    weighted_previous_in(prev, now_ms, Span::epoch(now_ms, window_ms))
}

/// [`weighted_previous`] in the period `span`.
#[inline]
pub fn weighted_previous_in(prev: u64, now_ms: u64, span: Span) -> u64 {
    let w = span.len_ms();
    let inside = span.left_ms(now_ms);
    // 64-bit arithmetic unless the product could overflow (it never does for windows
    // under a month and counts under a million): 128-bit division is slow.
    match prev.checked_mul(inside) {
        Some(product) => product.div_ceil(w),
        None => (prev as u128 * inside as u128).div_ceil(w as u128) as u64,
    }
}

/// When a refused request would fit, assuming no other request arrives meanwhile.
fn sliding_retry_after(prev: u64, cur: u64, cost: u64, limit: u64, elapsed: u64, w: u64) -> u64 {
    if cost > limit {
        return 2 * w;
    }
    if cur + cost <= limit && prev > 0 {
        // Still in this window, once enough of the previous window has slid out:
        // prev × (w − e) ≤ (limit − cost − cur) × w  ⇒  e ≥ w − (limit − cost − cur) × w / prev
        let room = (limit - cost - cur) as u128 * w as u128;
        let keep = room / prev as u128; // floor: the weighted part must shrink to this
        let target = (w as u128).saturating_sub(keep) as u64;
        return target.saturating_sub(elapsed).max(1);
    }
    // Next window, where this window's count becomes the weighted previous one:
    // cur × (w − e') ≤ (limit − cost) × w  ⇒  e' ≥ w − (limit − cost) × w / cur
    let keep = ((limit - cost) as u128 * w as u128) / cur.max(1) as u128;
    let target = (w as u128).saturating_sub(keep) as u64;
    (w - elapsed) + target
}

/// The exact sliding log: timestamps of admitted requests inside the window.
#[derive(Debug, Clone, Default)]
pub struct SlidingLog {
    admitted: VecDeque<u64>,
}

impl SlidingLog {
    pub fn check(&mut self, cost: u64, limit: u64, now_ms: u64, window_ms: u64) -> Verdict {
        self.prune(now_ms, window_ms);
        let used = self.admitted.len() as u64;
        let allowed = used + cost <= limit;
        if allowed {
            self.admitted
                .extend(std::iter::repeat_n(now_ms, cost as usize));
        }
        let after = self.admitted.len() as u64;
        // The quota is whole again when the newest entry leaves the window.
        let reset_ms = self.admitted.back().map_or(0, |&t| t + window_ms - now_ms);
        let retry_after_ms = if allowed {
            0
        } else if cost > limit {
            window_ms
        } else {
            // The (used + cost − limit)-th oldest entry must leave first.
            let index = (used + cost - limit - 1) as usize;
            self.admitted
                .get(index)
                .map_or(window_ms, |&t| t + window_ms - now_ms)
        };
        Verdict {
            allowed,
            limit,
            remaining: limit.saturating_sub(after),
            reset_ms,
            retry_after_ms,
        }
    }

    /// Takes back the newest `cost` entries (an admission handed back).
    pub fn refund(&mut self, cost: u64) {
        for _ in 0..cost {
            self.admitted.pop_back();
        }
    }

    /// Entries still inside the window at `now_ms`.
    pub fn len_at(&self, now_ms: u64, window_ms: u64) -> u64 {
        self.admitted
            .iter()
            .filter(|&&t| t + window_ms > now_ms)
            .count() as u64
    }

    /// Drops entries that left the window; returns whether any are left.
    pub fn prune(&mut self, now_ms: u64, window_ms: u64) -> bool {
        // An entry leaves the window once a whole window has passed since it.
        while self
            .admitted
            .front()
            .is_some_and(|&t| t + window_ms <= now_ms)
        {
            self.admitted.pop_front();
        }
        !self.admitted.is_empty()
    }
}

/// Bucket parameters: `burst` requests at once, refilled at `count` per `per_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub count: u64,
    pub per_ns: u64,
    pub burst: u64,
}

impl Bucket {
    /// Nanoseconds between two refills of one token (GCRA's emission interval `T`).
    pub fn interval_ns(&self) -> u64 {
        (self.per_ns / self.count.max(1)).max(1)
    }

    /// GCRA's tolerance `τ`: the whole bucket, expressed as time.
    pub fn tolerance_ns(&self) -> u64 {
        self.interval_ns().saturating_mul(self.burst)
    }

    /// One node's part of the bucket among `nodes`: its share of the rate and of the burst,
    /// rounded up (at least one token).
    pub fn share(&self, nodes: u64) -> Bucket {
        let part = |n: u64| n.div_ceil(nodes.max(1)).max(1);
        Bucket {
            count: part(self.count),
            per_ns: self.per_ns,
            burst: part(self.burst),
        }
    }
}

/// GCRA (generic cell rate algorithm): the theoretical arrival time `tat` of the next
/// request moves forward by `T` per admitted unit; a request is admitted when that would
/// keep `tat − now ≤ τ`. Returns the verdict and the new `tat`.
pub fn gcra(tat_ns: u64, cost: u64, bucket: Bucket, now_ns: u64) -> (Verdict, u64) {
    let t = bucket.interval_ns();
    let tau = bucket.tolerance_ns();
    let base = tat_ns.max(now_ns);
    let next = base.saturating_add(cost.saturating_mul(t));
    let allowed = next - now_ns <= tau;
    let tat = if allowed { next } else { base };
    let held = tat - now_ns; // time until the bucket is full again
    let remaining = (tau - held.min(tau)) / t;
    let retry_after_ns = if allowed { 0 } else { next - now_ns - tau };
    let verdict = Verdict {
        allowed,
        limit: bucket.burst,
        remaining,
        reset_ms: held.div_ceil(1_000_000),
        retry_after_ms: retry_after_ns.div_ceil(1_000_000),
    };
    (verdict, tat)
}

/// The token bucket, kept as tokens and a refill time: the textbook form. It makes the same
/// decisions as [`gcra`] (the tests check this), which is why both share one Redis script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens × 10⁹, so refills of a fraction of a token are kept exactly.
    nano_tokens: u128,
    last_ns: u64,
}

const NANO: u128 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket.
    pub fn full(bucket: Bucket, now_ns: u64) -> Self {
        TokenBucket {
            nano_tokens: bucket.burst as u128 * NANO,
            last_ns: now_ns,
        }
    }

    pub fn check(&mut self, cost: u64, bucket: Bucket, now_ns: u64) -> Verdict {
        let elapsed = now_ns.saturating_sub(self.last_ns) as u128;
        let capacity = bucket.burst as u128 * NANO;
        // Refill in whole emission intervals, as GCRA does, so both agree exactly.
        let t = bucket.interval_ns() as u128;
        let intervals = elapsed / t;
        self.nano_tokens = (self.nano_tokens + intervals * NANO).min(capacity);
        self.last_ns += (intervals * t) as u64;
        if self.nano_tokens == capacity {
            self.last_ns = now_ns;
        }
        let need = cost as u128 * NANO;
        let allowed = self.nano_tokens >= need;
        if allowed {
            self.nano_tokens -= need;
        }
        let tokens = (self.nano_tokens / NANO) as u64;
        let missing_full = capacity.saturating_sub(self.nano_tokens) / NANO;
        let since_last = (now_ns - self.last_ns) as u128;
        let reset_ns = (missing_full * t).saturating_sub(since_last);
        let retry_after_ns = if allowed {
            0
        } else {
            let short = (need - self.nano_tokens).div_ceil(NANO);
            (short * t).saturating_sub(since_last)
        };
        Verdict {
            allowed,
            limit: bucket.burst,
            remaining: tokens,
            reset_ms: (reset_ns as u64).div_ceil(1_000_000),
            retry_after_ms: (retry_after_ns as u64).div_ceil(1_000_000),
        }
    }
}

/// A concurrency limit: `in_flight` includes this request.
pub fn concurrency(in_flight: u64, limit: u64) -> Verdict {
    let allowed = in_flight <= limit;
    Verdict {
        allowed,
        limit,
        remaining: limit.saturating_sub(in_flight),
        reset_ms: 0,
        retry_after_ms: if allowed { 0 } else { 1_000 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000;
    const MS_NS: u64 = 1_000_000;

    /// The definition in exact 128-bit arithmetic, scaled by the window.
    fn sliding_reference(
        prev: u64,
        cur: u64,
        cost: u64,
        limit: u64,
        now: u64,
        w: u64,
    ) -> (bool, u64) {
        let (w, e) = (w as u128, (now % w) as u128);
        let weighted = prev as u128 * (w - e);
        let allowed = weighted + (cur + cost) as u128 * w <= limit as u128 * w;
        let after = if allowed { cur + cost } else { cur } as u128;
        let remaining = (limit as u128 * w).saturating_sub(weighted + after * w) / w;
        (allowed, remaining as u64)
    }

    #[test]
    fn sliding_window_decides_as_its_exact_definition() {
        for w in [1, 7, 10, 1_000, 60_000] {
            for now in [0, 1, w / 3, w / 2, w - 1, 5 * w + w / 4] {
                for prev in [0, 1, 3, 9, 10, 11, 1_000] {
                    for cur in [0, 1, 5, 9, 10] {
                        for cost in [1, 2, 10] {
                            let v = sliding_window(prev, cur, cost, 10, now, w);
                            assert_eq!(
                                (v.allowed, v.remaining),
                                sliding_reference(prev, cur, cost, 10, now, w),
                                "prev {prev} cur {cur} cost {cost} now {now} window {w}"
                            );
                        }
                    }
                }
            }
        }
        // Products past 64 bits take the 128-bit path.
        let v = sliding_window(u64::MAX / 2, 0, 1, u64::MAX, 1, 1_000);
        assert_eq!(
            (v.allowed, v.remaining),
            sliding_reference(u64::MAX / 2, 0, 1, u64::MAX, 1, 1_000)
        );
    }

    /// Runs a fixed-window limiter with exact state over a sequence of arrival times.
    fn admitted_fixed(times: &[u64], limit: u64, window: u64) -> Vec<bool> {
        let mut window_id = u64::MAX;
        let mut used = 0;
        times
            .iter()
            .map(|&now| {
                if window_of(now, window) != window_id {
                    window_id = window_of(now, window);
                    used = 0;
                }
                let v = fixed_window(used, 1, limit, now, window);
                if v.allowed {
                    used += 1;
                }
                v.allowed
            })
            .collect()
    }

    #[test]
    fn fixed_window_admits_exactly_the_limit_per_aligned_window() {
        let times: Vec<u64> = (0..10).map(|i| 10_000 + i * 10).collect();
        let admitted = admitted_fixed(&times, 3, SEC);
        assert_eq!(admitted.iter().filter(|a| **a).count(), 3);
        assert_eq!(&admitted[..4], &[true, true, true, false]);
        // The next aligned window starts at 11_000 whatever the first request's time.
        let v = fixed_window(3, 1, 3, 10_400, SEC);
        assert_eq!((v.allowed, v.retry_after_ms, v.reset_ms), (false, 600, 600));
        assert!(fixed_window(0, 1, 3, 11_000, SEC).allowed);
    }

    #[test]
    fn fixed_window_allows_a_double_burst_at_the_boundary() {
        // 3 at the end of one window and 3 at the start of the next: 6 within 2 ms.
        let times = [10_998, 10_998, 10_999, 11_000, 11_000, 11_001];
        assert!(admitted_fixed(&times, 3, SEC).iter().all(|a| *a));
    }

    #[test]
    fn fixed_window_cost_counts_units() {
        let v = fixed_window(2, 2, 3, 0, SEC);
        assert!(!v.allowed);
        let v = fixed_window(1, 2, 3, 0, SEC);
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        // Previous window admitted 10 (the limit); 25% into the current one, 75% of it
        // still counts: 7.5, so 2 more fit and the third does not.
        let limit = 10;
        let now = 5 * SEC + 250;
        assert!(sliding_window(10, 0, 1, limit, now, SEC).allowed);
        assert!(sliding_window(10, 1, 1, limit, now, SEC).allowed);
        let v = sliding_window(10, 2, 1, limit, now, SEC);
        assert!(!v.allowed);
        // It fits once the weighted part is ≤ 7: at 30% (7.0) of the window.
        assert_eq!(v.retry_after_ms, 50);
        assert!(sliding_window(10, 2, 1, limit, 5 * SEC + 300, SEC).allowed);
        assert!(!sliding_window(10, 2, 1, limit, 5 * SEC + 299, SEC).allowed);
    }

    #[test]
    fn sliding_window_stops_the_double_burst() {
        // Simulate exact per-window counts around a boundary with a burst on each side.
        let limit = 10;
        let (mut prev, mut cur, mut window_id) = (0u64, 0u64, 0u64);
        let mut admitted_near_boundary = 0;
        for now in (10 * SEC - 50..10 * SEC + 50).flat_map(|t| [t, t]) {
            let w = window_of(now, SEC);
            if w != window_id {
                prev = if w == window_id + 1 { cur } else { 0 };
                cur = 0;
                window_id = w;
            }
            let v = sliding_window(prev, cur, 1, limit, now, SEC);
            if v.allowed {
                cur += 1;
                admitted_near_boundary += 1;
            }
        }
        // Within 100 ms around the boundary the sliding estimate admits the limit, plus at
        // most the 5% that slid out of the previous window in the 50 ms after it.
        assert!(
            admitted_near_boundary <= limit + 1,
            "{admitted_near_boundary}"
        );
        assert!(admitted_near_boundary >= limit);
    }

    #[test]
    fn calendar_spans_weigh_the_previous_period_by_the_current_one() {
        // February (28 days) after a January that admitted 100 of 100: half way through
        // February half of January still counts, whatever January's own length.
        const DAY: u64 = 86_400_000;
        let feb = Span {
            id: 685,
            start_ms: 1_000 * DAY,
            end_ms: 1_028 * DAY,
        };
        let mid = feb.start_ms + 14 * DAY;
        assert_eq!(weighted_previous_in(100, mid, feb), 50);
        assert!(sliding_window_in(100, 49, 1, 100, mid, feb).allowed);
        assert!(!sliding_window_in(100, 50, 1, 100, mid, feb).allowed);
        // The reset counts to the real end of the period.
        let v = fixed_window_in(100, 1, 100, mid, feb);
        assert_eq!(
            (v.allowed, v.retry_after_ms, v.reset_ms),
            (false, 14 * DAY, 14 * DAY)
        );
        assert_eq!(fixed_window_in(0, 1, 100, feb.end_ms - 1, feb).reset_ms, 1);
        // Epoch spans are what the epoch functions use.
        assert_eq!(
            fixed_window(3, 1, 3, 10_400, SEC),
            fixed_window_in(3, 1, 3, 10_400, Span::epoch(10_400, SEC))
        );
        assert_eq!(Span::epoch(10_400, SEC).left_ms(10_400), 600);
    }

    #[test]
    fn sliding_window_next_window_retry() {
        // The current window is full: the request fits in the next window once enough of
        // this window has slid out.
        let v = sliding_window(0, 10, 1, 10, 7 * SEC + 900, SEC);
        assert!(!v.allowed);
        // next window: 10 × (1000 − e)/1000 ≤ 9 ⇒ e ≥ 100 ⇒ 100 ms left here + 100 ms.
        assert_eq!(v.retry_after_ms, 200);
    }

    #[test]
    fn sliding_log_is_exact() {
        let mut log = SlidingLog::default();
        let window = SEC;
        for t in [0, 100, 200] {
            assert!(log.check(1, 3, t, window).allowed);
        }
        let v = log.check(1, 3, 999, window);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 1); // the entry at 0 leaves at 1000
        assert!(log.check(1, 3, 1000, window).allowed);
        assert!(!log.check(1, 3, 1099, window).allowed);
        let v = log.check(2, 3, 1150, window);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 50); // one more must leave: 200, at 1200
        assert!(log.check(2, 3, 1200, window).allowed);
    }

    fn bucket(count: u64, per_ms: u64, burst: u64) -> Bucket {
        Bucket {
            count,
            per_ns: per_ms * MS_NS,
            burst,
        }
    }

    #[test]
    fn gcra_admits_the_burst_then_the_rate() {
        let b = bucket(10, SEC, 5); // 10/s, burst 5
        let now = 1_000 * SEC * MS_NS;
        let mut tat = 0;
        for i in 0..5 {
            let (v, t) = gcra(tat, 1, b, now);
            assert!(v.allowed, "burst request {i}");
            assert_eq!(v.remaining, 4 - i);
            tat = t;
        }
        let (v, _) = gcra(tat, 1, b, now);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 100);
        // One token per 100 ms afterwards.
        let (v, t) = gcra(tat, 1, b, now + 100 * MS_NS);
        assert!(v.allowed);
        let (v, _) = gcra(t, 1, b, now + 150 * MS_NS);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 50);
    }

    #[test]
    fn gcra_cost_and_reset() {
        let b = bucket(10, SEC, 5);
        let (v, tat) = gcra(0, 3, b, SEC * MS_NS);
        assert!(v.allowed);
        assert_eq!(v.remaining, 2);
        assert_eq!(v.reset_ms, 300);
        let (v, _) = gcra(tat, 3, b, SEC * MS_NS);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 100);
        let (v, _) = gcra(0, 6, b, SEC * MS_NS);
        assert!(!v.allowed, "more than the burst never fits");
    }

    #[test]
    fn token_bucket_refills_and_caps_at_burst() {
        let b = bucket(10, SEC, 5);
        let start = 50 * SEC * MS_NS;
        let mut tb = TokenBucket::full(b, start);
        for _ in 0..5 {
            assert!(tb.check(1, b, start).allowed);
        }
        let v = tb.check(1, b, start);
        assert_eq!((v.allowed, v.retry_after_ms), (false, 100));
        assert!(tb.check(1, b, start + 100 * MS_NS).allowed);
        // A long pause refills to the burst, not beyond.
        let later = start + 10 * SEC * MS_NS;
        let mut admitted = 0;
        while tb.check(1, b, later).allowed {
            admitted += 1;
        }
        assert_eq!(admitted, 5);
    }

    #[test]
    fn token_bucket_and_gcra_make_the_same_decisions() {
        let b = bucket(7, 3 * SEC, 4); // uneven: 7 per 3 s
        let mut tb = TokenBucket::full(b, 0);
        let mut tat = 0;
        let mut seed = 0x2545F4914F6CDD1Du64;
        let mut now = 0;
        for _ in 0..5_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            now += seed % (400 * MS_NS);
            let cost = 1 + seed % 3;
            let a = tb.check(cost, b, now);
            let (g, t) = gcra(tat, cost, b, now);
            tat = t;
            assert_eq!(a.allowed, g.allowed, "at {now} cost {cost}");
            assert_eq!(a.remaining, g.remaining, "at {now}");
        }
    }

    #[test]
    fn concurrency_counts_in_flight() {
        assert!(concurrency(3, 3).allowed);
        assert!(!concurrency(4, 3).allowed);
    }
}
