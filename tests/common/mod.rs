//! Shared test harness: real `stub-service`, `tollgate` and `redis-server` processes on free
//! ports, readiness by polling, and a small HTTP client.
//!
//! Every helper waits on a condition with a deadline; none sleeps blindly.

#![allow(dead_code)]

pub mod cdp;
pub mod certs;
pub mod clock;
pub mod flood;
pub mod http;
pub mod load;
pub mod nginx;
pub mod postgres;
pub mod procs;
pub mod redis_topology;
pub mod relay;
pub mod tls;
pub mod windows;
pub mod ws;

pub use self::http::*;
pub use procs::*;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
}

/// Fails the test with an install hint when a tool it needs is missing.
pub fn require_tool(tool: &str, install_hint: &str) -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| panic!("`{tool}` is not installed; {install_hint}"))
}
