//! What one request carries through the proxy phases.

use crate::gateway::{Gateway, Route};
use crate::lifecycle::InFlightGuard;
use crate::limit::slots::Held;
use http::HeaderValue;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// Why the proxy answered a request itself instead of (or after failing at) proxying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalAnswer {
    Health,
    BadPath,
    /// Refused for its size or framing (413, 414, 431, 400).
    BadMessage,
    NoRoute,
    /// The route does not accept the request's method (405).
    MethodNotAllowed,
    /// Sent to HTTPS by a plaintext listener's `redirect_https` (308).
    Redirect,
    UpstreamUnavailable,
    UpstreamTimeout,
    BadGateway,
    /// Refused by identity or a rate limit policy.
    Refused,
}

pub struct RequestCtx {
    pub started: Instant,
    /// The config this request runs under from start to finish.
    pub gateway: Arc<Gateway>,
    pub route: Option<Arc<Route>>,
    pub request_id: HeaderValue,
    /// The request id's number, when tollgate made the id.
    pub request_number: Option<u128>,
    /// The path (without query) to send upstream when it differs from the client's:
    /// normalized, and with the prefix removed on routes that strip it.
    pub upstream_path: Option<String>,
    /// Backends already tried for this request, so a retry goes elsewhere.
    pub tried: Vec<SocketAddr>,
    /// The latest attempt's peer leaves hop-by-hop fields to `upstream_request_filter`
    /// (`HttpUpstreamRequestPolicy::preserve()`, on HTTP/1 peers).
    pub strip_hop_by_hop: bool,
    pub answer: Option<LocalAnswer>,
    /// The status of an error response written in `fail_to_proxy`.
    pub failure_status: Option<u16>,
    /// The client's address as identity sees it (trusted forwarding headers applied).
    pub client_ip: Option<IpAddr>,
    /// Rate limit fields for the response of an allowed request.
    pub rate_headers: crate::limit::headers::Fields,
    /// What the route's limits came to (the refusing policy, or the tightest one).
    pub summary: Option<crate::decisions::Summary>,
    /// The request's API key, when it carried a known one.
    pub api_key: Option<std::sync::Arc<crate::identity::KeyRecord>>,
    /// The request's verified JWT, on a route that checks them.
    pub verified: Option<std::sync::Arc<crate::identity::jwt::Verified>>,
    /// Request body bytes seen so far, against the route's `max_body_size`.
    pub body_received: u64,
    /// The `Strict-Transport-Security` value of the request's listener.
    pub hsts: Option<HeaderValue>,
    /// Concurrency slots, released when the request ends.
    pub _guards: Vec<Held>,
    /// Admissions that count only if the response has one of the policy's `count_status`.
    pub uncounted: Vec<(usize, crate::limit::Receipt)>,
    /// Reads the cost the response reports, for policies whose cost comes from it.
    pub meter: Option<Box<crate::limit::meter::Meter>>,
    /// The cost the response settled at (the route's first policy with such a cost).
    pub settled_cost: Option<u64>,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    pub fn new(gateway: Arc<Gateway>, in_flight: InFlightGuard) -> Self {
        RequestCtx {
            started: Instant::now(),
            gateway,
            route: None,
            request_id: HeaderValue::from_static(""),
            request_number: None,
            upstream_path: None,
            tried: Vec::new(),
            strip_hop_by_hop: false,
            answer: None,
            failure_status: None,
            client_ip: None,
            rate_headers: Vec::new(),
            summary: None,
            api_key: None,
            verified: None,
            body_received: 0,
            hsts: None,
            _guards: Vec::new(),
            uncounted: Vec::new(),
            meter: None,
            settled_cost: None,
            _in_flight: in_flight,
        }
    }

    /// The backend of the latest attempt.
    pub fn backend(&self) -> Option<SocketAddr> {
        self.tried.last().copied()
    }

    /// The `route` label for metrics and logs.
    pub fn route_label(&self) -> &str {
        match (&self.route, self.answer) {
            (Some(route), _) => &route.label,
            (None, Some(LocalAnswer::Health)) => "/health",
            (None, _) => "unmatched",
        }
    }
}
