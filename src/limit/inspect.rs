//! Looking at and resetting one key's count, for the admin API: `GET` and
//! `DELETE /admin/limits/{policy}/{key}`, and dry-run checks.
//!
//! Global counts are read from Redis (the fleet's view, including quota nodes have
//! reserved but not yet spent); local ones from this node's estimators.

use super::algorithm;
use super::key;
use super::link::{resets_key, unix_ms, RedisLink};
use super::policy::{self, Limiter, Params, Policy};
use crate::config::{Scope, SyncMode};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub policy: String,
    pub key: String,
    pub tier: Option<String>,
    pub algorithm: &'static str,
    pub scope: &'static str,
    pub sync: &'static str,
    /// Where the figures come from: `redis` (the fleet) or `local` (this node).
    pub source: &'static str,
    pub limit: u64,
    /// The current window's length: for calendar periods this one's (a 28-day February,
    /// a 23-hour day), not a nominal month.
    pub window_ms: Option<u64>,
    /// The current window's bounds (Unix ms), for windows.
    pub window_start_ms: Option<u64>,
    pub window_end_ms: Option<u64>,
    /// `1d`, `1w` or `1mo` for calendar periods, with the time zone they are counted in.
    pub period: Option<&'static str>,
    pub timezone: Option<&'static str>,
    pub used: u64,
    /// Quota other nodes reserved and have not spent yet (global limits).
    pub reserved: u64,
    pub remaining: u64,
    pub reset_ms: u64,
    pub window: Option<WindowUsage>,
    pub bucket: Option<BucketUsage>,
    /// When a `block_for` penalty on this key ends (Unix ms), as this node knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_until_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowUsage {
    pub current: u64,
    pub previous: u64,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BucketUsage {
    pub tokens: u64,
    pub burst: u64,
    pub ms_per_token: u64,
}

#[derive(Debug)]
pub enum InspectError {
    /// The key text does not fit the policy's key.
    BadKey(String),
    /// Redis is needed and did not answer.
    Redis(String),
}

impl std::fmt::Display for InspectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InspectError::BadKey(e) => f.write_str(e),
            InspectError::Redis(e) => write!(f, "redis: {e}"),
        }
    }
}

fn scope_name(p: &Policy) -> &'static str {
    match p.scope {
        Scope::Global => "global",
        Scope::Local => "local",
    }
}

fn sync_name(p: &Policy) -> &'static str {
    match p.sync {
        SyncMode::Async => "async",
        SyncMode::Atomic => "atomic",
    }
}

impl Policy {
    fn uses_redis(&self, link: Option<&RedisLink>) -> bool {
        self.scope == Scope::Global && link.is_some_and(|l| l.is_up())
    }

