//! The background sync: every `sync_interval`, one pipelined round trip flushes what each
//! node admitted provisionally and refills its leases for all active keys. It also keeps
//! the connection alive (reconnecting with backoff) and the live-node count current.

use super::algorithm;
use super::lease::{self, BucketAnswer, BucketPlan, Lease, Prefetch, WindowAnswer, WindowPlan};
use super::link::{unix_ms, RedisLink};
use super::policy::{self, Limiter, Params, Policy};
use super::scripts;
use crate::gateway::SharedGateway;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use redis::aio::MultiplexedConnection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct LimitSync {
    gateway: SharedGateway,
    /// Set once the final flush on shutdown is done, so the process can exit.
    flushed: Arc<AtomicBool>,
}

impl LimitSync {
    pub fn new(gateway: SharedGateway) -> Self {
        LimitSync {
            gateway,
            flushed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn flushed(&self) -> Arc<AtomicBool> {
        self.flushed.clone()
    }
}

/// Plans per pipeline; beyond this a sync takes several round trips.
const CHUNK: usize = 2_000;
/// Redis time allowed per plan in a pipeline, on top of the round's deadline: a full chunk
/// runs 2,000 scripts, which a loaded Redis cannot answer within a deadline sized for one
/// heartbeat, and a chunk that times out turns the whole node local.
const PER_PLAN: Duration = Duration::from_micros(100);
/// How long an early sync waits for more keys that want one.
const URGENT_BATCH: Duration = Duration::from_millis(1);
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Short enough that a Redis restart is noticed well within two seconds.
const BACKOFF_MAX: Duration = Duration::from_millis(800);

#[async_trait]
impl BackgroundService for LimitSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = BACKOFF_START;
        let mut next_attempt = Instant::now();
        let mut next_tick = Instant::now();
        loop {
            let gateway = self.gateway.load_full();
            let interval = gateway
                .redis
                .as_ref()
                .map(|l| l.config.sync_interval)
                .unwrap_or(Duration::from_millis(500));
            let scheduled = Instant::now() >= next_tick;
            if scheduled {
                next_tick = Instant::now() + interval;
            }
            if let Some(link) = &gateway.redis {
                if link.connection().is_none() && Instant::now() >= next_attempt {
                    match link.connect().await {
                        Ok(()) => backoff = BACKOFF_START,
                        Err(e) => {
                            link.mark_down("connect", &e);
                            next_attempt = Instant::now() + backoff;
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                        }
                    }
                }
                if let Some(connection) = link.connection() {
                    // The heartbeat (and the up/down verdict) runs on schedule; early
                    // rounds only move leases.
                    let round = if scheduled || !link.is_up() {
                        Round::Scheduled
                    } else {
                        Round::Urgent
                    };
                    sync_once(link, connection, &gateway.policies, round).await;
                }
            }
            if scheduled {
                evict(&gateway.policies, unix_ms());
                for policy in gateway.policies.values() {
                    let keys: usize = policy
                        .limiters()
                        .map(|l| l.leases.len() + l.logs.as_ref().map_or(0, |t| t.len()))
                        .sum();
                    policy.counters.active_keys.set(keys as i64);
                }
            }
            let link = gateway.redis.clone();
            drop(gateway);
            let wanted = async {
                match &link {
                    Some(link) => {
                        link.sync_wanted.notified().await;
                        // Let other requests that want a sync join this one.
                        tokio::time::sleep(URGENT_BATCH).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next_tick.into()) => {}
                _ = wanted => {}
                _ = shutdown.changed() => break,
            }
        }
        // Flush what was admitted since the last sync, and hand back quota this node
        // reserved but will not spend, so the fleet's counts stay right.
        let gateway = self.gateway.load_full();
        if let Some(link) = &gateway.redis {
            if let Some(connection) = link.connection() {
                let now = unix_ms();
                for policy in gateway.policies.values().filter(|p| p.is_leased()) {
                    for limiter in policy.limiters() {
                        if let Params::Window { window_ms, .. } = limiter.params {
                            let window = algorithm::window_of(now, window_ms);
                            limiter.leases.for_each(|_, lease| lease.release(window));
                        }
                    }
                }
                sync_once(link, connection, &gateway.policies, Round::Final).await;
            }
            link.leave().await;
        }
        self.flushed.store(true, Ordering::Release);
    }
}

/// One command of a pipeline and where its answer goes.
enum Slot<'a> {
    Window {
        limiter: &'a Limiter,
        hash: u64,
        key: Arc<str>,
        plan: WindowPlan,
    },
    Bucket {
        limiter: &'a Limiter,
        hash: u64,
        key: Arc<str>,
        plan: BucketPlan,
    },
}

