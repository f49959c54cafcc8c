//! Faults injected while a request loop runs: Redis killed and restarted, Redis slow or
//! silent behind a relay, a backend killed mid-load, the config file broken, SIGTERM.
//! Each test states what the clients may see while it happens, and checks every response.

mod common;
use common::load::{quantile, Load, Outcome};
use common::relay::Relay;
use common::*;
use std::time::{Duration, Instant};

fn statuses_of(outcomes: &[Outcome], url: usize) -> Vec<u16> {
    outcomes
        .iter()
        .filter(|o| o.url == url)
        .map(|o| o.status)
        .collect()
}

fn limits_config(redis_url: &str, stub: &Stub, timeout: &str) -> String {
    format!(
        "redis:
  url: {redis_url}
  sync_interval: 50ms
  timeout: {timeout}
upstreams:
  a:
    backends: [{}]
limits:
  open:
    key: client_ip
    algorithm: sliding_window
    rate: 100000/1s
  closed:
    key: client_ip
    algorithm: sliding_window
    rate: 100000/1s
    on_redis_error: closed
  atomic_open:
    key: client_ip
    algorithm: sliding_window
    rate: 100000/1s
    sync: atomic
  atomic_closed:
    key: client_ip
    algorithm: sliding_window
    rate: 100000/1s
    sync: atomic
    on_redis_error: closed
routes:
  - prefix: /open
    upstream: a
    limits: [open]
  - prefix: /closed
    upstream: a
    limits: [closed]
  - prefix: /atomic_open
    upstream: a
    limits: [atomic_open]
  - prefix: /atomic_closed
    upstream: a
    limits: [atomic_closed]
",
        stub.address()
    )
}

#[test]
fn redis_killed_under_load_fails_each_policy_its_own_way_and_recovers() {
    let mut redis = Redis::start();
    let stub = Stub::start_with("a", &["--threads", "2"]);
    let t = Tollgate::start(&limits_config(&redis.url(), &stub, "25ms"));
    let urls = [t.url("/open/x"), t.url("/closed/x")];
    let load = Load::start(4, &urls, &[]);
    load.wait_for_more(200);

    let killed = load.now();
    redis.kill();
    wait_for("redis noticed down", Duration::from_secs(3), || {
        (t.metric("tollgate_redis_up") == Some(0.0)).then_some(())
    });
    load.wait_for_more(300);
    let restarted_at = Instant::now();
    let restarted = load.now();
    redis.restart();
    t.wait_redis_up(Duration::from_secs(2));
    let back_after = restarted_at.elapsed();
    let back = load.now();
    let settled = back + Duration::from_millis(100);
    load.wait_for_sent_after(settled, 300);
    let outcomes = load.finish();

    // Fail-open: never anything but 200 through the whole outage.
    let open = statuses_of(&outcomes, 0);
    assert!(
        open.iter().all(|s| *s == 200),
        "fail-open policy: {:?}",
        open.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    // Fail-closed: 503 with Retry-After, only while Redis was down.
    let closed: Vec<&Outcome> = outcomes.iter().filter(|o| o.url == 1).collect();
    for o in &closed {
        match o.status {
            200 => {}
            503 => {
                assert_eq!(o.retry_after.as_deref(), Some("1"));
                assert!(
                    o.sent >= killed && o.sent <= back,
                    "503 outside the outage at {:?}",
                    o.sent
                );
            }
            other => panic!("fail-closed policy answered {other}: {:?}", o.error),
        }
    }
    assert!(closed.iter().any(|o| o.status == 503));
    let after: Vec<u16> = closed
        .iter()
        .filter(|o| o.sent > settled)
        .map(|o| o.status)
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|s| *s == 200),
        "{after:?}"
    );
    assert!(restarted > killed);
    eprintln!("global limiting back {back_after:?} after redis restarted");
}

