//! One policy's decision for one request: local, leased (global async) or atomic.

use super::algorithm::{self, Verdict};
use super::key::{self, RequestFacts};
use super::lease::{self, Lease};
use super::link::{unix_ms, unix_ns, RedisLink};
use super::policy::{self, Limiter, Params, Policy};
use super::receipt::{ExactReceipt, Receipt};
use super::scripts;
use super::slots::{self, Held, SlotLease};
use crate::config::{CostSpec, Mode, OnRedisError, Scope, SyncMode};

/// What to do with a global async request whose lease cannot cover it yet while the fleet
/// may still have quota (its grant is on its way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A request's first decision ([`Policy::decide_now`]): as `Wait`, and what it asks
    /// for counts toward the key's demand (its retries do not).
    First,
    /// Let the caller wait for the next sync round.
    Wait,
    /// Redis answered for the key and left it dry: refuse, unless that answer left quota
    /// nobody has reserved (then a grant is still coming: wait).
    Refuse,
    /// Redis did not answer in time: `on_redis_error` decides.
    Degrade,
    /// `redis.timeout` is up although Redis answered: refuse if that answer left the key
    /// dry, else the grant is too slow for this request and `on_redis_error` decides.
    Last,
}

/// What a decision means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// Refused: the client gets the policy's status (429 by default).
    Limited,
    /// Would have been refused, but the policy is in shadow mode.
    ShadowLimited,
    /// Allowed by this node's local share because Redis is unreachable.
    FailedOpen,
    /// Redis is unreachable and the policy fails closed: 503.
    Unavailable,
    /// The client is exempt from this policy: never limited, nothing counted.
    Exempt,
    /// Over the limit, but the policy delays such requests and this one would fit within
    /// `max_delay`: see [`Policy::wait_for_room`]. Not counted until it is settled.
    Deferred,
}

impl Outcome {
    /// The name in metrics, logs and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
            Outcome::ShadowLimited => "shadow_limited",
            Outcome::FailedOpen => "failed_open",
            Outcome::Unavailable => "unavailable",
            Outcome::Exempt => "exempt",
            Outcome::Deferred => "deferred",
        }
    }

    pub fn passes(self) -> bool {
        matches!(
            self,
            Outcome::Allowed | Outcome::ShadowLimited | Outcome::FailedOpen | Outcome::Exempt
        )
    }
}

pub struct Check {
    pub verdict: Verdict,
    pub outcome: Outcome,
    /// Held for the request's lifetime by concurrency limits.
    pub guard: Option<Held>,
    /// What an admission took, to hand back if the request ends up refused or uncounted.
    pub receipt: Receipt,
}

impl Check {
    /// A refused request took nothing, so it keeps no receipt to hand back.
    #[inline]
    fn new(verdict: Verdict, outcome: Outcome, guard: Option<Held>, receipt: Receipt) -> Check {
        let receipt = if verdict.allowed {
            receipt
        } else {
            Receipt::Nothing
        };
        Check {
            verdict,
            outcome,
            guard,
            receipt,
        }
    }
}

/// Why a request's cost is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CostError {
    NotANumber(String),
    TooLarge { cost: u64, quota: u64 },
}

impl std::fmt::Display for CostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CostError::NotANumber(v) => write!(f, "the cost `{v}` is not a whole number"),
            CostError::TooLarge { cost, quota } => {
                write!(
                    f,
                    "the cost {cost} exceeds the policy's whole quota of {quota}"
                )
            }
        }
    }
}

impl Policy {
    /// The request's cost under this policy; a missing cost header costs 1.
    pub fn cost_of(&self, headers: &http::HeaderMap, limiter: &Limiter) -> Result<u64, CostError> {
        let cost = match &self.cost {
            CostSpec::Fixed(n) => *n,
            // Held until the response says what it cost.
            CostSpec::ResponseHeader(_) | CostSpec::ResponseJson(_) => self.reserve,
            CostSpec::Header(name) => match headers.get(name.as_str()) {
                None => 1,
                Some(v) => {
                    let text = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
                    text.parse::<u64>()
                        .map_err(|_| CostError::NotANumber(text))?
                }
            },
        };
        Self::within_quota(cost, limiter)
    }

    /// `cost` if one request may take that much: never more than the whole quota.
    pub fn within_quota(cost: u64, limiter: &Limiter) -> Result<u64, CostError> {
        let quota = limiter.params.quota();
        if cost > quota {
            return Err(CostError::TooLarge { cost, quota });
        }
        Ok(cost)
    }

