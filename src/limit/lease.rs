//! Quota leases: how a node decides fleet-wide limits without a Redis round trip per
//! request.
//!
//! Every unit a node admits is backed by quota it reserved in Redis beforehand (a lease),
//! except for a provisional allowance before its first sync for a key in a window. The
//! sync task refills a lease when it runs low against the key's recent demand, taking this
//! node's share of what is left (`remaining / live nodes`), and reserves the next window's
//! quota shortly before it starts. Redis only grants quota that fits under the limit, so
//! nodes can never all spend the same remainder.
//!
//! A provisional admission, and a refusal while the fleet still has quota, ask for a sync
//! at once (`urgent`), so a new key's debt reaches Redis within a round trip rather than a
//! whole sync interval: that is the only window in which the fleet can overshoot. The
//! fleet under-admits by at most what nodes hold unused when a window ends.

use super::algorithm::{self, Verdict};

/// How many syncs' worth of recent demand a lease aims to hold.
const LEASE_SYNCS: f64 = 2.0;

/// Syncs without any demand after which an entry with nothing pending is dropped.
pub const IDLE_SYNCS: u32 = 40;

/// Syncs after which tokens held for a bucket go back (they would be stale by then).
const BUCKET_HOLD_SYNCS: u32 = 2;

/// The provisional allowance per node: its fair share of the limit, so a lone node (or a
/// client pinned to one) is never refused while quota remains, and a new key's burst
/// spread over the fleet stays near the limit.
pub fn provisional_cap(limit: u64, nodes: u64) -> u64 {
    limit.div_ceil(nodes.max(1)).max(1)
}

/// Quota prefetched for the next window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetch {
    pub window: u64,
    pub granted: u64,
    pub total: u64,
    pub prev: u64,
}

#[derive(Debug, Clone)]
pub struct Lease {
    /// The key's text, used in Redis key names.
    pub key: std::sync::Arc<str>,
    /// The window these numbers belong to (windows only).
    pub window: u64,
    /// Units this node may admit in `window` (windows) or tokens taken (buckets): what
    /// Redis granted plus what it admitted provisionally.
    pub granted: u64,
    /// Units admitted in `window` (windows) or tokens spent (buckets).
    pub used: u64,
    /// Units admitted provisionally, not yet counted in Redis.
    pub debt: u64,
    /// Corrections for windows that have ended: (window, units), positive for debt that
    /// was not flushed in time, negative for reserved quota that went unused (sliding
    /// windows return it, since the next window weighs this one's count).
    pub stale_debt: Vec<(u64, i64)>,
    pub provisional: u64,
    /// Whether a sync has answered for `window` (buckets: ever).
    pub synced: bool,
    /// Redis refused quota: the window (or bucket) is spent fleet-wide.
    pub exhausted: bool,
    /// Windows: Redis count for `window`, reservations included. Buckets: tokens left.
    pub known_total: u64,
    /// Windows: Redis count for the window before `window`. Buckets: ms until one token.
    pub known_prev: u64,
    pub next: Option<Prefetch>,
    /// Units asked for since the last sync, admitted or not.
    pub demand: u64,
    /// Demand per sync, smoothed.
    pub rate: f64,
    pub idle_syncs: u32,
    /// Syncs since the held bucket tokens were granted.
    pub held_syncs: u32,
    /// This key needs a sync before the next scheduled one.
    pub urgent: bool,
}

impl Lease {
    pub fn new(key: std::sync::Arc<str>, window: u64) -> Self {
        Lease {
            key,
            window,
            granted: 0,
            used: 0,
            debt: 0,
            stale_debt: Vec::new(),
            provisional: 0,
            synced: false,
            exhausted: false,
            known_total: 0,
            known_prev: 0,
            next: None,
            demand: 0,
            rate: 0.0,
            idle_syncs: 0,
            held_syncs: 0,
            urgent: false,
        }
    }

    fn held(&self) -> u64 {
        self.granted.saturating_sub(self.used)
    }

