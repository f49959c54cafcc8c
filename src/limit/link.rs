//! What limits need of Redis beyond the store: whether it is up, the fleet's live-node
//! count, the sync rounds requests wait on, and the resets that travel with the
//! heartbeat. Connections and topology are [`crate::redis_store`]'s.
//!
//! The request path never waits for a connection: it asks [`RedisLink::connection`], gets
//! one or none, and decides locally when there is none. The sync task (re)connects with
//! backoff. Each change between up and down is logged once and counted.

use crate::config::RedisConfig;
use crate::metrics::Metrics;
use crate::redis_store::{fleet, Connection, Store};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct RedisLink {
    pub config: RedisConfig,
    store: Store,
    up: AtomicBool,
    nodes: AtomicU64,
    node_id: String,
    sequence: AtomicU64,
    metrics: Arc<Metrics>,
    /// Wakes the sync task early (a new key, or a lease that ran dry).
    pub sync_wanted: tokio::sync::Notify,
    /// Keys that asked for an early sync: (limiter id, key hash).
    urgent: Mutex<Vec<(u64, u64)>>,
    /// Wakes requests waiting for a refill when a sync round completes.
    sync_done: tokio::sync::Notify,
    sync_generation: AtomicU64,
    /// The newest reset notice applied (Unix ms).
    last_reset_ms: AtomicU64,
    /// Recent sync durations in ms, for the dashboard.
    sync_ms: Mutex<VecDeque<f64>>,
    /// The last failure logged while down, so each distinct reason is logged once.
    last_failure: Mutex<String>,
}

/// A fleet-wide reset of one key's count, published by `DELETE /admin/limits/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetNotice {
    pub policy: String,
    pub key: String,
}

/// Unix time in ms (see [`crate::clock`]).
pub fn unix_ms() -> u64 {
    crate::clock::now_ms()
}

/// Unix time in ns (see [`crate::clock`]).
pub fn unix_ns() -> u64 {
    crate::clock::now_ns()
}

impl RedisLink {
    pub fn new(config: &RedisConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let store = Store::new(config)?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
        let node_id = format!(
            "{host}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        metrics.redis_up.set(0);
        Ok(RedisLink {
            config: config.clone(),
            store,
            up: AtomicBool::new(false),
            nodes: AtomicU64::new(1),
            node_id,
            sequence: AtomicU64::new(0),
            metrics,
            sync_wanted: tokio::sync::Notify::new(),
            urgent: Mutex::new(Vec::new()),
            sync_done: tokio::sync::Notify::new(),
            sync_generation: AtomicU64::new(0),
            last_reset_ms: AtomicU64::new(unix_ms()),
            sync_ms: Mutex::new(VecDeque::with_capacity(SYNC_HISTORY)),
            last_failure: Mutex::new(String::new()),
        })
    }

    /// Asks the sync task to sync one key before its next scheduled round; cheap and
    /// never waits. Past `URGENT_CAPACITY` queued keys the scheduled round takes them.
    pub fn mark_urgent(&self, limiter_id: u64, hash: u64) {
        {
            let mut urgent = self.urgent.lock();
            if urgent.len() < URGENT_CAPACITY {
                urgent.push((limiter_id, hash));
            }
        }
        self.sync_wanted.notify_one();
    }

    /// The keys waiting for an early sync, each once.
    pub fn take_urgent(&self) -> Vec<(u64, u64)> {
        let mut keys = std::mem::take(&mut *self.urgent.lock());
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Whether global decisions can use Redis right now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A handle on the shared connection, if there is one.
    pub fn connection(&self) -> Option<Connection> {
        self.store.connection()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether a global decision for the Redis key `key` can use Redis right now: Redis is
    /// up and, on a cluster, the master serving the key's slot answered last time.
    #[inline]
    pub fn reachable(&self, key: impl FnOnce() -> String) -> bool {
        self.is_up() && self.store.reachable(key)
    }

    /// Live tollgate nodes sharing this Redis, as of the last heartbeat (at least 1).
    pub fn nodes(&self) -> u64 {
        self.nodes.load(Ordering::Relaxed).max(1)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The hash field holding this node's reservation in a window counter.
    pub fn reservation_field(&self) -> String {
        format!("r:{}", self.node_id)
    }

    /// A member name unique across the fleet, for sliding log entries.
    pub fn unique_member(&self) -> String {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.node_id)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub async fn connect(&self) -> redis::RedisResult<()> {
        self.store.connect().await
    }

    /// A connection of its own, for bulk writes (the decision log) that must not queue
    /// ahead of the sync's round trips on the shared connection.
    pub async fn dedicated_connection(&self) -> redis::RedisResult<Connection> {
        self.store.dedicated().await
    }

    pub fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            self.last_failure.lock().clear();
            tracing::info!(redis = %self.config.describe(), "redis is reachable: global limits are enforced fleet-wide again");
            self.metrics.redis_up.set(1);
            self.metrics
                .redis_state_changes
                .with_label_values(&["up"])
                .inc();
        }
    }

    /// Records a failed call; the first failure after being up turns global limits local.
    pub fn mark_down(&self, op: &str, error: &dyn std::fmt::Display) {
        self.metrics.redis_errors.with_label_values(&[op]).inc();
        self.store.disconnect();
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                redis = %self.config.describe(),
                op,
                "redis failed ({error}): enforcing local limits (this node's share) until it is back"
            );
            self.metrics.redis_up.set(0);
            self.metrics
                .redis_state_changes
                .with_label_values(&["down"])
                .inc();
            *self.last_failure.lock() = error.to_string();
            return;
        }
        // Never up (or still down): say why once per distinct reason, not per retry, so a
        // wrong password or certificate is visible without flooding the log.
        if self.new_reason(error) {
            tracing::warn!(
                redis = %self.config.describe(),
                op,
                "redis is unreachable ({error}); limits stay local (this node's share) until it answers"
            );
        }
    }

