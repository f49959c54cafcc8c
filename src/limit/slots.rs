//! Concurrency across the fleet: at most `limit` requests of a key in flight on all nodes
//! together, with slots that a crashed node cannot strand.
//!
//! Both modes keep what a node holds in Redis with an expiry on the Redis clock, renewed
//! while the node lives, so a node that dies (SIGKILL, power) gives its slots back when
//! its holdings expire: [`lease::reservation_ttl_ms`] after its last word, 2 s at the
//! default 50 ms `sync_interval`.
//!
//! - `sync: atomic`: one sorted set per key, one member per slot in use, scored by its
//!   expiry. A script per acquire drops expired members, counts the rest and adds this
//!   request's only if it fits; the end of the request removes them (`ZREM`, idempotent,
//!   so a release that races a late acquire or is lost costs nothing but the expiry). The
//!   sync task renews the members of this node's requests still in flight.
//! - `sync: async` (the default): slots are leased to nodes like quota. One hash per key,
//!   one field per node (`r:<node>` = `slots:expires_ms`). A node admits a request from
//!   the slots it holds, with no round trip, and its sync task tops the lease up from
//!   what the fleet has left (never past the limit: the script grants only what fits
//!   beside every other node's live field), renews it, and hands back the slots it stopped
//!   needing. A node that cannot get slots says so (`w:<node>`), and nodes holding more
//!   than their fair share (`limit / live nodes`) then stop reusing the extra slots as
//!   their requests end, so that a busy fleet shares the limit.
//!
//! Every admitted request also counts on this node's own in-flight estimator, so that a
//! node deciding without Redis (`on_redis_error: open`) admits up to its share of the
//! limit, `limit / live nodes`, counting everything it has in flight.

use super::algorithm::{self, Verdict};
use super::table::KeyTable;
use crate::redis_store::Connection;
use pingora_limits::inflight::Guard;
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;

/// The Redis key suffix of a key's leases (async): a hash, one field per node.
pub const LEASES_SUFFIX: &str = "c";
/// The Redis key suffix of a key's slots in use (atomic): a sorted set by expiry.
pub const MEMBERS_SUFFIX: &str = "cz";

/// Syncs without anything in flight or asked for after which an entry can go.
const IDLE_SYNCS: u32 = super::lease::IDLE_SYNCS;

/// One key's slots on this node.
#[derive(Debug, Clone)]
pub struct SlotLease {
    /// The key's text, used in Redis key names.
    pub key: Arc<str>,
    /// Async: slots Redis granted this node (in use or spare).
    pub held: u64,
    /// Slots in use by this node's requests in flight.
    pub active: u64,
    /// Async: slots above which this node admits nothing while other nodes wait: its fair
    /// share of the limit. `u64::MAX` when nobody waits.
    pub cap: u64,
    /// Async: the most slots in use at once since the last sync.
    pub peak: u64,
    /// Async: slots asked for and not admitted since the last sync.
    pub short: u64,
    /// Async: the slots worth keeping, a peak of recent need that decays by a quarter a
    /// sync, so that spare slots go back a little at a time.
    pub keep: u64,
    /// Async: slots other nodes asked for and could not get, at Redis's last answer.
    pub others_waiting: u64,
    /// Async: slots the fleet holds (this node included), at Redis's last answer.
    pub known_total: u64,
    pub idle_syncs: u32,
    /// Async: whether Redis has answered for this key.
    pub synced: bool,
    /// Async: Redis granted less than asked and no node holds spare slots: the fleet's
    /// slots are all in use.
    pub exhausted: bool,
    /// Async: whether a grant can still come (Redis's last answer left slots nobody held).
    pub room: bool,
    /// Async: this key needs a sync before the next scheduled one.
    pub urgent: bool,
    /// Async: the sync task has been woken for this key since its last sync.
    pub signalled: bool,
    /// When what Redis holds for this node must be renewed (Unix ms).
    pub renew_at_ms: u64,
    /// Atomic: the members of this node's requests in flight, and how many slots each.
    pub members: Vec<(Box<str>, u64)>,
    /// Atomic: of `members`, those admitted while Redis could not answer, not yet added
    /// to its count. The next sync adds them, so that the fleet's count covers them until
    /// they end.
    pub unclaimed: Vec<Box<str>>,
    /// Atomic: slots of requests admitted without Redis that ended after their claim, for
    /// the next sync to remove.
    pub unreleased: Vec<String>,
}