    /// Decides one request. Waits on Redis only in atomic mode, or when this node holds no
    /// grant for the key while the fleet may still have quota (a new key, or a lease that
    /// ran dry: the grant is already on its way), and then at most `redis.timeout`; past
    /// that, `on_redis_error` decides.
    pub async fn check(
        &self,
        limiter: &Limiter,
        facts: &RequestFacts<'_>,
        cost: u64,
        link: Option<&RedisLink>,
    ) -> Check {
        // Before deciding, so that a round completing in between still counts.
        let seen = link.map(|l| l.sync_generation());
        if let Some(decided) = self.decide(limiter, facts, cost, link, Pending::Wait) {
            return decided;
        }
        let Some(link) = link else {
            let hash = key::hash(limiter.id, &self.key, facts);
            return self.finish(self.local(limiter, hash, cost, 1), false, None);
        };
        if self.sync == SyncMode::Async {
            // Admit only quota Redis granted: wait for the grant this node has already asked
            // for. The second round to complete after this request looked began after its
            // key asked, so it carried the key: if that still left the lease dry, Redis has
            // answered and the request is refused. Redis not answering within
            // `redis.timeout` is a Redis failure.
            let deadline = std::time::Instant::now() + link.config.timeout;
            let first = seen.unwrap_or(0);
            let answered = |link: &RedisLink| link.sync_generation().wrapping_sub(first) >= 2;
            let next_round = || async {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if !left.is_zero() {
                    link.wait_for_sync(link.sync_generation(), left).await;
                }
            };
            if !answered(link) {
                next_round().await;
            }
            loop {
                let late = std::time::Instant::now() >= deadline;
                let pending = match (answered(link), late) {
                    (false, false) => Pending::Wait,
                    (true, false) => Pending::Refuse,
                    (false, true) => Pending::Degrade,
                    (true, true) => Pending::Last,
                };
                if let Some(decided) = self.decide(limiter, facts, cost, Some(link), pending) {
                    return decided;
                }
                // Undecided, so the grant is still to come: a retry before the next round
                // would find the same lease and spin on the worker thread.
                next_round().await;
            }
        }
        if let Params::Concurrency { max } = limiter.params {
            return self.atomic_slots(limiter, facts, cost, max, link).await;
        }
        match self.atomic(limiter, facts, cost, link).await {
            Ok(decided) => {
                let check = self.finish(decided, false, None);
                if check.outcome == Outcome::Limited && limiter.blocks.is_some() {
                    let hash = key::hash(limiter.id, &self.key, facts);
                    self.penalize(limiter, hash, || key::text(&self.key, facts));
                }
                check
            }
            Err(e) => {
                let text = key::text(&self.key, facts);
                link.key_failed(
                    "atomic",
                    &self.redis_key(&link.config.key_prefix, &text, ""),
                    &e,
                );
                match self.on_redis_error {
                    OnRedisError::Closed => self.unavailable(limiter),
                    OnRedisError::Open => {
                        let hash = key::hash(limiter.id, &self.key, facts);
                        self.finish(self.local(limiter, hash, cost, link.nodes()), true, None)
                    }
                }
            }
        }
    }

    /// Decides one request on the spot, with no Redis round trip; `None` when the decision
    /// needs to wait (atomic mode, or a refill on its way), then use [`Policy::check`].
    /// Keeping this path free of futures makes the common decision cheaper.
    pub fn decide_now(
        &self,
        limiter: &Limiter,
        facts: &RequestFacts<'_>,
        cost: u64,
        link: Option<&RedisLink>,
    ) -> Option<Check> {
        self.decide(limiter, facts, cost, link, Pending::First)
    }

