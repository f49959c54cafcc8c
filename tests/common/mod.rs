//! Shared test harness: real `stub-service`, `tollgate` and `redis-server` processes on free
//! ports, readiness by polling, and a small HTTP client.
//!
//! Every helper waits on a condition with a deadline; none sleeps blindly.

#![allow(dead_code)]

pub mod cdp;
pub mod certs;
pub mod clock;
pub mod config_keys;
pub mod flood;
pub mod h2load;
pub mod http;
pub mod load;
pub mod nginx;
pub mod postgres;
pub mod procs;
pub mod redis_topology;
pub mod relay;
pub mod tls;
pub mod usage_backend;
pub mod windows;
pub mod ws;

pub use self::http::*;
pub use procs::*;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A port nothing listens on right now, and never handed out before in this process.
///
/// The kernel may give a just-released port to the next `bind(0)`, so two calls for one
/// config (a proxy and an admin listener) could otherwise return the same port.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // Listeners bound while searching stay open until the end, so each bind gets a new port.
    let mut held = Vec::new();
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("no free port on 127.0.0.1");
        let port = listener.local_addr().expect("bound address").port();
        if handed_out.insert(port) {
            return port;
        }
        held.push(listener);
    }
    panic!("1000 free ports in a row had been handed out before");
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
