//! One policy's decision for one request: local, leased (global async) or atomic.

use super::algorithm::{self, Verdict};
use super::key::{self, RequestFacts};
use super::lease::Lease;
use super::link::{unix_ms, unix_ns, RedisLink};
use super::policy::{self, Limiter, Params, Policy};
use super::scripts;
use crate::config::{CostSpec, Mode, OnRedisError, Scope, SyncMode};
use pingora_limits::inflight::Guard;

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
}

impl Outcome {
    pub fn passes(self) -> bool {
        matches!(
            self,
            Outcome::Allowed | Outcome::ShadowLimited | Outcome::FailedOpen
        )
    }
}

pub struct Check {
    pub verdict: Verdict,
    pub outcome: Outcome,
    /// Held for the request's lifetime by concurrency limits.
    pub guard: Option<Guard>,
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

    /// Decides one request. Waits on Redis only in atomic mode, or when this node's lease
    /// for the key ran dry while the fleet still has quota (the refill is already on its
    /// way), and then at most `redis.timeout`.
    pub async fn check(
        &self,
        limiter: &Limiter,
        facts: &RequestFacts<'_>,
        cost: u64,
        link: Option<&RedisLink>,
    ) -> Check {
        if let Some(decided) = self.decide(limiter, facts, cost, link, true) {
            return decided;
        }
        let Some(link) = link else {
            return self.finish(
                self.local(limiter, key::hash(limiter.id, &self.key, facts), cost, 1),
                false,
                None,
            );
        };
        if self.sync == SyncMode::Async {
            // Rather than refuse a request the fleet has room for, wait for the refill this
            // node has already asked for (a round under way may not carry it yet).
            let deadline = std::time::Instant::now() + link.config.timeout;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                link.wait_for_sync(link.sync_generation(), left).await;
                let may_wait = std::time::Instant::now() < deadline;
                if let Some(decided) = self.decide(limiter, facts, cost, Some(link), may_wait) {
                    return decided;
                }
            }
        }
        match self.atomic(limiter, facts, cost, link).await {
            Ok(v) => self.finish(v, false, None),
            Err(e) => {
                link.mark_down("atomic", &e);
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
        self.decide(limiter, facts, cost, link, true)
    }

    #[inline]
    fn decide(
        &self,
        limiter: &Limiter,
        facts: &RequestFacts<'_>,
        cost: u64,
        link: Option<&RedisLink>,
        may_wait: bool,
    ) -> Option<Check> {
        if let (Scope::Global, Some(link), SyncMode::Atomic) = (self.scope, link, self.sync) {
            if link.is_up() && !matches!(limiter.params, Params::Concurrency { .. }) {
                return None;
            }
        }
        let hash = key::hash(limiter.id, &self.key, facts);
        let mut guard = None;
        let (verdict, failed_open) = match (limiter.params, self.scope, link) {
            (Params::Concurrency { max }, ..) => {
                let inflight = limiter.inflight.as_ref();
                match inflight.map(|i| i.incr(hash, cost as isize)) {
                    Some((g, count)) => {
                        let v = algorithm::concurrency(count.max(0) as u64, max);
                        if v.allowed {
                            guard = Some(g);
                        }
                        (v, false)
                    }
                    None => (algorithm::concurrency(0, max), false),
                }
            }
            (_, Scope::Local, _) | (_, Scope::Global, None) => {
                (self.local(limiter, hash, cost, 1), false)
            }
            (_, Scope::Global, Some(link)) if !link.is_up() => match self.on_redis_error {
                OnRedisError::Closed => return Some(self.unavailable(limiter)),
                OnRedisError::Open => (self.local(limiter, hash, cost, link.nodes()), true),
            },
            (_, Scope::Global, Some(link)) => match self.leased(limiter, hash, facts, cost, link) {
                Some((_, true)) if may_wait => return None,
                Some((v, _)) => (v, false),
                None => {
                    self.counters.untracked.inc();
                    (self.local(limiter, hash, cost, link.nodes()), false)
                }
            },
        };
        Some(self.finish(verdict, failed_open, guard))
    }

    #[inline]
    fn finish(&self, verdict: Verdict, failed_open: bool, guard: Option<Guard>) -> Check {
        let outcome = match (verdict.allowed, self.mode) {
            (true, _) if failed_open => Outcome::FailedOpen,
            (true, _) => Outcome::Allowed,
            (false, Mode::Shadow) => Outcome::ShadowLimited,
            (false, Mode::Enforce) => Outcome::Limited,
        };
        self.count(outcome);
        Check {
            verdict,
            outcome,
            guard,
        }
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
        }
    }

