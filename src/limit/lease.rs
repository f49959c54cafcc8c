//! Quota leases: how a node decides fleet-wide limits without a Redis round trip per
//! request, and never admits more than the fleet's limit.
//!
//! Redis keeps two numbers per key and window: `used` (what the fleet admitted and
//! reported) and `reserved` (quota nodes took and have not spent yet, one field per node).
//! A Lua script grants only quota that fits under the limit beside both, so what Redis
//! grants the whole fleet never exceeds the limit. A node admits a request only from
//! quota Redis granted it (its lease): `admitted ≤ granted ≤ limit`. A key new to a node
//! (or whose lease ran dry) waits for its grant, one round trip that the sync task starts
//! at once; the grant covers the key's recent demand, so the requests after it decide
//! locally again.
//!
//! The one exception keeps large limits free of that wait: when the limit is at least
//! [`UNBACKED_MIN_PER_NODE`] × live nodes, a node may admit up to `limit / (100 × nodes)`
//! units per window with nothing granted behind them, and reports them at the next sync
//! like any other. The whole fleet can overshoot by at most that much: 1 % of the limit.
//!
//! Buckets work the same way: a node reserves tokens, which stay inside the shared bucket
//! (it refills only up to its burst counting them) until the node reports them spent.
//!
//! The sync task refills a lease when it runs low against the key's recent demand, taking
//! this node's fair share of what is left (`remaining / live nodes`), reports what the
//! node admitted (moving it from reserved to used), and, for fixed windows, reserves the
//! next window's quota shortly before it starts. A key that goes quiet hands its unspent
//! quota back after a few syncs, so quota that idle nodes hold returns to the fleet; a
//! node that stops hands everything back, and a node that crashes loses its reservations
//! when they expire.
//!
//! When Redis cannot answer, a node continues from what it last heard: what it holds, plus
//! its share of what the window had left at Redis's last answer. Only a key it never heard
//! of starts from a share of the whole limit.

use super::algorithm::{self, Bucket, Span, Verdict};

/// How many syncs' worth of recent demand a lease aims to hold.
const LEASE_SYNCS: f64 = 2.0;

/// Syncs without any demand after which an entry with nothing pending is dropped.
pub const IDLE_SYNCS: u32 = 40;

/// Quiet syncs after which a key hands its unspent reservation back, so a node whose
/// clients went elsewhere does not keep quota other nodes need.
const QUIET_RELEASE_SYNCS: u32 = 4;

/// Units per live node below which a node admits nothing Redis has not granted it.
pub const UNBACKED_MIN_PER_NODE: u64 = 100;

/// Units a node may admit per window (buckets: between two charges) with no grant behind
/// them: `quota / (100 × nodes)`, none below [`UNBACKED_MIN_PER_NODE`] × nodes. Summed over
/// the fleet that is at most 1 % of the quota, the most the fleet can overshoot by.
pub fn unbacked_allowance(quota: u64, nodes: u64) -> u64 {
    quota / UNBACKED_MIN_PER_NODE.saturating_mul(nodes.max(1))
}

/// A node's share of what is left when it must decide without Redis. Rounded up, so a
/// balanced fleet admits about what was left (at most `nodes − 1` more), and nothing left
/// means nothing.
pub fn fallback_share(left: u64, nodes: u64) -> u64 {
    left.div_ceil(nodes.max(1))
}

/// How long Redis keeps a node's reservation without hearing from it: long enough to ride
/// out a few slow syncs, short enough that a crashed node's quota returns to the fleet
/// within seconds instead of at the end of a long window.
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

