//! Fleet-wide limits at the sizes people set: 5 a minute, 6 per 20 s, 10 per 30 s. Three
//! and five tollgate processes share one Redis; every client is new (its address comes from
//! `X-Forwarded-For`, loopback being a trusted proxy), so these are exactly the requests a
//! node admits before it has heard anything from Redis about the key. The fleet must never
//! admit more than the limit, and a client spread over it must get at least the limit
//! less one.
//!
//! The bound holds while Redis answers within `redis.timeout`; when it does not, the
//! fallback's own bound applies (the last test). These tests give Redis 250 ms instead of
//! the default 25 ms, because on a shared two-core CI machine scheduling alone can take
//! 25 ms now and then, and this file is about the first bound.

mod common;
use common::clock::*;
use common::load::{Load, Outcome};
use common::relay::Relay;
use common::windows;
use common::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// A fresh client address for every call, so every trial starts from a key nobody knows.
fn new_client() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() % 1_000 * 1_000;
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

fn fleet(nodes: usize, redis_url: &str, stub: &Stub, limits: &str, routes: &str) -> Vec<Tollgate> {
    let config = format!(
        "redis:
  url: {redis_url}
  timeout: 250ms
trusted_proxies: [127.0.0.1/32]
upstreams:
  a:
    backends: [{}]
limits:
{limits}
routes:
{routes}
",
        stub.address()
    );
    let fleet: Vec<Tollgate> = (0..nodes).map(|_| Tollgate::spawn(&config)).collect();
    for node in &fleet {
        node.wait_ready();
    }
    wait_for("every node sees the others", Duration::from_secs(5), || {
        fleet
            .iter()
            .all(|n| n.metric("tollgate_redis_nodes") == Some(nodes as f64))
            .then_some(())
    });
    fleet
}

/// `n` requests from one client, one at a time, round robin over the nodes.
fn round_robin(fleet: &[Tollgate], path: &str, client: &str, n: usize) -> Vec<u16> {
    let agent = agent();
    (0..n)
        .map(|i| {
            get_with(
                &agent,
                &fleet[i % fleet.len()].url(path),
                &[("x-forwarded-for", client)],
            )
            .status
        })
        .collect()
}

fn admitted(statuses: &[u16]) -> usize {
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "statuses other than 200/429: {statuses:?}"
    );
    statuses.iter().filter(|s| **s == 200).count()
}

fn failed_open(fleet: &[Tollgate], policy: &str) -> f64 {
    let sample =
        format!("tollgate_ratelimit_decisions_total{{policy=\"{policy}\",result=\"failed_open\"}}");
    fleet.iter().filter_map(|n| n.metric(&sample)).sum()
}

#[test]
fn the_first_seeds_five_a_minute_holds_on_three_nodes() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let fleet = fleet(
        3,
        &redis.url(),
        &stub,
        "  tutorial:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 5/1m\n    scope: global\n    sync: async",
        "  - prefix: /a\n    upstream: a\n    limits: [tutorial]",
    );
    wait_until_in_window(60_000, 0, 50_000);
    let trials: Vec<usize> = (0..4)
        .map(|_| admitted(&round_robin(&fleet, "/a/x", &new_client(), 12)))
        .collect();
    eprintln!("5/1m on three nodes, 12 requests round robin per client: admitted {trials:?}");
    assert_eq!(trials, [5; 4], "every client gets exactly the limit");
    assert_eq!(failed_open(&fleet, "tutorial"), 0.0);
}

#[test]
fn six_per_twenty_seconds_holds_for_every_algorithm() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let algorithms = ["fixed_window", "sliding_window", "token_bucket", "gcra"];
    let limits: String = algorithms
        .iter()
        .map(|a| {
            let burst = if a.contains("window") {
                ""
            } else {
                "\n    burst: 6"
            };
            format!("  {a}:\n    key: client_ip\n    algorithm: {a}\n    rate: 6/20s{burst}\n")
        })
        .collect();
    let routes: String = algorithms
        .iter()
        .map(|a| format!("  - prefix: /{a}\n    upstream: a\n    limits: [{a}]\n"))
        .collect();
    let fleet = fleet(3, &redis.url(), &stub, limits.trim_end(), routes.trim_end());
    wait_until_in_window(20_000, 0, 12_000);
    for algorithm in algorithms {
        let path = format!("/{algorithm}/x");
        let trials: Vec<usize> = (0..3)
            .map(|_| admitted(&round_robin(&fleet, &path, &new_client(), 12)))
            .collect();
        eprintln!("6/20s {algorithm} on three nodes, 12 round robin per client: {trials:?}");
        assert!(
            trials.iter().all(|n| (5..=6).contains(n)),
            "{algorithm}: admitted {trials:?}"
        );
        assert_eq!(failed_open(&fleet, algorithm), 0.0, "{algorithm}");
    }
}

