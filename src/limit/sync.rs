//! The background sync: every `sync_interval`, one pipelined round trip flushes what each
//! node admitted provisionally and refills its leases for all active keys. It also keeps
//! the connection alive (reconnecting with backoff) and the live-node count current.

use super::lease::{self, BucketAnswer, BucketPlan, Lease, Prefetch, WindowAnswer, WindowPlan};
use super::link::{unix_ms, RedisLink};
use super::policy::{self, Limiter, Params, Policy};
use super::scripts;
use super::slots::{self, SlotAnswer, SlotLease, SlotPlan};
use crate::gateway::SharedGateway;
use crate::redis_store::{Answer, Connection};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct LimitSync {
    gateway: SharedGateway,
    /// Set once the final flush on shutdown is done, so the process can exit.
    flushed: Arc<AtomicBool>,
    /// The newest fleet-wide block notice read (see [`super::blocks`]).
    blocks_seen: Arc<AtomicU64>,
    /// A cluster's heartbeat and probe are in flight (they run beside the lease rounds).
    housekeeping: Arc<AtomicBool>,
}

impl LimitSync {
    pub fn new(gateway: SharedGateway) -> Self {
        LimitSync {
            gateway,
            flushed: Arc::new(AtomicBool::new(false)),
            blocks_seen: Arc::new(AtomicU64::new(unix_ms())),
            housekeeping: Arc::new(AtomicBool::new(false)),
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
                    self.sync_once(link, connection, &gateway.policies, round)
                        .await;
                }
            }
            if scheduled {
                if let Some(link) = &gateway.redis {
                    link.metrics()
                        .redis_unreachable_slots
                        .set(i64::from(link.store().unreachable_slots()));
                }
                evict(&gateway.policies, unix_ms());
                for policy in gateway.policies.values() {
                    let keys: usize = policy
                        .limiters()
                        .map(|l| {
                            l.leases.len()
                                + l.logs.as_ref().map_or(0, |t| t.len())
                                + l.slots.as_ref().map_or(0, |t| t.len())
                        })
                        .sum();
                    policy.counters.active_keys.set(keys as i64);
                }
            }
            let link = gateway.redis.clone();
            drop(gateway);
            let wanted = async {
                match &link {
                    Some(link) => {
                        // No batching delay: a request waits for this round. Keys that ask
                        // while a round is in flight join the next one, which starts as
                        // soon as it returns, so bursts still share round trips.
                        link.sync_wanted.notified().await;
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
                        if let Params::Window { .. } = limiter.params {
                            let window = limiter.window_at(now).id;
                            limiter.leases.for_each(|_, lease| lease.release(window));
                        }
                    }
                }
                // Spare slots go back; those in use expire if this node's requests
                // outlive it.
                for policy in gateway.policies.values().filter(|p| p.holds_fleet_slots()) {
                    for table in policy.limiters().filter_map(|l| l.slots.as_ref()) {
                        table.for_each(|_, lease| lease.release_spare());
                    }
                }
                self.sync_once(link, connection, &gateway.policies, Round::Final)
                    .await;
            }
            link.leave().await;
        }
        self.flushed.store(true, Ordering::Release);
    }
}

impl LimitSync {
    /// Starts a cluster's heartbeat and probe on a task of their own, unless the last ones
    /// are still running. A master that just died makes them wait out their deadline, and
    /// no lease round (scheduled or urgent) may wait behind that: a key whose window just
    /// began would wait past `redis.timeout` for its grant and turn local.
    fn spawn_cluster_housekeeping(
        &self,
        link: &Arc<RedisLink>,
        connection: &Connection,
        policies: &std::collections::BTreeMap<String, Arc<Policy>>,
        deadline: Duration,
    ) {
        if self.housekeeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let (link, mut connection) = (link.clone(), connection.clone());
        let (policies, blocks_seen) = (policies.clone(), self.blocks_seen.clone());
        // Cleared on drop, so a task that panics does not stop every later round's upkeep.
        let busy = ClearOnDrop(self.housekeeping.clone());
        tokio::spawn(async move {
            let _busy = busy;
            let verdict =
                cluster_housekeeping(&link, &mut connection, &policies, &blocks_seen, deadline)
                    .await;
            if let Some(why) = verdict {
                link.mark_down("heartbeat", &why);
            }
        });
    }