/// What Redis has not heard yet of a window (or a bucket): units admitted and not yet
/// reported (`delta`, added to `used` or charged to the bucket), how many of them had no
/// reservation behind them, how many were spent from one, and unspent reservation handed
/// back. Redis itself gets `delta` and the reservation the node still holds.
/// `refund`: units Redis was told of and that were handed back since (another policy of
/// the route refused the request, or its response did not count), taken off `used`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    pub delta: u64,
    pub provisional: u64,
    pub spent: u64,
    pub released: u64,
    pub refund: u64,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.delta == 0 && self.released == 0 && self.refund == 0
    }

    /// What Redis adds to the window's `used` (or charges the bucket): may be negative.
    pub fn net_delta(&self) -> i64 {
        self.delta as i64 - self.refund as i64
    }

    /// Units of reservation this report drops.
    pub fn unreserve(&self) -> u64 {
        self.spent + self.released
    }

    /// Adds `other` to this report, for the same window (or bucket).
    pub fn absorb(&mut self, other: &Report) {
        self.delta += other.delta;
        self.provisional += other.provisional;
        self.spent += other.spent;
        self.released += other.released;
        self.refund += other.refund;
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
    /// Redis granted plus what it admitted unbacked.
    pub granted: u64,
    /// Units admitted in `window` (windows) or tokens spent (buckets).
    pub used: u64,
    /// Of `used`, units admitted with no reservation behind them and not since covered by
    /// a grant.
    pub provisional: u64,
    /// Windows: units admitted unbacked in `window`, against the allowance. Buckets: units
    /// admitted unbacked and not yet charged.
    pub provisional_spell: u64,
    /// Units admitted and not yet reported to Redis.
    pub unreported: u64,
    /// Of those, admitted with no reservation behind them.
    pub unreported_provisional: u64,
    /// Windows: Redis `used + reserved` for `window`. Buckets: tokens left beside every
    /// reservation.
    pub known_total: u64,
    /// Windows: the fleet's count of the window before `window` (reservations included).
    /// Buckets: ms until one token.
    pub known_prev: u64,
    /// Windows: Redis `used` for `window` (without anyone's reservations).
    pub known_used: u64,
    /// Units asked for since the last sync, admitted or not.
    pub demand: u64,
    /// Whether Redis has answered for `window` (buckets: ever).
    pub synced: bool,
    /// Redis granted less than asked and no other node holds quota that could come back:
    /// the window (or bucket) is spent fleet-wide, as far as this node knows.
    pub exhausted: bool,
    /// This key needs a sync before the next scheduled one.
    pub urgent: bool,
    /// The sync task has been woken for this key since its last sync.
    pub signalled: bool,
    /// Whether the last admission was spent from a grant (else it was unbacked).
    pub last_backed: bool,
    /// Whether Redis's last answer left quota nobody had reserved (or there was none yet),
    /// so that a grant can still come for a dry lease.
    pub room: bool,
    /// Units Redis reserved for this node and this node has not reported spent.
    pub reserved: u64,
    /// What only syncs read, apart: decisions touch the fields above and no more.
    pub sync: Box<SyncBooks>,
}

/// A lease's bookkeeping for its syncs and for deciding without Redis.
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
    /// When the reservation Redis holds for this node must be renewed (Unix ms).
    pub renew_at_ms: u64,
    /// Buckets: when Redis last answered (Unix ns).
    pub answered_ns: u64,
    /// Buckets: this node's own arrival time while it decides without Redis, started from
    /// the tokens Redis last reported.
    pub alone_tat_ns: Option<u64>,
    /// Units handed back after Redis was told of them, for the next report.
    pub refund: u64,
    /// Refunds in a report Redis has not answered yet. Until it has, its count still holds
    /// them, so what is left counts them back (a refused all-or-nothing request would
    /// otherwise show one less left until the next sync).
    pub refund_sent: u64,
    /// The limit (buckets: the burst) the policy was last raised to under this lease. A
    /// sync that answers for a smaller one (planned before the change, or by a round that
    /// began under the old policy) cannot mark the key spent under the new numbers.
    pub raised_to: u64,
}

impl Lease {
    pub fn new(key: std::sync::Arc<str>, window: u64) -> Self {
        Lease {
            window,
            granted: 0,
            used: 0,
            provisional: 0,
            provisional_spell: 0,
            unreported: 0,
            unreported_provisional: 0,
            known_total: 0,
            known_prev: 0,
            known_used: 0,
            demand: 0,
            synced: false,
            exhausted: false,
            urgent: false,
            signalled: false,
            last_backed: false,
            room: true,
            reserved: 0,
            sync: Box::new(SyncBooks {
                key,
                stale: Vec::new(),
                next: None,
                rate: 0.0,
                idle_syncs: 0,
                renew_at_ms: 0,
                answered_ns: 0,
                alone_tat_ns: None,
                refund: 0,
                refund_sent: 0,
                raised_to: 0,
            }),
        }
    }