/// Atomic: what one sync sends for a key's members.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Renewal {
    /// Slots of requests admitted without Redis, to add whether they fit or not: they are
    /// in flight already.
    pub claim: Vec<String>,
    /// Slots already counted, to renew if they are still there.
    pub renew: Vec<String>,
    /// The members `claim` came from, marked claimed once Redis has them.
    pub claimed: Vec<Box<str>>,
    /// Slots of requests that ended, to remove.
    pub release: Vec<String>,
}

/// What to tell Redis of one key's lease at a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPlan {
    pub limit: u64,
    /// The slots this node keeps (in use, and spare it still wants).
    pub held: u64,
    /// Slots more it asks for.
    pub want: u64,
    /// Of `held`, slots not in use.
    pub spare: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotAnswer {
    /// Slots the fleet holds after the script (this node's included).
    pub total: u64,
    pub grant: u64,
    /// Slots other nodes asked for and could not get.
    pub waiting: u64,
    /// Slots other nodes hold and did not use at their last word: they come back to the
    /// fleet when those nodes hear that others wait.
    pub spare: u64,
}

/// A node's share of a concurrency limit when it decides alone: rounded up, at least 1.
pub fn fair_share(limit: u64, nodes: u64) -> u64 {
    limit.div_ceil(nodes.max(1)).max(1)
}

impl SlotLease {
    pub fn new(key: Arc<str>) -> Self {
        SlotLease {
            key,
            held: 0,
            active: 0,
            cap: u64::MAX,
            peak: 0,
            short: 0,
            keep: 0,
            others_waiting: 0,
            known_total: 0,
            idle_syncs: 0,
            synced: false,
            exhausted: false,
            room: true,
            urgent: false,
            signalled: false,
            renew_at_ms: 0,
            members: Vec::new(),
            unclaimed: Vec::new(),
            unreleased: Vec::new(),
        }
    }

    /// Async: one request of `cost` slots against the slots this node holds. Returns the
    /// verdict, whether the sync task must be woken for the key, and, when the refusal is
    /// only a grant on its way, whether Redis last said there are slots to grant.
    pub fn admit(&mut self, cost: u64, limit: u64) -> (Verdict, bool, Option<bool>) {
        self.admit_counted(cost, limit, true)
    }

    /// [`SlotLease::admit`]; `first`: a request's first try, rather than a retry of one
    /// waiting for a grant, whose slots are already counted in the demand.
    pub fn admit_counted(
        &mut self,
        cost: u64,
        limit: u64,
        first: bool,
    ) -> (Verdict, bool, Option<bool>) {
        // Slots claimed for requests admitted without Redis can put the fleet over its
        // limit; until it is back under, spare slots cover that first.
        let over = if self.synced {
            self.known_total.saturating_sub(limit)
        } else {
            0
        };
        let fits_held = self.active + cost + over <= self.held;
        let allowed = fits_held && self.active + cost <= self.cap;
        if allowed {
            self.active += cost;
            self.peak = self.peak.max(self.active);
        } else {
            if first {
                self.short += cost;
            } else {
                // A request still waiting for its grant: still wanted, counted once.
                self.short = self.short.max(cost);
            }
            // Held back by the fair share, nothing is coming: refuse now.
            self.urgent |= !self.exhausted && !fits_held;
        }
        let signal = self.urgent && !self.signalled;
        self.signalled |= signal;
        let pending = (!allowed && !fits_held && !self.exhausted).then_some(self.room);
        (self.verdict(allowed, limit), signal, pending)
    }