/// What a sync round covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Every `sync_interval`: the heartbeat, then every lease.
    Scheduled,
    /// Woken early: only the keys that asked (new keys, leases that ran dry).
    Urgent,
    /// On shutdown: every lease, no heartbeat.
    Final,
}

async fn sync_once(
    link: &RedisLink,
    mut connection: MultiplexedConnection,
    policies: &std::collections::BTreeMap<String, Arc<Policy>>,
    round: Round,
) {
    let started = Instant::now();
    let deadline = (link.config.timeout * 4).max(link.config.sync_interval * 2);
    if round == Round::Scheduled {
        match tokio::time::timeout(deadline, link.heartbeat(&mut connection)).await {
            Ok(Ok(_)) => link.mark_up(),
            Ok(Err(e)) => return link.mark_down("heartbeat", &e),
            Err(_) => {
                return link.mark_down("heartbeat", &format!("no answer within {deadline:?}"))
            }
        }
        // Registered API keys and fleet-wide resets travel with the heartbeat.
        match tokio::time::timeout(deadline, link.refresh_control(&mut connection)).await {
            Ok(Ok(resets)) => {
                let now = unix_ms();
                for reset in resets {
                    if let Some(policy) = policies.get(&reset.policy) {
                        policy.forget_locally(&reset.key, now);
                    }
                }
            }
            Ok(Err(e)) => return link.mark_down("heartbeat", &e),
            Err(_) => {
                return link.mark_down("heartbeat", &format!("no answer within {deadline:?}"))
            }
        }
    }
    let now = unix_ms();
    let nodes = link.nodes();
    let sync_ms = link.config.sync_interval.as_millis() as u64;
    let leased: Vec<&Policy> = policies
        .values()
        .filter(|p| p.is_leased())
        .map(|p| &**p)
        .collect();
    let mut batch = Batch::new(link, &mut connection, now, deadline);
    if round == Round::Urgent {
        // Only the keys that asked, so a flood of new keys does not make every early
        // round walk every lease.
        for (limiter_id, hash) in link.take_urgent() {
            let found = leased
                .iter()
                .flat_map(|p| p.limiters().map(move |l| (*p, l)))
                .find(|(_, l)| l.id == limiter_id);
            if let Some((policy, limiter)) = found {
                if let Some(slot) = limiter
                    .leases
                    .get(hash, |lease| {
                        plan(limiter, hash, lease, now, nodes, sync_ms)
                    })
                    .flatten()
                {
                    batch.push(slot, policy).await;
                }
            }
        }
    } else {
        // Shard by shard, so the plans in memory at once stay bounded by the batch size.
        for shard in 0..super::table::SHARDS {
            for policy in &leased {
                for limiter in policy.limiters() {
                    let mut slots = Vec::new();
                    limiter.leases.for_each_in_shard(shard, |hash, lease| {
                        if let Some(slot) = plan(limiter, hash, lease, now, nodes, sync_ms) {
                            slots.push(slot);
                        }
                    });
                    for slot in slots {
                        batch.push(slot, policy).await;
                    }
                }
            }
        }
    }
    if let Err(e) = batch.finish().await {
        return link.mark_down("sync", &e);
    }
    let took = started.elapsed().as_secs_f64();
    link.metrics().redis_sync_duration.observe(took);
    link.record_sync(took);
    link.sync_completed();
}

/// Plans sent to Redis in pipelines of up to `CHUNK`.
struct Batch<'a, 'c> {
    link: &'a RedisLink,
    connection: &'c mut MultiplexedConnection,
    now: u64,
    deadline: Duration,
    slots: Vec<(Slot<'a>, &'a Policy)>,
    failed: Option<String>,
}