    /// Moves the lease into `window`, carrying unflushed debt and any prefetched quota.
    pub fn roll(&mut self, window: u64, sliding: bool) {
        if window <= self.window {
            return;
        }
        let unused = if sliding { self.held() } else { 0 };
        let correction = self.debt as i64 - unused as i64;
        if correction != 0 {
            self.stale_debt.push((self.window, correction));
        }
        let contiguous = window == self.window + 1;
        let prev = if contiguous {
            self.known_total.max(self.used)
        } else {
            0
        };
        match self.next.take().filter(|p| p.window == window) {
            Some(p) => {
                self.granted = p.granted;
                self.known_total = p.total;
                self.known_prev = p.prev;
                self.synced = true;
            }
            None => {
                self.granted = 0;
                self.known_total = 0;
                self.known_prev = prev;
                self.synced = false;
                self.exhausted = false;
            }
        }
        self.exhausted = false;
        self.window = window;
        self.used = 0;
        self.debt = 0;
        self.provisional = 0;
    }

    /// The limit left in this window once the previous one's weighted count is taken off.
    fn effective_limit(&self, limit: u64, now_ms: u64, window_ms: u64, sliding: bool) -> u64 {
        if !sliding {
            return limit;
        }
        let w = window_ms.max(1) as u128;
        let remaining_part = w - (now_ms % window_ms.max(1)) as u128;
        let weighted = (self.known_prev as u128 * remaining_part).div_ceil(w) as u64;
        limit.saturating_sub(weighted)
    }

    /// Decides one request against a window limit.
    #[allow(clippy::too_many_arguments)]
    pub fn admit_window(
        &mut self,
        cost: u64,
        limit: u64,
        now_ms: u64,
        window_ms: u64,
        sliding: bool,
        nodes: u64,
        sync_ms: u64,
    ) -> Verdict {
        self.roll(algorithm::window_of(now_ms, window_ms), sliding);
        self.demand += cost;
        let allowed = if self.used + cost <= self.granted {
            true
        } else if !self.synced && self.provisional + cost <= provisional_cap(limit, nodes) {
            self.urgent |= self.provisional == 0;
            self.provisional += cost;
            self.debt += cost;
            // Quota this node granted itself; the debt makes Redis count it.
            self.granted += cost;
            true
        } else {
            self.urgent |= !self.exhausted;
            false
        };
        if allowed {
            self.used += cost;
        }
        let effective = self.effective_limit(limit, now_ms, window_ms, sliding);
        let remaining = if self.synced {
            effective.saturating_sub(self.known_total) + self.held()
        } else {
            effective.saturating_sub(self.used)
        };
        let reset_ms = window_ms - now_ms % window_ms.max(1);
        let retry_after_ms = if allowed {
            0
        } else if self.exhausted || !self.synced {
            let fleet = if sliding {
                algorithm::sliding_window(
                    self.known_prev,
                    self.known_total,
                    cost,
                    limit,
                    now_ms,
                    window_ms,
                )
            } else {
                algorithm::fixed_window(self.known_total, cost, limit, now_ms, window_ms)
            };
            if fleet.allowed {
                sync_ms
            } else {
                fleet.retry_after_ms
            }
        } else {
            // The fleet still has quota; this node's next refill is one sync away.
            sync_ms
        };
        Verdict {
            allowed,
            limit,
            remaining: remaining.min(limit),
            reset_ms,
            retry_after_ms,
        }
    }

    /// Gives back quota reserved for `window` and not spent (the node is leaving); the
    /// next sync sends it with any debt, and asks for nothing more.
    pub fn release(&mut self, window: u64) {
        if self.window != window {
            return;
        }
        let correction = self.debt as i64 - self.held() as i64;
        if correction != 0 {
            self.stale_debt.push((self.window, correction));
        }
        if let Some(next) = self.next.take().filter(|p| p.granted > 0) {
            self.stale_debt.push((next.window, -(next.granted as i64)));
        }
        self.debt = 0;
        self.granted = self.used;
        self.exhausted = true;
        self.rate = 0.0;
    }

