//! Quota leases: how a node decides fleet-wide limits without a Redis round trip per
//! request.
//!
//! Redis keeps two numbers per key and window: `used` (what the fleet admitted and
//! reported) and `reserved` (quota nodes took and have not spent yet). Every unit a node
//! admits is backed by quota it reserved beforehand (a lease), except for a provisional
//! allowance before its first sync for a key in a window. The sync task refills a lease
//! when it runs low against the key's recent demand, taking this node's fair share of what
//! is left (`remaining / live nodes`), reports what the node admitted (moving it from
//! reserved to used), and reserves the next window's quota shortly before it starts. A Lua
//! script grants only quota that fits under the limit, so nodes can never all spend the
//! same remainder. Sliding windows weigh the previous window's `used` only, so quota a node
//! reserved and never spent does not shrink the next window.
//!
//! A provisional admission, and a refusal while the fleet still has quota, ask for a sync
//! at once (`urgent`), so a new key's count reaches Redis within a round trip rather than a
//! whole sync interval: that is the only span in which the fleet can overshoot. The fleet
//! under-admits by at most what nodes hold unused when a window ends; a node that stops
//! hands its unspent reservations back.

use super::algorithm::{self, Verdict};

/// How many syncs' worth of recent demand a lease aims to hold.
const LEASE_SYNCS: f64 = 2.0;

/// Syncs without any demand after which an entry with nothing pending is dropped.
pub const IDLE_SYNCS: u32 = 40;

/// Quiet syncs after which a key hands its unspent window reservation back, so a node
/// whose clients went elsewhere does not keep quota other nodes need.
const QUIET_RELEASE_SYNCS: u32 = 4;

/// Syncs after which tokens held for a bucket go back (they would be stale by then).
const BUCKET_HOLD_SYNCS: u32 = 2;

/// The provisional allowance per node: its fair share of what is left, so a lone node (or
/// a client pinned to one) is never refused while quota remains, a new key's burst spread
/// over the fleet stays near the limit, and nothing left means no allowance.
pub fn provisional_cap(left: u64, nodes: u64) -> u64 {
    left.div_ceil(nodes.max(1))
}

/// How long Redis keeps a node's window reservation without hearing from it: long enough
/// to ride out a few slow syncs, short enough that a crashed node's quota returns to the
/// fleet within seconds instead of at the end of a long window.
pub fn reservation_ttl_ms(sync_ms: u64) -> u64 {
    (sync_ms * 20).max(2_000)
}

/// Quota prefetched for the next window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetch {
    pub window: u64,
    pub granted: u64,
    pub total: u64,
    pub prev: u64,
}

/// What a window's numbers in Redis must change by: units admitted and not yet reported
/// (`delta`, added to `used`) and reservations to drop (`unreserve`: spent ones, now in
/// `used`, and unspent ones handed back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    pub delta: u64,
    pub unreserve: u64,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.delta == 0 && self.unreserve == 0
    }
}

#[derive(Debug, Clone)]
// In declaration order, so that a decision's fields share as few cache lines as can be:
// across 100,000 keys a decision's time is mostly cache misses on its lease.
#[repr(C)]
pub struct Lease {
    /// The window these numbers belong to (windows only).
    pub window: u64,
    /// Units this node may admit in `window` (windows) or tokens taken (buckets): what
    /// Redis granted plus what it admitted provisionally.
    pub granted: u64,
    /// Units admitted in `window` (windows) or tokens spent (buckets).
    pub used: u64,
    pub provisional: u64,
    /// Provisional admissions since the lease last became unsynced, against the allowance.
    pub provisional_spell: u64,
    /// Windows: units admitted and not yet reported to Redis.
    pub unreported: u64,
    /// Windows: of those, admitted provisionally (no reservation behind them).
    pub unreported_provisional: u64,
    /// Buckets: units admitted provisionally, not yet charged to the bucket.
    pub debt: u64,
    /// Windows: Redis `used + reserved` for `window`. Buckets: tokens left.
    pub known_total: u64,
    /// Windows: Redis `used` of the window before `window`. Buckets: ms until one token.
    pub known_prev: u64,
    /// Windows: Redis `used` for `window` (without anyone's reservations).
    pub known_used: u64,
    /// Units asked for since the last sync, admitted or not.
    pub demand: u64,
    /// Whether a sync has answered for `window` (buckets: ever).
    pub synced: bool,
    /// Redis refused quota: the window (or bucket) is spent fleet-wide.
    pub exhausted: bool,
    /// This key needs a sync before the next scheduled one.
    pub urgent: bool,
    /// The sync task has been woken for this key since its last sync.
    pub signalled: bool,
    /// Windows: units Redis reserved for this node and this node has not reported spent.
    pub reserved: u64,
    /// What only syncs read, apart: decisions touch the fields above and no more.
    pub sync: Box<SyncBooks>,
}