    /// One key's usage now.
    pub async fn usage(
        &self,
        limiter: &Limiter,
        key_text: &str,
        link: Option<&RedisLink>,
    ) -> Result<Usage, InspectError> {
        let hash =
            key::hash_from_text(limiter.id, &self.key, key_text).map_err(InspectError::BadKey)?;
        // An address names its client's network: the key as requests spell it.
        let canonical = key::canonical_text(&self.key, key_text);
        let key_text = canonical.as_str();
        let now = unix_ms();
        let mut usage = Usage {
            policy: self.name.to_string(),
            key: key_text.to_string(),
            tier: limiter.tier.clone(),
            algorithm: self.algorithm.name(),
            scope: scope_name(self),
            sync: sync_name(self),
            source: "local",
            limit: limiter.params.quota(),
            window_ms: None,
            window_start_ms: None,
            window_end_ms: None,
            period: None,
            timezone: None,
            used: 0,
            reserved: 0,
            remaining: 0,
            reset_ms: 0,
            window: None,
            bucket: None,
            blocked_until_ms: self.blocked_until(limiter, hash, now),
        };
        let remote = match link {
            Some(link) if self.uses_redis(Some(link)) => Some(link),
            _ => None,
        };
        match limiter.params {
            Params::Window { limit, sliding, .. } => {
                let span = limiter.window_at(now);
                // Redis holds what the fleet admitted and reported (`u`) and quota each node
                // reserved but has not spent (`r:<node>`). This node adds what it admitted
                // since its last report and leaves its own reservation out, so a lone node
                // reports exactly what it admitted.
                let (previous, current, others_reserved) = match remote {
                    Some(link) => {
                        let w = span.id;
                        let key = |window: u64| {
                            self.redis_key(
                                &link.config.key_prefix,
                                key_text,
                                &limiter.window_suffix(window),
                            )
                        };
                        let mut pipe = redis::pipe();
                        pipe.cmd("HGET").arg(key(w.wrapping_sub(1))).arg("u");
                        pipe.cmd("HGETALL").arg(key(w));
                        let (prev, fields): (Option<u64>, HashMap<String, String>) =
                            query(link, &pipe).await?;
                        let used = fields.get("u").and_then(|u| u.parse().ok());
                        let reserved =
                            live_reservations(&fields, &link.reservation_field(), unix_ms());
                        let unreported = limiter
                            .leases
                            .get(hash, |l| if l.window == w { l.unreported } else { 0 })
                            .unwrap_or(0);
                        (prev.unwrap_or(0), used.unwrap_or(0) + unreported, reserved)
                    }
                    None => {
                        let (p, c) = limiter
                            .windows
                            .as_ref()
                            .map_or((0, 0), |w| w.peek_both(hash, span));
                        (p, c, 0)
                    }
                };
                usage.reserved = others_reserved;
                let elapsed = span.elapsed_ms(now);
                let weighted = if sliding {
                    algorithm::weighted_previous_in(previous, now, span)
                } else {
                    0
                };
                usage.used = weighted + current;
                usage.remaining = limit.saturating_sub(usage.used + others_reserved);
                usage.reset_ms = span.left_ms(now);
                usage.window_ms = Some(span.len_ms());
                usage.window_start_ms = Some(span.start_ms);
                usage.window_end_ms = Some(span.end_ms);
                if let Some(periods) = &limiter.periods {
                    usage.period = Some(periods.calendar.unit.spelling());
                    usage.timezone = Some(periods.calendar.tz.name());
                } else if span.len_ms() == 86_400_000 {
                    // A UTC day counts as an epoch window, and is still a calendar day.
                    usage.period = Some("1d");
                    usage.timezone = Some("UTC");
                }
                usage.window = Some(WindowUsage {
                    current,
                    previous: if sliding { previous } else { 0 },
                    elapsed_ms: elapsed,
                });
            }
            Params::Log { limit, window_ms } => {
                usage.used = match remote {
                    Some(link) => {
                        let k = self.redis_key(
                            &link.config.key_prefix,
                            key_text,
                            &policy::log_suffix(window_ms),
                        );
                        let mut zcount = redis::cmd("ZCOUNT");
                        zcount
                            .arg(k)
                            .arg(format!("({}", now.saturating_sub(window_ms)))
                            .arg("+inf");
                        query(link, &zcount).await?
                    }
                    None => limiter
                        .logs
                        .as_ref()
                        .and_then(|logs| logs.get(hash, |log| log.len_at(now, window_ms)))
                        .unwrap_or(0),
                };
                usage.remaining = limit.saturating_sub(usage.used);
                usage.window_ms = Some(window_ms);
                usage.reset_ms = window_ms;
            }
            Params::Bucket(b) => {
                let now_ns = super::link::unix_ns();
                let t = b.interval_ns();
                // Redis holds the arrival time (`t`, µs) and each node's reservation, which
                // stays inside the bucket until it is reported spent. What this node spent
                // or admitted since its last report is not in Redis yet.
                let (tat_ns, reserved_elsewhere, spent_here) = match remote {
                    Some(link) => {
                        let k = self.redis_key(
                            &link.config.key_prefix,
                            key_text,
                            policy::BUCKET_SUFFIX,
                        );
                        let mut get = redis::cmd("HGETALL");
                        get.arg(k);
                        let fields: HashMap<String, String> = query(link, &get).await?;
                        let tat_us: u64 = fields
                            .get("t")
                            .and_then(|v| v.parse::<f64>().ok())
                            .map_or(0, |v| v as u64);
                        let others =
                            live_reservations(&fields, &link.reservation_field(), unix_ms());
                        let mine_in_redis = fields
                            .get(&link.reservation_field())
                            .and_then(|v| v.split_once(':'))
                            .and_then(|(amount, _)| amount.parse::<u64>().ok())
                            .unwrap_or(0);
                        let (held, uncharged) = limiter
                            .leases
                            .get(hash, |l| (l.held(), l.unreported_provisional))
                            .unwrap_or((0, 0));
                        // This node's part: its reservation in Redis less what it still
                        // holds is spent, plus unbacked units not yet charged.
                        let spent_here = (mine_in_redis + uncharged).saturating_sub(held);
                        (tat_us.saturating_mul(1_000), others, spent_here)
                    }
                    None => (limiter.tats.as_ref().map_or(0, |t| t.peek(hash)), 0, 0),
                };
                let held = tat_ns.max(now_ns) - now_ns;
                let content = b.tolerance_ns().saturating_sub(held) / t;
                let tokens = content
                    .saturating_sub(reserved_elsewhere + spent_here)
                    .min(b.burst);
                usage.reserved = reserved_elsewhere;
                usage.used = b.burst - tokens.min(b.burst);
                usage.remaining = tokens;
                usage.reset_ms = held.div_ceil(1_000_000);
                usage.window_ms = Some(b.per_ns / 1_000_000);
                usage.bucket = Some(BucketUsage {
                    tokens,
                    burst: b.burst,
                    ms_per_token: t.div_ceil(1_000_000),
                });
            }
            Params::Concurrency { max } => {
                if let Some(inflight) = &limiter.inflight {
                    let (_guard, count) = inflight.incr(hash, 0);
                    usage.used = count.max(0) as u64;
                }
                if let Some(link) = remote {
                    // Fleet-wide: the slots in use on every node (`used`), and those other
                    // nodes hold spare (`reserved`).
                    let (used, spare) = self.fleet_slots(limiter, link, key_text, hash).await?;
                    usage.used = used;
                    usage.reserved = spare;
                }
                usage.remaining = max.saturating_sub(usage.used + usage.reserved);
            }
        }
        if remote.is_some() {
            usage.source = "redis";
        }
        Ok(usage)
    }