    #[inline]
    fn decide(
        &self,
        limiter: &Limiter,
        facts: &RequestFacts<'_>,
        cost: u64,
        link: Option<&RedisLink>,
        pending: Pending,
    ) -> Option<Check> {
        if !self.exempt.is_empty()
            && self
                .exempt
                .covers(facts.client_ip, facts.api_key_id, facts.tenant)
        {
            return Some(self.exempted(limiter));
        }
        let hash = key::hash(limiter.id, &self.key, facts);
        if limiter.blocks.is_some() {
            let now = unix_ms();
            if let Some(until) = self.blocked_until(limiter, hash, now) {
                return Some(self.finish(
                    (blocked(limiter, now, until), Receipt::Nothing),
                    false,
                    None,
                ));
            }
        }
        let reachable = |link: &RedisLink| {
            link.reachable(|| {
                self.redis_key(&link.config.key_prefix, &key::text(&self.key, facts), "")
            })
        };
        if let (Scope::Global, Some(link), SyncMode::Atomic) = (self.scope, link, self.sync) {
            if reachable(link) {
                return None;
            }
        }
        let mut guard = None;
        let (decided, failed_open) = match (limiter.params, self.scope, link) {
            // Slots are released with the guard: nothing to hand back.
            (Params::Concurrency { max }, Scope::Local, _)
            | (Params::Concurrency { max }, Scope::Global, None) => {
                let (v, held) = slots_alone(limiter, hash, cost, max);
                guard = held;
                ((v, Receipt::Nothing), false)
            }
            (Params::Concurrency { max }, Scope::Global, Some(link)) if !reachable(link) => {
                match self.on_redis_error {
                    OnRedisError::Closed => return Some(self.unavailable(limiter)),
                    OnRedisError::Open => {
                        let (v, held) =
                            self.slots_without_redis(limiter, facts, hash, cost, max, link);
                        guard = held;
                        ((v, Receipt::Nothing), true)
                    }
                }
            }
            (Params::Concurrency { max }, Scope::Global, Some(link)) => {
                let first = pending == Pending::First;
                match self.leased_slots(limiter, hash, facts, cost, max, link, first) {
                    Some((v, held, Some(room))) => match pending {
                        Pending::First | Pending::Wait => return None,
                        // Slots may still come back from other nodes: wait for them
                        // while `redis.timeout` allows.
                        Pending::Refuse if room => return None,
                        // Redis answered and no slot came in time: the fleet is full.
                        Pending::Refuse | Pending::Last => ((v, Receipt::Nothing), false),
                        Pending::Degrade => match self.on_redis_error {
                            OnRedisError::Closed => return Some(self.unavailable(limiter)),
                            OnRedisError::Open => {
                                drop(held);
                                let (v, held) =
                                    self.slots_without_redis(limiter, facts, hash, cost, max, link);
                                guard = held;
                                ((v, Receipt::Nothing), true)
                            }
                        },
                    },
                    Some((v, held, None)) => {
                        guard = held;
                        ((v, Receipt::Nothing), false)
                    }
                    None => {
                        self.counters.untracked.inc();
                        let share = crate::limit::slots::fair_share(max, link.nodes());
                        let (v, held) = slots_alone(limiter, hash, cost, share);
                        guard = held;
                        ((v, Receipt::Nothing), false)
                    }
                }
            }
            (_, Scope::Local, _) | (_, Scope::Global, None) => {
                (self.local(limiter, hash, cost, 1), false)
            }
            (_, Scope::Global, Some(link)) if !reachable(link) => match self.on_redis_error {
                OnRedisError::Closed => return Some(self.unavailable(limiter)),
                OnRedisError::Open => (self.local(limiter, hash, cost, link.nodes()), true),
            },
            (_, Scope::Global, Some(link)) => match self
                .leased(limiter, hash, facts, cost, pending, link)
            {
                Some((decided, Some(room))) => match pending {
                    Pending::First | Pending::Wait => return None,
                    Pending::Refuse if room => return None,
                    Pending::Refuse => (decided, false),
                    Pending::Last if !room => (decided, false),
                    // No grant within `redis.timeout`: too slow to decide this one.
                    Pending::Degrade | Pending::Last => match self.on_redis_error {
                        OnRedisError::Closed => return Some(self.unavailable(limiter)),
                        OnRedisError::Open => (self.local(limiter, hash, cost, link.nodes()), true),
                    },
                },
                Some((decided, None)) => (decided, false),
                None => {
                    self.counters.untracked.inc();
                    (self.local(limiter, hash, cost, link.nodes()), false)
                }
            },
        };
        // Built in the return slot, after the penalty: a `Check` made first and returned
        // later is copied whole, which on the lease path costs more than the decision.
        let (verdict, receipt) = decided;
        let outcome = self.settle(&verdict, failed_open);
        if outcome == Outcome::Limited && limiter.blocks.is_some() {
            self.penalize(limiter, hash, || key::text(&self.key, facts));
        }
        Some(Check::new(verdict, outcome, guard, receipt))
    }

    #[inline]
    fn finish(
        &self,
        (verdict, receipt): (Verdict, Receipt),
        failed_open: bool,
        guard: Option<Held>,
    ) -> Check {
        let outcome = self.settle(&verdict, failed_open);
        Check::new(verdict, outcome, guard, receipt)
    }

    /// The outcome of `verdict`, counted.
    #[inline]
    fn settle(&self, verdict: &Verdict, failed_open: bool) -> Outcome {
        let outcome = match (verdict.allowed, self.mode) {
            (true, _) if failed_open => Outcome::FailedOpen,
            (true, _) => Outcome::Allowed,
            (false, Mode::Shadow) => Outcome::ShadowLimited,
            (false, Mode::Enforce)
                if self
                    .delay
                    .as_ref()
                    .is_some_and(|d| d.may_wait(verdict.retry_after_ms)) =>
            {
                Outcome::Deferred
            }
            (false, Mode::Enforce) => Outcome::Limited,
        };
        self.count(outcome);
        outcome
    }