    /// Decides one request with no Redis: this node's count for the window against its
    /// share of the limit. What it admits becomes debt, flushed when Redis is back, so the
    /// fleet's count for the window stays whole.
    #[allow(clippy::too_many_arguments)]
    pub fn admit_alone(
        &mut self,
        cost: u64,
        share: u64,
        nodes: u64,
        now_ms: u64,
        window_ms: u64,
        sliding: bool,
    ) -> Verdict {
        self.roll(algorithm::window_of(now_ms, window_ms), sliding);
        let verdict = if sliding {
            let prev_share = self.known_prev.div_ceil(nodes.max(1));
            algorithm::sliding_window(prev_share, self.used, cost, share, now_ms, window_ms)
        } else {
            algorithm::fixed_window(self.used, cost, share, now_ms, window_ms)
        };
        if verdict.allowed {
            self.used += cost;
            if self.used > self.granted {
                let over = self.used - self.granted;
                self.granted = self.used;
                self.debt += over;
            }
        }
        verdict
    }

    /// Decides one request against a bucket whose tokens this node takes from Redis.
    pub fn admit_bucket(&mut self, cost: u64, burst: u64, nodes: u64, sync_ms: u64) -> Verdict {
        self.demand += cost;
        let allowed = if self.used + cost <= self.granted {
            true
        } else if !self.synced && self.provisional + cost <= provisional_cap(burst, nodes) {
            self.urgent |= self.provisional == 0;
            self.provisional += cost;
            self.debt += cost;
            // Quota this node granted itself; the debt makes Redis count it.
            self.granted += cost;
            true
        } else {
            self.urgent |= !self.exhausted;
            false
        };
        if allowed {
            self.used += cost;
        }
        let remaining = if self.synced {
            self.known_total + self.held()
        } else {
            burst.saturating_sub(self.used)
        };
        Verdict {
            allowed,
            limit: burst,
            remaining: remaining.min(burst),
            reset_ms: self.known_prev,
            retry_after_ms: if allowed {
                0
            } else {
                self.known_prev.max(sync_ms)
            },
        }
    }

    /// Folds this sync's demand into the smoothed rate.
    fn observe_demand(&mut self) {
        self.urgent = false;
        let demand = std::mem::take(&mut self.demand) as f64;
        self.rate = if self.rate == 0.0 {
            demand
        } else {
            0.5 * self.rate + 0.5 * demand
        };
        self.idle_syncs = if demand > 0.0 { 0 } else { self.idle_syncs + 1 };
    }

    /// Units worth holding for recent demand: two syncs' worth, at least one.
    fn low_water(&self) -> u64 {
        (self.rate * LEASE_SYNCS).ceil().max(1.0) as u64
    }

    /// How much more window quota to reserve. A key in use holds this node's fair share of
    /// what is left (`fair`, what it holds included), refilled when it falls below half
    /// of that or below recent demand, so bursts are served locally; Redis grants at most
    /// the unreserved remainder.
    fn window_top_up(&mut self, unreserved: u64, fair: u64) -> u64 {
        self.observe_demand();
        if self.exhausted || self.rate == 0.0 {
            return 0;
        }
        let low_water = self.low_water();
        if self.held() >= low_water.max(fair / 2) {
            return 0;
        }
        (fair.max(low_water) - self.held()).min(unreserved.max(1))
    }