    /// A global concurrency key's slots in Redis: (in use fleet-wide, spare on other nodes).
    /// Async: every other node's live holding as of its last sync, and this node's own
    /// now. Atomic: the live members, one per slot in use.
    async fn fleet_slots(
        &self,
        limiter: &Limiter,
        link: &RedisLink,
        key_text: &str,
        hash: u64,
    ) -> Result<(u64, u64), InspectError> {
        let prefix = &link.config.key_prefix;
        let now = unix_ms();
        if self.sync == SyncMode::Atomic {
            let mut count = redis::cmd("ZCOUNT");
            count
                .arg(self.redis_key(prefix, key_text, super::slots::MEMBERS_SUFFIX))
                .arg(format!("({now}"))
                .arg("+inf");
            return Ok((query::<u64, _>(link, &count).await?, 0));
        }
        let mut all = redis::cmd("HGETALL");
        all.arg(self.redis_key(prefix, key_text, super::slots::LEASES_SUFFIX));
        let fields: Vec<(String, String)> = query(link, &all).await?;
        let mine = link.reservation_field();
        let (mut used, mut spare) = limiter
            .slots
            .as_ref()
            .and_then(|t| t.get(hash, |l| (l.active, l.held.saturating_sub(l.active))))
            .unwrap_or((0, 0));
        for (name, value) in fields {
            if !name.starts_with("r:") || name == mine {
                continue;
            }
            let mut parts = value.split(':').map(|p| p.parse::<u64>().unwrap_or(0));
            let (held, expires, unused) = (
                parts.next().unwrap_or(0),
                parts.next().unwrap_or(0),
                parts.next().unwrap_or(0),
            );
            if expires > now {
                used += held.saturating_sub(unused);
                spare += unused.min(held);
            }
        }
        Ok((used, spare))
    }

    /// Resets one key: fleet-wide for global policies (the Redis state is deleted and every
    /// node drops its lease for the key on its next heartbeat), on this node for local ones.
    pub async fn reset(
        &self,
        limiter: &Limiter,
        key_text: &str,
        link: Option<&RedisLink>,
    ) -> Result<(), InspectError> {
        key::hash_from_text(limiter.id, &self.key, key_text).map_err(InspectError::BadKey)?;
        let canonical = key::canonical_text(&self.key, key_text);
        let key_text = canonical.as_str();
        let now = unix_ms();
        if self.scope == Scope::Global && !matches!(limiter.params, Params::Concurrency { .. }) {
            let link = link
                .filter(|l| l.is_up())
                .ok_or_else(|| InspectError::Redis("not connected".into()))?;
            let prefix = &link.config.key_prefix;
            let mut keys = Vec::new();
            for l in self.limiters() {
                match l.params {
                    Params::Window { .. } => {
                        let w = l.window_at(now).id;
                        for window in [w.wrapping_sub(1), w, w + 1] {
                            keys.push(self.redis_key(prefix, key_text, &l.window_suffix(window)));
                        }
                    }
                    Params::Log { window_ms, .. } => {
                        keys.push(self.redis_key(prefix, key_text, &policy::log_suffix(window_ms)))
                    }
                    Params::Bucket(_) => {
                        keys.push(self.redis_key(prefix, key_text, policy::BUCKET_SUFFIX))
                    }
                    Params::Concurrency { .. } => {}
                }
            }
            let notice = format!("{}\u{0}{key_text}\u{0}{}", self.name, rand::random::<u32>());
            // The key's state and the fleet's notices are in two slots on a cluster.
            let mut del = redis::cmd("DEL");
            del.arg(&keys[..]);
            query::<(), _>(link, &del).await?;
            let mut pipe = redis::pipe();
            pipe.cmd("ZADD")
                .arg(resets_key(prefix))
                .arg(now)
                .arg(notice)
                .ignore();
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(resets_key(prefix))
                .arg("-inf")
                .arg(now.saturating_sub(60_000))
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(resets_key(prefix))
                .arg(120_000)
                .ignore();
            query::<(), _>(link, &pipe).await?;
        }
        self.forget_locally(key_text, now);
        Ok(())
    }