    #[inline]
    fn count(&self, outcome: Outcome) {
        let c = &self.counters;
        match outcome {
            Outcome::Allowed => c.allowed.inc(),
            Outcome::Limited => c.limited.inc(),
            Outcome::ShadowLimited => c.shadow_limited.inc(),
            Outcome::FailedOpen => c.failed_open.inc(),
            Outcome::Unavailable => c.unavailable.inc(),
            Outcome::Exempt => c.exempt.inc(),
            // Counted once it is settled.
            Outcome::Deferred => {}
        }
    }

    #[cold]
    fn exempted(&self, limiter: &Limiter) -> Check {
        self.count(Outcome::Exempt);
        let quota = limiter.params.quota();
        Check {
            verdict: Verdict {
                allowed: true,
                limit: quota,
                remaining: quota,
                reset_ms: 0,
                retry_after_ms: 0,
            },
            outcome: Outcome::Exempt,
            guard: None,
            receipt: Receipt::Nothing,
        }
    }

    fn unavailable(&self, limiter: &Limiter) -> Check {
        self.count(Outcome::Unavailable);
        Check {
            verdict: Verdict {
                allowed: false,
                limit: limiter.params.quota(),
                remaining: 0,
                reset_ms: 1_000,
                retry_after_ms: 1_000,
            },
            outcome: Outcome::Unavailable,
            guard: None,
            receipt: Receipt::Nothing,
        }
    }

    /// This node alone among `nodes` (1 for local policies). A key it holds Redis's word
    /// on continues from that (see [`Lease::admit_alone`]); any other key gets this node's
    /// share of the numbers.
    #[inline]
    fn local(&self, limiter: &Limiter, hash: u64, cost: u64, nodes: u64) -> (Verdict, Receipt) {
        match limiter.params {
            Params::Window { limit, sliding, .. } => {
                let now = unix_ms();
                let span = limiter.window_at(now);
                // What this node admits is flushed once Redis is back.
                let known = limiter.leases.get(hash, |lease| {
                    let v = lease.admit_alone(cost, limit, nodes, now, span, sliding);
                    (v, lease_receipt(lease, hash, cost, true))
                });
                let share = lease::fallback_share(limit, nodes).max(1);
                let window = span.id;
                match (known, &limiter.windows) {
                    (Some(decided), _) => decided,
                    (None, Some(w)) => (
                        w.check(hash, cost, share, now, span, sliding),
                        Receipt::Window { hash, window, cost },
                    ),
                    (None, None) => (
                        algorithm::fixed_window_in(0, cost, share, now, span),
                        Receipt::Nothing,
                    ),
                }
            }
            Params::Log { limit, window_ms } => {
                let limit = lease::fallback_share(limit, nodes).max(1);
                let now = unix_ms();
                let exact = limiter.logs.as_ref().and_then(|logs| {
                    logs.with(
                        hash,
                        algorithm::SlidingLog::default,
                        |log: &mut algorithm::SlidingLog| log.check(cost, limit, now, window_ms),
                    )
                });
                match (exact, &limiter.windows) {
                    (Some(v), _) => (v, Receipt::Log { hash, cost }),
                    (None, Some(w)) => {
                        self.counters.untracked.inc();
                        let span = limiter.window_at(now);
                        (
                            w.check(hash, cost, limit, now, span, true),
                            Receipt::Window {
                                hash,
                                window: span.id,
                                cost,
                            },
                        )
                    }
                    (None, None) => (
                        algorithm::fixed_window(0, cost, limit, now, window_ms),
                        Receipt::Nothing,
                    ),
                }
            }
            Params::Bucket(bucket) => {
                let now = unix_ns();
                let known = limiter.leases.get(hash, |lease| {
                    let v = lease.admit_bucket_alone(cost, bucket, nodes, now);
                    (v, lease_receipt(lease, hash, cost, false))
                });
                match (known, &limiter.tats) {
                    (Some(decided), _) => decided,
                    (None, Some(t)) => (
                        t.check(hash, cost, bucket.share(nodes), now),
                        Receipt::Tat { hash, cost },
                    ),
                    (None, None) => (
                        algorithm::gcra(0, cost, bucket.share(nodes), now).0,
                        Receipt::Nothing,
                    ),
                }
            }
            Params::Concurrency { max } => (algorithm::concurrency(0, max), Receipt::Nothing),
        }
    }