    /// This node alone, with `1/nodes` of the numbers (all of them for local policies).
    fn local(&self, limiter: &Limiter, hash: u64, cost: u64, nodes: u64) -> Verdict {
        let params = limiter.params.share(nodes);
        match params {
            Params::Window {
                limit,
                window_ms,
                sliding,
            } => {
                let now = unix_ms();
                // A key this node holds a lease for keeps its exact count for the window
                // through an outage, and what it admits is flushed once Redis is back.
                let leased = limiter.leases.get(hash, |lease| {
                    lease.admit_alone(cost, limit, nodes, now, window_ms, sliding)
                });
                match (leased, &limiter.windows) {
                    (Some(v), _) => v,
                    (None, Some(w)) => w.check(hash, cost, limit, now, sliding),
                    (None, None) => algorithm::fixed_window(0, cost, limit, now, window_ms),
                }
            }
            Params::Log { limit, window_ms } => {
                let now = unix_ms();
                let exact = limiter.logs.as_ref().and_then(|logs| {
                    logs.with(
                        hash,
                        algorithm::SlidingLog::default,
                        |log: &mut algorithm::SlidingLog| log.check(cost, limit, now, window_ms),
                    )
                });
                match (exact, &limiter.windows) {
                    (Some(v), _) => v,
                    (None, Some(w)) => {
                        self.counters.untracked.inc();
                        w.check(hash, cost, limit, now, true)
                    }
                    (None, None) => algorithm::fixed_window(0, cost, limit, now, window_ms),
                }
            }
            Params::Bucket(bucket) => match &limiter.tats {
                Some(t) => t.check(hash, cost, bucket, unix_ns()),
                None => algorithm::gcra(0, cost, bucket, unix_ns()).0,
            },
            Params::Concurrency { max } => algorithm::concurrency(0, max),
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
        link: &RedisLink,
    ) -> Option<(Verdict, bool)> {
        let now = unix_ms();
        let nodes = link.nodes();
        let sync_ms = link.config.sync_interval.as_millis() as u64;
        let make = || {
            let window = match limiter.params {
                Params::Window { window_ms, .. } => algorithm::window_of(now, window_ms),
                _ => 0,
            };
            Lease::new(key::text(&self.key, facts).into(), window)
        };
        let admit = |lease: &mut Lease| self.admit(limiter, lease, cost, now, nodes, sync_ms);
        let (verdict, urgent, pending) = limiter.leases.with(hash, make, admit)?;
        if urgent {
            link.mark_urgent(limiter.id, hash);
        }
        Some((verdict, pending))
    }

    /// One request against this node's lease for its key: the verdict, whether the sync
    /// task must be woken for the key, and whether the refusal is only a refill in flight.
    #[inline(always)]
    fn admit(
        &self,
        limiter: &Limiter,
        lease: &mut Lease,
        cost: u64,
        now: u64,
        nodes: u64,
        sync_ms: u64,
    ) -> (Verdict, bool, bool) {
        let verdict = match limiter.params {
            Params::Window {
                limit,
                window_ms,
                sliding,
            } => lease.admit_window(cost, limit, now, window_ms, sliding, nodes, sync_ms),
            Params::Bucket(b) => lease.admit_bucket(cost, b.burst, nodes, sync_ms),
            // Logs are atomic-only and concurrency is local-only (validation); decide
            // conservatively rather than panic.
            Params::Log { limit, .. } | Params::Concurrency { max: limit } => {
                algorithm::concurrency(limit + 1, limit)
            }
        };
        let signal = lease.urgent && !lease.signalled;
        lease.signalled |= signal;
        // Refused only because this node's refill is still on its way.
        let pending = !verdict.allowed && !lease.exhausted;
        (verdict, signal, pending)
    }

    /// One round trip to Redis, which decides exactly.
    async fn atomic(
        &self,
        limiter: &Limiter,
        facts: &RequestFacts<'_>,
        cost: u64,
        link: &RedisLink,
    ) -> Result<Verdict, AtomicError> {
        let mut connection = link.connection().ok_or(AtomicError::NotConnected)?;
        let prefix = &link.config.key_prefix;
        let text = key::text(&self.key, facts);
        let call = async {
            match limiter.params {
                Params::Window {
                    limit,
                    window_ms,
                    sliding,
                } => {
                    let now = unix_ms();
                    let window = algorithm::window_of(now, window_ms);
                    let (total, grant, prev, _used): (u64, u64, u64, u64) = scripts::WINDOW_SCRIPT
                        .key(self.redis_key(
                            prefix,
                            &text,
                            &policy::window_suffix(window_ms, window),
                        ))
                        .key(self.redis_key(
                            prefix,
                            &text,
                            &policy::window_suffix(window_ms, window.wrapping_sub(1)),
                        ))
                        .arg(0)
                        .arg(0)
                        .arg(cost)
                        .arg(limit)
                        .arg(now % window_ms)
                        .arg(window_ms)
                        .arg(u8::from(sliding))
                        .arg(1)
                        .arg(link.reservation_field())
                        .arg(0)
                        .invoke_async(&mut connection)
                        .await?;
                    let allowed = grant == cost;
                    let used = if allowed { total - cost } else { total };
                    let mut v = if sliding {
                        algorithm::sliding_window(prev, used, cost, limit, now, window_ms)
                    } else {
                        algorithm::fixed_window(used, cost, limit, now, window_ms)
                    };
                    v.allowed = allowed;
                    Ok(v)
                }
                Params::Bucket(b) => {
                    let (grant, left, next_ms): (u64, u64, u64) = scripts::BUCKET_SCRIPT
                        .key(self.redis_key(prefix, &text, &policy::bucket_suffix(&b)))
                        .arg(0)
                        .arg(cost)
                        .arg(b.per_ns as f64 / b.count.max(1) as f64 / 1_000.0)
                        .arg(b.burst)
                        .arg(1)
                        .invoke_async(&mut connection)
                        .await?;
                    let allowed = grant == cost;
                    let per_token_ms = b.interval_ns().div_ceil(1_000_000);
                    Ok(Verdict {
                        allowed,
                        limit: b.burst,
                        remaining: left,
                        reset_ms: (b.burst - left.min(b.burst)) * per_token_ms,
                        retry_after_ms: if allowed {
                            0
                        } else {
                            next_ms.max(1) + (cost.saturating_sub(1)) * per_token_ms
                        },
                    })
                }
                Params::Log { limit, window_ms } => {
                    let now = unix_ms();
                    let (allowed, remaining, wait): (u64, u64, u64) = scripts::LOG_SCRIPT
                        .key(self.redis_key(prefix, &text, &policy::log_suffix(window_ms)))
                        .arg(now)
                        .arg(window_ms)
                        .arg(limit)
                        .arg(cost)
                        .arg(link.unique_member())
                        .invoke_async(&mut connection)
                        .await?;
                    Ok(Verdict {
                        allowed: allowed == 1,
                        limit,
                        remaining,
                        reset_ms: window_ms,
                        retry_after_ms: if allowed == 1 { 0 } else { wait.max(1) },
                    })
                }
                Params::Concurrency { max } => Ok(algorithm::concurrency(0, max)),
            }
        };
        match tokio::time::timeout(link.config.timeout, call).await {
            Ok(result) => result.map_err(AtomicError::Redis),
            Err(_) => Err(AtomicError::Timeout(link.config.timeout)),
        }
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
