//! Upstream pools: failures, timeouts, retries, health checks and connection reuse.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn one_route(backends: &[String], extra: &str) -> String {
    format!(
        "upstreams:
  pool:
    backends: [{}]
    connect_timeout: 300ms
    read_timeout: 500ms
{extra}
routes:
  - prefix: /a
    upstream: pool
",
        backends.join(", ")
    )
}

#[test]
fn a_dead_backend_gives_502_json() {
    let dead = format!("127.0.0.1:{}", free_port());
    let t = Tollgate::start(&one_route(&[dead], ""));
    let started = Instant::now();
    let r = get(&t.url("/a/x"));
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "upstream_unavailable", "upstream": "pool"})
    );
    assert!(r.header("x-request-id").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let errors = t
        .metric(r#"tollgate_upstream_errors_total{upstream="pool",kind="connect_refused"}"#)
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "connect errors counted: {errors}");
}

#[test]
fn a_slow_backend_past_the_read_timeout_gives_504_json() {
    let stub = Stub::start("a");
    let t = Tollgate::start(&one_route(&[stub.address()], ""));
    let started = Instant::now();
    let r = get_with(&agent(), &t.url("/a/slow"), &[("x-stub-delay-ms", "2000")]);
    // read_timeout is 500ms.
    assert_timed_out(
        &t,
        &r,
        started,
        (504, "upstream_timeout"),
        450,
        "read_timeout",
    );
}

/// `r` is the pool's failure (`status` with its JSON `error`), answered once the timeout
/// expired (`at_least_ms` after `started`) and well before anything like a hang, and
/// counted once under `kind`.
fn assert_timed_out(
    t: &Tollgate,
    r: &Reply,
    started: Instant,
    (status, error): (u16, &str),
    at_least_ms: u64,
    kind: &str,
) {
    let took = started.elapsed();
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": error, "upstream": "pool"})
    );
    assert!(
        took >= Duration::from_millis(at_least_ms) && took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    assert_eq!(
        t.metric(&format!(
            r#"tollgate_upstream_errors_total{{upstream="pool",kind="{kind}"}}"#
        )),
        Some(1.0)
    );
}

#[test]
fn one_dead_backend_of_two_costs_no_request_and_rejoins_after_restart() {
    let alive = Stub::start("alive");
    let mut flaky = Stub::start("flaky");
    let health =
        "    health_check:\n      path: /health\n      interval: 200ms\n      timeout: 100ms";
    let t = Tollgate::start(&one_route(&[alive.address(), flaky.address()], health));
    let agent = agent();
    flaky.kill();
    // Every request succeeds: first by retrying on the other backend, then because the
    // health check has ejected the dead one.
    for i in 0..60 {
        let r = get_with(&agent, &t.url(&format!("/a/{i}")), &[]);
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.json()["service"], "alive");
    }
    let flaky_up = format!(
        r#"tollgate_backend_up{{upstream="pool",backend="{}"}}"#,
        flaky.address()
    );
    let backend_up = |t: &Tollgate| t.metric(&flaky_up);
    wait_for(
        "the dead backend to be marked down",
        Duration::from_secs(5),
        || (backend_up(&t) == Some(0.0)).then_some(()),
    );

    flaky.restart();
    wait_for(
        "the restarted backend to serve again",
        Duration::from_secs(5),
        || {
            let r = get_with(&agent, &t.url("/a/back"), &[]);
            assert_eq!(r.status, 200);
            (r.json()["service"] == "flaky").then_some(())
        },
    );
    assert_eq!(backend_up(&t), Some(1.0));
}

#[test]
fn all_backends_down_answers_502_within_the_connect_timeout() {
    let backends: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let t = Tollgate::start(&one_route(&backends, ""));
    let started = Instant::now();
    let r = get(&t.url("/a/x"));
    assert_eq!(r.status, 502);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(r.json()["error"], "upstream_unavailable", "{}", r.body);
    // Each backend was tried once.
    assert_eq!(
        t.metric(r#"tollgate_upstream_errors_total{upstream="pool",kind="connect_refused"}"#),
        Some(3.0)
    );
}

/// A backend that never completes a handshake: a listener whose accept queue (backlog 0)
/// is already full, so the kernel drops further SYNs and a connect hangs until it times
/// out, like a host that went silent rather than one that refuses.
struct BlackHole {
    listener: std::net::TcpListener,
    _queued: Vec<std::net::TcpStream>,
}

impl BlackHole {
    fn open() -> BlackHole {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // Linux lets a listening socket shrink its backlog by calling listen again.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        while let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            queued.push(s);
            assert!(queued.len() < 16, "the accept queue never filled");
        }
        let probe = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert!(
            probe.is_err(),
            "a connect to a full accept queue should hang, not complete"
        );
        BlackHole {
            listener,
            _queued: queued,
        }
    }

    fn address(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }
}

#[test]
fn a_silent_backend_answers_502_at_the_connect_timeout_never_a_hang() {
    let hole = BlackHole::open();
    let t = Tollgate::start(&one_route(&[hole.address()], ""));
    let started = Instant::now();
    let r = get(&t.url("/a/x"));
    // connect_timeout is 300ms: the answer comes when it expires, not before.
    assert_timed_out(
        &t,
        &r,
        started,
        (502, "upstream_unavailable"),
        250,
        "connect_timeout",
    );
}

#[test]
fn weights_split_traffic() {
    let light = Stub::start("light");
    let heavy = Stub::start("heavy");
    let config = format!(
        "upstreams:
  pool:
    backends:
      - {}
      - {{ address: {}, weight: 3 }}
routes:
  - prefix: /a
    upstream: pool
",
        light.address(),
        heavy.address()
    );
    let t = Tollgate::start(&config);
    let agent = agent();
    let mut heavy_count = 0;
    for _ in 0..200 {
        if get_with(&agent, &t.url("/a/w"), &[]).json()["service"] == "heavy" {
            heavy_count += 1;
        }
    }
    assert_eq!(
        heavy_count, 150,
        "weighted round robin sends 3 of 4 to the heavy backend"
    );
}

#[test]
fn backend_connections_are_reused() {
    let stub = Stub::start("a");
    let t = Tollgate::start(&one_route(&[stub.address()], ""));
    let agent = agent();
    for _ in 0..100 {
        // A client asking to close its own connection must not close the backend's.
        let r = get_with(&agent, &t.url("/a/k"), &[("connection", "close")]);
        assert_eq!(r.status, 200);
    }
    let (answered, connections) = stub.stats();
    assert_eq!(answered, 100);
    // One of the connections is the stats request itself.
    let from_proxy = connections - 1;
    assert!(
        from_proxy <= 2,
        "100 requests opened {from_proxy} backend connections"
    );
}
