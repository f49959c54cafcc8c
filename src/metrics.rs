//! Prometheus metrics, kept in a registry of our own and served by the admin listener.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Request latency buckets, in seconds: a proxy answers in well under a millisecond, so the
/// default Prometheus buckets (from 5 ms) would put every request in the first one.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub backend_up: IntGaugeVec,
    pub requests_in_flight: IntGauge,
    pub access_log_dropped: IntCounter,
    pub ratelimit_decisions: IntCounterVec,
    pub ratelimit_active_keys: IntGaugeVec,
    pub ratelimit_untracked: IntCounterVec,
    pub ratelimit_unusable_cost: IntCounterVec,
    pub ratelimit_settled_cost: IntCounterVec,
    pub ratelimit_delayed: IntCounterVec,
    pub ratelimit_waiting: IntGaugeVec,
    pub redis_up: IntGauge,
    pub redis_nodes: IntGauge,
    pub redis_unreachable_slots: IntGauge,
    pub redis_sync_duration: Histogram,
    pub redis_errors: IntCounterVec,
    pub redis_state_changes: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: IntGauge,
    pub decision_log_dropped: IntCounter,
    pub tls_handshakes: IntCounterVec,
    pub tls_certificate_expiry: IntGaugeVec,
    pub tls_certificate_reloads: IntCounterVec,
    pub store_up: IntGauge,
    pub store_errors: IntCounterVec,
    pub store_notifications: IntCounter,
    pub store_listening: IntGauge,
    pub auth: IntCounterVec,
    pub jwks_fetches: IntCounterVec,
    pub jwks_failures: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tollgate_requests_total",
                "Requests answered, by route, method and status.",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_request_duration_seconds",
                "Time from the request's arrival to the end of its response, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_errors_total",
                "Failed attempts to reach or read from a backend, by upstream and kind.",
            ),
            &["upstream", "kind"],
        )
        .expect("valid metric");
        let backend_up = IntGaugeVec::new(
            Opts::new(
                "tollgate_backend_up",
                "1 when the health check lets the backend take traffic, else 0.",
            ),
            &["upstream", "backend"],
        )
        .expect("valid metric");
        let requests_in_flight = IntGauge::new(
            "tollgate_requests_in_flight",
            "Requests being processed right now.",
        )
        .expect("valid metric");
        let access_log_dropped = IntCounter::new(
            "tollgate_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        )
        .expect("valid metric");
        let ratelimit_decisions = IntCounterVec::new(
            Opts::new(
                "tollgate_ratelimit_decisions_total",
                "Rate limit decisions by policy and result (allowed, limited, shadow_limited, failed_open, unavailable, exempt).",
            ),
            &["policy", "result"],
        )
        .expect("valid metric");
        let ratelimit_active_keys = IntGaugeVec::new(
            Opts::new(
                "tollgate_ratelimit_active_keys",
                "Keys this node tracks exactly for a policy (bounded by its max_keys).",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let ratelimit_untracked = IntCounterVec::new(
            Opts::new(
                "tollgate_ratelimit_untracked_total",
                "Decisions made by the fixed-size local estimator because the policy's key table was full.",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let ratelimit_unusable_cost = IntCounterVec::new(
            Opts::new(
                "tollgate_ratelimit_unusable_cost_total",
                "Responses whose reported cost could not be used (missing, not a number, negative, over max_cost), charged the policy's reserve instead.",
            ),
            &["policy", "reason"],
        )
        .expect("valid metric");
        let ratelimit_settled_cost = IntCounterVec::new(
            Opts::new(
                "tollgate_ratelimit_settled_cost_total",
                "Units charged by policies whose cost comes from the response, once settled.",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let ratelimit_delayed = IntCounterVec::new(
            Opts::new(
                "tollgate_ratelimit_delayed_total",
                "Requests a policy with on_limit: delay held back, then admitted within max_delay.",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let ratelimit_waiting = IntGaugeVec::new(
            Opts::new(
                "tollgate_ratelimit_waiting",
                "Requests waiting for room under a policy with on_limit: delay (at most max_waiting).",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let redis_up = IntGauge::new("tollgate_redis_up", "1 while Redis answers, else 0.")
            .expect("valid metric");
        let redis_nodes = IntGauge::new(
            "tollgate_redis_nodes",
            "tollgate nodes sharing the Redis, as of the last heartbeat.",
        )
        .expect("valid metric");
        let redis_unreachable_slots = IntGauge::new(
            "tollgate_redis_unreachable_slots",
            "Redis Cluster hash slots whose master does not answer (0 outside a cluster): their keys use local limits.",
        )
        .expect("valid metric");
        let redis_sync_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tollgate_redis_sync_duration_seconds",
                "Time of one background sync with Redis (all active keys, one pipelined round trip).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "tollgate_redis_errors_total",
                "Failed Redis calls by operation (connect, heartbeat, sync, atomic).",
            ),
            &["op"],
        )
        .expect("valid metric");
        let redis_state_changes = IntCounterVec::new(
            Opts::new(
                "tollgate_redis_state_changes_total",
                "Transitions of the Redis link, by the state entered (up, down).",
            ),
            &["state"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "tollgate_config_reloads_total",
                "Config reload attempts by result (success, failure).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let config_last_reload_success = IntGauge::new(
            "tollgate_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded, in Unix seconds.",
        )
        .expect("valid metric");
        let decision_log_dropped = IntCounter::new(
            "tollgate_decision_log_dropped_total",
            "Decisions not written to the per-client log because its writer fell behind or Redis was away.",
        )
        .expect("valid metric");
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "tollgate_tls_handshakes_total",
                "TLS handshakes with clients by result (ok, timeout, plaintext, failed).",
            ),
            &["listener", "result"],
        )
        .expect("valid metric");
        let tls_certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "tollgate_tls_certificate_expiry_timestamp_seconds",
                "When each served certificate expires, in Unix seconds.",
            ),
            &["listener", "cert"],
        )
        .expect("valid metric");
        let tls_certificate_reloads = IntCounterVec::new(
            Opts::new(
                "tollgate_tls_certificate_reloads_total",
                "Certificate reloads after their files changed, by result (success, failure).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let store_up = IntGauge::new(
            "tollgate_store_up",
            "1 while the control-plane store (SQLite or PostgreSQL) answers, else 0.",
        )
        .expect("valid metric");
        let store_errors = IntCounterVec::new(
            Opts::new(
                "tollgate_store_errors_total",
                "Failed control-plane store calls by operation (open, poll, load, read, write).",
            ),
            &["op"],
        )
        .expect("valid metric");
        for op in ["open", "poll", "load", "read", "write"] {
            store_errors.with_label_values(&[op]);
        }
        let store_listening = IntGauge::new(
            "tollgate_store_listening",
            "1 while this node is subscribed to the PostgreSQL store's change notifications, else 0 (changes then arrive by polling).",
        )
        .expect("valid metric");
        let store_notifications = IntCounter::new(
            "tollgate_store_notifications_total",
            "Store changes announced through PostgreSQL LISTEN/NOTIFY, this node's own included; each one is loaded at once.",
        )
        .expect("valid metric");
        let auth = IntCounterVec::new(
            Opts::new(
                "tollgate_auth_total",
                "Token checks by provider and result (verified, cached, missing, invalid, expired, unknown_kid, unavailable).",
            ),
            &["provider", "result"],
        )
        .expect("valid metric");
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "tollgate_jwks_fetches_total",
                "Reads of a provider's JWKS (URL or file), successful or not.",
            ),
            &["provider"],
        )
        .expect("valid metric");
        let jwks_failures = IntCounterVec::new(
            Opts::new(
                "tollgate_jwks_fetch_failures_total",
                "Reads of a provider's JWKS that failed or held no usable key; the last good keys stay in use.",
            ),
            &["provider"],
        )
        .expect("valid metric");
        let jwks_keys = IntGaugeVec::new(
            Opts::new(
                "tollgate_jwks_keys",
                "Signing keys a provider verifies with now.",
            ),
            &["provider"],
        )
        .expect("valid metric");
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
            tls_certificate_reloads.with_label_values(&[result]);
        }
        for op in [
            "connect",
            "heartbeat",
            "sync",
            "atomic",
            "decision_log",
            "admin",
            "blocks",
            "refund",
        ] {
            redis_errors.with_label_values(&[op]);
        }
        for state in ["up", "down"] {
            redis_state_changes.with_label_values(&[state]);
        }
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(backend_up.clone()),
            Box::new(requests_in_flight.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(ratelimit_decisions.clone()),
            Box::new(ratelimit_active_keys.clone()),
            Box::new(ratelimit_untracked.clone()),
            Box::new(ratelimit_unusable_cost.clone()),
            Box::new(ratelimit_settled_cost.clone()),
            Box::new(ratelimit_delayed.clone()),
            Box::new(ratelimit_waiting.clone()),
            Box::new(redis_up.clone()),
            Box::new(redis_nodes.clone()),
            Box::new(redis_unreachable_slots.clone()),
            Box::new(redis_sync_duration.clone()),
            Box::new(redis_errors.clone()),
            Box::new(redis_state_changes.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_last_reload_success.clone()),
            Box::new(decision_log_dropped.clone()),
            Box::new(tls_handshakes.clone()),
            Box::new(tls_certificate_expiry.clone()),
            Box::new(tls_certificate_reloads.clone()),
            Box::new(store_up.clone()),
            Box::new(store_errors.clone()),
            Box::new(store_notifications.clone()),
            Box::new(store_listening.clone()),
            Box::new(auth.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(jwks_failures.clone()),
            Box::new(jwks_keys.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_errors,
            backend_up,
            requests_in_flight,
            access_log_dropped,
            ratelimit_decisions,
            ratelimit_active_keys,
            ratelimit_untracked,
            ratelimit_unusable_cost,
            ratelimit_settled_cost,
            ratelimit_delayed,
            ratelimit_waiting,
            redis_up,
            redis_nodes,
            redis_unreachable_slots,
            redis_sync_duration,
            redis_errors,
            redis_state_changes,
            config_reloads,
            config_last_reload_success,
            decision_log_dropped,
            tls_handshakes,
            tls_certificate_expiry,
            tls_certificate_reloads,
            store_up,
            store_errors,
            store_notifications,
            store_listening,
            auth,
            jwks_fetches,
            jwks_failures,
            jwks_keys,
        }
    }

    /// A histogram handle for one route, resolved once so requests skip the label lookup.
    pub fn route_duration(&self, route: &str) -> Histogram {
        self.request_duration.with_label_values(&[route])
    }

    /// Creates an upstream's error series at zero.
    pub fn register_upstream(&self, upstream: &str) {
        for kind in UPSTREAM_ERROR_KINDS {
            self.upstream_errors.with_label_values(&[upstream, kind]);
        }
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Every `kind` of `tollgate_upstream_errors_total`; each upstream's series start at zero so
/// dashboards and alerts see them before the first failure.
pub const UPSTREAM_ERROR_KINDS: &[&str] = &[
    "connect_refused",
    "connect_timeout",
    "connect_error",
    "read_timeout",
    "write_timeout",
    "connection_closed",
    "read_error",
    "write_error",
    "protocol_error",
    "no_backend",
];

/// A bounded label for an HTTP method, so odd methods cannot grow the label set.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}