    /// The fields a response shows: what is free fleet-wide as of Redis's last answer,
    /// plus this node's spare slots.
    fn verdict(&self, allowed: bool, limit: u64) -> Verdict {
        let spare = self.held.min(self.cap).saturating_sub(self.active);
        let free = if self.synced {
            limit.saturating_sub(self.known_total)
        } else {
            limit.saturating_sub(self.active)
        };
        let mut v = algorithm::concurrency(if allowed { 0 } else { limit + 1 }, limit);
        v.remaining = if allowed || spare > 0 {
            (free + spare).min(limit)
        } else {
            0
        };
        v
    }

    /// The end of a request that held `cost` slots.
    pub fn end(&mut self, cost: u64) {
        self.active = self.active.saturating_sub(cost);
    }

    /// Counts slots admitted while Redis was away (async): the next sync claims them, so
    /// that the fleet's count covers them until they end.
    pub fn admitted_alone(&mut self, cost: u64) {
        self.active += cost;
        self.peak = self.peak.max(self.active);
    }

    /// Async: what to send to Redis at this sync, if anything. Slots this node stops
    /// keeping are handed back at once: nothing here admits from them any more.
    pub fn plan(&mut self, limit: u64, nodes: u64, now_ms: u64, ttl_ms: u64) -> Option<SlotPlan> {
        self.urgent = false;
        self.signalled = false;
        let need = self.peak.max(self.active) + self.short;
        self.idle_syncs = if need == 0 { self.idle_syncs + 1 } else { 0 };
        self.keep = need.max(self.keep - self.keep.div_ceil(4)).min(limit);
        let fair = fair_share(limit, nodes);
        // Others wait for slots: keep no more than a fair share, and let requests that
        // end above it hand their slots back.
        let mut target = self.keep;
        // Over the limit (slots claimed after Redis came back): keep only what is in use.
        if self.synced && self.known_total > limit {
            target = target.min(self.active);
        }
        if self.others_waiting > 0 {
            target = target.min(fair);
            self.cap = fair;
        } else {
            self.cap = u64::MAX;
        }
        // Never below what is in use: a slot in use is not ours to hand back, and slots
        // admitted while Redis was away are claimed here.
        let keeps = target.min(self.held).max(self.active);
        let released = self.held > keeps;
        self.held = keeps;
        let want = target.saturating_sub(keeps);
        // Slots come back all the time as requests end: ask again every sync.
        self.exhausted = false;
        self.peak = self.active;
        self.short = 0;
        let renew = self.held > 0 && now_ms >= self.renew_at_ms;
        // A node holding spare slots says so every sync and hears whether others wait,
        // so that those slots move to where they are wanted within a few syncs.
        let spare = keeps - self.active;
        if want == 0 && !released && !renew && spare == 0 {
            return None;
        }
        self.renew_at_ms = now_ms + ttl_ms / 4;
        Some(SlotPlan {
            limit,
            held: keeps,
            want,
            spare,
        })
    }

    /// Async: takes up what Redis answered.
    pub fn apply(&mut self, plan: &SlotPlan, answer: &SlotAnswer) {
        self.held += answer.grant;
        self.known_total = answer.total;
        self.others_waiting = answer.waiting;
        self.synced = true;
        // Slots can still come: unheld ones, or others' spare ones.
        self.room = answer.total < plan.limit || answer.spare > 0;
        if plan.want > 0 {
            // Spare slots elsewhere come back once their nodes hear that this one waits.
            self.exhausted = answer.grant < plan.want && answer.spare == 0;
        }
        if answer.waiting == 0 {
            self.cap = u64::MAX;
        }
    }

    /// A sync that failed; the next round says it again. Atomic: members Redis did not
    /// hear of in time may have expired there, so the next sync claims them all, as it
    /// claims those admitted without Redis (re-adding one that is still there only
    /// renews it).
    pub fn restore(&mut self) {
        self.renew_at_ms = 0;
        self.claim_all_again();
    }

