//! tollgate: an edge reverse proxy on Pingora with fleet-wide rate limits backed by Redis.
//!
//! The binary (`main.rs`) is a thin CLI over this library; tests and benchmarks use the
//! library directly for the pure parts (config, routing, limit math).

#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod access_log;
pub mod admin;
pub mod check;
pub mod clock;
pub mod config;
pub mod decision_log;
pub mod decisions;
pub mod demo;
pub mod gateway;
pub mod header_deadline;
pub mod health;
pub mod identity;
pub mod lifecycle;
pub mod limit;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod redis_store;
pub mod reload;
pub mod rls;
pub mod routing;
pub mod server;
pub mod store;
pub mod tuning;
pub mod upstream;
