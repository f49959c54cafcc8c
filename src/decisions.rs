//! Where each request's outcome goes after it is answered, off the request path: per-route
//! per-second counts and the clients limited most (for the dashboard), a live stream of
//! decisions (Server-Sent Events), and a per-client history in Redis (`GET /admin/logs`).

use crate::metrics::Metrics;
use parking_lot::Mutex;
use prometheus::IntCounter;
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use tokio::sync::broadcast;

/// One request's decision, as streamed and logged.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub ts: String,
    pub request_id: String,
    pub route: String,
    pub client: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub policy: Option<String>,
    /// `allowed`, `limited`, `shadow_limited`, `failed_open`, `unavailable`, or
    /// `unauthorized` for a missing or unknown API key.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
}

/// What a request's limits came to, kept in its context until it is logged.
#[derive(Debug, Clone)]
pub struct Summary {
    pub policy: Option<Arc<str>>,
    pub outcome: &'static str,
    pub remaining: Option<u64>,
}

/// Per-second counts of one route's requests over the last minute.
#[derive(Debug)]
pub struct RouteSeries {
    stamps: [AtomicU64; SECONDS],
    counts: [[AtomicU64; SECONDS]; 3],
}

const SECONDS: usize = 60;

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Allowed = 0,
    Limited = 1,
    Error = 2,
}

