//! tollgate on a master watched by three real sentinels: it asks them for the master, and
//! when the master is SIGKILLed under load it follows the failover without a restart.

mod common;
use common::load::Load;
use common::redis_topology::{SentinelSet, SENTINEL_MASTER};
use common::*;
use std::time::{Duration, Instant};

fn failed_open(nodes: &[Tollgate]) -> f64 {
    nodes
        .iter()
        .filter_map(|n| {
            n.metric(
                "tollgate_ratelimit_decisions_total{policy=\"per_path\",result=\"failed_open\"}",
            )
        })
        .sum()
}

#[test]
fn a_sentinel_failover_under_load_is_followed_without_a_5xx() {
    switch_master(true);
}

/// `SENTINEL FAILOVER`: the old master stays up, and writable until the sentinels demote
/// it (`READONLY` after that), so tollgate must ask the sentinels again on its own.
#[test]
fn a_switchover_with_the_old_master_alive_is_followed() {
    switch_master(false);
}

/// Redis gets 250 ms rather than the default 25 ms: the test reads every failed-open
/// decision as a sign of the failover, and on a busy two-core machine a round can be held
/// off the CPU past 25 ms with Redis perfectly healthy.
fn switch_master(kill: bool) {
    let mut set = SentinelSet::start();
    let stub = Stub::start_with("a", &["--threads", "2"]);
    let config = format!(
        "redis:
  sentinel:
    master: {SENTINEL_MASTER}
    nodes: [{}]
  sync_interval: 50ms
  timeout: 250ms
upstreams:
  a:
    backends: [{}]
limits:
  per_path:
    key: path
    algorithm: fixed_window
    rate: 25/1s
    on_redis_error: open
routes:
  - prefix: /a
    upstream: a
    limits: [per_path]
",
        set.nodes().join(", "),
        stub.address()
    );
    let nodes: Vec<Tollgate> = (0..3).map(|_| Tollgate::spawn(&config)).collect();
    for node in &nodes {
        node.wait_ready();
    }
    wait_for(
        "three live nodes via the sentinels",
        Duration::from_secs(10),
        || {
            nodes
                .iter()
                .all(|n| n.metric("tollgate_redis_nodes") == Some(3.0))
                .then_some(())
        },
    );
    let urls: Vec<String> = ["/a/x", "/a/y", "/a/z"]
        .iter()
        .flat_map(|p| nodes.iter().map(move |n| n.url(p)))
        .collect();
    let load = Load::start(8, &urls, &[]);
    load.wait_for_more(300);
    assert_eq!(failed_open(&nodes), 0.0, "local before the failover");
    let old = set.master;
    let killed = Instant::now();
    if kill {
        set.kill(old);
    } else {
        let sentinel = set.sentinels[0];
        let answer = set.cli(sentinel, &["SENTINEL", "FAILOVER", SENTINEL_MASTER]);
        assert_eq!(answer.as_deref(), Some("OK"), "SENTINEL FAILOVER");
    }
    let switched = wait_for(
        "the sentinels to switch master",
        Duration::from_secs(30),
        || {
            set.current_master()
                .filter(|p| *p != old)
                .map(|p| (p, Instant::now()))
        },
    );
    // Watch failed-open decisions: the last one marks when limits turned global again.
    let mut samples = Vec::new();
    while switched.1.elapsed() < Duration::from_secs(6) {
        samples.push((Instant::now(), failed_open(&nodes)));
        std::thread::sleep(Duration::from_millis(50));
    }
    let outcomes = load.finish();
    let recovered = samples
        .windows(2)
        .rev()
        .find(|w| w[1].1 > w[0].1)
        .map(|w| w[1].0)
        .map_or(Duration::ZERO, |t| t.saturating_duration_since(switched.1));
    println!(
        "{}: master {old}: sentinels switched to {} after {:?}; global again {:?} after the switch; {} requests",
        if kill { "killed" } else { "switchover" },
        switched.0,
        switched.1 - killed,
        recovered,
        outcomes.len()
    );
    let errors: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status >= 500 || o.status == 0)
        .collect();
    assert!(
        errors.is_empty(),
        "5xx during failover: {:?}",
        &errors[..errors.len().min(5)]
    );
    if kill {
        assert!(
            failed_open(&nodes) > 0.0,
            "no decision went local: the kill did not take"
        );
    }
    assert!(
        recovered <= Duration::from_secs(5),
        "still local {recovered:?} after the switch"
    );
    // Global again on the new master: it holds this window's counters.
    let counters = set
        .cli(switched.0, &["KEYS", "tollgate:rl:*"])
        .unwrap_or_default();
    let old_role = set.cli(old, &["ROLE"]).unwrap_or_default();
    let old_keys = set.cli(old, &["KEYS", "tollgate:rl:*"]).unwrap_or_default();
    assert!(
        !counters.is_empty(),
        "no counters on the promoted master; the old one ({old_role}) has {old_keys:?}\n{}",
        nodes[0].logs()
    );
}