    /// Units this node still holds: granted, minus what it spent from grants.
    #[inline]
    pub fn held(&self) -> u64 {
        self.granted
            .saturating_sub(self.used - self.provisional.min(self.used))
    }

    /// Counts one admitted request; `backed` when it was spent from a grant.
    #[inline]
    fn count(&mut self, cost: u64, backed: bool) {
        self.last_backed = backed;
        self.used += cost;
        self.unreported += cost;
        if !backed {
            self.provisional += cost;
            self.provisional_spell += cost;
            self.unreported_provisional += cost;
        }
    }

    /// Takes out what Redis has not heard yet. `release` also hands back the unspent
    /// reservation.
    fn take_report(&mut self, release: bool) -> Report {
        let delta = std::mem::take(&mut self.unreported);
        let provisional = std::mem::take(&mut self.unreported_provisional).min(delta);
        let spent = (delta - provisional).min(self.reserved);
        self.reserved -= spent;
        let released = if release {
            std::mem::take(&mut self.reserved)
        } else {
            0
        };
        // What is handed back can no longer be spent here.
        self.granted = self.granted.saturating_sub(released);
        Report {
            delta,
            provisional,
            spent,
            released,
            refund: std::mem::take(&mut self.sync.refund),
        }
    }

    /// A sync's own report is on its way: its refunds are in flight until Redis answers.
    fn sending(&mut self, report: &Report) {
        self.sync.refund_sent += report.refund;
    }

    /// Redis answered (or never got) a report: its refunds are no longer in flight.
    fn refund_landed(&mut self, report: &Report) {
        self.sync.refund_sent = self.sync.refund_sent.saturating_sub(report.refund);
    }

    /// Units Redis's last count holds that this node has handed back since.
    fn refunds_pending(&self) -> u64 {
        self.sync.refund + self.sync.refund_sent
    }

    /// Puts back what a report took out, when Redis never got it.
    fn restore_report(&mut self, report: &Report) {
        self.unreported += report.delta;
        self.unreported_provisional += report.provisional;
        self.reserved += report.unreserve();
        self.granted += report.released;
        self.refund_landed(report);
        self.sync.refund += report.refund;
    }

    /// Hands back one admission of `cost` made in `window` (buckets: `None`), `backed` when
    /// it was spent from a grant. Not yet reported, it simply never happened: a backed unit
    /// is this node's to spend again. Already reported, the next report takes it off
    /// Redis's count, and the reservation it was spent from does not come back here.
    pub fn refund(&mut self, window: Option<u64>, cost: u64, backed: bool) {
        if let Some(w) = window.filter(|w| *w != self.window) {
            if w < self.window {
                // Its window has ended here: correct that window's count.
                let report = Report {
                    refund: cost,
                    ..Report::default()
                };
                self.sync.stale.push((w, report));
            }
            return;
        }
        self.used = self.used.saturating_sub(cost);
        if self.unreported >= cost {
            self.unreported -= cost;
            if !backed {
                self.provisional = self.provisional.saturating_sub(cost);
                self.provisional_spell = self.provisional_spell.saturating_sub(cost);
                self.unreported_provisional = self.unreported_provisional.saturating_sub(cost);
            }
        } else {
            self.sync.refund += cost;
            if backed {
                self.granted = self.granted.saturating_sub(cost);
            } else {
                self.provisional = self.provisional.saturating_sub(cost);
            }
        }
    }

    /// Charges `extra` more to an admission made in `window` (buckets: `None`): its
    /// response cost more than it held. Paid from what this node holds where it can, and
    /// the rest as debt, limit or not: reported like units admitted unbacked (without
    /// using up the unbacked allowance), so a later grant pays it off before anything new
    /// is spent from it, and Redis's count carries it past the limit until then.
    /// Returns true when a debt was left: the key should sync at once, so that other nodes
    /// stop spending what they hold as soon as can be.
    #[must_use]
    pub fn surcharge(&mut self, window: Option<u64>, extra: u64) -> bool {
        if extra == 0 {
            return false;
        }
        if let Some(w) = window.filter(|w| *w != self.window) {
            if w < self.window {
                // Its window has ended here: the debt belongs to that window's count.
                let report = Report {
                    delta: extra,
                    provisional: extra,
                    ..Report::default()
                };
                self.sync.stale.push((w, report));
                return true;
            }
            return false;
        }
        let backed = self.held().min(extra);
        let debt = extra - backed;
        // What the key really spends is demand too: a lease sized to the reserves alone
        // (1 each by default) would run dry after a request or two of a response-charged
        // key, and every admission after that would wake the sync for an urgent refill.
        self.demand += extra;
        self.used += extra;
        self.unreported += extra;
        self.provisional += debt;
        self.unreported_provisional += debt;
        debt > 0
    }