#[test]
fn five_nodes_hit_at_once_by_a_new_client_admit_at_most_the_limit() {
    let redis = Redis::start();
    let stub = Stub::start_with("a", &["--threads", "2"]);
    let fleet = fleet(
        5,
        &redis.url(),
        &stub,
        "  burst:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 10/30s",
        "  - prefix: /a\n    upstream: a\n    limits: [burst]",
    );
    let urls: Vec<String> = fleet.iter().map(|n| n.url("/a/x")).collect();
    wait_until_in_window(30_000, 0, 25_000);
    let mut trials = Vec::new();
    for _ in 0..3 {
        let client = new_client();
        // Four requests to every node, all released at the same instant.
        let per_node = 4;
        let barrier = Arc::new(Barrier::new(urls.len() * per_node));
        let handles: Vec<_> = (0..urls.len() * per_node)
            .map(|i| {
                let (url, client, barrier) = (
                    urls[i % urls.len()].clone(),
                    client.clone(),
                    barrier.clone(),
                );
                std::thread::spawn(move || {
                    let agent = agent();
                    barrier.wait();
                    get_with(&agent, &url, &[("x-forwarded-for", &client)]).status
                })
            })
            .collect();
        let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        trials.push(admitted(&statuses));
    }
    eprintln!("10/30s, five nodes hit at once by 20 requests of a new client: admitted {trials:?}");
    assert!(
        trials.iter().all(|n| *n <= 10),
        "over the limit: {trials:?}"
    );
    assert!(trials.iter().all(|n| *n >= 9), "under-admitted: {trials:?}");
    assert_eq!(failed_open(&fleet, "burst"), 0.0);
}

/// Per window: requests admitted inside it, and admitted requests that straddled one of
/// its edges.
fn per_window(outcomes: &[Outcome], base: Duration, window_ms: u64) -> Vec<(u64, u64, u64)> {
    windows::count(outcomes, base, window_ms, |_| String::new())
        .into_iter()
        .map(|((_, w), c)| (w, c.admitted, c.straddling))
        .collect()
}

#[test]
fn a_warm_keys_windows_hold_their_limit() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let fleet = fleet(
        3,
        &redis.url(),
        &stub,
        "  warm:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 8/1s",
        "  - prefix: /a\n    upstream: a\n    limits: [warm]",
    );
    let client = new_client();
    let urls: Vec<String> = fleet.iter().map(|n| n.url("/a/x")).collect();
    wait_for_window_start(1_000);
    let load = Load::start(3, &urls, &[("x-forwarded-for", &client)]);
    let base = load.started_unix;
    std::thread::sleep(Duration::from_millis(4_000));
    let outcomes = load.finish();
    let windows = per_window(&outcomes, base, 1_000);
    eprintln!(
        "8/1s, a warm key at {} requests over 4 s: (window, admitted, straddling) {windows:?}",
        outcomes.len()
    );
    // The first and last windows are partial.
    let whole = &windows[1..windows.len() - 1];
    assert!(whole.len() >= 2, "{windows:?}");
    for (window, inside, edge) in whole {
        assert!(
            *inside <= 8,
            "window {window} admitted {inside}: {windows:?}"
        );
        assert!(
            inside + edge >= 7,
            "window {window} admitted {inside}+{edge}: {windows:?}"
        );
    }
    // A warm fixed window's quota goes in its first millisecond, where a request cannot be
    // told from one of the window before. Over the whole windows together it can: every
    // admission answered well inside their span was decided in one of them.
    let (first, last) = (whole[0].0, whole[whole.len() - 1].0);
    let span =
        Duration::from_millis(first * 1_000 + 2)..Duration::from_millis((last + 1) * 1_000 - 2);
    let admitted = outcomes
        .iter()
        .filter(|o| {
            let sent = base + o.sent;
            o.status == 200 && span.contains(&sent) && span.contains(&(sent + o.latency))
        })
        .count() as u64;
    let bound = 8 * whole.len() as u64;
    assert!(
        admitted <= bound,
        "{admitted} admitted in {} whole windows (at most {bound}): {windows:?}",
        whole.len()
    );
}