impl<'a, 'c> Batch<'a, 'c> {
    fn new(
        link: &'a RedisLink,
        connection: &'c mut MultiplexedConnection,
        now: u64,
        deadline: Duration,
    ) -> Self {
        Batch {
            link,
            connection,
            now,
            deadline,
            slots: Vec::new(),
            failed: None,
        }
    }

    async fn push(&mut self, slot: Slot<'a>, policy: &'a Policy) {
        self.slots.push((slot, policy));
        if self.slots.len() >= CHUNK {
            self.send().await;
        }
    }

    async fn send(&mut self) {
        let chunk = std::mem::take(&mut self.slots);
        if chunk.is_empty() {
            return;
        }
        if self.failed.is_some() {
            // Redis already failed this round: keep what the plans took for the next one.
            return restore(chunk);
        }
        match run_chunk(self.link, self.connection, &chunk, self.now, self.deadline).await {
            Ok(answers) => apply(chunk, answers),
            Err(e) => {
                restore(chunk);
                self.failed = Some(e);
            }
        }
    }

    async fn finish(mut self) -> Result<(), String> {
        self.send().await;
        self.failed.map_or(Ok(()), Err)
    }
}

/// Drops keys that went quiet, keeping memory to what is in use.
fn evict(policies: &std::collections::BTreeMap<String, Arc<Policy>>, now: u64) {
    for policy in policies.values() {
        for limiter in policy.limiters() {
            match limiter.params {
                Params::Window { window_ms, .. } => {
                    let window = Some(algorithm::window_of(now, window_ms));
                    limiter.leases.retain(|_, lease| !lease.is_idle(window));
                }
                Params::Bucket(_) => limiter.leases.retain(|_, lease| !lease.is_idle(None)),
                Params::Log { window_ms, .. } => {
                    if let Some(logs) = &limiter.logs {
                        logs.retain(|_, log| log.prune(now, window_ms));
                    }
                }
                Params::Concurrency { .. } => {}
            }
        }
    }
}

/// One key's plan for this round, if it has anything to send.
fn plan<'a>(
    limiter: &'a Limiter,
    hash: u64,
    lease: &mut Lease,
    now: u64,
    nodes: u64,
    sync_ms: u64,
) -> Option<Slot<'a>> {
    let key = lease.sync.key.clone();
    match limiter.params {
        Params::Window {
            limit,
            window_ms,
            sliding,
        } => lease
            .plan_window(limit, now, window_ms, sliding, nodes, sync_ms)
            .map(|plan| Slot::Window {
                limiter,
                hash,
                key,
                plan,
            }),
        Params::Bucket(b) => lease.plan_bucket(b.burst, nodes).map(|plan| Slot::Bucket {
            limiter,
            hash,
            key,
            plan,
        }),
        _ => None,
    }
}