    /// One round: on schedule the heartbeat and probe (on a task of their own for a
    /// cluster), then the leases the round covers.
    async fn sync_once(
        &self,
        link: &Arc<RedisLink>,
        mut connection: Connection,
        policies: &std::collections::BTreeMap<String, Arc<Policy>>,
        round: Round,
    ) {
        let started = Instant::now();
        let deadline = round_deadline(link);
        if round == Round::Scheduled {
            if link.store().is_cluster() {
                self.spawn_cluster_housekeeping(link, &connection, policies, deadline);
            } else {
                match fleet_round(link, &mut connection, policies, &self.blocks_seen, deadline)
                    .await
                {
                    Ok(()) => link.mark_up(),
                    Err((op, e)) => return link.mark_down(op, &e),
                }
                // Sentinel: whether the master moved (nothing to do for one server).
                link.store().probe(&connection, deadline).await;
            }
        }
        lease_round(link, connection, policies, round, deadline, started).await
    }
}

struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn round_deadline(link: &RedisLink) -> Duration {
    (link.config.timeout * 4).max(link.config.sync_interval * 2)
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
    /// A concurrency lease (async).
    Slots {
        limiter: &'a Limiter,
        hash: u64,
        key: Arc<str>,
        plan: SlotPlan,
    },
    /// The members of this node's requests in flight under an atomic concurrency limit.
    Renew {
        limiter: &'a Limiter,
        hash: u64,
        key: Arc<str>,
        renewal: slots::Renewal,
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

/// A cluster's scheduled upkeep: the fleet's heartbeat (skipped while the master of the
/// fleet's keys is away: it would only wait out its deadline; the probe says when that
/// master or its replacement answers again), then the probe of every master. Says why
/// when no master answers.
async fn cluster_housekeeping(
    link: &RedisLink,
    connection: &mut Connection,
    policies: &std::collections::BTreeMap<String, Arc<Policy>>,
    blocks_seen: &AtomicU64,
    deadline: Duration,
) -> Option<String> {
    let fleet_reachable = link
        .store()
        .reachable(|| crate::redis_store::fleet::key(&link.config.key_prefix, "nodes"));
    if fleet_reachable {
        match fleet_round(link, connection, policies, blocks_seen, deadline).await {
            Ok(()) => link.mark_up(),
            // While the fleet's master is away the node count and resets wait, and every
            // other master's keys stay global.
            Err((op, e)) => link.note_failure(op, &e),
        }
    }
    let (answering, masters) = link.store().probe(connection, deadline).await?;
    if answering == 0 {
        return Some(format!("none of {masters} cluster masters answers"));
    }
    link.mark_up();
    None
}

/// Reports what this node admitted and refills its leases: every lease on a scheduled or
/// final round, only the keys that asked on an urgent one.
async fn lease_round(
    link: &RedisLink,
    mut connection: Connection,
    policies: &std::collections::BTreeMap<String, Arc<Policy>>,
    round: Round,
    deadline: Duration,
    started: Instant,
) {
    let now = unix_ms();
    let nodes = link.nodes();
    let sync_ms = link.config.sync_interval.as_millis() as u64;
    let leased: Vec<&Policy> = policies
        .values()
        .filter(|p| p.is_leased() || p.holds_fleet_slots())
        .map(|p| &**p)
        .collect();
    let ttl = lease::reservation_ttl_ms(sync_ms);
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
                let slot = match &limiter.slots {
                    Some(table) => table
                        .get(hash, |lease| {
                            plan_slots(policy, limiter, hash, lease, now, nodes, ttl)
                        })
                        .flatten(),
                    None => limiter
                        .leases
                        .get(hash, |lease| {
                            plan(limiter, hash, lease, now, nodes, sync_ms)
                        })
                        .flatten(),
                };
                if let Some(slot) = slot {
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
                    if let Some(table) = &limiter.slots {
                        table.for_each_in_shard(shard, |hash, lease| {
                            if let Some(slot) =
                                plan_slots(policy, limiter, hash, lease, now, nodes, ttl)
                            {
                                slots.push(slot);
                            }
                        });
                    }
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
    match batch.finish().await {
        Ok(None) => {}
        Ok(Some(partly)) => link.note_failure("sync", &partly),
        // On a cluster a round may hold only keys of a master that is away; whether the
        // cluster as a whole answers is the probe's to say.
        Err(e) if link.store().is_cluster() => return link.note_failure("sync", &e),
        Err(e) => return link.mark_down("sync", &e),
    }
    let took = started.elapsed().as_secs_f64();
    link.metrics().redis_sync_duration.observe(took);
    link.record_sync(took);
    link.sync_completed();
}

/// The heartbeat, then fleet-wide resets, then penalties
/// published and read fleet-wide (no round trip unless a policy blocks): on failure, the
/// operation and why.
async fn fleet_round(
    link: &RedisLink,
    connection: &mut Connection,
    policies: &std::collections::BTreeMap<String, Arc<Policy>>,
    blocks_seen: &AtomicU64,
    deadline: Duration,
) -> Result<(), (&'static str, String)> {
    let late = || format!("no answer within {deadline:?}");
    match tokio::time::timeout(deadline, link.heartbeat(connection)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(("heartbeat", e.to_string())),
        Err(_) => return Err(("heartbeat", late())),
    }
    match tokio::time::timeout(deadline, link.refresh_control(connection)).await {
        Ok(Ok(resets)) => {
            let now = unix_ms();
            for reset in resets {
                if let Some(policy) = policies.get(&reset.policy) {
                    policy.forget_locally(&reset.key, now);
                }
            }
        }
        Ok(Err(e)) => return Err(("heartbeat", e.to_string())),
        Err(_) => return Err(("heartbeat", late())),
    }
    let exchange = super::blocks::exchange(link, connection, policies, blocks_seen);
    match tokio::time::timeout(deadline, exchange).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(("blocks", e.to_string())),
        Err(_) => Err(("blocks", late())),
    }
}

/// Plans sent to Redis in pipelines of up to `CHUNK`.
struct Batch<'a, 'c> {
    link: &'a RedisLink,
    connection: &'c mut Connection,
    now: u64,
    deadline: Duration,
    slots: Vec<(Slot<'a>, &'a Policy)>,
    /// Every command of a chunk failed: Redis is down for this node.
    failed: Option<String>,
    /// Some commands failed (on a cluster: the keys of a master that did not answer).
    partly: Option<String>,
}

impl<'a, 'c> Batch<'a, 'c> {
    fn new(
        link: &'a RedisLink,
        connection: &'c mut Connection,
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
            partly: None,
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
            for (slot, _) in chunk {
                restore(slot);
            }
            return;
        }
        let answers = run_chunk(self.link, self.connection, &chunk, self.now, self.deadline).await;
        let total = answers.iter().map(Vec::len).sum::<usize>();
        let errors: Vec<&String> = answers
            .iter()
            .flatten()
            .filter_map(|a| a.as_ref().err())
            .collect();
        if let Some(first) = errors.first() {
            if errors.len() == total {
                self.failed = Some((*first).clone());
            } else {
                self.partly = Some((*first).clone());
            }
        }
        settle(self.link, chunk, answers);
    }

    /// `Err` when Redis failed as a whole; `Ok(Some(_))` when only some keys' calls did.
    async fn finish(mut self) -> Result<Option<String>, String> {
        self.send().await;
        match self.failed {
            Some(e) => Err(e),
            None => Ok(self.partly),
        }
    }
}

/// Drops keys that went quiet, keeping memory to what is in use.
fn evict(policies: &std::collections::BTreeMap<String, Arc<Policy>>, now: u64) {
    for policy in policies.values() {
        for limiter in policy.limiters() {
            if !policy.is_leased() {
                evict_exact(limiter, now);
            }
            if let Some(table) = &limiter.slots {
                table.retain(|_, lease| !lease.is_idle());
            }
            match limiter.params {
                Params::Window { .. } if policy.is_leased() => {
                    let window = Some(limiter.window_at(now).id);
                    limiter.leases.retain(|_, lease| !lease.is_idle(window));
                }
                Params::Bucket(_) if policy.is_leased() => {
                    limiter.leases.retain(|_, lease| !lease.is_idle(None))
                }
                Params::Log { window_ms, .. } => {
                    if let Some(logs) = &limiter.logs {
                        logs.retain(|_, log| log.prune(now, window_ms));
                    }
                }
                _ => {}
            }
        }
    }
}

/// Atomic mode keeps Redis's last answer per key for deciding without Redis; it is worth
/// keeping while its window is current or its bucket has not refilled completely since.
fn evict_exact(limiter: &Limiter, now: u64) {
    if limiter.leases.is_empty() {
        return;
    }
    match limiter.params {
        Params::Window { .. } => {
            let window = limiter.window_at(now).id;
            limiter.leases.retain(|_, lease| lease.window + 1 >= window);
        }
        Params::Bucket(b) => {
            let now_ns = super::link::unix_ns();
            let full_after = b.tolerance_ns();
            limiter.leases.retain(|_, lease| {
                lease.unreported > 0 || now_ns.saturating_sub(lease.sync.answered_ns) < full_after
            });
        }
        Params::Log { .. } | Params::Concurrency { .. } => {}
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
        Params::Window { limit, sliding, .. } => lease
            .plan_window(limit, now, limiter.window_at(now), sliding, nodes, sync_ms)
            .map(|plan| Slot::Window {
                limiter,
                hash,
                key,
                plan,
            }),
        Params::Bucket(b) => {
            lease
                .plan_bucket(b.burst, nodes, now, sync_ms)
                .map(|plan| Slot::Bucket {
                    limiter,
                    hash,
                    key,
                    plan,
                })
        }
        _ => None,
    }
}

/// One key's concurrency slots for this round: a lease to top up, renew or hand back
/// (async), or the members of requests in flight to renew (atomic).
fn plan_slots<'a>(
    policy: &Policy,
    limiter: &'a Limiter,
    hash: u64,
    lease: &mut SlotLease,
    now: u64,
    nodes: u64,
    ttl: u64,
) -> Option<Slot<'a>> {
    let Params::Concurrency { max } = limiter.params else {
        return None;
    };
    let key = lease.key.clone();
    match policy.sync {
        crate::config::SyncMode::Async => {
            lease.plan(max, nodes, now, ttl).map(|plan| Slot::Slots {
                limiter,
                hash,
                key,
                plan,
            })
        }
        crate::config::SyncMode::Atomic => lease.renewal(now, ttl).map(|renewal| Slot::Renew {
            limiter,
            hash,
            key,
            renewal,
        }),
    }
}