    /// What to send to Redis for a window limit at this sync, taking the debt out of the
    /// lease until the answer arrives (or [`Lease::restore`] puts it back).
    #[allow(clippy::too_many_arguments)]
    pub fn plan_window(
        &mut self,
        limit: u64,
        now_ms: u64,
        window_ms: u64,
        sliding: bool,
        nodes: u64,
        sync_ms: u64,
    ) -> Option<WindowPlan> {
        let window = algorithm::window_of(now_ms, window_ms);
        self.roll(window, sliding);
        let effective = self.effective_limit(limit, now_ms, window_ms, sliding);
        let unreserved = if self.synced {
            effective.saturating_sub(self.known_total)
        } else {
            effective
        };
        let fair = ((unreserved + self.held()) / nodes.max(1)).max(1);
        if sliding {
            // Room reappears as the previous window slides out: ask again every sync.
            self.exhausted = false;
        }
        let want = self.window_top_up(unreserved, fair);
        let debt = std::mem::take(&mut self.debt);
        let stale = std::mem::take(&mut self.stale_debt);
        // Near the end of a busy window, reserve the next one so it starts with quota.
        let until_end = window_ms - now_ms % window_ms.max(1);
        let prefetch = (self.rate > 0.0
            && until_end <= sync_ms * 5 / 2
            && self.next.is_none_or(|p| p.window != window + 1))
        .then(|| (limit / nodes.max(1)).max(1));
        let needed = want > 0 || debt > 0 || !stale.is_empty() || prefetch.is_some();
        if !needed {
            return None;
        }
        Some(WindowPlan {
            window,
            debt,
            want,
            stale,
            prefetch,
        })
    }

    pub fn apply_window(&mut self, plan: &WindowPlan, answer: &WindowAnswer) {
        if self.window == plan.window {
            // Provisional admissions made while the sync was under way are paid for from
            // the fresh grant rather than flushed on top of it.
            let cover = answer.grant.min(self.debt);
            self.debt -= cover;
            self.granted += answer.grant - cover;
            self.known_total = answer.total;
            self.known_prev = answer.prev;
            self.synced = true;
            self.exhausted = answer.grant < plan.want;
        }
        if let Some(next) = answer.next {
            if self.window < next.window {
                self.next = Some(next);
            }
        }
    }

    /// Puts back what a failed sync took out.
    pub fn restore_window(&mut self, plan: WindowPlan) {
        if self.window == plan.window {
            self.debt += plan.debt;
        } else if plan.debt > 0 {
            self.stale_debt.push((plan.window, plan.debt as i64));
        }
        self.stale_debt.extend(plan.stale);
    }

    pub fn plan_bucket(&mut self, burst: u64, nodes: u64) -> Option<BucketPlan> {
        self.held_syncs += 1;
        let idle = self.demand == 0;
        if self.held_syncs > BUCKET_HOLD_SYNCS {
            // Tokens held this long were taken when the bucket was fuller than it may be
            // now; spending them later would exceed the burst.
            self.granted = self.used;
            if idle {
                // A quiet key starts over like a new one: its next burst is admitted
                // provisionally (this node's share of the burst) and charged to the bucket
                // at once, instead of being refused while tokens are fetched one sync at a
                // time.
                self.synced = false;
                self.provisional = 0;
            }
        }
        let share = if self.synced {
            (self.known_total / nodes.max(1)).max(1)
        } else {
            (burst / nodes.max(1)).max(1)
        };
        self.exhausted = false;
        self.observe_demand();
        // Tokens held unused are lost to the shared bucket, so buckets hold only what
        // recent demand needs.
        let want = if self.rate == 0.0 {
            0
        } else {
            self.low_water().saturating_sub(self.held()).min(share)
        };
        let debt = std::mem::take(&mut self.debt);
        (want > 0 || debt > 0).then_some(BucketPlan { debt, want })
    }

    pub fn apply_bucket(&mut self, plan: &BucketPlan, answer: &BucketAnswer) {
        if answer.grant > 0 {
            let cover = answer.grant.min(self.debt);
            self.debt -= cover;
            // Start the hold period afresh with the new tokens.
            self.granted = self.used + self.held() + answer.grant - cover;
            self.held_syncs = 0;
        }
        self.known_total = answer.tokens;
        self.known_prev = answer.ms_per_token;
        self.synced = true;
        self.exhausted = answer.grant < plan.want;
    }

    pub fn restore_bucket(&mut self, plan: BucketPlan) {
        self.debt += plan.debt;
    }