impl Default for RouteSeries {
    fn default() -> Self {
        RouteSeries {
            stamps: std::array::from_fn(|_| AtomicU64::new(0)),
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl RouteSeries {
    pub fn record(&self, now_s: u64, kind: Kind) {
        let slot = (now_s % SECONDS as u64) as usize;
        let stamp = self.stamps[slot].load(Ordering::Acquire);
        if stamp != now_s
            && self.stamps[slot]
                .compare_exchange(stamp, now_s, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for counts in &self.counts {
                counts[slot].store(0, Ordering::Release);
            }
        }
        self.counts[kind as usize][slot].fetch_add(1, Ordering::Relaxed);
    }

    /// The last 60 seconds up to `now_s`, oldest first: (allowed, limited, errors).
    pub fn snapshot(&self, now_s: u64) -> [Vec<u64>; 3] {
        let mut out: [Vec<u64>; 3] = Default::default();
        for second in now_s + 1 - SECONDS as u64..=now_s {
            let slot = (second % SECONDS as u64) as usize;
            let valid = self.stamps[slot].load(Ordering::Acquire) == second;
            for (kind, series) in out.iter_mut().enumerate() {
                series.push(if valid {
                    self.counts[kind][slot].load(Ordering::Relaxed)
                } else {
                    0
                });
            }
        }
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TopEntry {
    pub client: String,
    pub policy: String,
    pub count: u64,
}

/// Counts of refusals per (client, policy) over the last minute, bounded in size.
#[derive(Default)]
struct TopLimited {
    entries: HashMap<(String, String), (u64, u64)>,
}

const TOP_CAPACITY: usize = 1024;

impl TopLimited {
    fn record(&mut self, client: String, policy: String, now_s: u64) {
        if self.entries.len() >= TOP_CAPACITY
            && !self.entries.contains_key(&(client.clone(), policy.clone()))
        {
            self.entries
                .retain(|_, (_, last)| now_s.saturating_sub(*last) < SECONDS as u64);
            if self.entries.len() >= TOP_CAPACITY {
                if let Some(smallest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (c, _))| *c)
                    .map(|(k, _)| k.clone())
                {
                    self.entries.remove(&smallest);
                }
            }
        }
        let entry = self.entries.entry((client, policy)).or_insert((0, now_s));
        entry.0 += 1;
        entry.1 = now_s;
    }

    fn top(&self, now_s: u64, n: usize) -> Vec<TopEntry> {
        let mut recent: Vec<TopEntry> = self
            .entries
            .iter()
            .filter(|(_, (_, last))| now_s.saturating_sub(*last) < SECONDS as u64)
            .map(|((client, policy), (count, _))| TopEntry {
                client: client.clone(),
                policy: policy.clone(),
                count: *count,
            })
            .collect();
        recent.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.client.cmp(&b.client)));
        recent.truncate(n);
        recent
    }
}

/// Entries waiting for the decision log writer.
const LOG_QUEUE: usize = 50_000;

pub struct DecisionHub {
    routes: Mutex<HashMap<String, Arc<RouteSeries>>>,
    top: Mutex<TopLimited>,
    events: broadcast::Sender<Arc<Decision>>,
    log: SyncSender<Arc<Decision>>,
    log_rx: Mutex<Option<Receiver<Arc<Decision>>>>,
    /// Follows `admin.decision_log.enabled`, which a reload may change.
    log_enabled: AtomicBool,
    dropped: IntCounter,
}

impl DecisionHub {
    pub fn new(metrics: &Metrics) -> Self {
        let (events, _) = broadcast::channel(1024);
        let (log, log_rx) = mpsc::sync_channel(LOG_QUEUE);
        DecisionHub {
            routes: Mutex::new(HashMap::new()),
            top: Mutex::new(TopLimited::default()),
            events,
            log,
            log_rx: Mutex::new(Some(log_rx)),
            log_enabled: AtomicBool::new(false),
            dropped: metrics.decision_log_dropped.clone(),
        }
    }

    pub fn set_log_enabled(&self, enabled: bool) {
        self.log_enabled.store(enabled, Ordering::Relaxed);
    }

    pub fn log_enabled(&self) -> bool {
        self.log_enabled.load(Ordering::Relaxed)
    }

    /// The series of a route, created on first use and kept across reloads.
    pub fn series(&self, route: &str) -> Arc<RouteSeries> {
        self.routes
            .lock()
            .entry(route.to_string())
            .or_default()
            .clone()
    }

    pub fn route_series(&self, now_s: u64) -> Vec<(String, [Vec<u64>; 3])> {
        let routes = self.routes.lock();
        let mut out: Vec<_> = routes
            .iter()
            .map(|(r, s)| (r.clone(), s.snapshot(now_s)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn top_limited(&self, now_s: u64, n: usize) -> Vec<TopEntry> {
        self.top.lock().top(now_s, n)
    }

    /// Whether anyone wants the full decision: the log or a live subscriber.
    pub fn wants_detail(&self) -> bool {
        self.log_enabled() || self.events.receiver_count() > 0
    }

    pub fn note_limited(&self, client: IpAddr, policy: &str, now_s: u64) {
        self.top
            .lock()
            .record(client.to_string(), policy.to_string(), now_s);
    }

    pub fn publish(&self, decision: Decision) {
        let decision = Arc::new(decision);
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(decision.clone());
        }
        if self.log_enabled() {
            if let Err(TrySendError::Full(_)) = self.log.try_send(decision) {
                self.dropped.inc();
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Decision>> {
        self.events.subscribe()
    }

    /// Hands the log queue to its writer (once).
    pub fn take_log(&self) -> Option<Receiver<Arc<Decision>>> {
        self.log_rx.lock().take()
    }

    pub fn count_dropped(&self, n: u64) {
        self.dropped.inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_keep_a_minute_per_second() {
        let s = RouteSeries::default();
        s.record(1000, Kind::Allowed);
        s.record(1000, Kind::Allowed);
        s.record(1001, Kind::Limited);
        s.record(1059, Kind::Error);
        let [allowed, limited, errors] = s.snapshot(1059);
        assert_eq!(allowed.len(), 60);
        assert_eq!((allowed[0], limited[1], errors[59]), (2, 1, 1));
        // A minute later the old seconds are gone, not double counted.
        s.record(1060, Kind::Allowed);
        let [allowed, ..] = s.snapshot(1060);
        assert_eq!(allowed[59], 1);
        assert_eq!(allowed.iter().sum::<u64>(), 1);
    }

    #[test]
    fn top_limited_is_bounded_and_recent() {
        let mut t = TopLimited::default();
        for i in 0..2000 {
            t.record(format!("10.0.0.{}", i % 1500), "p".into(), 100);
        }
        assert!(t.entries.len() <= TOP_CAPACITY);
        t.record("1.1.1.1".into(), "p".into(), 100);
        t.record("1.1.1.1".into(), "p".into(), 100);
        t.record("1.1.1.1".into(), "p".into(), 100);
        assert_eq!(t.top(100, 1)[0].client, "1.1.1.1");
        assert!(
            t.top(200, 10).is_empty(),
            "a minute later nothing is recent"
        );
    }
}
