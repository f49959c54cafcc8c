//! Where each request's outcome goes after it is answered: per-route per-second counts and
//! the clients limited most (the dashboard), a live stream of decisions (Server-Sent
//! Events), and a per-client history in Redis (`GET /admin/logs`).
//!
//! The request path only checks whether anyone wants its decision (one atomic load) and,
//! if so, pushes a fixed-size [`Record`] to a bounded lock-free queue: no allocation, no
//! formatting, no lock. The drain (`drain.rs`) empties the queue every few tens of
//! milliseconds and does the rest off the request path.

pub mod drain;
pub mod entry;
pub mod record;
pub mod series;

pub use entry::Entry;
pub use record::{Kind, Outcome, PolicyId, Record, RouteId};
pub use series::RouteSeries;

use crate::config::ClientNet;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;
use prometheus::IntCounter;
use serde::Serialize;
use series::TopLimited;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

/// What a request's limits came to, kept in its context until it is logged.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// The refusing (or tightest) policy, by index into the route's `limits`.
    pub policy: Option<usize>,
    pub outcome: Outcome,
    pub remaining: Option<u64>,
}

/// Records waiting for the drain: at a drain every 50 ms, room for 300,000 requests a
/// second; a full queue drops (and counts) records rather than slow a request.
const QUEUE: usize = 16_384;

/// Who wants decisions, as bits of [`DecisionHub::wants`].
pub const WANT_LOG: u8 = 1;
pub const WANT_STREAM: u8 = 2;
pub const WANT_DASHBOARD: u8 = 4;

/// How long after its last `GET /admin/stats` the dashboard counts as watched.
const DASHBOARD_WATCH_MS: u64 = 90_000;

/// Interned route labels and policy names, read by the drain and the stream.
#[derive(Default)]
pub struct Names {
    pub routes: Vec<(Arc<str>, Arc<RouteSeries>)>,
    pub policies: Vec<Arc<str>>,
    /// Each policy's client networks, when its key has `client_ip` in it.
    pub nets: Vec<Option<ClientNet>>,
}

impl Names {
    pub fn route(&self, id: RouteId) -> &str {
        self.routes.get(id as usize).map_or("", |(label, _)| label)
    }

    pub fn policy(&self, id: PolicyId) -> &str {
        self.policies.get(id as usize).map_or("", |name| name)
    }

    /// The network a client is keyed by under a policy, in CIDR form (`2001:db8::/64`),
    /// when the policy keys by client address.
    pub fn network(&self, id: PolicyId, client: std::net::IpAddr) -> Option<String> {
        let net = (*self.nets.get(id as usize)?)?;
        let (ip, bits) = net.network(client);
        // A single address reads as one, as in limit keys.
        if bits == if ip.is_ipv4() { 32 } else { 128 } {
            return Some(ip.to_string());
        }
        Some(format!("{ip}/{bits}"))
    }
}