    /// Drops this node's state for a key (after a reset, here or announced by another node).
    pub fn forget_locally(&self, key_text: &str, now: u64) {
        for limiter in self.limiters() {
            let Ok(hash) = key::hash_from_text(limiter.id, &self.key, key_text) else {
                continue;
            };
            limiter.leases.remove(hash);
            if let Some(w) = &limiter.windows {
                w.forget(hash, limiter.window_at(now));
            }
            if let Some(t) = &limiter.tats {
                t.forget(hash);
            }
            if let Some(logs) = &limiter.logs {
                logs.remove(hash);
            }
        }
    }
}

async fn query<T: redis::FromRedisValue, C: Runnable>(
    link: &RedisLink,
    cmd: &C,
) -> Result<T, InspectError> {
    let mut connection = link
        .connection()
        .ok_or_else(|| InspectError::Redis("not connected".into()))?;
    let deadline = (link.config.timeout * 10).max(std::time::Duration::from_millis(250));
    match tokio::time::timeout(deadline, cmd.run(&mut connection)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(InspectError::Redis(e.to_string())),
        Err(_) => Err(InspectError::Redis(format!(
            "no answer within {deadline:?}"
        ))),
    }
}

/// A command or a pipeline: both can run on a connection.
pub trait Runnable {
    fn run<'a, T: redis::FromRedisValue + 'a>(
        &'a self,
        connection: &'a mut crate::redis_store::Connection,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = redis::RedisResult<T>> + Send + 'a>>;
}

impl Runnable for redis::Cmd {
    fn run<'a, T: redis::FromRedisValue + 'a>(
        &'a self,
        connection: &'a mut crate::redis_store::Connection,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = redis::RedisResult<T>> + Send + 'a>>
    {
        Box::pin(self.query_async(connection))
    }
}

impl Runnable for redis::Pipeline {
    fn run<'a, T: redis::FromRedisValue + 'a>(
        &'a self,
        connection: &'a mut crate::redis_store::Connection,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = redis::RedisResult<T>> + Send + 'a>>
    {
        Box::pin(self.query_async(connection))
    }
}

/// A request's would-be verdict without consuming anything: the key's usage against `cost`.
pub fn dry_verdict(usage: &Usage, cost: u64) -> algorithm::Verdict {
    let allowed = usage.remaining >= cost;
    algorithm::Verdict {
        allowed,
        limit: usage.limit,
        remaining: if allowed {
            usage.remaining - cost
        } else {
            usage.remaining
        },
        reset_ms: usage.reset_ms,
        retry_after_ms: if allowed { 0 } else { usage.reset_ms.max(1) },
    }
}

/// Reservations of other nodes that have not expired, from a window counter's fields.
fn live_reservations(fields: &HashMap<String, String>, mine: &str, now_ms: u64) -> u64 {
    fields
        .iter()
        .filter(|(name, _)| name.starts_with("r:") && name.as_str() != mine)
        .filter_map(|(_, value)| {
            let (amount, expires) = value.split_once(':')?;
            let expires: u64 = expires.parse().ok()?;
            (expires > now_ms).then(|| amount.parse::<u64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod reservation_tests {
    use super::*;

    #[test]
    fn only_other_nodes_live_reservations_count() {
        let fields: HashMap<String, String> = [
            ("u", "7"),
            ("r:me", "50:9000"),
            ("r:other", "20:9000"),
            ("r:crashed", "30:100"),
            ("r:garbled", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(live_reservations(&fields, "r:me", 5_000), 20);
    }
}