    /// A global async decision from this node's lease; `None` when the key table is full.
    #[inline]
    fn leased(
        &self,
        limiter: &Limiter,
        hash: u64,
        facts: &RequestFacts<'_>,
        cost: u64,
        pending: Pending,
        link: &RedisLink,
    ) -> Option<((Verdict, Receipt), Option<bool>)> {
        // A cost from the response may settle far above its reserve: until Redis has
        // answered since the request came, the lease must cover the typical cost.
        let need = match pending {
            Pending::First | Pending::Wait if self.cost.from_response() => {
                limiter.expected_cost.need(cost)
            }
            _ => cost,
        };
        let now = unix_ms();
        let nodes = link.nodes();
        let sync_ms = link.config.sync_interval.as_millis() as u64;
        let make = || {
            let window = match limiter.params {
                Params::Window { .. } => limiter.window_at(now).id,
                _ => 0,
            };
            Lease::new(key::text(&self.key, facts).into(), window)
        };
        let admit = |lease: &mut Lease| {
            let (verdict, urgent, pending) =
                self.admit(limiter, lease, cost, need, now, nodes, sync_ms);
            let windowed = matches!(limiter.params, Params::Window { .. });
            (
                (verdict, lease_receipt(lease, hash, cost, windowed)),
                urgent,
                pending,
            )
        };
        let (decided, urgent, pending) = limiter.leases.with(hash, make, admit)?;
        if urgent {
            link.mark_urgent(limiter.id, hash);
        }
        Some((decided, pending))
    }

    /// A global async concurrency decision from the slots this node holds for the key;
    /// `None` when the key table is full. `first`: the request's first try, whose slots
    /// count toward the key's demand if it has to wait.
    #[allow(clippy::too_many_arguments)]
    fn leased_slots(
        &self,
        limiter: &Limiter,
        hash: u64,
        facts: &RequestFacts<'_>,
        cost: u64,
        max: u64,
        link: &RedisLink,
        first: bool,
    ) -> Option<(Verdict, Option<Held>, Option<bool>)> {
        let table = limiter.slots.as_ref()?;
        let make = || SlotLease::new(key::text(&self.key, facts).into());
        let (verdict, urgent, pending) =
            table.with(hash, make, |l| l.admit_counted(cost, max, first))?;
        if urgent {
            link.mark_urgent(limiter.id, hash);
        }
        let held = verdict.allowed.then(|| {
            let local = limiter
                .inflight
                .as_ref()
                .map(|i| i.incr(hash, cost as isize).0);
            Held::leased(local, table.clone(), hash, cost)
        });
        Some((verdict, held, pending))
    }

    /// A global concurrency decision while Redis cannot answer (`on_redis_error: open`):
    /// this node's share of the limit among the live nodes, counting everything it has
    /// in flight. The slots are claimed in Redis at the next sync that reaches it, so that
    /// the fleet's count covers them until they end (async: in this node's lease; atomic:
    /// as members, released at the end like any other).
    #[cold]
    fn slots_without_redis(
        &self,
        limiter: &Limiter,
        facts: &RequestFacts<'_>,
        hash: u64,
        cost: u64,
        max: u64,
        link: &RedisLink,
    ) -> (Verdict, Option<Held>) {
        let share = slots::fair_share(max, link.nodes());
        let (mut verdict, held) = slots_alone(limiter, hash, cost, share);
        verdict.limit = max;
        let (Some(_), Some(table)) = (&held, &limiter.slots) else {
            return (verdict, held);
        };
        // A key first seen while Redis is away has no entry yet.
        let text = key::text(&self.key, facts);
        let make = || SlotLease::new(text.as_str().into());
        match self.sync {
            SyncMode::Async => {
                if table.with(hash, make, |l| l.admitted_alone(cost)).is_some() {
                    let local = held.and_then(Held::into_local);
                    return (
                        verdict,
                        Some(Held::leased(local, table.clone(), hash, cost)),
                    );
                }
            }
            SyncMode::Atomic => {
                // Claimed and, at its end, released by the sync task: Redis may still be
                // away when the request ends.
                let member: Box<str> = link.unique_member().into();
                let tracked = table
                    .with(hash, make, |l| {
                        l.admitted_alone_atomic(member.clone(), cost)
                    })
                    .is_some();
                if tracked {
                    let local = held.and_then(Held::into_local);
                    return (
                        verdict,
                        Some(Held::claimed_later(
                            local,
                            table.clone(),
                            hash,
                            member,
                            cost,
                        )),
                    );
                }
            }
        }
        (verdict, held)
    }

