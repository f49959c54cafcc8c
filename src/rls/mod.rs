//! Envoy's rate limit service (`envoy.service.ratelimit.v3.RateLimitService`) over gRPC,
//! answering from envoyproxy/ratelimit's config files with tollgate's fleet-wide engine.
//!
//! The files are read and checked with the config (`config::rls`); the gateway turns each
//! `rate_limit` into a policy ([`table`]), so the sync task leases for them like for any
//! route's, on the same Redis. [`answer`] is their `ShouldRateLimit`; [`server`] serves it.

pub mod answer;
pub mod metrics;
pub mod pb;
pub mod server;
pub mod table;

pub use server::RlsServer;
pub use table::Table;