    /// Takes up a grant. Units admitted unbacked since the request left are paid from it
    /// rather than reported on top of it.
    fn take_grant(&mut self, grant: u64) {
        let cover = grant.min(self.unreported_provisional);
        self.unreported_provisional -= cover;
        self.provisional -= cover.min(self.provisional);
        self.granted += grant;
        self.reserved += grant;
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
        // Refunds in flight were for the window that ends: the new one's count is apart.
        self.sync.refund_sent = 0;
        let report = self.take_report(true);
        if !report.is_empty() {
            self.sync.stale.push((self.window, report));
        }
        // The fleet's count for the window that just ended, as far as this node knows:
        // what Redis last said it used and reserved, or this node's own count if more.
        let prev = if window == self.window + 1 {
            self.used.max(self.known_used).max(self.known_total)
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
    }

    /// The limit left in this window once the previous one's weighted count is taken off.
    #[inline]
    fn effective_limit(&self, limit: u64, now_ms: u64, span: Span, sliding: bool) -> u64 {
        if !sliding {
            return limit;
        }
        let weighted = algorithm::weighted_previous_in(self.known_prev, now_ms, span);
        limit.saturating_sub(weighted)
    }

    /// Decides one request against a window limit. A refusal with `exhausted` unset means
    /// the grant is on its way (the caller waits for it).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn admit_window(
        &mut self,
        cost: u64,
        limit: u64,
        now_ms: u64,
        span: Span,
        sliding: bool,
        nodes: u64,
        sync_ms: u64,
    ) -> Verdict {
        self.admit_window_needing(cost, cost, limit, now_ms, span, sliding, nodes, sync_ms)
    }