/// Runs a chunk's plans, split per master on a cluster; the answers of each plan's
/// commands, in the chunk's order.
async fn run_chunk(
    link: &RedisLink,
    connection: &mut Connection,
    chunk: &[(Slot<'_>, &Policy)],
    now: u64,
    deadline: Duration,
) -> Vec<Vec<Answer>> {
    let deadline = deadline + PER_PLAN * chunk.len() as u32;
    let prefix = &link.config.key_prefix;
    let field = link.reservation_field();
    let ttl = lease::reservation_ttl_ms(link.config.sync_interval.as_millis() as u64);
    let mut pipe = redis::pipe();
    let mut sizes = Vec::with_capacity(chunk.len());
    for (slot, policy) in chunk {
        let before = pipe.len();
        match slot {
            Slot::Window {
                limiter, key, plan, ..
            } => {
                let Params::Window { limit, sliding, .. } = limiter.params else {
                    sizes.push(0);
                    continue;
                };
                let key = |w: u64| policy.redis_key(prefix, key, &limiter.window_suffix(w));
                // The plan's window is the one of `now` unless the sync straddled its end;
                // then the scripts run as in the window that began.
                let span = limiter.window_at(now);
                let elapsed = if span.id == plan.window {
                    span.elapsed_ms(now)
                } else {
                    0
                };
                let window_ms = span.len_ms();
                let keep = limiter.window_keep_ms(span, now);
                let mut add = |current: u64, delta: i64, held: u64, want: u64, elapsed: u64| {
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
                            .arg(ttl)
                            .arg(keep),
                    );
                };
                // Corrections to ended windows go first, so this window's script reads the
                // previous window's corrected count. Nothing stays reserved in them.
                for (window, report) in &plan.stale {
                    add(*window, report.net_delta(), 0, 0, 0);
                }
                add(
                    plan.window,
                    plan.report.net_delta(),
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
                    sizes.push(0);
                    continue;
                };
                pipe.invoke_script(
                    scripts::BUCKET_SCRIPT
                        .key(policy.redis_key(prefix, key, policy::BUCKET_SUFFIX))
                        .arg(plan.report.net_delta())
                        .arg(plan.held)
                        .arg(plan.want)
                        .arg(b.per_ns as f64 / b.count.max(1) as f64 / 1_000.0)
                        .arg(b.burst)
                        .arg(0)
                        .arg(&field)
                        .arg(lease::reservation_ttl_ms(
                            link.config.sync_interval.as_millis() as u64,
                        )),
                );
            }
            Slot::Slots { key, plan, .. } => {
                pipe.invoke_script(
                    scripts::SLOTS_SCRIPT
                        .key(policy.redis_key(prefix, key, slots::LEASES_SUFFIX))
                        .arg(plan.held)
                        .arg(plan.want)
                        .arg(plan.limit)
                        .arg(link.node_id())
                        .arg(ttl)
                        .arg(plan.spare),
                );
            }
            Slot::Renew { key, renewal, .. } => {
                pipe.invoke_script(
                    scripts::SLOT_RENEW_SCRIPT
                        .key(policy.redis_key(prefix, key, slots::MEMBERS_SUFFIX))
                        .arg(ttl)
                        .arg(renewal.claim.len())
                        .arg(renewal.release.len())
                        .arg(&renewal.claim)
                        .arg(&renewal.release)
                        .arg(&renewal.renew),
                );
            }
        }
        sizes.push(pipe.len() - before);
    }
    let codes: Vec<&str> = scripts::all().iter().map(|(code, _)| *code).collect();
    let mut answers = link
        .store()
        .run(connection, &pipe, deadline, &codes)
        .await
        .into_iter();
    sizes
        .into_iter()
        .map(|n| answers.by_ref().take(n).collect())
        .collect()
}

/// Applies each plan whose every command was answered; puts back what the others took,
/// for the next round.
fn settle(link: &RedisLink, chunk: Vec<(Slot<'_>, &Policy)>, answers: Vec<Vec<Answer>>) {
    let now_ns = super::link::unix_ns();
    let field = |a: &[u64], i: usize| a.get(i).copied().unwrap_or(0);
    for ((slot, _), answers) in chunk.into_iter().zip(answers) {
        let numbers: Option<Vec<Vec<u64>>> = answers
            .into_iter()
            .map(|a| a.ok().and_then(|v| redis::from_owned_redis_value(v).ok()))
            .collect();
        let Some(numbers) = numbers.filter(|n| !n.is_empty()) else {
            restore(slot);
            continue;
        };
        let mut numbers = numbers.into_iter();
        let mut next = || numbers.next().unwrap_or_default();
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
                let again = limiter
                    .leases
                    .get(hash, |lease| lease.apply_window(&plan, &answer));
                if again == Some(true) {
                    link.mark_urgent(limiter.id, hash);
                }
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
                let again = limiter
                    .leases
                    .get(hash, |lease| lease.apply_bucket(&plan, &answer, now_ns));
                if again == Some(true) {
                    link.mark_urgent(limiter.id, hash);
                }
            }
            Slot::Slots {
                limiter,
                hash,
                plan,
                ..
            } => {
                let a = next();
                let answer = SlotAnswer {
                    total: field(&a, 0),
                    grant: field(&a, 1),
                    waiting: field(&a, 2),
                    spare: field(&a, 3),
                };
                if let Some(table) = &limiter.slots {
                    table.get(hash, |lease| lease.apply(&plan, &answer));
                }
            }
            Slot::Renew {
                limiter,
                hash,
                renewal,
                ..
            } => {
                let touched = field(&next(), 0);
                if let Some(table) = &limiter.slots {
                    table.get(hash, |lease| lease.renewed(&renewal, touched));
                }
            }
        }
    }
}

fn restore(slot: Slot<'_>) {
    {
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
            Slot::Slots { limiter, hash, .. } => {
                if let Some(table) = &limiter.slots {
                    table.get(hash, SlotLease::restore);
                }
            }
            Slot::Renew {
                limiter,
                hash,
                renewal,
                ..
            } => {
                if let Some(table) = &limiter.slots {
                    table.get(hash, |lease| lease.restore_renewal(renewal));
                }
            }
        }
    }
}