    /// `sync: atomic` concurrency: one script per acquire; the release follows the
    /// request's end (see [`slots`]).
    async fn atomic_slots(
        &self,
        limiter: &Limiter,
        facts: &RequestFacts<'_>,
        cost: u64,
        max: u64,
        link: &RedisLink,
    ) -> Check {
        match self.acquire(limiter, facts, cost, max, link).await {
            Ok((verdict, held)) => self.finish((verdict, Receipt::Nothing), false, held),
            Err(e) => {
                let text = key::text(&self.key, facts);
                link.key_failed(
                    "atomic",
                    &self.redis_key(&link.config.key_prefix, &text, slots::MEMBERS_SUFFIX),
                    &e,
                );
                match self.on_redis_error {
                    OnRedisError::Closed => self.unavailable(limiter),
                    OnRedisError::Open => {
                        let hash = key::hash(limiter.id, &self.key, facts);
                        let (verdict, held) =
                            self.slots_without_redis(limiter, facts, hash, cost, max, link);
                        self.finish((verdict, Receipt::Nothing), true, held)
                    }
                }
            }
        }
    }

    async fn acquire(
        &self,
        limiter: &Limiter,
        facts: &RequestFacts<'_>,
        cost: u64,
        max: u64,
        link: &RedisLink,
    ) -> Result<(Verdict, Option<Held>), AtomicError> {
        let mut connection = link.connection().ok_or(AtomicError::NotConnected)?;
        let table = limiter.slots.clone().ok_or(AtomicError::NotConnected)?;
        let text = key::text(&self.key, facts);
        let hash = key::hash(limiter.id, &self.key, facts);
        let redis_key = self.redis_key(&link.config.key_prefix, &text, slots::MEMBERS_SUFFIX);
        let member: Box<str> = link.unique_member().into();
        let ttl = lease::reservation_ttl_ms(link.config.sync_interval.as_millis() as u64);
        let answer = bounded(
            link.config.timeout,
            scripts::SLOT_ACQUIRE_SCRIPT
                .key(&redis_key)
                .arg(max)
                .arg(cost)
                .arg(&*member)
                .arg(ttl)
                .invoke_async::<(u64, u64)>(&mut connection),
        )
        .await;
        let slot = slots::AtomicSlot {
            table: table.clone(),
            hash,
            member: member.clone(),
            cost,
            redis_key,
            connection,
            // Off the request path: a release may take longer than an acquire may.
            timeout: (link.config.timeout * 4).max(std::time::Duration::from_millis(500)),
            errors: link.metrics().redis_errors.with_label_values(&["release"]),
        };
        let (admitted, in_flight) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                // The script may still run after the deadline: undo it, in order.
                slots::release(slot);
                return Err(e);
            }
        };
        if admitted == 0 {
            let mut verdict = algorithm::concurrency(max + 1, max);
            verdict.remaining = max.saturating_sub(in_flight);
            return Ok((verdict, None));
        }
        let make = || SlotLease::new(text.as_str().into());
        let tracked = table
            .with(hash, make, |l| l.members.push((member, cost)))
            .is_some();
        if !tracked {
            // A slot this node could not renew would lapse while still in use.
            slots::release(slot);
            self.counters.untracked.inc();
            return Ok(slots_alone(
                limiter,
                hash,
                cost,
                slots::fair_share(max, link.nodes()),
            ));
        }
        let local = limiter
            .inflight
            .as_ref()
            .map(|i| i.incr(hash, cost as isize).0);
        Ok((
            algorithm::concurrency(in_flight, max),
            Some(Held::atomic(local, slot)),
        ))
    }

    /// One request against this node's lease for its key: the verdict, whether the sync
    /// task must be woken for the key, and, when the refusal is only a refill in flight,
    /// whether Redis last said there is quota left to grant. `need`: see
    /// [`Lease::admit_window_needing`].
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn admit(
        &self,
        limiter: &Limiter,
        lease: &mut Lease,
        cost: u64,
        need: u64,
        now: u64,
        nodes: u64,
        sync_ms: u64,
    ) -> (Verdict, bool, Option<bool>) {
        let verdict = match limiter.params {
            Params::Window { limit, sliding, .. } => {
                let span = limiter.window_at(now);
                lease.admit_window_needing(cost, need, limit, now, span, sliding, nodes, sync_ms)
            }
            Params::Bucket(b) => lease.admit_bucket(cost, b.burst, nodes, sync_ms),
            // Logs are atomic-only and concurrency is local-only (validation); decide
            // conservatively rather than panic.
            Params::Log { limit, .. } | Params::Concurrency { max: limit } => {
                algorithm::concurrency(limit + 1, limit)
            }
        };
        let signal = lease.urgent && !lease.signalled;
        lease.signalled |= signal;
        // Refused only because this node's refill is still on its way; and whether Redis
        // last said there is quota left to grant.
        let pending = (!verdict.allowed && !lease.exhausted).then_some(lease.room);
        (verdict, signal, pending)
    }

    /// One round trip to Redis, which decides exactly. What Redis answers is kept per key,
    /// so a node that must decide without Redis continues from it, and what the node
    /// admitted alone meanwhile rides along with the next call.
    async fn atomic(
        &self,
        limiter: &Limiter,
        facts: &RequestFacts<'_>,
        cost: u64,
        link: &RedisLink,
    ) -> Result<(Verdict, Receipt), AtomicError> {
        let mut connection = link.connection().ok_or(AtomicError::NotConnected)?;
        let prefix = &link.config.key_prefix;
        let text = key::text(&self.key, facts);
        let hash = key::hash(limiter.id, &self.key, facts);
        let timeout = link.config.timeout;
        match limiter.params {
            Params::Window { limit, sliding, .. } => {
                let now = unix_ms();
                let span = limiter.window_at(now);
                let window = span.id;
                let delta = limiter
                    .leases
                    .get(hash, |l| l.take_exact_window_delta(window))
                    .unwrap_or(0);
                let answer = bounded(
                    timeout,
                    scripts::WINDOW_SCRIPT
                        .key(self.redis_key(prefix, &text, &limiter.window_suffix(window)))
                        .key(self.redis_key(
                            prefix,
                            &text,
                            &limiter.window_suffix(window.wrapping_sub(1)),
                        ))
                        .arg(delta)
                        .arg(0)
                        .arg(cost)
                        .arg(limit)
                        .arg(span.elapsed_ms(now))
                        .arg(span.len_ms())
                        .arg(u8::from(sliding))
                        .arg(1)
                        .arg(link.reservation_field())
                        .arg(0)
                        .arg(limiter.window_keep_ms(span, now))
                        .invoke_async::<(u64, u64, u64, u64)>(&mut connection),
                )
                .await;
                let (total, grant, prev, used_after) = match answer {
                    Ok(a) => a,
                    Err(e) => {
                        limiter
                            .leases
                            .get(hash, |l| l.restore_exact_delta(Some(window), delta));
                        return Err(e);
                    }
                };
                let make = || Lease::new(text.as_str().into(), window);
                limiter.leases.with(hash, make, |l| {
                    l.record_exact_window(window, used_after, prev)
                });
                let allowed = grant == cost;
                let used = if allowed { total - cost } else { total };
                let mut v = if sliding {
                    algorithm::sliding_window_in(prev, used, cost, limit, now, span)
                } else {
                    algorithm::fixed_window_in(used, cost, limit, now, span)
                };
                v.allowed = allowed;
                let receipt = Receipt::Exact(Box::new(ExactReceipt {
                    key_text: text,
                    window: Some(window),
                    cost,
                    member: None,
                }));
                Ok((v, receipt))
            }
            Params::Bucket(b) => {
                let delta = limiter
                    .leases
                    .get(hash, |l| l.take_exact_bucket_delta())
                    .unwrap_or(0);
                let answer = bounded(
                    timeout,
                    scripts::BUCKET_SCRIPT
                        .key(self.redis_key(prefix, &text, policy::BUCKET_SUFFIX))
                        .arg(delta)
                        .arg(0)
                        .arg(cost)
                        .arg(b.per_ns as f64 / b.count.max(1) as f64 / 1_000.0)
                        .arg(b.burst)
                        .arg(1)
                        .arg(link.reservation_field())
                        .arg(0)
                        .invoke_async::<(u64, u64, u64)>(&mut connection),
                )
                .await;
                let (grant, left, next_ms) = match answer {
                    Ok(a) => a,
                    Err(e) => {
                        limiter
                            .leases
                            .get(hash, |l| l.restore_exact_delta(None, delta));
                        return Err(e);
                    }
                };
                let per_token_ms = b.interval_ns().div_ceil(1_000_000);
                let make = || Lease::new(text.as_str().into(), 0);
                limiter.leases.with(hash, make, |l| {
                    l.record_exact_bucket(left, per_token_ms, unix_ns())
                });
                let allowed = grant == cost;
                let verdict = Verdict {
                    allowed,
                    limit: b.burst,
                    remaining: left,
                    reset_ms: (b.burst - left.min(b.burst)) * per_token_ms,
                    retry_after_ms: if allowed {
                        0
                    } else {
                        next_ms.max(1) + (cost.saturating_sub(1)) * per_token_ms
                    },
                };
                let receipt = Receipt::Exact(Box::new(ExactReceipt {
                    key_text: text,
                    window: None,
                    cost,
                    member: None,
                }));
                Ok((verdict, receipt))
            }
            Params::Log { limit, window_ms } => {
                let now = unix_ms();
                let member = link.unique_member();
                let (allowed, remaining, wait) = bounded(
                    timeout,
                    scripts::LOG_SCRIPT
                        .key(self.redis_key(prefix, &text, &policy::log_suffix(window_ms)))
                        .arg(now)
                        .arg(window_ms)
                        .arg(limit)
                        .arg(cost)
                        .arg(&member)
                        .invoke_async::<(u64, u64, u64)>(&mut connection),
                )
                .await?;
                let verdict = Verdict {
                    allowed: allowed == 1,
                    limit,
                    remaining,
                    reset_ms: window_ms,
                    retry_after_ms: if allowed == 1 { 0 } else { wait.max(1) },
                };
                let receipt = Receipt::Exact(Box::new(ExactReceipt {
                    key_text: text,
                    window: None,
                    cost,
                    member: Some(member),
                }));
                Ok((verdict, receipt))
            }
            Params::Concurrency { max } => Ok((algorithm::concurrency(0, max), Receipt::Nothing)),
        }
    }
}