    /// Whether `error` differs from the last failure logged, which it then becomes.
    fn new_reason(&self, error: &dyn std::fmt::Display) -> bool {
        let error = error.to_string();
        let mut last = self.last_failure.lock();
        if *last == error {
            return false;
        }
        *last = error;
        true
    }

    /// A call for the Redis key `key` failed. On a cluster only the master serving its
    /// slot turns local (until it answers again); on one server everything does.
    pub fn key_failed(&self, op: &str, key: &str, error: &dyn std::fmt::Display) {
        if !self.store.is_cluster() {
            return self.mark_down(op, error);
        }
        self.store.key_failed(key);
        self.note_failure(op, error);
    }

    /// Counts a failure that leaves Redis up for the other keys (a cluster master away, one
    /// script's error), logged once per distinct reason.
    pub fn note_failure(&self, op: &str, error: &dyn std::fmt::Display) {
        self.metrics.redis_errors.with_label_values(&[op]).inc();
        if self.new_reason(error) {
            tracing::warn!(
                redis = %self.config.describe(),
                op,
                unreachable_slots = self.store.unreachable_slots(),
                "some redis calls failed ({error}): their keys use local limits until Redis answers for them"
            );
        }
    }

    /// Registers this node as alive and reads how many are, in one round trip.
    pub async fn heartbeat(&self, connection: &mut Connection) -> redis::RedisResult<u64> {
        let count = fleet::heartbeat(
            connection,
            &self.config.key_prefix,
            &self.node_id,
            unix_ms(),
            self.liveness_ms(),
        )
        .await?;
        self.nodes.store(count.max(1), Ordering::Relaxed);
        self.metrics.redis_nodes.set(count as i64);
        Ok(count)
    }

    /// A node that has not been heard from for this long no longer counts as live.
    fn liveness_ms(&self) -> u64 {
        (self.config.sync_interval.as_millis() as u64 * 10).max(1_000)
    }

    /// The reset notices published since the last call; one round trip.
    pub async fn refresh_control(
        &self,
        connection: &mut Connection,
    ) -> redis::RedisResult<Vec<ResetNotice>> {
        let prefix = &self.config.key_prefix;
        let since = self.last_reset_ms.load(Ordering::Relaxed);
        let (resets,): (Vec<(String, u64)>,) = redis::pipe()
            .cmd("ZRANGEBYSCORE")
            .arg(resets_key(prefix))
            .arg(format!("({since}"))
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(connection)
            .await?;
        if let Some(newest) = resets.iter().map(|(_, score)| *score).max() {
            self.last_reset_ms.fetch_max(newest, Ordering::Relaxed);
        }
        Ok(resets
            .into_iter()
            .filter_map(|(member, _)| {
                let mut parts = member.splitn(3, '\u{0}');
                let policy = parts.next()?.to_string();
                let key = parts.next()?.to_string();
                Some(ResetNotice { policy, key })
            })
            .collect())
    }

    /// Counts sync rounds, so a request can tell whether one completed since it looked.
    pub fn sync_generation(&self) -> u64 {
        self.sync_generation.load(Ordering::Acquire)
    }

    /// Marks a sync round complete and wakes the requests waiting for it.
    pub fn sync_completed(&self) {
        self.sync_generation.fetch_add(1, Ordering::AcqRel);
        self.sync_done.notify_waiters();
    }

    /// Waits until a sync round newer than `seen` completes, at most `timeout`.
    pub async fn wait_for_sync(&self, seen: u64, timeout: Duration) {
        let done = self.sync_done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        // A round that ended after the caller looked, before it began waiting, counts.
        if self.sync_generation() != seen {
            return;
        }
        let _ = tokio::time::timeout(timeout, done).await;
    }

    pub fn record_sync(&self, seconds: f64) {
        let mut history = self.sync_ms.lock();
        if history.len() == SYNC_HISTORY {
            history.pop_front();
        }
        history.push_back(seconds * 1000.0);
    }

    /// (last, p50, p99) of recent sync durations, in ms.
    pub fn sync_summary(&self) -> Option<(f64, f64, f64)> {
        let history = self.sync_ms.lock();
        let last = *history.back()?;
        let mut sorted: Vec<f64> = history.iter().copied().collect();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        Some((last, at(0.5), at(0.99)))
    }

    /// Removes this node from the live set (on shutdown), so the others' shares grow at once.
    pub async fn leave(&self) {
        if let Some(mut c) = self.connection() {
            let leave = fleet::leave(&mut c, &self.config.key_prefix, &self.node_id);
            let _ = tokio::time::timeout(self.config.timeout * 4, leave).await;
        }
    }
}

/// Most keys queued for an early sync at once.
const URGENT_CAPACITY: usize = 100_000;

/// Syncs remembered for the latency summary.
const SYNC_HISTORY: usize = 256;

/// The sorted set of reset notices.
pub fn resets_key(prefix: &str) -> String {
    fleet::key(prefix, "resets")
}
