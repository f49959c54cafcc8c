//! Metrics of the rate limit service: per domain and descriptor, their stats (total hits,
//! over limit, near limit, shadow mode) as Prometheus counters.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

pub struct RlsMetrics {
    hits: IntCounterVec,
    over_limit: IntCounterVec,
    near_limit: IntCounterVec,
    shadow: IntCounterVec,
    pub requests: IntCounterVec,
}

/// The counters of one descriptor.
pub struct Counters {
    pub hits: IntCounter,
    pub over_limit: IntCounter,
    pub near_limit: IntCounter,
    pub shadow: IntCounter,
}

fn vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl RlsMetrics {
    /// Registers the counters in `registry` (once per process: the RLS server owns them).
    pub fn new(registry: &Registry) -> RlsMetrics {
        let labels = ["domain", "descriptor"];
        let m = RlsMetrics {
            hits: vec(
                "tollgate_rls_hits_total",
                "Hits (hits_addend summed) of rate limit service descriptors, by domain and descriptor.",
                &labels,
            ),
            over_limit: vec(
                "tollgate_rls_over_limit_total",
                "Hits over the limit, by domain and descriptor.",
                &labels,
            ),
            near_limit: vec(
                "tollgate_rls_near_limit_total",
                "Hits allowed past 80% of the limit, by domain and descriptor.",
                &labels,
            ),
            shadow: vec(
                "tollgate_rls_shadow_mode_total",
                "Hits over the limit answered OK because the descriptor is in shadow mode.",
                &labels,
            ),
            requests: vec(
                "tollgate_rls_requests_total",
                "ShouldRateLimit calls by answer (ok, over_limit, invalid_argument, unavailable).",
                &["code"],
            ),
        };
        for c in [
            &m.hits,
            &m.over_limit,
            &m.near_limit,
            &m.shadow,
            &m.requests,
        ] {
            // A second server in one process (tests) shares the first one's counters.
            let _ = registry.register(Box::new(c.clone()));
        }
        m
    }

    /// The counters of `metric` (`domain.key_value...`), labelled without the domain.
    pub fn of(&self, domain: &str, metric: &str) -> Counters {
        let descriptor = metric
            .strip_prefix(domain)
            .and_then(|m| m.strip_prefix('.'))
            .unwrap_or(metric);
        let labels = [domain, descriptor];
        Counters {
            hits: self.hits.with_label_values(&labels),
            over_limit: self.over_limit.with_label_values(&labels),
            near_limit: self.near_limit.with_label_values(&labels),
            shadow: self.shadow.with_label_values(&labels),
        }
    }
}
