//! Signals and process lifecycle: draining on SIGTERM, SIGINT, graceful upgrade, access log.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(backend: &str, extra: &str) -> String {
    format!(
        "upstreams:
  service_a:
    backends: [{backend}]
    read_timeout: 20s
routes:
  - prefix: /a
    upstream: service_a
{extra}"
    )
}

fn wait_in_flight(t: &Tollgate, n: f64) {
    wait_for(
        "the request to be in flight",
        Duration::from_secs(5),
        || (t.metric("tollgate_requests_in_flight") == Some(n)).then_some(()),
    );
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_promptly() {
    let a = Stub::start("a");
    let mut t = Tollgate::start(&config(
        &a.address(),
        "server:\n  grace_period: 10s\n  pid_file: {dir}/p.pid\n  upgrade_sock: {dir}/u.sock\n",
    ));
    let url = t.url("/a/slow");
    let slow = std::thread::spawn(move || get_with(&agent(), &url, &[("x-stub-delay-ms", "1500")]));
    wait_in_flight(&t, 1.0);

    let signalled = Instant::now();
    t.signal(libc::SIGTERM);
    // New connections are refused once the listener closes...
    wait_for("the listener to close", Duration::from_secs(3), || {
        (!port_open(t.proxy)).then_some(())
    });
    // ...while the request in flight completes normally.
    let reply = slow.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["service"], "a");
    let status = t
        .wait_exit(Duration::from_secs(5))
        .expect("tollgate exited");
    assert!(status.success(), "{status:?}");
    // It left as soon as the request was done, not after the 10 s grace period.
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "took {:?}",
        signalled.elapsed()
    );
}

#[test]
fn sigterm_gives_up_on_requests_that_outlast_the_grace_period() {
    let a = Stub::start("a");
    let mut t = Tollgate::start(&config(
        &a.address(),
        "server:\n  grace_period: 1s\n  pid_file: {dir}/p.pid\n  upgrade_sock: {dir}/u.sock\n",
    ));
    let url = t.url("/a/forever");
    let stuck =
        std::thread::spawn(move || try_get_with(&agent(), &url, &[("x-stub-delay-ms", "15000")]));
    wait_in_flight(&t, 1.0);
    let signalled = Instant::now();
    t.signal(libc::SIGTERM);
    t.wait_exit(Duration::from_secs(6))
        .expect("tollgate exited within grace + shutdown timeout");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "took {:?}",
        signalled.elapsed()
    );
    assert!(stuck.join().unwrap().is_err(), "the request was cut off");
}

#[test]
fn sigint_exits_at_once() {
    let a = Stub::start("a");
    let mut t = Tollgate::start(&config(&a.address(), ""));
    let url = t.url("/a/slow");
    let _slow =
        std::thread::spawn(move || try_get_with(&agent(), &url, &[("x-stub-delay-ms", "10000")]));
    wait_in_flight(&t, 1.0);
    let signalled = Instant::now();
    t.signal(libc::SIGINT);
    t.wait_exit(Duration::from_secs(3))
        .expect("tollgate exited");
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "took {:?}",
        signalled.elapsed()
    );
}

#[test]
fn access_log_writes_one_json_line_per_request() {
    let a = Stub::start("a");
    let t = Tollgate::start(&config(
        &a.address(),
        "log:\n  access_log: {dir}/access.log\n",
    ));
    let agent = agent();
    get_with(&agent, &t.url("/a/one?q=1"), &[("x-request-id", "req-1")]);
    get_with(&agent, &t.url("/missing"), &[]);
    let path = t.dir.path().join("access.log");
    let lines = wait_for("two access log lines", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&path).ok()?;
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("each line is JSON"))
            .filter(|l| l["uri"] != "/health")
            .collect();
        (lines.len() >= 2).then_some(lines)
    });
    let first = &lines[0];
    assert_eq!(first["request_id"], "req-1");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["uri"], "/a/one?q=1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "/a");
    assert_eq!(first["upstream"], "service_a");
    assert_eq!(first["backend"], a.address().as_str());
    assert_eq!(first["client"], "127.0.0.1");
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(first["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[1]["status"], 404);
    assert_eq!(lines[1]["route"], "unmatched");
}

#[test]
fn graceful_upgrade_hands_over_the_listener_with_no_failed_request() {
    let a = Stub::start("a");
    let mut old = Tollgate::start(&config(&a.address(), ""));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let retried = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, ok, failures, retried, url) = (
            stop.clone(),
            ok.clone(),
            failures.clone(),
            retried.clone(),
            old.url("/a/up"),
        );
        std::thread::spawn(move || {
            let agent = agent();
            while !stop.load(Ordering::Relaxed) {
                // A new connection per request, so every request meets whichever process
                // owns the listener at that moment. A connection the old process accepted
                // whose request had not arrived when its hand-over began is closed with no
                // answer (Pingora drops connections waiting for a request at shutdown).
                // HTTP lets a client retry an idempotent request on a connection closed
                // before any answer (RFC 9110, 9.2.2), as browsers and HTTP libraries do:
                // this client does so once, and counts it.
                let get = || try_get_with(&agent, &url, &[("connection", "close")]);
                let reply = match get() {
                    Err(e) if closed_unanswered(&e.to_string()) => {
                        retried.fetch_add(1, Ordering::Relaxed);
                        get()
                    }
                    other => other,
                };
                match reply {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status)),
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }
        })
    };
    wait_for("traffic", Duration::from_secs(5), || {
        (ok.load(Ordering::Relaxed) > 20).then_some(())
    });

    let new = old.spawn_upgrade();
    let sock = old.dir.path().join("upgrade.sock");
    wait_for(
        "the new process to wait for the sockets",
        Duration::from_secs(5),
        || sock.exists().then_some(()),
    );
    let old_pid = old.pid();
    old.signal(libc::SIGQUIT);
    let mut old_child = old.replace_child(new).expect("old process");
    // The old process keeps serving for Pingora's 5 s hand-over window, then drains and exits.
    let exited = wait_for("the old process to exit", Duration::from_secs(15), || {
        old_child.try_wait().ok().flatten()
    });
    assert!(exited.success(), "old process {old_pid}: {exited:?}");
    let before = ok.load(Ordering::Relaxed);
    wait_for(
        "traffic served by the new process",
        Duration::from_secs(5),
        || (ok.load(Ordering::Relaxed) > before + 20).then_some(()),
    );
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    // Only the connections caught between connect and request at the moment the old
    // process stopped reading: a handful, however long the run.
    let retried = retried.load(Ordering::Relaxed);
    assert!(
        retried <= 10,
        "{retried} connections closed unanswered of {}",
        ok.load(Ordering::Relaxed)
    );
    assert_ne!(old.pid(), old_pid);
    old.wait_ready();
}

/// Whether a client error means the connection closed before any answer came.
fn closed_unanswered(error: &str) -> bool {
    [
        "Peer disconnected",
        "Connection reset",
        "connection closed",
        "Broken pipe",
    ]
    .iter()
    .any(|m| error.contains(m))
}