async fn run_chunk(
    link: &RedisLink,
    connection: &mut MultiplexedConnection,
    chunk: &[(Slot<'_>, &Policy)],
    now: u64,
    deadline: Duration,
) -> Result<Vec<Vec<u64>>, String> {
    let deadline = deadline + PER_PLAN * chunk.len() as u32;
    let prefix = &link.config.key_prefix;
    let field = link.reservation_field();
    let mut pipe = redis::pipe();
    for (slot, policy) in chunk {
        match slot {
            Slot::Window {
                limiter, key, plan, ..
            } => {
                let Params::Window {
                    limit,
                    window_ms,
                    sliding,
                } = limiter.params
                else {
                    continue;
                };
                let key =
                    |w: u64| policy.redis_key(prefix, key, &policy::window_suffix(window_ms, w));
                let elapsed = now % window_ms;
                let ttl = lease::reservation_ttl_ms(link.config.sync_interval.as_millis() as u64);
                let mut add = |current: u64, delta: u64, held: u64, want: u64, elapsed: u64| {
                    pipe.invoke_script(
                        scripts::WINDOW_SCRIPT
                            .key(key(current))
                            .key(key(current.wrapping_sub(1)))
                            .arg(delta)
                            .arg(held)
                            .arg(want)
                            .arg(limit)
                            .arg(elapsed)
                            .arg(window_ms)
                            .arg(u8::from(sliding))
                            .arg(0)
                            .arg(&field)
                            .arg(ttl),
                    );
                };
                // Corrections to ended windows go first, so this window's script reads the
                // previous window's corrected count. Nothing stays reserved in them.
                for (window, report) in &plan.stale {
                    add(*window, report.delta, 0, 0, 0);
                }
                add(
                    plan.window,
                    plan.report.delta,
                    plan.held,
                    plan.want,
                    elapsed,
                );
                if let Some(want) = plan.prefetch {
                    add(plan.window + 1, 0, 0, want, 0);
                }
            }
            Slot::Bucket {
                limiter, key, plan, ..
            } => {
                let Params::Bucket(b) = limiter.params else {
                    continue;
                };
                pipe.invoke_script(
                    scripts::BUCKET_SCRIPT
                        .key(policy.redis_key(prefix, key, &policy::bucket_suffix(&b)))
                        .arg(plan.debt)
                        .arg(plan.want)
                        .arg(b.per_ns as f64 / b.count.max(1) as f64 / 1_000.0)
                        .arg(b.burst)
                        .arg(0),
                );
            }
        }
    }
    let query = |c: &mut MultiplexedConnection| {
        let pipe = pipe.clone();
        let mut c = c.clone();
        async move { pipe.query_async::<Vec<Vec<u64>>>(&mut c).await }
    };
    let answer = match tokio::time::timeout(deadline, query(connection)).await {
        Err(_) => return Err(format!("no answer within {deadline:?}")),
        Ok(Err(e)) if e.kind() == redis::ErrorKind::NoScriptError => {
            // Redis restarted or flushed its scripts: load them and try once more.
            for (code, _) in scripts::all() {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(code);
                tokio::time::timeout(deadline, load.query_async::<String>(connection))
                    .await
                    .map_err(|_| "script load timed out".to_string())?
                    .map_err(|e| e.to_string())?;
            }
            tokio::time::timeout(deadline, query(connection))
                .await
                .map_err(|_| format!("no answer within {deadline:?}"))?
        }
        Ok(other) => other,
    };
    answer.map_err(|e| e.to_string())
}

fn apply(chunk: Vec<(Slot<'_>, &Policy)>, answers: Vec<Vec<u64>>) {
    let mut answers = answers.into_iter();
    let mut next = || answers.next().unwrap_or_default();
    let field = |a: &[u64], i: usize| a.get(i).copied().unwrap_or(0);
    for (slot, _) in chunk {
        match slot {
            Slot::Window {
                limiter,
                hash,
                plan,
                ..
            } => {
                for _ in 0..plan.stale.len() {
                    next();
                }
                let main = next();
                let mut answer = WindowAnswer {
                    total: field(&main, 0),
                    grant: field(&main, 1),
                    prev: field(&main, 2),
                    used: field(&main, 3),
                    next: None,
                };
                if plan.prefetch.is_some() {
                    let n = next();
                    answer.next = Some(Prefetch {
                        window: plan.window + 1,
                        granted: field(&n, 1),
                        total: field(&n, 0),
                        prev: field(&n, 2),
                    });
                }
                limiter
                    .leases
                    .get(hash, |lease| lease.apply_window(&plan, &answer));
            }
            Slot::Bucket {
                limiter,
                hash,
                plan,
                ..
            } => {
                let a = next();
                let answer = BucketAnswer {
                    grant: field(&a, 0),
                    tokens: field(&a, 1),
                    ms_per_token: field(&a, 2),
                };
                limiter
                    .leases
                    .get(hash, |lease| lease.apply_bucket(&plan, &answer));
            }
        }
    }
}

fn restore(chunk: Vec<(Slot<'_>, &Policy)>) {
    for (slot, _) in chunk {
        match slot {
            Slot::Window {
                limiter,
                hash,
                plan,
                ..
            } => {
                limiter.leases.get(hash, |lease| lease.restore_window(plan));
            }
            Slot::Bucket {
                limiter,
                hash,
                plan,
                ..
            } => {
                limiter.leases.get(hash, |lease| lease.restore_bucket(plan));
            }
        }
    }
}