#[test]
fn slow_or_silent_redis_leaves_async_latency_alone_and_atomic_keeps_its_timeout() {
    let redis = Redis::start();
    let relay = Relay::start(format!("127.0.0.1:{}", redis.port).parse().unwrap());
    let stub = Stub::start("a");
    let t = Tollgate::start(&limits_config(&relay.url(), &stub, "50ms"));
    t.wait_redis_up(Duration::from_secs(3));
    let agent = agent();
    let timed = |path: &str, n: usize| -> (Vec<u16>, Vec<Duration>) {
        let mut statuses = Vec::new();
        let mut latencies = Vec::new();
        for _ in 0..n {
            let started = Instant::now();
            statuses.push(get_with(&agent, &t.url(path), &[]).status);
            latencies.push(started.elapsed());
        }
        (statuses, latencies)
    };
    let (_, mut baseline) = timed("/open/x", 200);
    let base_p50 = quantile(&mut baseline, 0.5);
    eprintln!("async p50 with redis healthy: {base_p50:?}");

    for (fault, apply) in [
        (
            "300ms delay",
            Box::new(|r: &Relay| r.delay(Duration::from_millis(300))) as Box<dyn Fn(&Relay)>,
        ),
        (
            "stalled",
            Box::new(|r: &Relay| {
                r.delay(Duration::ZERO);
                r.stall(true)
            }),
        ),
    ] {
        apply(&relay);
        // The async path never waits on Redis: latency stays where it was.
        let (statuses, mut latencies) = timed("/open/x", 200);
        assert!(statuses.iter().all(|s| *s == 200), "{fault}: {statuses:?}");
        let p50 = quantile(&mut latencies, 0.5);
        let p99 = quantile(&mut latencies, 0.99);
        eprintln!("{fault}: async p50 {p50:?} p99 {p99:?}");
        assert!(
            p50 < base_p50 + Duration::from_millis(5) && p99 < Duration::from_millis(45),
            "{fault}: async latency moved: p50 {p50:?} (was {base_p50:?}), p99 {p99:?}"
        );
        // Atomic mode gives Redis its 50ms, then applies the policy's fault setting.
        for (path, expected) in [("/atomic_open/x", 200), ("/atomic_closed/x", 503)] {
            let (statuses, mut latencies) = timed(path, 10);
            let worst = quantile(&mut latencies, 1.0);
            assert!(
                statuses.iter().all(|s| *s == expected),
                "{fault} {path}: {statuses:?}"
            );
            assert!(
                worst < Duration::from_millis(50 + 150),
                "{fault} {path}: a request took {worst:?} against a 50ms timeout"
            );
        }
    }
    relay.stall(false);
    wait_for(
        "atomic decided by redis again",
        Duration::from_secs(5),
        || (get_with(&agent, &t.url("/atomic_closed/x"), &[]).status == 200).then_some(()),
    );
}

#[test]
fn a_backend_killed_mid_load_costs_at_most_its_in_flight_requests_and_rejoins() {
    let alive = Stub::start("alive");
    let mut victim = Stub::start("victim");
    let t = Tollgate::start(&format!(
        "upstreams:
  pool:
    backends: [{}, {}]
    health_check:
      path: /health
      interval: 200ms
      timeout: 100ms
routes:
  - prefix: /a
    upstream: pool
",
        alive.address(),
        victim.address()
    ));
    const WORKERS: usize = 4;
    let load = Load::start(WORKERS, &[t.url("/a/x")], &[("x-stub-delay-ms", "5")]);
    load.wait_for_more(200);
    victim.kill();
    let killed = load.now();
    let victim_up = format!(
        r#"tollgate_backend_up{{upstream="pool",backend="{}"}}"#,
        victim.address()
    );
    wait_for(
        "the health check ejected the victim",
        Duration::from_secs(3),
        || (t.metric(&victim_up) == Some(0.0)).then_some(()),
    );
    load.wait_for_sent_after(load.now(), 200);
    victim.restart();
    wait_for("the victim rejoined", Duration::from_secs(5), || {
        (t.metric(&victim_up) == Some(1.0)).then_some(())
    });
    let rejoined = victim.stats().0;
    load.wait_for_more(200);
    let outcomes = load.finish();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.len() <= WORKERS,
        "{} failures, more than the {WORKERS} requests that could be in flight: {:?}",
        failed.len(),
        failed
            .iter()
            .map(|o| (o.status, o.sent))
            .collect::<Vec<_>>()
    );
    for o in &failed {
        assert!(
            o.sent <= killed + Duration::from_millis(50),
            "late failure at {:?}",
            o.sent
        );
    }
    assert!(
        victim.stats().0 > rejoined,
        "the restarted backend takes traffic again"
    );
}