/// A lease's bookkeeping for its syncs.
#[derive(Debug, Clone)]
pub struct SyncBooks {
    /// The key's text, used in Redis key names.
    pub key: std::sync::Arc<str>,
    /// Reports for windows that have ended: (window, report).
    pub stale: Vec<(u64, Report)>,
    pub next: Option<Prefetch>,
    /// Demand per sync, smoothed.
    pub rate: f64,
    pub idle_syncs: u32,
    /// Syncs since the held bucket tokens were granted.
    pub held_syncs: u32,
    /// When the reservation Redis holds for this node must be renewed (Unix ms).
    pub renew_at_ms: u64,
}

impl Lease {
    pub fn new(key: std::sync::Arc<str>, window: u64) -> Self {
        Lease {
            window,
            granted: 0,
            used: 0,
            unreported: 0,
            unreported_provisional: 0,
            reserved: 0,
            debt: 0,
            provisional: 0,
            provisional_spell: 0,
            synced: false,
            exhausted: false,
            known_total: 0,
            known_prev: 0,
            known_used: 0,
            demand: 0,
            urgent: false,
            signalled: false,
            sync: Box::new(SyncBooks {
                key,
                stale: Vec::new(),
                next: None,
                rate: 0.0,
                idle_syncs: 0,
                held_syncs: 0,
                renew_at_ms: 0,
            }),
        }
    }

    /// Units this node still holds: granted, minus what it spent from grants.
    #[inline]
    fn held(&self) -> u64 {
        self.granted
            .saturating_sub(self.used - self.provisional.min(self.used))
    }

    /// Takes out what Redis has not heard yet: admissions, and how many of them were spent
    /// from reservations. `release` also hands back the unspent reservations.
    fn take_report(&mut self, release: bool) -> Report {
        let delta = std::mem::take(&mut self.unreported);
        let provisional = std::mem::take(&mut self.unreported_provisional);
        let spent = (delta - provisional.min(delta)).min(self.reserved);
        self.reserved -= spent;
        let unreserve = if release {
            spent + std::mem::take(&mut self.reserved)
        } else {
            spent
        };
        Report { delta, unreserve }
    }

    /// Moves the lease into `window`, reporting the old window's tail and handing back its
    /// unspent reservations, and taking up any prefetched quota.
    #[inline]
    pub fn roll(&mut self, window: u64) {
        if window > self.window {
            self.roll_into(window);
        }
    }

    #[cold]
    fn roll_into(&mut self, window: u64) {
        let report = self.take_report(true);
        if !report.is_empty() {
            self.sync.stale.push((self.window, report));
        }
        let contiguous = window == self.window + 1;
        // The fleet's count for the window that just ended, as far as this node knows: what
        // Redis last said (other nodes' admissions included), or its own if that is more.
        // This node's own count alone would leave a sliding window almost the whole limit
        // again at its start, and every node would admit its share of that provisionally.
        let prev = if contiguous {
            self.used.max(self.known_used)
        } else {
            0
        };
        match self.sync.next.take().filter(|p| p.window == window) {
            Some(p) => {
                self.granted = p.granted;
                self.reserved = p.granted;
                self.known_total = p.total;
                self.known_prev = p.prev;
                self.synced = true;
            }
            None => {
                self.granted = 0;
                self.known_total = 0;
                self.known_prev = prev;
                self.synced = false;
            }
        }
        self.exhausted = false;
        self.window = window;
        self.known_used = 0;
        self.used = 0;
        self.provisional = 0;
        self.provisional_spell = 0;
        self.unreported_provisional = 0;
    }