    /// [`Lease::admit_window`] for a request that holds `cost` but may settle at more:
    /// admitted from this node's quota only if that covers `need` (the policy's typical
    /// response cost), else only once Redis has answered since the request came (the
    /// caller then passes `need == cost`). A lease of a few units would otherwise admit a
    /// whole response's worth of tokens for each of them after the fleet ran out, before
    /// its next sync told it so.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn admit_window_needing(
        &mut self,
        cost: u64,
        need: u64,
        limit: u64,
        now_ms: u64,
        span: Span,
        sliding: bool,
        nodes: u64,
        sync_ms: u64,
    ) -> Verdict {
        self.roll(span.id);
        // The reserve; what a response costs beyond it comes in as demand when it settles.
        self.demand += cost;
        let effective = self.effective_limit(limit, now_ms, span, sliding);
        // What the fleet spent, as Redis last said, reached the limit: only a debt (a
        // response that cost more than its reserve) gets there while quota is still held,
        // and spending that quota would add to the overdraft.
        let overdrawn = self.synced && self.known_used >= effective;
        // Once the fleet cannot grant more, what is held is all there is: a request that
        // finds its reserve there is admitted.
        let held = self.held();
        let backed = !overdrawn && (held >= need || (self.exhausted && held >= cost));
        let allowed = backed || self.fits_unbacked(need, limit, effective, nodes);
        if !backed {
            // Dry: refill now rather than at the next scheduled sync.
            self.urgent |= !self.exhausted;
            self.room = !self.synced || self.known_total < effective;
        }
        if allowed {
            self.count(cost, backed);
            if !backed {
                // Against the allowance at what it may settle at, not at its reserve.
                self.provisional_spell += need.saturating_sub(cost);
            }
        }
        let remaining = if overdrawn {
            // What this node holds is not spent once the fleet is in debt.
            0
        } else if self.synced {
            let counted = self.known_total.saturating_sub(self.refunds_pending());
            effective.saturating_sub(counted) + self.held()
        } else {
            effective.saturating_sub(self.used)
        };
        let reset_ms = span.left_ms(now_ms);
        let retry_after_ms = if allowed {
            0
        } else if self.exhausted {
            // Judged on spent quota: reservations may still come back this window.
            let spent = self.known_used.max(self.used);
            let fleet = if sliding {
                algorithm::sliding_window_in(self.known_prev, spent, cost, limit, now_ms, span)
            } else {
                algorithm::fixed_window_in(spent, cost, limit, now_ms, span)
            };
            if fleet.allowed {
                sync_ms
            } else {
                fleet.retry_after_ms
            }
        } else {
            // The fleet still has quota; this node's grant is one sync away.
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

    /// Whether a window request may be admitted with no grant behind it: within this
    /// window's unbacked allowance, and within what the fleet has not taken as far as this
    /// node knows.
    #[cold]
    fn fits_unbacked(&self, cost: u64, limit: u64, effective: u64, nodes: u64) -> bool {
        let taken = if self.synced {
            self.known_total
        } else {
            self.known_used
        } + self.unreported_provisional;
        !self.exhausted
            && self.provisional_spell + cost <= unbacked_allowance(limit, nodes)
            && taken + cost <= effective
    }

    /// Gives back quota reserved for `window` and not spent (the node is leaving); the
    /// next sync sends it with the last report, and asks for nothing more.
    pub fn release(&mut self, window: u64) {
        self.hand_back(self.window == window);
        // Ask for nothing more: no demand, so no top-up and no prefetch.
        self.exhausted = true;
        self.demand = 0;
        self.sync.rate = 0.0;
    }

    /// The policy's numbers changed under this lease. Numbers that `shrank` take back what
    /// it holds and the next window's prefetch, all granted under the old numbers: the
    /// next sync returns them to Redis, and the key asks again under the new ones. Either
    /// way the key is no longer known to be spent.
    pub fn renumbered(&mut self, shrank: bool, quota: u64) {
        if shrank {
            self.hand_back(true);
        }
        self.exhausted = false;
        self.room = true;
        self.sync.raised_to = if shrank { 0 } else { quota };
    }

    /// Queues the unspent reservation (of this window too, when `current`, with what was
    /// admitted since the last report) and the prefetched one for the next sync to return.
    fn hand_back(&mut self, current: bool) {
        if current {
            let report = self.take_report(true);
            if !report.is_empty() {
                self.sync.stale.push((self.window, report));
            }
        }
        if let Some(next) = self.sync.next.take().filter(|p| p.granted > 0) {
            self.sync.stale.push((
                next.window,
                Report {
                    released: next.granted,
                    ..Report::default()
                },
            ));
        }
    }

    /// Decides one request against a window limit with no Redis: what this node holds,
    /// plus its share of what the window had left when Redis last answered (of the whole
    /// limit for a window Redis never answered for). What it admits is reported when Redis
    /// is back, so the fleet's count for the window stays whole.
    #[allow(clippy::too_many_arguments)]
    pub fn admit_alone(
        &mut self,
        cost: u64,
        limit: u64,
        nodes: u64,
        now_ms: u64,
        span: Span,
        sliding: bool,
    ) -> Verdict {
        self.roll(span.id);
        let effective = self.effective_limit(limit, now_ms, span, sliding);
        let known = if self.synced {
            self.known_total
        } else {
            self.known_used
        };
        let share = fallback_share(effective.saturating_sub(known), nodes);
        let backed = self.held() >= cost;
        // Unbacked admissions since Redis last heard from this node count against the share.
        let allowed = backed || self.unreported_provisional + cost <= share;
        if allowed {
            self.count(cost, backed);
        }
        let reset_ms = span.left_ms(now_ms);
        let retry_after_ms = match (allowed, sliding) {
            (true, _) => 0,
            (false, false) => reset_ms,
            (false, true) => {
                let count = known.max(self.used);
                algorithm::sliding_window_in(self.known_prev, count, cost, limit, now_ms, span)
                    .retry_after_ms
                    .max(1)
            }
        };
        Verdict {
            allowed,
            limit,
            remaining: (self.held() + share.saturating_sub(self.unreported_provisional)).min(limit),
            reset_ms,
            retry_after_ms,
        }
    }

    /// Decides one request against a bucket whose tokens this node reserves from Redis. A
    /// refusal with `exhausted` unset means the tokens are on their way.
    pub fn admit_bucket(&mut self, cost: u64, burst: u64, nodes: u64, sync_ms: u64) -> Verdict {
        self.demand += cost;
        let backed = self.held() >= cost;
        let allowed = backed
            || (!self.exhausted
                && self.provisional_spell + cost <= unbacked_allowance(burst, nodes));
        if !backed {
            self.urgent |= !self.exhausted;
            self.room = !self.synced || self.known_total > 0;
        }
        if allowed {
            self.count(cost, backed);
        }
        let remaining = if self.synced {
            self.known_total + self.refunds_pending() + self.held()
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

    /// Decides one request against a bucket with no Redis: the tokens this node holds,
    /// then a bucket of its own with its share of the rate and burst, starting from its
    /// share of the tokens Redis last reported (refilled since), or full for a key Redis
    /// never answered for.
    pub fn admit_bucket_alone(
        &mut self,
        cost: u64,
        bucket: Bucket,
        nodes: u64,
        now_ns: u64,
    ) -> Verdict {
        if self.held() >= cost {
            self.count(cost, true);
            return Verdict {
                allowed: true,
                limit: bucket.burst,
                remaining: self.held().min(bucket.burst),
                reset_ms: self.known_prev,
                retry_after_ms: 0,
            };
        }
        let share = bucket.share(nodes);
        let (synced, known, answered) = (self.synced, self.known_total, self.sync.answered_ns);
        let tat = *self.sync.alone_tat_ns.get_or_insert_with(|| {
            let tokens = if synced {
                let refilled = now_ns.saturating_sub(answered) / bucket.interval_ns();
                known.saturating_add(refilled).min(bucket.burst)
            } else {
                bucket.burst
            };
            let mine = fallback_share(tokens, nodes).min(share.burst);
            now_ns.saturating_add((share.burst - mine).saturating_mul(share.interval_ns()))
        });
        let (verdict, tat) = algorithm::gcra(tat, cost, share, now_ns);
        if verdict.allowed {
            self.sync.alone_tat_ns = Some(tat);
            self.count(cost, false);
        }
        Verdict {
            limit: bucket.burst,
            ..verdict
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

    /// Whether the key has had no demand for a few syncs: it holds no quota then, and
    /// asks for none until a request comes.
    fn is_quiet(&self) -> bool {
        self.sync.idle_syncs >= QUIET_RELEASE_SYNCS
    }

    /// How much more window quota to reserve: what recent demand needs (two syncs' worth),
    /// never more than this node's fair share of what is left (`fair`, what it holds
    /// included), so that a burst reaching every node at once is spread over them instead
    /// of stranded on the first to ask. Refilled when it falls below half of that; Redis
    /// grants at most the unreserved remainder.
    fn window_top_up(&self, unreserved: u64, fair: u64) -> u64 {
        if self.exhausted || self.sync.rate == 0.0 {
            return 0;
        }
        let target = self.low_water().min(fair);
        if self.held() * 2 >= target {
            return 0;
        }
        (target - self.held()).min(unreserved.max(1))
    }

    /// What to send to Redis for a window limit at this sync, taking the report out of the
    /// lease until the answer arrives (or [`Lease::restore_window`] puts it back).
    #[allow(clippy::too_many_arguments)]
    pub fn plan_window(
        &mut self,
        limit: u64,
        now_ms: u64,
        span: Span,
        sliding: bool,
        nodes: u64,
        sync_ms: u64,
    ) -> Option<WindowPlan> {
        let window = span.id;
        self.roll(window);
        // A request waits on this round for Redis's word (a dry lease, or one short of
        // what a response typically costs): ask, even for nothing, so that the answer
        // says how far the fleet got.
        let waiting = self.urgent;
        self.observe_demand();
        let effective = self.effective_limit(limit, now_ms, span, sliding);
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
        let quiet = self.is_quiet();
        let want = if quiet {
            0
        } else {
            self.window_top_up(unreserved, fair)
        };
        let release = quiet && self.reserved > 0;
        let report = self.take_report(release);
        self.sending(&report);
        if release {
            // What this node handed back is room again.
            self.exhausted = false;
        }
        let stale = std::mem::take(&mut self.sync.stale);
        // Near the end of a busy fixed window, reserve the next one so it starts with
        // quota. Not for sliding windows: this window may still fill up after the
        // prefetch, and the next window's room depends on how full it ends.
        let until_end = span.left_ms(now_ms);
        let prefetch = (!sliding
            && !quiet
            && self.sync.rate > 0.0
            && until_end <= sync_ms * 5 / 2
            && self.sync.next.is_none_or(|p| p.window != window + 1))
        .then(|| self.low_water().clamp(1, (limit / nodes.max(1)).max(1)));
        let renew = self.reserved > 0 && now_ms >= self.sync.renew_at_ms;
        let needed = waiting
            || want > 0
            || !report.is_empty()
            || !stale.is_empty()
            || prefetch.is_some()
            || renew;
        if !needed {
            return None;
        }
        self.sync.renew_at_ms = now_ms + reservation_ttl_ms(sync_ms) / 4;
        Some(WindowPlan {
            limit,
            window,
            report,
            held: self.reserved,
            want,
            stale,
            prefetch,
        })
    }

    /// Returns true when the key must ask again at once: the plan was made under numbers
    /// that have since been raised, so its answer says nothing about the new ones, and a
    /// request waiting on this key counts on the next round to carry it.
    #[must_use]
    pub fn apply_window(&mut self, plan: &WindowPlan, answer: &WindowAnswer) -> bool {
        let outdated = plan.limit < self.sync.raised_to;
        self.refund_landed(&plan.report);
        if self.window == plan.window {
            self.take_grant(answer.grant);
            self.known_total = answer.total;
            self.known_prev = answer.prev;
            self.known_used = answer.used;
            self.synced = true;
            // Only spent quota is gone for good: what other nodes hold reserved comes back
            // when they go quiet, stop or crash, so keep asking while any is out there.
            let others_reserved = answer.total.saturating_sub(answer.used + self.reserved);
            // A round planned before the numbers changed asked under the old limit: that
            // it fell short says nothing about the new one (a raised limit would otherwise
            // stay refused until the window ends).
            if plan.want > 0 && !outdated {
                self.exhausted = answer.grant < plan.want && others_reserved == 0;
            }
        } else if answer.grant > 0 {
            // The window ended while the sync was under way: hand the grant back.
            self.sync.stale.push((
                plan.window,
                Report {
                    released: answer.grant,
                    ..Report::default()
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
                        released: next.granted,
                        ..Report::default()
                    },
                ));
            }
        }
        self.ask_again_if(outdated)
    }

    /// Puts back what a failed sync took out.
    pub fn restore_window(&mut self, plan: WindowPlan) {
        if self.window == plan.window {
            self.restore_report(&plan.report);
        } else if !plan.report.is_empty() {
            // The window ended meanwhile: what it admitted is still owed to it, and its
            // reservation was handed back with the rest when it rolled.
            self.sync.stale.push((plan.window, plan.report));
        }
        self.sync.stale.extend(plan.stale);
    }

    pub fn plan_bucket(
        &mut self,
        burst: u64,
        nodes: u64,
        now_ms: u64,
        sync_ms: u64,
    ) -> Option<BucketPlan> {
        self.observe_demand();
        let quiet = self.is_quiet();
        let available = if self.synced { self.known_total } else { burst };
        let fair = ((available + self.held()) / nodes.max(1)).max(1);
        // Reserved tokens are out of other nodes' reach, so hold only what recent demand
        // needs. A bucket refills all the time: ask again even after a short grant.
        let want = if quiet || self.sync.rate == 0.0 {
            0
        } else {
            self.low_water().saturating_sub(self.held()).min(fair)
        };
        let mut report = self.take_report(quiet && self.reserved > 0);
        self.sending(&report);
        // A bucket is one lease: what was handed back apart goes with this report.
        for (_, handed_back) in std::mem::take(&mut self.sync.stale) {
            report.absorb(&handed_back);
        }
        let renew = self.reserved > 0 && now_ms >= self.sync.renew_at_ms;
        if want == 0 && report.is_empty() && !renew {
            return None;
        }
        self.sync.renew_at_ms = now_ms + reservation_ttl_ms(sync_ms) / 4;
        Some(BucketPlan {
            burst,
            report,
            held: self.reserved,
            want,
        })
    }

    /// Returns true when the key must ask again at once (see [`Lease::apply_window`]).
    #[must_use]
    pub fn apply_bucket(&mut self, plan: &BucketPlan, answer: &BucketAnswer, now_ns: u64) -> bool {
        let outdated = plan.burst < self.sync.raised_to;
        self.refund_landed(&plan.report);
        self.take_grant(answer.grant);
        self.known_total = answer.tokens;
        self.known_prev = answer.ms_per_token;
        self.synced = true;
        if plan.want > 0 && !outdated {
            self.exhausted = answer.grant < plan.want;
        }
        // Unbacked units in this report are charged now; those since are still out.
        self.provisional_spell = self.unreported_provisional;
        self.sync.answered_ns = now_ns;
        self.sync.alone_tat_ns = None;
        self.ask_again_if(outdated)
    }

    /// Marks the key as asking, signalled, when `outdated`: the caller puts it on the
    /// next round.
    fn ask_again_if(&mut self, outdated: bool) -> bool {
        if outdated {
            self.urgent = true;
            self.signalled = true;
        }
        outdated
    }

    pub fn restore_bucket(&mut self, plan: BucketPlan) {
        self.restore_report(&plan.report);
    }

    /// Atomic mode: what this node admitted alone for `window` while Redis was away, to be
    /// added to Redis's count by the next atomic call.
    pub fn take_exact_window_delta(&mut self, window: u64) -> u64 {
        if self.window != window {
            return 0;
        }
        self.unreported_provisional = 0;
        std::mem::take(&mut self.unreported)
    }

    /// Atomic mode, buckets: units admitted alone, to be charged by the next call.
    pub fn take_exact_bucket_delta(&mut self) -> u64 {
        self.unreported_provisional = 0;
        std::mem::take(&mut self.unreported)
    }

    /// Atomic mode: the delta of a call that failed is still owed.
    pub fn restore_exact_delta(&mut self, window: Option<u64>, delta: u64) {
        if window.is_none_or(|w| w == self.window) {
            self.unreported += delta;
            self.unreported_provisional += delta;
        }
    }

    /// Atomic mode: what Redis answered for a window, so that a node deciding without
    /// Redis continues from it.
    pub fn record_exact_window(&mut self, window: u64, used: u64, prev: u64) {
        self.roll(window);
        // Ended windows are not reported in atomic mode.
        self.sync.stale.clear();
        self.known_used = used;
        self.known_total = used;
        self.known_prev = prev;
        self.synced = true;
    }

    /// Atomic mode: what Redis answered for a bucket.
    pub fn record_exact_bucket(&mut self, tokens: u64, ms_per_token: u64, now_ns: u64) {
        self.known_total = tokens;
        self.known_prev = ms_per_token;
        self.synced = true;
        self.sync.answered_ns = now_ns;
        self.sync.alone_tat_ns = None;
    }

    /// Whether nothing is pending and the key has gone quiet, so the entry can go. A
    /// window's entry stays while it holds quota or has spent unbacked allowance, so that
    /// allowance is never handed out twice in one window.
    pub fn is_idle(&self, window: Option<u64>) -> bool {
        let pending = self.unreported > 0 || self.sync.refund > 0 || !self.sync.stale.is_empty();
        let current = window
            .is_some_and(|w| self.window >= w && (self.reserved > 0 || self.provisional_spell > 0));
        let holding = window.is_none() && self.reserved > 0;
        !pending && !current && !holding && self.sync.idle_syncs >= IDLE_SYNCS
    }
}

/// One key's part of a sync, for a window limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    /// The limit it was planned under.
    pub limit: u64,
    pub window: u64,
    pub report: Report,
    /// What this node still holds reserved in `window` (before `want` is granted).
    pub held: u64,
    pub want: u64,
    pub stale: Vec<(u64, Report)>,
    /// Units to reserve in the next window.
    pub prefetch: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAnswer {
    /// `used + reserved` after the script.
    pub total: u64,
    pub grant: u64,
    /// The previous window's `used` plus its live reservations.
    pub prev: u64,
    /// `used` after the script.
    pub used: u64,
    pub next: Option<Prefetch>,
}

/// One key's part of a sync, for a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketPlan {
    /// The burst it was planned under.
    pub burst: u64,
    /// `delta` is charged to the bucket.
    pub report: Report,
    /// Tokens this node still holds reserved (before `want` is granted).
    pub held: u64,
    pub want: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketAnswer {
    pub grant: u64,
    /// Tokens left in the shared bucket beside every reservation.
    pub tokens: u64,
    pub ms_per_token: u64,
}

#[cfg(test)]
mod tests;
