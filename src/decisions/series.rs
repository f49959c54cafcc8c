//! What the dashboard shows of recent decisions: per-route per-second counts over the last
//! minute, and the clients limited most. Both are fed by the decision drain, off the
//! request path.

use super::record::{Kind, PolicyId};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Per-second counts of one route's requests over the last minute.
#[derive(Debug)]
pub struct RouteSeries {
    stamps: [AtomicU64; SECONDS],
    counts: [[AtomicU64; SECONDS]; 3],
}

const SECONDS: usize = 60;

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
        if stamp > now_s {
            return; // older than the minute this slot now holds
        }
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

/// Counts of refusals per (client, policy) over the last minute, bounded in size.
#[derive(Default)]
pub struct TopLimited {
    entries: HashMap<(IpAddr, PolicyId), (u64, u64)>,
}

const TOP_CAPACITY: usize = 1024;

impl TopLimited {
    pub fn record(&mut self, client: IpAddr, policy: PolicyId, now_s: u64) {
        let key = (client, policy);
        if self.entries.len() >= TOP_CAPACITY && !self.entries.contains_key(&key) {
            self.entries
                .retain(|_, (_, last)| now_s.saturating_sub(*last) < SECONDS as u64);
            if self.entries.len() >= TOP_CAPACITY {
                if let Some(smallest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (c, _))| *c)
                    .map(|(k, _)| *k)
                {
                    self.entries.remove(&smallest);
                }
            }
        }
        let entry = self.entries.entry(key).or_insert((0, now_s));
        entry.0 += 1;
        entry.1 = now_s;
    }

    /// The `n` (client, policy) pairs refused most in the last minute, most first.
    pub fn top(&self, now_s: u64, n: usize) -> Vec<(IpAddr, PolicyId, u64)> {
        let mut recent: Vec<(IpAddr, PolicyId, u64)> = self
            .entries
            .iter()
            .filter(|(_, (_, last))| now_s.saturating_sub(*last) < SECONDS as u64)
            .map(|((client, policy), (count, _))| (*client, *policy, *count))
            .collect();
        recent.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        recent.truncate(n);
        recent
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
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
        // A late record of a second the slot no longer holds is not counted in the new one.
        s.record(1000, Kind::Allowed);
        assert_eq!(s.snapshot(1060)[0].iter().sum::<u64>(), 1);
    }

    #[test]
    fn top_limited_is_bounded_and_recent() {
        let mut t = TopLimited::default();
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..2000 {
            t.record(ip(i % 1500), 0, 100);
        }
        assert!(t.len() <= TOP_CAPACITY);
        let hot = ip(99_999);
        for _ in 0..3 {
            t.record(hot, 0, 100);
        }
        assert_eq!(t.top(100, 1)[0].0, hot);
        assert!(
            t.top(200, 10).is_empty(),
            "a minute later nothing is recent"
        );
    }
}