#[derive(Default)]
struct Interner {
    routes: HashMap<String, RouteId>,
    policies: HashMap<String, PolicyId>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopEntry {
    pub client: String,
    pub policy: String,
    pub count: u64,
}

pub struct DecisionHub {
    queue: ArrayQueue<Record>,
    wants: AtomicU8,
    log_enabled: AtomicU8,
    subscribers: Arc<AtomicUsize>,
    dashboard_seen_ms: AtomicU64,
    names: ArcSwap<Names>,
    interner: Mutex<Interner>,
    top: Mutex<TopLimited>,
    events: broadcast::Sender<Arc<Vec<Record>>>,
    dropped: IntCounter,
}

/// A live subscription to the decision stream; the stream is fed while one exists.
pub struct Subscription {
    pub events: broadcast::Receiver<Arc<Vec<Record>>>,
    count: Arc<AtomicUsize>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The drain clears the stream's bit once no subscription is left.
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl DecisionHub {
    pub fn new(metrics: &Metrics) -> Self {
        // Batches, one per drain: 64 hold about three seconds of decisions.
        let (events, _) = broadcast::channel(64);
        DecisionHub {
            queue: ArrayQueue::new(QUEUE),
            wants: AtomicU8::new(0),
            log_enabled: AtomicU8::new(0),
            subscribers: Arc::new(AtomicUsize::new(0)),
            dashboard_seen_ms: AtomicU64::new(0),
            names: ArcSwap::from_pointee(Names::default()),
            interner: Mutex::new(Interner::default()),
            top: Mutex::new(TopLimited::default()),
            events,
            dropped: metrics.decision_log_dropped.clone(),
        }
    }

    /// Follows `admin.decision_log.enabled` (and whether there is a Redis to log to),
    /// which a reload may change.
    pub fn set_log_enabled(&self, enabled: bool) {
        self.log_enabled.store(enabled as u8, Ordering::Relaxed);
        if enabled {
            self.wants.fetch_or(WANT_LOG, Ordering::Relaxed);
        } else {
            self.wants.fetch_and(!WANT_LOG, Ordering::Relaxed);
        }
    }

    pub fn log_enabled(&self) -> bool {
        self.log_enabled.load(Ordering::Relaxed) != 0
    }

    /// Who wants this request's decision: `WANT_*` bits, 0 when nobody does.
    #[inline]
    pub fn wants(&self) -> u8 {
        self.wants.load(Ordering::Relaxed)
    }

    /// Hands a record to the drain; never waits. A full queue drops it and counts it.
    #[inline]
    pub fn push(&self, record: Record) {
        if self.queue.push(record).is_err() {
            self.dropped.inc();
        }
    }

    /// Moves the queued records into `into`, oldest first.
    pub fn drain_into(&self, into: &mut Vec<Record>) {
        let n = self.queue.len();
        into.reserve(n);
        for _ in 0..n {
            match self.queue.pop() {
                Some(r) => into.push(r),
                None => break,
            }
        }
    }

    pub fn count_dropped(&self, n: u64) {
        self.dropped.inc_by(n);
    }

    /// The interned id of a route label, with its series (created on first use and kept
    /// across reloads).
    pub fn route_id(&self, label: &str) -> (RouteId, Arc<RouteSeries>) {
        let mut interner = self.interner.lock();
        if let Some(&id) = interner.routes.get(label) {
            return (id, self.names.load().routes[id as usize].1.clone());
        }
        let names = self.names.load();
        let id = names.routes.len().min(RouteId::MAX as usize) as RouteId;
        let series = Arc::new(RouteSeries::default());
        let mut next = Names {
            routes: names.routes.clone(),
            policies: names.policies.clone(),
            nets: names.nets.clone(),
        };
        next.routes.push((label.into(), series.clone()));
        self.names.store(Arc::new(next));
        interner.routes.insert(label.to_string(), id);
        (id, series)
    }

    /// The interned id of a policy name; `net` is how it keys clients now (a reload may
    /// change it).
    pub fn policy_id(&self, name: &str, net: Option<ClientNet>) -> PolicyId {
        let mut interner = self.interner.lock();
        let names = self.names.load();
        if let Some(&id) = interner.policies.get(name) {
            if names.nets.get(id as usize) != Some(&net) {
                let mut next = Names {
                    routes: names.routes.clone(),
                    policies: names.policies.clone(),
                    nets: names.nets.clone(),
                };
                if let Some(slot) = next.nets.get_mut(id as usize) {
                    *slot = net;
                }
                self.names.store(Arc::new(next));
            }
            return id;
        }
        let id = names.policies.len().min(PolicyId::MAX as usize) as PolicyId;
        let mut next = Names {
            routes: names.routes.clone(),
            policies: names.policies.clone(),
            nets: names.nets.clone(),
        };
        next.policies.push(name.into());
        next.nets.push(net);
        self.names.store(Arc::new(next));
        interner.policies.insert(name.to_string(), id);
        id
    }

    pub fn names(&self) -> Arc<Names> {
        self.names.load_full()
    }

    /// The dashboard asked for a snapshot: keep its series fed for a while.
    pub fn dashboard_watched(&self, now_ms: u64) {
        self.dashboard_seen_ms.store(now_ms, Ordering::Relaxed);
        self.wants.fetch_or(WANT_DASHBOARD, Ordering::Relaxed);
    }

    /// Clears the bits of listeners that went away (the drain calls it every round).
    pub fn refresh_wants(&self, now_ms: u64) {
        if self.subscribers.load(Ordering::Acquire) == 0 {
            self.wants.fetch_and(!WANT_STREAM, Ordering::Relaxed);
        }
        let seen = self.dashboard_seen_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(seen) > DASHBOARD_WATCH_MS {
            self.wants.fetch_and(!WANT_DASHBOARD, Ordering::Relaxed);
        }
    }

    /// Counts a batch in the dashboard's series and top refusals.
    pub fn feed_dashboard(&self, records: &[Record], names: &Names) {
        let mut top = None;
        for r in records {
            let now_s = r.unix_ms / 1000;
            if let Some((_, series)) = names.routes.get(r.route as usize) {
                series.record(now_s, r.kind);
            }
            if let (Kind::Limited, Some(Some(policy))) = (r.kind, r.limits.map(|l| l.policy)) {
                // Clients are counted by the network the policy keys them by.
                let client = match names.nets.get(policy as usize).copied().flatten() {
                    Some(net) => net.network(r.client).0,
                    None => r.client,
                };
                top.get_or_insert_with(|| self.top.lock())
                    .record(client, policy, now_s);
            }
        }
    }

    pub fn route_series(&self, now_s: u64) -> Vec<(String, [Vec<u64>; 3])> {
        let names = self.names.load();
        let mut out: Vec<_> = names
            .routes
            .iter()
            .map(|(r, s)| (r.to_string(), s.snapshot(now_s)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn top_limited(&self, now_s: u64, n: usize) -> Vec<TopEntry> {
        let names = self.names.load();
        self.top
            .lock()
            .top(now_s, n)
            .into_iter()
            .map(|(client, policy, count)| TopEntry {
                client: names
                    .network(policy, client)
                    .unwrap_or_else(|| client.to_string()),
                policy: names.policy(policy).to_string(),
                count,
            })
            .collect()
    }

    /// Sends a batch to the live streams, if any.
    pub fn publish(&self, batch: Arc<Vec<Record>>) {
        let _ = self.events.send(batch);
    }

    pub fn has_subscribers(&self) -> bool {
        self.subscribers.load(Ordering::Acquire) > 0
    }

    pub fn subscribe(&self) -> Subscription {
        self.subscribers.fetch_add(1, Ordering::AcqRel);
        self.wants.fetch_or(WANT_STREAM, Ordering::Relaxed);
        Subscription {
            events: self.events.subscribe(),
            count: self.subscribers.clone(),
        }
    }
}