    /// The limit left in this window once the previous one's weighted count is taken off.
    #[inline]
    fn effective_limit(&self, limit: u64, now_ms: u64, window_ms: u64, sliding: bool) -> u64 {
        if !sliding {
            return limit;
        }
        let weighted = algorithm::weighted_previous(self.known_prev, now_ms, window_ms);
        limit.saturating_sub(weighted)
    }

    /// Decides one request against a window limit.
    #[allow(clippy::too_many_arguments)]
    #[inline]
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
        self.roll(algorithm::window_of(now_ms, window_ms));
        self.demand += cost;
        let effective = self.effective_limit(limit, now_ms, window_ms, sliding);
        // The provisional allowance is a share of what this window has left as far as this
        // node knows: all of it for a key new to the window, less for one that went quiet
        // and handed its quota back after the fleet had spent some.
        let allowance = || provisional_cap(effective.saturating_sub(self.known_used), nodes);
        let allowed = if self.held() >= cost {
            true
        } else if !self.synced && self.provisional_spell + cost <= allowance() {
            self.urgent |= self.provisional_spell == 0;
            self.provisional += cost;
            self.provisional_spell += cost;
            self.unreported_provisional += cost;
            true
        } else {
            self.urgent |= !self.exhausted;
            false
        };
        if allowed {
            self.used += cost;
            self.unreported += cost;
        }
        let remaining = if self.synced {
            effective.saturating_sub(self.known_total) + self.held()
        } else {
            effective.saturating_sub(self.used)
        };
        let reset_ms = window_ms - now_ms % window_ms.max(1);
        let retry_after_ms = if allowed {
            0
        } else if self.exhausted || !self.synced {
            // Judged on spent quota: reservations may still come back this window.
            let spent = self.known_used.max(self.used);
            let fleet = if sliding {
                algorithm::sliding_window(self.known_prev, spent, cost, limit, now_ms, window_ms)
            } else {
                algorithm::fixed_window(spent, cost, limit, now_ms, window_ms)
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
    /// next sync sends it with the last report, and asks for nothing more.
    pub fn release(&mut self, window: u64) {
        if self.window != window {
            return;
        }
        let report = self.take_report(true);
        if !report.is_empty() {
            self.sync.stale.push((self.window, report));
        }
        if let Some(next) = self.sync.next.take().filter(|p| p.granted > 0) {
            self.sync.stale.push((
                next.window,
                Report {
                    delta: 0,
                    unreserve: next.granted,
                },
            ));
        }
        self.granted = self.used - self.provisional.min(self.used);
        self.exhausted = true;
        self.sync.rate = 0.0;
    }

    /// Decides one request with no Redis: this node's count for the window against its
    /// share of the limit. What it admits is reported when Redis is back, so the fleet's
    /// count for the window stays whole.
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
        self.roll(algorithm::window_of(now_ms, window_ms));
        let verdict = if sliding {
            let prev_share = self.known_prev.div_ceil(nodes.max(1));
            algorithm::sliding_window(prev_share, self.used, cost, share, now_ms, window_ms)
        } else {
            algorithm::fixed_window(self.used, cost, share, now_ms, window_ms)
        };
        if verdict.allowed {
            // Admitted with no reservation behind it, like a provisional admission.
            self.used += cost;
            self.provisional += cost;
            self.unreported += cost;
            self.unreported_provisional += cost;
        }
        verdict
    }

    /// Decides one request against a bucket whose tokens this node takes from Redis.
    pub fn admit_bucket(&mut self, cost: u64, burst: u64, nodes: u64, sync_ms: u64) -> Verdict {
        self.demand += cost;
        let allowed = if self.held() >= cost {
            true
        } else if !self.synced && self.provisional_spell + cost <= provisional_cap(burst, nodes) {
            self.urgent |= self.provisional_spell == 0;
            self.provisional += cost;
            self.provisional_spell += cost;
            self.debt += cost;
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
        self.signalled = false;
        let demand = std::mem::take(&mut self.demand) as f64;
        self.sync.rate = if self.sync.rate == 0.0 {
            demand
        } else {
            0.5 * self.sync.rate + 0.5 * demand
        };
        self.sync.idle_syncs = if demand > 0.0 {
            0
        } else {
            self.sync.idle_syncs + 1
        };
    }

    /// Units worth holding for recent demand: two syncs' worth, at least one.
    fn low_water(&self) -> u64 {
        (self.sync.rate * LEASE_SYNCS).ceil().max(1.0) as u64
    }

    /// How much more window quota to reserve. A key in use holds this node's fair share of
    /// what is left (`fair`, what it holds included), refilled when it falls below half
    /// of that or below recent demand, so bursts are served locally; Redis grants at most
    /// the unreserved remainder.
    fn window_top_up(&mut self, unreserved: u64, fair: u64) -> u64 {
        self.observe_demand();
        if self.exhausted || self.sync.rate == 0.0 {
            return 0;
        }
        let low_water = self.low_water();
        if self.held() >= low_water.max(fair / 2) {
            return 0;
        }
        (fair.max(low_water) - self.held()).min(unreserved.max(1))
    }

    /// What to send to Redis for a window limit at this sync, taking the report out of the
    /// lease until the answer arrives (or [`Lease::restore_window`] puts it back).
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
        self.roll(window);
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
        let quiet = self.sync.idle_syncs >= QUIET_RELEASE_SYNCS && self.held() > 0;
        let report = self.take_report(quiet);
        if quiet {
            self.granted = self.used - self.provisional.min(self.used);
            // The key starts over like a new one: its next burst gets the provisional
            // allowance and an early sync, instead of refusals until the next refill.
            self.synced = false;
            self.provisional_spell = 0;
        }
        let stale = std::mem::take(&mut self.sync.stale);
        // Near the end of a busy window, reserve the next one so it starts with quota.
        // Not while this node still admits provisionally: Redis has not heard of those
        // admissions yet, so it would weigh the next window against too small a count.
        let until_end = window_ms - now_ms % window_ms.max(1);
        let prefetch = (self.synced
            && self.sync.rate > 0.0
            && until_end <= sync_ms * 5 / 2
            && self.sync.next.is_none_or(|p| p.window != window + 1))
        .then(|| (limit / nodes.max(1)).max(1));
        let renew = self.reserved > 0 && now_ms >= self.sync.renew_at_ms;
        let needed =
            want > 0 || !report.is_empty() || !stale.is_empty() || prefetch.is_some() || renew;
        if !needed {
            return None;
        }
        self.sync.renew_at_ms = now_ms + reservation_ttl_ms(sync_ms) / 4;
        Some(WindowPlan {
            window,
            report,
            held: self.reserved,
            want,
            stale,
            prefetch,
            released: quiet,
        })
    }

    pub fn apply_window(&mut self, plan: &WindowPlan, answer: &WindowAnswer) {
        if self.window == plan.window {
            // Provisional admissions made while the sync was under way are paid for from
            // the fresh grant rather than reported on top of it.
            let cover = answer.grant.min(self.unreported_provisional);
            self.unreported_provisional -= cover;
            self.provisional -= cover;
            self.granted += answer.grant;
            self.reserved += answer.grant;
            self.known_total = answer.total;
            self.known_prev = answer.prev;
            self.known_used = answer.used;
            // A key that just handed its quota back stays unsynced: its next burst starts
            // with the provisional allowance.
            self.synced |= !plan.released;
            // Only spent quota is gone for good: what other nodes hold reserved comes back
            // when they go quiet, stop or crash, so keep asking while any is out there.
            let others_reserved = answer.total.saturating_sub(answer.used + self.reserved);
            self.exhausted = answer.grant < plan.want && others_reserved == 0;
        } else if answer.grant > 0 {
            // The window ended while the sync was under way: hand the grant back.
            self.sync.stale.push((
                plan.window,
                Report {
                    delta: 0,
                    unreserve: answer.grant,
                },
            ));
        }
        if let Some(next) = answer.next {
            if self.window < next.window {
                self.sync.next = Some(next);
            } else if next.granted > 0 && self.window > next.window {
                self.sync.stale.push((
                    next.window,
                    Report {
                        delta: 0,
                        unreserve: next.granted,
                    },
                ));
            }
        }
    }

    /// Puts back what a failed sync took out.
    pub fn restore_window(&mut self, plan: WindowPlan) {
        if self.window == plan.window {
            self.unreported += plan.report.delta;
            self.unreported_provisional +=
                plan.report.delta - plan.report.unreserve.min(plan.report.delta);
            self.reserved += plan.report.unreserve;
        } else if !plan.report.is_empty() {
            self.sync.stale.push((plan.window, plan.report));
        }
        self.sync.stale.extend(plan.stale);
    }

    pub fn plan_bucket(&mut self, burst: u64, nodes: u64) -> Option<BucketPlan> {
        self.sync.held_syncs += 1;
        let idle = self.demand == 0;
        if self.sync.held_syncs > BUCKET_HOLD_SYNCS {
            // Tokens held this long were taken when the bucket was fuller than it may be
            // now; spending them later would exceed the burst.
            self.granted = self.used - self.provisional.min(self.used);
            if idle {
                // A quiet key starts over like a new one: its next burst is admitted
                // provisionally (this node's share of the burst) and charged to the bucket
                // at once, instead of being refused while tokens are fetched one sync at a
                // time.
                self.synced = false;
                self.provisional_spell = 0;
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
        let want = if self.sync.rate == 0.0 {
            0
        } else {
            self.low_water().saturating_sub(self.held()).min(share)
        };
        let debt = std::mem::take(&mut self.debt);
        (want > 0 || debt > 0).then_some(BucketPlan { debt, want })
    }

    pub fn apply_bucket(&mut self, plan: &BucketPlan, answer: &BucketAnswer) {
        if answer.grant > 0 {
            // Provisional admissions made meanwhile are paid from the new tokens.
            let cover = answer.grant.min(self.debt);
            self.debt -= cover;
            self.provisional -= cover.min(self.provisional);
            self.granted += answer.grant;
            // Start the hold period afresh with the new tokens.
            self.sync.held_syncs = 0;
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
        let pending = self.debt > 0 || self.unreported > 0 || !self.sync.stale.is_empty();
        let current = window.is_some_and(|w| self.window >= w && self.reserved > 0);
        !pending && !current && self.sync.idle_syncs >= IDLE_SYNCS
    }
}

/// One key's part of a sync, for a window limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    pub window: u64,
    pub report: Report,
    /// What this node still holds reserved in `window` (before `want` is granted).
    pub held: u64,
    pub want: u64,
    pub stale: Vec<(u64, Report)>,
    /// Units to reserve in the next window.
    pub prefetch: Option<u64>,
    /// The key went quiet and handed its reservation back.
    pub released: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAnswer {
    /// `used + reserved` after the script.
    pub total: u64,
    pub grant: u64,
    /// The previous window's `used`.
    pub prev: u64,
    /// `used` after the script.
    pub used: u64,
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

    /// A stand-in for the Redis window script: `used` and `reserved`, granting what fits.
    #[derive(Default)]
    struct Redis {
        used: u64,
        reserved: u64,
    }

    impl Redis {
        fn apply(&mut self, plan: &WindowPlan, limit: u64) -> WindowAnswer {
            self.used += plan.report.delta;
            self.reserved = self.reserved.saturating_sub(plan.report.unreserve);
            let grant = plan
                .want
                .min(limit.saturating_sub(self.used + self.reserved));
            self.reserved += grant;
            WindowAnswer {
                total: self.used + self.reserved,
                grant,
                prev: 0,
                used: self.used,
                next: None,
            }
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
        let mut redis = Redis::default();
        let plan = lease.plan_window(100, now + 10, W, false, 2, SYNC).unwrap();
        assert!(!lease.urgent);
        assert_eq!(
            plan.report,
            Report {
                delta: 50,
                unreserve: 0
            }
        );
        assert!(plan.want >= 1);
        let answer = redis.apply(&plan, 100);
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
        let mut redis = Redis::default();
        let mut admitted = 0;
        let start = 20 * W;
        for step in 0..18u64 {
            let now = start + step * SYNC;
            for lease in nodes.iter_mut() {
                for _ in 0..40 {
                    if lease.admit_window(1, limit, now, W, false, 2, SYNC).allowed {
                        admitted += 1;
                    }
                }
                if let Some(plan) = lease.plan_window(limit, now + 1, W, false, 2, SYNC) {
                    let answer = redis.apply(&plan, limit);
                    lease.apply_window(&plan, &answer);
                }
            }
        }
        let provisional = 2 * provisional_cap(limit, 2);
        assert!(admitted <= limit + provisional, "admitted {admitted}");
        assert!(admitted >= limit - 5, "admitted {admitted}");
        // Everything admitted was reported as used; nothing is left reserved but unspent
        // beyond what the nodes still hold.
        assert_eq!(
            redis.used + nodes.iter().map(|l| l.unreported).sum::<u64>(),
            admitted
        );
    }

    #[test]
    fn admissions_during_a_sync_are_covered_by_its_grant() {
        let mut lease = Lease::new("k".into(), 0);
        let now = 3 * W;
        lease.admit_window(1, 5, now, W, false, 1, SYNC);
        let plan = lease.plan_window(5, now, W, false, 1, SYNC).unwrap();
        // A second provisional admission before the answer arrives.
        assert!(lease.admit_window(1, 5, now, W, false, 1, SYNC).allowed);
        let mut redis = Redis::default();
        let answer = redis.apply(&plan, 5);
        assert_eq!((answer.total, answer.grant), (5, 4));
        lease.apply_window(&plan, &answer);
        let mut more = 0;
        while lease.admit_window(1, 5, now, W, false, 1, SYNC).allowed {
            more += 1;
        }
        assert_eq!(2 + more, 5, "exactly the limit");
        let plan = lease.plan_window(5, now + 1, W, false, 1, SYNC).unwrap();
        let answer = redis.apply(&plan, 5);
        lease.apply_window(&plan, &answer);
        assert_eq!(
            (redis.used, redis.reserved),
            (5, 0),
            "all reported, nothing reserved"
        );
    }

    #[test]
    fn a_window_without_prefetch_weighs_the_fleets_previous_count() {
        // Three nodes spent a 300 sliding window, this one a third of it; the next window
        // starts before any prefetch arrived. Its previous-window weight must be the
        // fleet's 300, not this node's 100, or each node admits ~67 provisionally at once.
        let (limit, nodes) = (300, 3);
        let mut lease = Lease::new("k".into(), 0);
        let now = 3 * W + 900;
        for _ in 0..100 {
            assert!(
                lease
                    .admit_window(1, limit, now, W, true, nodes, SYNC)
                    .allowed
            );
        }
        let mut redis = Redis {
            used: 200,
            reserved: 0,
        };
        let plan = lease.plan_window(limit, now, W, true, nodes, SYNC).unwrap();
        let answer = redis.apply(&plan, limit);
        assert_eq!(answer.used, 300);
        lease.apply_window(&plan, &answer);
        let start = 4 * W + 1;
        let admitted = (0..100)
            .filter(|_| {
                lease
                    .admit_window(1, limit, start, W, true, nodes, SYNC)
                    .allowed
            })
            .count();
        assert!(
            admitted <= 1,
            "{admitted} admitted at the start of a window the fleet just filled"
        );
    }

    #[test]
    fn a_key_that_went_quiet_starts_over_from_what_its_window_has_left() {
        // 3 of 4 spent and reported, the rest of the lease handed back after a quiet spell:
        // the next burst may take the one unit left, not a fresh allowance of 4.
        let (limit, nodes) = (4, 1);
        let mut lease = Lease::new("k".into(), 0);
        let now = 7 * W;
        let mut redis = Redis::default();
        for _ in 0..3 {
            assert!(
                lease
                    .admit_window(1, limit, now, W, false, nodes, SYNC)
                    .allowed
            );
        }
        let mut at = now;
        for _ in 0..10 {
            at += SYNC;
            if let Some(plan) = lease.plan_window(limit, at, W, false, nodes, SYNC) {
                let answer = redis.apply(&plan, limit);
                lease.apply_window(&plan, &answer);
                if plan.released {
                    break;
                }
            }
        }
        assert_eq!(
            (redis.used, redis.reserved),
            (3, 0),
            "reported, and handed back"
        );
        assert!(!lease.synced, "quiet keys start over");
        let admitted = (0..4)
            .filter(|_| {
                lease
                    .admit_window(1, limit, at + 1, W, false, nodes, SYNC)
                    .allowed
            })
            .count();
        assert_eq!(admitted, 1, "one unit was left in the window");
    }

    #[test]
    fn a_failed_sync_keeps_the_report() {
        let mut lease = Lease::new("k".into(), 0);
        lease.admit_window(1, 100, 5 * W, W, false, 1, SYNC);
        let plan = lease
            .plan_window(100, 5 * W + 1, W, false, 1, SYNC)
            .unwrap();
        assert_eq!(lease.unreported, 0);
        lease.restore_window(plan);
        assert_eq!(lease.unreported, 1);
    }

    #[test]
    fn an_ended_window_reports_its_tail_and_returns_unspent_quota() {
        let mut lease = Lease::new("k".into(), 5);
        lease.granted = 10;
        lease.reserved = 9;
        lease.used = 4;
        lease.unreported = 3;
        lease.unreported_provisional = 0;
        lease.synced = true;
        lease.roll(6);
        // 3 admitted since the last report, spent from the reservation; 6 unspent back.
        assert_eq!(
            lease.sync.stale,
            vec![(
                5,
                Report {
                    delta: 3,
                    unreserve: 9
                }
            )]
        );
        assert_eq!((lease.used, lease.unreported, lease.reserved), (0, 0, 0));
    }

    #[test]
    fn a_quiet_key_hands_its_reservation_back() {
        let mut lease = Lease::new("k".into(), 7);
        lease.synced = true;
        lease.granted = 10;
        lease.reserved = 10;
        lease.used = 2;
        lease.unreported = 2;
        let now = 7 * W + 10;
        let reports: Vec<Report> = (0..QUIET_RELEASE_SYNCS as u64 + 2)
            .filter_map(|step| lease.plan_window(100, now + step, W, false, 2, SYNC))
            .map(|plan| plan.report)
            .collect();
        assert_eq!(
            reports.first(),
            Some(&Report {
                delta: 2,
                unreserve: 2
            })
        );
        assert_eq!(
            reports.last(),
            Some(&Report {
                delta: 0,
                unreserve: 8
            })
        );
        assert_eq!(lease.held(), 0);
    }

    #[test]
    fn prefetch_fills_the_next_window() {
        let mut lease = Lease::new("k".into(), 0);
        lease.admit_window(1, 100, 5 * W + 900, W, false, 1, SYNC);
        // Still provisional: Redis has not counted this window's admissions, so no
        // prefetch is weighed against them yet.
        let first = lease
            .plan_window(100, 5 * W + 900, W, false, 1, SYNC)
            .unwrap();
        assert_eq!(first.prefetch, None);
        let mut redis = Redis::default();
        let answer = redis.apply(&first, 100);
        lease.apply_window(&first, &answer);
        lease.admit_window(1, 100, 5 * W + 940, W, false, 1, SYNC);
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
        let mut answer = redis.apply(&plan, 100);
        answer.next = Some(next);
        lease.apply_window(&plan, &answer);
        let v = lease.admit_window(1, 100, 6 * W + 1, W, false, 1, SYNC);
        assert!(v.allowed);
        assert!(
            lease.synced,
            "the prefetch counts as a sync: no provisional admissions"
        );
        assert_eq!((lease.granted, lease.reserved), (5, 5));
    }

    #[test]
    fn alone_a_lease_keeps_its_count_and_reports_it_later() {
        let mut lease = Lease::new("k".into(), 4);
        lease.synced = true;
        lease.granted = 10;
        lease.reserved = 2;
        lease.used = 8;
        let now = 4 * W + 10;
        // Half of 30 for this node of two: 15, of which 8 are spent.
        let admitted = (0..20)
            .filter(|_| lease.admit_alone(1, 15, 2, now, W, false).allowed)
            .count();
        assert_eq!(admitted, 7);
        assert_eq!(lease.unreported, 7, "reported when Redis is back");
    }

    #[test]
    fn buckets_spend_taken_tokens() {
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
