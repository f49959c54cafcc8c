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
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(backend_up.clone()),
            Box::new(requests_in_flight.clone()),
            Box::new(access_log_dropped.clone()),
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