    /// Whether nothing is pending and the key has gone quiet, so the entry can go.
    pub fn is_idle(&self, window: Option<u64>) -> bool {
        let pending = self.debt > 0 || !self.stale_debt.is_empty();
        let current = window.is_some_and(|w| self.window >= w && self.held() > 0);
        !pending && !current && self.idle_syncs >= IDLE_SYNCS
    }
}

/// One key's part of a sync, for a window limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    pub window: u64,
    pub debt: u64,
    pub want: u64,
    pub stale: Vec<(u64, i64)>,
    /// Units to reserve in the next window.
    pub prefetch: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAnswer {
    pub total: u64,
    pub grant: u64,
    pub prev: u64,
    pub next: Option<Prefetch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketPlan {
    pub debt: u64,
    pub want: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketAnswer {
    pub grant: u64,
    /// Tokens left in the shared bucket.
    pub tokens: u64,
    pub ms_per_token: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 1_000;
    const SYNC: u64 = 50;

    /// A stand-in for the Redis window script: grants what fits under the limit.
    fn redis_window(total: &mut u64, plan: &WindowPlan, limit: u64) -> WindowAnswer {
        *total += plan.debt;
        let grant = plan.want.min(limit.saturating_sub(*total));
        *total += grant;
        WindowAnswer {
            total: *total,
            grant,
            prev: 0,
            next: None,
        }
    }

    #[test]
    fn a_new_key_gets_a_provisional_allowance_then_leases() {
        let mut lease = Lease::new("k".into(), 0);
        let now = 10 * W;
        // limit 100 over 2 nodes: the provisional allowance is this node's half.
        assert!(lease.admit_window(1, 100, now, W, false, 2, SYNC).allowed);
        assert!(lease.urgent, "a new key asks for a sync at once");
        for _ in 1..50 {
            assert!(lease.admit_window(1, 100, now, W, false, 2, SYNC).allowed);
        }
        assert!(!lease.admit_window(1, 100, now, W, false, 2, SYNC).allowed);
        let mut total = 0;
        let plan = lease.plan_window(100, now + 10, W, false, 2, SYNC).unwrap();
        assert!(!lease.urgent);
        assert_eq!(plan.debt, 50);
        assert!(plan.want >= 1);
        let answer = redis_window(&mut total, &plan, 100);
        lease.apply_window(&plan, &answer);
        assert!(
            lease
                .admit_window(1, 100, now + 20, W, false, 2, SYNC)
                .allowed
        );
    }

    #[test]
    fn two_nodes_never_exceed_the_limit_once_synced() {
        let limit = 50;
        let mut nodes = [Lease::new("k".into(), 0), Lease::new("k".into(), 0)];
        let mut total = 0;
        let mut admitted = 0;
        let start = 20 * W;
        for step in 0..18u64 {
            let now = start + step * SYNC;
            for lease in nodes.iter_mut() {
                // 40 requests per node per sync interval: far more than the limit allows.
                for _ in 0..40 {
                    if lease.admit_window(1, limit, now, W, false, 2, SYNC).allowed {
                        admitted += 1;
                    }
                }
                if let Some(plan) = lease.plan_window(limit, now + 1, W, false, 2, SYNC) {
                    let answer = redis_window(&mut total, &plan, limit);
                    lease.apply_window(&plan, &answer);
                }
            }
        }
        let provisional = 2 * provisional_cap(limit, 2);
        assert!(admitted <= limit + provisional, "admitted {admitted}");
        assert!(admitted >= limit - 5, "admitted {admitted}");
    }

    #[test]
    fn admissions_during_a_sync_are_paid_from_its_grant() {
        let mut lease = Lease::new("k".into(), 0);
        let now = 3 * W;
        lease.admit_window(1, 5, now, W, false, 1, SYNC);
        let plan = lease.plan_window(5, now, W, false, 1, SYNC).unwrap();
        // A second provisional admission before the answer arrives.
        assert!(lease.admit_window(1, 5, now, W, false, 1, SYNC).allowed);
        let mut total = 0;
        let answer = redis_window(&mut total, &plan, 5);
        assert_eq!((answer.total, answer.grant), (5, 4));
        lease.apply_window(&plan, &answer);
        let mut more = 0;
        while lease.admit_window(1, 5, now, W, false, 1, SYNC).allowed {
            more += 1;
        }
        assert_eq!(2 + more, 5, "exactly the limit, with nothing left to flush");
        assert_eq!(lease.debt, 0);
    }

    #[test]
    fn alone_a_lease_keeps_its_count_and_owes_the_excess() {
        let mut lease = Lease::new("k".into(), 4);
        lease.synced = true;
        lease.granted = 10;
        lease.used = 8;
        let now = 4 * W + 10;
        // Half of 30 for this node of two: 15, of which 8 are spent.
        let admitted = (0..20)
            .filter(|_| lease.admit_alone(1, 15, 2, now, W, false).allowed)
            .count();
        assert_eq!(admitted, 7);
        assert_eq!(lease.debt, 5, "beyond the 10 reserved, 5 are owed to Redis");
    }

    #[test]
    fn a_failed_sync_keeps_the_debt() {
        let mut lease = Lease::new("k".into(), 0);
        lease.admit_window(1, 100, 5 * W, W, false, 1, SYNC);
        let plan = lease
            .plan_window(100, 5 * W + 1, W, false, 1, SYNC)
            .unwrap();
        assert_eq!(lease.debt, 0);
        lease.restore_window(plan);
        assert_eq!(lease.debt, 1);
    }

    #[test]
    fn debt_of_an_ended_window_is_kept_for_that_window() {
        let mut lease = Lease::new("k".into(), 0);
        lease.admit_window(1, 100, 5 * W + 990, W, false, 1, SYNC);
        lease.roll(6, false);
        assert_eq!(lease.stale_debt, vec![(5, 1)]);
        assert_eq!((lease.used, lease.debt), (0, 0));
    }

    #[test]
    fn sliding_windows_return_unused_quota_when_they_end() {
        let mut lease = Lease::new("k".into(), 5);
        lease.granted = 10;
        lease.used = 4;
        lease.synced = true;
        lease.roll(6, true);
        assert_eq!(lease.stale_debt, vec![(5, -6)]);
    }

    #[test]
    fn prefetch_fills_the_next_window() {
        let mut lease = Lease::new("k".into(), 0);
        lease.admit_window(1, 100, 5 * W + 900, W, false, 1, SYNC);
        let plan = lease
            .plan_window(100, 5 * W + 950, W, false, 1, SYNC)
            .unwrap();
        assert!(plan.prefetch.is_some());
        let next = Prefetch {
            window: 6,
            granted: 5,
            total: 5,
            prev: 1,
        };
        let answer = WindowAnswer {
            total: 1,
            grant: plan.want,
            prev: 0,
            next: Some(next),
        };
        lease.apply_window(&plan, &answer);
        let v = lease.admit_window(1, 100, 6 * W + 1, W, false, 1, SYNC);
        assert!(v.allowed);
        assert!(
            lease.synced,
            "the prefetch counts as a sync: no provisional admissions"
        );
        assert_eq!(lease.granted, 5);
    }

    #[test]
    fn buckets_spend_taken_tokens_and_return_stale_ones() {
        let mut lease = Lease::new("k".into(), 0);
        assert!(lease.admit_bucket(1, 10, 1, SYNC).allowed, "provisional");
        let plan = lease.plan_bucket(10, 1).unwrap();
        lease.apply_bucket(
            &plan,
            &BucketAnswer {
                grant: 3,
                tokens: 6,
                ms_per_token: 100,
            },
        );
        for _ in 0..3 {
            assert!(lease.admit_bucket(1, 10, 1, SYNC).allowed);
        }
        let v = lease.admit_bucket(1, 10, 1, SYNC);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 100);
    }
}