    /// Atomic: the next sync claims every member in flight, whatever Redis still has.
    fn claim_all_again(&mut self) {
        self.unclaimed = self.members.iter().map(|(m, _)| m.clone()).collect();
    }

    /// Atomic: a renewal that failed; its releases go with the next one.
    pub fn restore_renewal(&mut self, renewal: Renewal) {
        self.restore();
        self.unreleased.extend(renewal.release);
    }

    /// On shutdown: keep only the slots in use.
    pub fn release_spare(&mut self) {
        self.keep = 0;
        self.peak = 0;
        self.short = 0;
        self.renew_at_ms = 0;
    }

    /// Atomic: a request admitted without Redis, whose `cost` slots the next sync claims.
    pub fn admitted_alone_atomic(&mut self, member: Box<str>, cost: u64) {
        self.unclaimed.push(member.clone());
        self.members.push((member, cost));
    }

    /// Atomic: the end of a request admitted without Redis. Once claimed, its slots are
    /// removed by the next sync; a claim still to come is simply not made.
    pub fn ended_alone(&mut self, member: &str, cost: u64) {
        let claimed = !self.unclaimed.iter().any(|m| &**m == member);
        self.forget(member);
        if claimed {
            self.unreleased.extend(units(member, cost));
        }
    }

    /// Atomic: the members to claim, release or renew at this sync: claims and releases
    /// whenever there are any, renewals when it is time.
    pub fn renewal(&mut self, now_ms: u64, ttl_ms: u64) -> Option<Renewal> {
        if self.members.is_empty() && self.unreleased.is_empty() {
            // Counted so that the entry of a key nobody uses any more can go.
            self.idle_syncs = self.idle_syncs.saturating_add(1);
            return None;
        }
        self.idle_syncs = 0;
        let due = now_ms >= self.renew_at_ms && !self.members.is_empty();
        if !due && self.unclaimed.is_empty() && self.unreleased.is_empty() {
            return None;
        }
        if due {
            self.renew_at_ms = now_ms + ttl_ms / 4;
        }
        let mut renewal = Renewal {
            claimed: self.unclaimed.clone(),
            release: std::mem::take(&mut self.unreleased),
            ..Renewal::default()
        };
        for (member, cost) in &self.members {
            if self.unclaimed.contains(member) {
                renewal.claim.extend(units(member, *cost));
            } else if due {
                renewal.renew.extend(units(member, *cost));
            }
        }
        Some(renewal)
    }

    /// Atomic: Redis answered a renewal, having added or renewed `touched` slots. Fewer
    /// than were sent means some were gone: ended meanwhile, or lost with their expiry or
    /// a Redis restart. The next sync claims every member still in flight again.
    pub fn renewed(&mut self, renewal: &Renewal, touched: u64) {
        // Releases are not counted in `touched`: one already gone is gone either way.
        self.unclaimed.retain(|m| !renewal.claimed.contains(m));
        if touched < (renewal.claim.len() + renewal.renew.len()) as u64 {
            self.claim_all_again();
        }
    }

    /// Atomic: a request's member no longer needs renewing.
    pub fn forget(&mut self, member: &str) {
        if let Some(i) = self.members.iter().position(|(m, _)| &**m == member) {
            self.members.swap_remove(i);
        }
        self.unclaimed.retain(|m| &**m != member);
    }

    /// Whether nothing is in flight, held or asked for, and the key has been quiet.
    pub fn is_idle(&self) -> bool {
        self.active == 0
            && self.held == 0
            && self.members.is_empty()
            && self.unreleased.is_empty()
            && self.short == 0
            && self.idle_syncs >= IDLE_SYNCS
    }
}

/// The sorted set members of one request's `cost` slots.
pub fn units(member: &str, cost: u64) -> impl Iterator<Item = String> + '_ {
    (1..=cost).map(move |i| format!("{member}:{i}"))
}