/// Slots on this node alone: its in-flight estimator against `max`.
fn slots_alone(limiter: &Limiter, hash: u64, cost: u64, max: u64) -> (Verdict, Option<Held>) {
    match limiter
        .inflight
        .as_ref()
        .map(|i| i.incr(hash, cost as isize))
    {
        Some((guard, count)) => {
            let verdict = algorithm::concurrency(count.max(0) as u64, max);
            (verdict, verdict.allowed.then(|| Held::local(Some(guard))))
        }
        None => (algorithm::concurrency(0, max), None),
    }
}

/// The verdict for a key that is blocked until `until` (Unix ms).
#[cold]
fn blocked(limiter: &Limiter, now: u64, until: u64) -> Verdict {
    Verdict {
        allowed: false,
        limit: limiter.params.quota(),
        remaining: 0,
        reset_ms: until - now,
        retry_after_ms: until - now,
    }
}

/// What an admission just made on `lease` took (only read when it was admitted).
#[inline]
fn lease_receipt(lease: &Lease, hash: u64, cost: u64, windowed: bool) -> Receipt {
    Receipt::Lease {
        hash,
        window: windowed.then_some(lease.window),
        cost,
        backed: lease.last_backed,
    }
}

/// A Redis call on the request path, cut off at `redis.timeout`.
async fn bounded<T>(
    timeout: std::time::Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, AtomicError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(AtomicError::Redis),
        Err(_) => Err(AtomicError::Timeout(timeout)),
    }
}