#[test]
fn an_atomic_fleet_behind_a_slow_redis_falls_back_from_what_it_knew() {
    // Three nodes under load share a 300/1s atomic limit. For a moment Redis answers
    // later than `redis.timeout`, and the nodes decide alone: each from its share of what
    // Redis last said the window had left, never from a fresh share of the whole limit.
    const LIMIT: u64 = 300;
    let redis = Redis::start();
    let relay = Relay::start(format!("127.0.0.1:{}", redis.port).parse().unwrap());
    let stub = Stub::start_with("a", &["--threads", "2"]);
    let config = format!(
        "redis:
  url: {}
  timeout: 25ms
upstreams:
  a:
    backends: [{}]
limits:
  exact:
    key: client_ip
    algorithm: fixed_window
    rate: {LIMIT}/1s
    sync: atomic
routes:
  - prefix: /a
    upstream: a
    limits: [exact]
",
        relay.url(),
        stub.address()
    );
    let fleet: Vec<Tollgate> = (0..3).map(|_| Tollgate::spawn(&config)).collect();
    for node in &fleet {
        node.wait_ready();
    }
    wait_for("three live nodes", Duration::from_secs(5), || {
        fleet
            .iter()
            .all(|n| n.metric("tollgate_redis_nodes") == Some(3.0))
            .then_some(())
    });
    let urls: Vec<String> = fleet.iter().map(|n| n.url("/a/x")).collect();
    wait_for_window_start(1_000);
    let load = Load::start(6, &urls, &[]);
    let base = load.started_unix;
    let slow_spells = 4;
    // In each of four windows, once the fleet has spent most of it, Redis turns slow for
    // 150 ms: past the timeout, so every node falls back.
    for _ in 0..slow_spells {
        wait_until_in_window(1_000, 500, 600);
        relay.delay(Duration::from_millis(40));
        std::thread::sleep(Duration::from_millis(150));
        relay.delay(Duration::ZERO);
    }
    wait_until_in_window(1_000, 100, 200);
    let outcomes = load.finish();
    // Admissions made alone count as failed_open; refusals made alone as limited.
    let fell_back: f64 = fleet
        .iter()
        .filter_map(|n| n.metric("tollgate_redis_errors_total{op=\"atomic\"}"))
        .sum();
    let admitted_alone = failed_open(&fleet, "exact");
    let windows = per_window(&outcomes, base, 1_000);
    eprintln!(
        "atomic {LIMIT}/1s, three nodes, {} requests, {slow_spells} slow spells, {fell_back} atomic calls timed out, {admitted_alone} admitted alone: (window, admitted, straddling) {windows:?}",
        outcomes.len()
    );
    assert!(
        outcomes.iter().all(|o| o.status == 200 || o.status == 429),
        "fail-open never answers anything else"
    );
    assert!(
        fell_back > 0.0,
        "Redis was never slow enough to test the fallback"
    );
    // The fallback's bound: a node alone admits at most its share (rounded up) of what
    // its last answer left, so the fleet overshoots by at most what the others admitted
    // during that one round trip, plus the rounding: well under 3 % here.
    let bound = LIMIT + LIMIT * 3 / 100;
    let whole = &windows[1..windows.len() - 1];
    for (window, inside, _) in whole {
        assert!(
            *inside <= bound,
            "window {window} admitted {inside} > {bound}: {windows:?}"
        );
    }
}

#[test]
fn a_daily_quota_holds_across_three_nodes_under_load() {
    // Daily quotas, one in UTC (an epoch window) and two in time zones (calendar periods
    // with keys of their own): every node must find the same period, and so the same
    // Redis hash, for every request.
    let redis = Redis::start();
    let stub = Stub::start_with("a", &["--threads", "2"]);
    let policies = [
        ("utc_atomic", "sync: atomic"),
        ("berlin_atomic", "sync: atomic\n    timezone: Europe/Berlin"),
        ("tokyo_async", "sync: async\n    timezone: Asia/Tokyo"),
    ];
    let limits: String = policies
        .iter()
        .map(|(name, extra)| {
            format!("  {name}:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 400/1d\n    {extra}\n")
        })
        .collect();
    let routes: String = policies
        .iter()
        .map(|(name, _)| format!("  - prefix: /{name}\n    upstream: a\n    limits: [{name}]\n"))
        .collect();
    let fleet = fleet(3, &redis.url(), &stub, limits.trim_end(), routes.trim_end());
    for (name, _) in policies {
        let client = new_client();
        let urls: Vec<String> = fleet.iter().map(|n| n.url(&format!("/{name}/x"))).collect();
        // A load straddling a midnight would fill two days.
        let usage_url = fleet[0].admin_url(&format!("/admin/limits/{name}/{client}"));
        let reset_ms = get(&usage_url).json()["reset_ms"].as_u64().unwrap_or(0);
        if reset_ms < 30_000 {
            std::thread::sleep(Duration::from_millis(reset_ms + 100));
        }
        let load = Load::start(6, &urls, &[("x-forwarded-for", &client)]);
        load.wait_for_more(1_200);
        let outcomes = load.finish();
        let admitted = outcomes.iter().filter(|o| o.status == 200).count();
        let refused = outcomes.iter().filter(|o| o.status == 429).count();
        eprintln!(
            "400/1d {name}, three nodes, {} requests of one client from 6 workers: {admitted} admitted, {refused} refused",
            outcomes.len()
        );
        assert_eq!(admitted + refused, outcomes.len(), "{name}: other statuses");
        if name.ends_with("atomic") {
            assert_eq!(admitted, 400, "{name}");
        } else {
            assert!((380..=420).contains(&admitted), "{name}: {admitted}");
        }
        let usage = get(&usage_url).json();
        eprintln!("{name}: {usage}");
        assert_eq!(usage["period"], "1d", "{usage}");
        assert_eq!(failed_open(&fleet, name), 0.0, "{name}");
    }
}
