//! Redis going away and coming back, under load: fail open onto per-node limits with no
//! 5xx, fail closed with 503 for that policy only, and global limits back within 2 s of
//! Redis returning, without restarting tollgate.
//!
//! Redis gets 250 ms to answer rather than the default 25 ms: these tests count the link's
//! transitions and the fleet's admissions while Redis is up, and on a busy two-core machine
//! a heartbeat can be held off the CPU past 25 ms, which is a slow answer, not an outage.

mod common;
use common::clock::*;
use common::*;
use std::time::{Duration, Instant};

const LIMIT: u64 = 60;

fn config(redis: &Redis, stub: &Stub) -> String {
    format!(
        "redis:
  url: {}
  sync_interval: 50ms
  timeout: 250ms
upstreams:
  a:
    backends: [{}]
limits:
  open:
    key: client_ip
    algorithm: fixed_window
    rate: {LIMIT}/1s
  closed:
    key: client_ip
    algorithm: fixed_window
    rate: {LIMIT}/1s
    on_redis_error: closed
  atomic_open:
    key: client_ip
    algorithm: sliding_window
    rate: {LIMIT}/1s
    sync: atomic
routes:
  - prefix: /open
    upstream: a
    limits: [open]
  - prefix: /closed
    upstream: a
    limits: [closed]
  - prefix: /atomic
    upstream: a
    limits: [atomic_open]
",
        redis.url(),
        stub.address()
    )
}

/// Sends `per_node` requests to each node within one window and returns the 200s per node
/// and every status seen. A slow machine may not fit them all in one window; then the
/// round is thrown away and tried again in a fresh window, so the counts always belong to
/// exactly one window.
fn one_window(nodes: &[Tollgate], path: &str, per_node: usize) -> (Vec<usize>, Vec<u16>) {
    const WINDOW_MS: u64 = 1_000;
    let agent = agent();
    for _ in 0..5 {
        wait_for_window_start(WINDOW_MS);
        let window = now_ms() / WINDOW_MS;
        let mut admitted = vec![0; nodes.len()];
        let mut all = Vec::new();
        'round: for _ in 0..per_node {
            for (i, node) in nodes.iter().enumerate() {
                if now_ms() / WINDOW_MS != window {
                    break 'round;
                }
                let status = try_get_with(&agent, &node.url(path), &[])
                    .map(|r| r.status)
                    .unwrap_or(0);
                if status == 200 {
                    admitted[i] += 1;
                }
                all.push(status);
            }
        }
        if all.len() == per_node * nodes.len() && now_ms() / WINDOW_MS == window {
            return (admitted, all);
        }
        eprintln!(
            "{} requests did not fit in one window; trying again",
            all.len()
        );
    }
    panic!(
        "{} requests never fit in one {WINDOW_MS} ms window",
        per_node * nodes.len()
    );
}

fn redis_up_everywhere(nodes: &[Tollgate]) -> bool {
    nodes
        .iter()
        .all(|n| n.metric("tollgate_redis_up") == Some(1.0))
}

#[test]
fn redis_down_fails_open_per_node_and_global_limits_return() {
    let mut redis = Redis::start();
    let stub = Stub::start("a");
    let body = config(&redis, &stub);
    let nodes: Vec<Tollgate> = (0..2).map(|_| Tollgate::spawn(&body)).collect();
    for n in &nodes {
        n.wait_ready();
    }
    wait_for("both nodes on redis", Duration::from_secs(5), || {
        nodes
            .iter()
            .all(|n| n.metric("tollgate_redis_nodes") == Some(2.0))
            .then_some(())
    });

    let (healthy, statuses) = one_window(&nodes, "/open/x", 50);
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let fleet: usize = healthy.iter().sum();
    assert!(
        (57..=63).contains(&fleet),
        "global limit with redis up: {healthy:?}"
    );

    redis.kill();
    // Under load through the outage: never a 5xx, and each node keeps its share.
    let mut outage_windows = Vec::new();
    for _ in 0..2 {
        let (admitted, statuses) = one_window(&nodes, "/open/x", 50);
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "5xx with redis down: {statuses:?}"
        );
        outage_windows.push(admitted);
    }
    // The first window may straddle the moment the nodes noticed; the second is all local.
    let local = &outage_windows[1];
    assert!(
        local
            .iter()
            .all(|a| *a as u64 <= LIMIT / 2 + 1 && *a as u64 >= LIMIT / 2 - 1),
        "each node enforces half the limit alone: {outage_windows:?}"
    );
    // The fail-closed policy answers 503 with Retry-After, and only it.
    let closed = get(&nodes[0].url("/closed/x"));
    assert_eq!(closed.status, 503, "{}", closed.body);
    assert_eq!(closed.header("retry-after"), Some("1"));
    assert_eq!(closed.json()["error"], "rate_limit_unavailable");
    let open = get(&nodes[0].url("/open/x")).status;
    assert!(
        matches!(open, 200 | 429),
        "the open policy keeps deciding: {open}"
    );
    // Atomic mode falls back the same way, within its timeout (a refused connection fails
    // at once; at most the 250 ms timeout, and the rest of the second for a busy machine).
    let started = Instant::now();
    let atomic = get(&nodes[0].url("/atomic/x"));
    assert!(matches!(atomic.status, 200 | 429), "{}", atomic.status);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "an atomic decision with Redis down took {:?}",
        started.elapsed()
    );

    redis.restart();
    let back = Instant::now();
    // Reconnect attempts back off to at most 800 ms, so the link is back within about a
    // second; five allow for a busy machine, and the time is printed.
    wait_for("redis up on every node", Duration::from_secs(5), || {
        redis_up_everywhere(&nodes).then_some(())
    });
    eprintln!(
        "global limits back {:?} after redis restarted",
        back.elapsed()
    );
    let (recovered, _) = one_window(&nodes, "/open/x", 50);
    let fleet: usize = recovered.iter().sum();
    assert!(
        (57..=63).contains(&fleet),
        "global limit after recovery: {recovered:?}"
    );
    assert_eq!(get(&nodes[0].url("/closed/x")).status, 200);

    for node in &nodes {
        // One transition each way, logged once, not per request.
        assert_eq!(
            node.metric(r#"tollgate_redis_state_changes_total{state="down"}"#),
            Some(1.0)
        );
        assert_eq!(
            node.metric(r#"tollgate_redis_state_changes_total{state="up"}"#),
            Some(2.0)
        );
        let logs = node.logs();
        assert_eq!(logs.matches("enforcing local limits").count(), 1, "{logs}");
        assert!(
            node.metric(
                r#"tollgate_ratelimit_decisions_total{policy="open",result="failed_open"}"#
            )
            .unwrap_or(0.0)
                > 0.0
        );
    }
}

#[test]
fn tollgate_starts_and_serves_while_redis_is_unreachable() {
    let mut redis = Redis::start();
    let stub = Stub::start("a");
    let body = config(&redis, &stub);
    redis.kill();
    let t = Tollgate::start(&body);
    let (admitted, statuses) = one_window(std::slice::from_ref(&t), "/open/x", 80);
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(
        admitted[0] as u64, LIMIT,
        "a lone node enforces the whole limit locally"
    );
    redis.restart();
    wait_for("redis up", Duration::from_secs(5), || {
        redis_up_everywhere(std::slice::from_ref(&t)).then_some(())
    });
}