#[test]
fn a_config_broken_under_load_changes_nothing_for_clients() {
    let stub = Stub::start("a");
    let t = Tollgate::start(&format!(
        "upstreams:\n  a:\n    backends: [{}]\nroutes:\n  - prefix: /a\n    upstream: a\n",
        stub.address()
    ));
    let good = std::fs::read_to_string(&t.config_path).unwrap();
    let load = Load::start(2, &[t.url("/a/x")], &[]);
    let failures = |n: f64| {
        wait_for("the reload refused", Duration::from_secs(3), || {
            (t.metric(r#"tollgate_config_reloads_total{result="failure"}"#) == Some(n))
                .then_some(())
        })
    };
    std::fs::write(&t.config_path, &good[..good.len() / 2]).unwrap();
    failures(1.0);
    load.wait_for_more(100);
    std::fs::write(&t.config_path, "routes: [{prefix: /a, upstream: gone}]\n").unwrap();
    failures(2.0);
    load.wait_for_more(100);
    std::fs::remove_file(&t.config_path).unwrap();
    load.wait_for_more(200);
    let outcomes = load.finish();
    assert!(outcomes.len() >= 400);
    assert!(
        outcomes.iter().all(|o| o.status == 200),
        "{:?}",
        outcomes.iter().find(|o| o.status != 200)
    );
    assert_eq!(get(&t.url("/a/x")).status, 200);
}

#[test]
fn sigterm_under_load_completes_every_request_already_in_flight() {
    let stub = Stub::start_with("a", &["--threads", "2"]);
    let mut t = Tollgate::start(&format!(
        "upstreams:\n  a:\n    backends: [{}]\nroutes:\n  - prefix: /a\n    upstream: a\nserver:\n  grace_period: 10s\n  pid_file: {{dir}}/p.pid\n  upgrade_sock: {{dir}}/u.sock\n",
        stub.address()
    ));
    // New connection per request, each held 300 ms by the backend: at any moment several
    // are in flight.
    let load = Load::start(
        6,
        &[t.url("/a/x")],
        &[("x-stub-delay-ms", "300"), ("connection", "close")],
    );
    wait_for("requests in flight", Duration::from_secs(5), || {
        (t.metric("tollgate_requests_in_flight").unwrap_or(0.0) >= 4.0).then_some(())
    });
    let signalled = load.now();
    t.signal(libc::SIGTERM);
    let exited = t
        .wait_exit(Duration::from_secs(8))
        .expect("tollgate exited");
    assert!(exited.success(), "{exited:?}");
    let outcomes = load.finish();
    let in_flight: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.sent < signalled && o.sent + o.latency > signalled)
        .collect();
    assert!(in_flight.len() >= 4, "{} in flight", in_flight.len());
    for o in &outcomes {
        // Accepted for sure: sent well before the signal (a connection still in the
        // kernel's accept queue when the listener closes is refused, as in any server).
        if o.sent + Duration::from_millis(20) < signalled {
            assert_eq!(o.status, 200, "sent before SIGTERM: {o:?}");
        } else {
            // After the signal the listener closes: a request either completes or is
            // never accepted. None gets an error status.
            assert!(o.status == 200 || o.status == 0, "{o:?}");
        }
    }
}