#[derive(Debug)]
pub enum AtomicError {
    NotConnected,
    Timeout(std::time::Duration),
    Redis(redis::RedisError),
}

impl std::fmt::Display for AtomicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AtomicError::NotConnected => f.write_str("not connected"),
            AtomicError::Timeout(d) => write!(f, "no answer within {d:?}"),
            AtomicError::Redis(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    /// A global async policy and a link marked up with `redis.timeout` at 200 ms. No Redis
    /// is contacted: the test completes sync rounds itself.
    fn global_async() -> (Arc<Policy>, Arc<RedisLink>) {
        let yaml = "redis:\n  url: redis://127.0.0.1:1\n  timeout: 200ms\n\
                    upstreams:\n  a:\n    backends: [127.0.0.1:9]\n\
                    limits:\n  p:\n    algorithm: fixed_window\n    rate: 50/1m\n    key: client_ip\n\
                    routes:\n  - prefix: /\n    upstream: a\n";
        let config = crate::config::parse(yaml, "t.yaml")
            .expect("test config")
            .config;
        let metrics = Arc::new(Metrics::new());
        let policy = Policy::build("p", &config.limits["p"], &metrics);
        let link = RedisLink::new(config.redis.as_ref().expect("redis"), metrics).expect("link");
        link.mark_up();
        (Arc::new(policy), Arc::new(link))
    }

    #[test]
    fn a_request_whose_grant_stays_away_is_decided_at_the_deadline() {
        let (policy, link) = global_async();
        // Sync rounds that complete without granting the key anything, as when Redis
        // answers but the grants go to other keys.
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = {
            let (link, stop) = (link.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    link.sync_completed();
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let (decided, outcome) = mpsc::channel();
        std::thread::spawn(move || {
            let headers = http::HeaderMap::new();
            let facts = RequestFacts {
                client_ip: "192.0.2.7".parse().expect("ip"),
                api_key_id: None,
                tenant: None,
                tier: None,
                path: "/",
                method: "GET",
                route: "/",
                host: None,
                headers: &headers,
                query: None,
                claims: None,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            let limiter = policy.limiter(None);
            let check = runtime.block_on(policy.check(limiter, &facts, 1, Some(&link)));
            let _ = decided.send(check.outcome);
        });
        // A loop that retried without waiting would spin here for good.
        let outcome = outcome.recv_timeout(Duration::from_secs(5));
        stop.store(true, Ordering::Relaxed);
        let _ = rounds.join();
        assert_eq!(
            outcome,
            Ok(Outcome::FailedOpen),
            "past redis.timeout with no grant, on_redis_error (open) decides"
        );
    }
}