/// Slots a request holds until it ends: always on this node's in-flight estimator, and
/// fleet-wide in Redis when the policy is global and Redis answered.
pub struct Held {
    _local: Option<Guard>,
    fleet: Option<Fleet>,
}

enum Fleet {
    Leased {
        table: Arc<KeyTable<SlotLease>>,
        hash: u64,
        cost: u64,
    },
    Atomic(Box<AtomicSlot>),
    /// Atomic, admitted without Redis: claimed and released by the sync task.
    Alone {
        table: Arc<KeyTable<SlotLease>>,
        hash: u64,
        member: Box<str>,
        cost: u64,
    },
}

/// An atomic-mode admission: what its release needs.
pub struct AtomicSlot {
    pub table: Arc<KeyTable<SlotLease>>,
    pub hash: u64,
    pub member: Box<str>,
    pub cost: u64,
    pub redis_key: String,
    pub connection: Connection,
    pub timeout: Duration,
    /// `tollgate_redis_errors_total{op="release"}`.
    pub errors: IntCounter,
}

impl Held {
    /// Slots on this node only (local policies, or decided without Redis).
    pub fn local(guard: Option<Guard>) -> Held {
        Held {
            _local: guard,
            fleet: None,
        }
    }

    /// Slots spent from this node's lease (async).
    pub fn leased(
        guard: Option<Guard>,
        table: Arc<KeyTable<SlotLease>>,
        hash: u64,
        cost: u64,
    ) -> Held {
        Held {
            _local: guard,
            fleet: Some(Fleet::Leased { table, hash, cost }),
        }
    }

    /// Slots admitted without Redis under an atomic limit, which the next sync that
    /// reaches Redis claims (see [`SlotLease::admitted_alone_atomic`]).
    pub fn claimed_later(
        guard: Option<Guard>,
        table: Arc<KeyTable<SlotLease>>,
        hash: u64,
        member: Box<str>,
        cost: u64,
    ) -> Held {
        Held {
            _local: guard,
            fleet: Some(Fleet::Alone {
                table,
                hash,
                member,
                cost,
            }),
        }
    }

    /// Slots counted in Redis by an acquire script (atomic).
    pub fn atomic(guard: Option<Guard>, slot: AtomicSlot) -> Held {
        Held {
            _local: guard,
            fleet: Some(Fleet::Atomic(Box::new(slot))),
        }
    }
}

impl Held {
    /// The local part alone, with nothing to release fleet-wide.
    pub fn into_local(mut self) -> Option<Guard> {
        self.fleet = None;
        self._local.take()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        match self.fleet.take() {
            None => {}
            Some(Fleet::Leased { table, hash, cost }) => {
                table.get(hash, |lease| lease.end(cost));
            }
            Some(Fleet::Alone {
                table,
                hash,
                member,
                cost,
            }) => {
                table.get(hash, |lease| lease.ended_alone(&member, cost));
            }
            Some(Fleet::Atomic(slot)) => {
                slot.table
                    .get(slot.hash, |lease| lease.forget(&slot.member));
                release(*slot);
            }
        }
    }
}

/// Removes an atomic admission's members from Redis, on a task of its own (a request's
/// end cannot wait on Redis). If it fails, the members expire: nobody renews them now.
pub fn release(slot: AtomicSlot) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let AtomicSlot {
            member,
            cost,
            redis_key,
            mut connection,
            timeout,
            errors,
            ..
        } = slot;
        let members: Vec<String> = units(&member, cost).collect();
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(&redis_key).arg(members);
        let call = zrem.query_async::<i64>(&mut connection);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                errors.inc();
                tracing::debug!(key = %redis_key, "a concurrency slot's release did not reach redis ({e}); it expires instead");
            }
            Err(_) => {
                errors.inc();
                tracing::debug!(key = %redis_key, "a concurrency slot's release got no answer within {timeout:?}; it expires instead");
            }
        }
    });
}

#[cfg(test)]
mod tests;
