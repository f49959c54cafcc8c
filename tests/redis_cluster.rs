//! tollgate on a real Redis Cluster (3 masters, 3 replicas, node timeout 1 s): fleet
//! accuracy with keys on every master, a master SIGKILLed under load, and a slot migrated
//! with `redis-cli --cluster reshard` under load.

mod common;
use common::load::{Load, Outcome};
use common::redis_topology::{Hardening, RedisCluster};
use common::windows;
use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tollgate::redis_store::slots::slot_of;

const WINDOW_MS: u64 = 1_000;

/// The hash slot of a limit key of `policy` keyed by path.
fn slot(policy: &str, path: &str) -> u16 {
    slot_of(format!("{{{policy}|{path}}}").as_bytes())
}

fn owner_of(ranges: &[(u16, u16, u16)], slot: u16) -> u16 {
    ranges
        .iter()
        .find(|(a, b, _)| (*a..=*b).contains(&slot))
        .map(|(_, _, port)| *port)
        .expect("every slot has a master")
}

fn slot_ranges(cluster: &RedisCluster) -> Vec<(u16, u16, u16)> {
    cluster
        .nodes()
        .into_iter()
        .filter(|n| n.master && !n.failed)
        .flat_map(|n| n.slots.into_iter().map(move |(a, b)| (a, b, n.port)))
        .collect()
}

/// `per_master` paths under `prefix` for `policy` on each master, keyed by master port.
fn paths_per_master(
    cluster: &RedisCluster,
    policy: &str,
    prefix: &str,
    per_master: usize,
) -> BTreeMap<u16, Vec<String>> {
    let ranges = slot_ranges(cluster);
    let mut out: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for i in 0.. {
        let path = format!("{prefix}{i}");
        let list = out
            .entry(owner_of(&ranges, slot(policy, &path)))
            .or_default();
        if list.len() < per_master {
            list.push(path);
        }
        if out.len() == 3 && out.values().all(|l| l.len() == per_master) {
            break;
        }
    }
    out
}

/// One test of this file at a time. Each runs a cluster of six servers, three nodes and a
/// load generator: two at once on a two-core machine starve each other's Redis rounds,
/// and what they then measure is the machine.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `timeout: 250ms` rather than the default 25 ms. These tests judge which keys go local
/// when a master fails, and a key goes local whenever a round is late past the timeout,
/// whatever the reason: on a two-core machine with a release build beside the test, a
/// process can be kept off the CPU for tens of milliseconds. A round held up by a failed
/// master waits the whole round deadline (4 × the timeout, 1 s here), which the tests
/// still tell apart from a late round.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
const SYNC_INTERVAL: Duration = Duration::from_millis(50);

fn config(cluster: &RedisCluster, stub: &Stub, limits: &str, routes: &str) -> String {
    format!(
        "redis:
  cluster: [{}]
  sync_interval: {}ms
  timeout: {}ms
upstreams:
  a:
    backends: [{}]
limits:
{limits}
routes:
{routes}
",
        cluster.seeds().join(", "),
        SYNC_INTERVAL.as_millis(),
        REDIS_TIMEOUT.as_millis(),
        stub.address()
    )
}

fn fleet(config: &str) -> Vec<Tollgate> {
    let nodes: Vec<Tollgate> = (0..3).map(|_| Tollgate::spawn(config)).collect();
    for node in &nodes {
        node.wait_ready();
    }
    wait_for(
        "three live nodes on the cluster",
        Duration::from_secs(10),
        || {
            nodes
                .iter()
                .all(|n| n.metric("tollgate_redis_nodes") == Some(3.0))
                .then_some(())
        },
    );
    nodes
}

/// Every node's URL for every path, and the path of each URL index.
fn urls(nodes: &[Tollgate], paths: &[String]) -> (Vec<String>, Vec<String>) {
    let mut urls = Vec::new();
    let mut keys = Vec::new();
    for path in paths {
        for node in nodes {
            urls.push(node.url(path));
            keys.push(path.clone());
        }
    }
    (urls, keys)
}

fn failed_open(nodes: &[Tollgate], policy: &str) -> f64 {
    nodes
        .iter()
        .filter_map(|n| {
            n.metric(&format!(
                "tollgate_ratelimit_decisions_total{{policy=\"{policy}\",result=\"failed_open\"}}"
            ))
        })
        .sum()
}

fn server_errors(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes
        .iter()
        .filter(|o| o.status >= 500 || o.status == 0)
        .collect()
}

/// Fails with how many requests got a 5xx or no answer, and the first few of them.
fn assert_no_server_errors(outcomes: &[Outcome], during: &str) {
    let errors = server_errors(outcomes);
    assert!(
        errors.is_empty(),
        "{} of {} requests got a 5xx or no answer {during}; the first: {:?}",
        errors.len(),
        outcomes.len(),
        &errors[..errors.len().min(5)]
    );
}

/// Whole windows of every key, split into those the load generator filled (offered at
/// least twice the limit, so the limit was what bound them) and the rest, which judge
/// nothing: on a busy machine the generator itself may not keep up, and that is not the
/// fleet's fault.
type KeyWindow = ((String, u64), windows::WindowCount);

fn filled_windows(
    outcomes: &[Outcome],
    base: Duration,
    keys: &[String],
    limit: u64,
) -> (Vec<KeyWindow>, usize) {
    let counts = windows::whole_windows(windows::count(outcomes, base, WINDOW_MS, |i| {
        keys[i].clone()
    }));
    let total = counts.len();
    let filled: Vec<_> = counts
        .into_iter()
        .filter(|(_, c)| c.offered >= 2 * limit)
        .collect();
    let skipped = total - filled.len();
    (filled, skipped)
}

/// Runs `load` until it has filled `want` whole key-windows (or `most` has passed), and
/// returns its outcomes: the test scales to what the machine delivers.
fn load_until_filled(
    load: Load,
    keys: &[String],
    limit: u64,
    want: usize,
    least: Duration,
    most: Duration,
) -> Vec<Outcome> {
    let base = load.started_unix;
    std::thread::sleep(least);
    while load.now() < most {
        let (filled, _) = filled_windows(&load.snapshot(), base, keys, limit);
        if filled.len() >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    load.finish()
}

/// Checks every filled whole window of every key: at most `max_over` × the limit admitted,
/// and at least 95 % of it counting requests that straddled a boundary. Needs `want`
/// filled windows: fewer means the machine could not offer the load this test judges.
fn check_windows(
    label: &str,
    outcomes: &[Outcome],
    base: Duration,
    keys: &[String],
    limit: u64,
    max_over: f64,
    want: usize,
) {
    let (filled, skipped) = filled_windows(outcomes, base, keys, limit);
    assert!(
        filled.len() >= want,
        "{label}: the load filled only {} key-windows (offered at least {}), {skipped} others \
         got less: the machine could not generate the load to judge by ({} requests)",
        filled.len(),
        2 * limit,
        outcomes.len()
    );
    let mut worst = (u64::MAX, 0u64);
    for ((key, window), c) in &filled {
        assert!(
            c.admitted as f64 <= limit as f64 * max_over,
            "{label}: {key} window {window} admitted {} > {max_over} × {limit}",
            c.admitted
        );
        assert!(
            (c.admitted + c.straddling) as f64 >= limit as f64 * 0.95,
            "{label}: {key} window {window} admitted {} (+{} straddling) < 0.95 × {limit}",
            c.admitted,
            c.straddling
        );
        worst = (worst.0.min(c.admitted), worst.1.max(c.admitted));
    }
    println!(
        "{label}: {} filled key-windows ({skipped} too thinly loaded to judge), admitted {}..={} per window of limit {limit}",
        filled.len(),
        worst.0,
        worst.1
    );
}

fn accuracy(sync: &str, max_over: f64) {
    const LIMIT: u64 = 25;
    let cluster = RedisCluster::start(3);
    let stub = Stub::start_with("a", &["--threads", "2"]);
    let per_master = paths_per_master(&cluster, "per_path", "/a/k", 10);
    let paths: Vec<String> = per_master.values().flatten().cloned().collect();
    assert_eq!(paths.len(), 30);
    let limits = format!(
        "  per_path:\n    key: path\n    algorithm: fixed_window\n    rate: {LIMIT}/1s\n    sync: {sync}\n"
    );
    let routes = "  - prefix: /a\n    upstream: a\n    limits: [per_path]\n";
    let nodes = fleet(&config(&cluster, &stub, &limits, routes));
    let (urls, keys) = urls(&nodes, &paths);
    let load = Load::start(24, &urls, &[]);
    let base = load.started_unix;
    // 30 keys × 3 whole windows in the first 5 s when the machine keeps up; a busy one
    // gets more time to fill as many.
    let outcomes = load_until_filled(
        load,
        &keys,
        LIMIT,
        90,
        Duration::from_millis(5 * WINDOW_MS + 200),
        Duration::from_secs(30),
    );
    println!(
        "{sync}: {} requests over 30 keys on 3 masters",
        outcomes.len()
    );
    assert_no_server_errors(&outcomes, "under load");
    check_windows(sync, &outcomes, base, &keys, LIMIT, max_over, 90);
    // Each master served its share: the batch went to all three.
    let mut per_master = Vec::new();
    for port in cluster.masters() {
        let stats = cluster
            .cli(port, &["INFO", "commandstats"])
            .unwrap_or_default();
        assert!(
            stats.contains("cmdstat_evalsha"),
            "master {port} ran no script"
        );
        let calls: u64 = stats
            .lines()
            .filter_map(|l| l.split("calls=").nth(1))
            .filter_map(|rest| rest.split(',').next())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum();
        let scripts: u64 = stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let per_request = |n: u64| n as f64 / outcomes.len() as f64;
        per_master.push((per_request(calls), per_request(scripts)));
    }
    // Redis counts the commands a script runs as calls too.
    println!(
        "{sync}: per request, by master (commands incl. those scripts run, EVALSHA): {per_master:.3?}"
    );
}

#[test]
fn async_fleet_holds_every_key_on_every_master() {
    let _serial = one_at_a_time();
    accuracy("async", 1.05);
}

#[test]
fn atomic_fleet_never_overshoots_on_the_cluster() {
    let _serial = one_at_a_time();
    accuracy("atomic", 1.0);
}

/// The single-Redis fleet test's shape (tests/fleet.rs) on the cluster: one client key at
/// many times a 200/s limit, round robin over three nodes.
#[test]
fn one_hot_key_at_a_high_rate_holds_its_limit_on_the_cluster() {
    let _serial = one_at_a_time();
    const LIMIT: u64 = 200;
    let cluster = RedisCluster::start(3);
    let stub = Stub::start_with("a", &["--threads", "2"]);
    let limits =
        format!("  fleet:\n    key: path\n    algorithm: fixed_window\n    rate: {LIMIT}/1s\n");
    let routes = "  - prefix: /a\n    upstream: a\n    limits: [fleet]\n";
    let nodes = fleet(&config(&cluster, &stub, &limits, routes));
    let (urls, keys) = urls(&nodes, &["/a/x".to_string()]);
    let load = Load::start(16, &urls, &[]);
    let base = load.started_unix;
    let outcomes = load_until_filled(
        load,
        &keys,
        LIMIT,
        3,
        Duration::from_millis(4 * WINDOW_MS + 200),
        Duration::from_secs(20),
    );
    println!("one key: {} requests", outcomes.len());
    assert_no_server_errors(&outcomes, "under load");
    check_windows("one key", &outcomes, base, &keys, LIMIT, 1.05, 3);
}

/// Failed-open counts of each policy summed over the nodes, sampled until `stop` is set:
/// (when, count per policy). One scrape of each node per sample.
fn watch(
    nodes: &[Tollgate],
    policies: &[&str],
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<(Instant, Vec<f64>)> {
    let mut seen = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let scrapes: Vec<String> = nodes.iter().map(|n| n.metrics()).collect();
        let counts = policies
            .iter()
            .map(|p| {
                let sample = format!(
                    "tollgate_ratelimit_decisions_total{{policy=\"{p}\",result=\"failed_open\"}}"
                );
                scrapes
                    .iter()
                    .filter_map(|text| metric_value(text, &sample))
                    .sum()
            })
            .collect();
        seen.push((Instant::now(), counts));
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

/// The sample intervals (start, end) in which policy `i`'s failed-open count grew.
fn growth(seen: &[(Instant, Vec<f64>)], i: usize) -> Vec<(Instant, Instant)> {
    seen.windows(2)
        .filter(|w| w[1].1[i] > w[0].1[i])
        .map(|w| (w[0].0, w[1].0))
        .collect()
}

/// How the victim master goes away.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL: connections to it are refused at once.
    Kill,
    /// SIGSTOP: connections stay open and nothing answers, until the deadline.
    Hang,
}

#[test]
fn a_master_killed_under_load_turns_only_its_keys_local() {
    let _serial = one_at_a_time();
    failover("async", false, Fault::Kill);
}

/// A master that hangs costs every call to it the whole deadline: the other masters' keys
/// must not wait on it.
#[test]
fn a_master_that_hangs_under_load_turns_only_its_keys_local() {
    let _serial = one_at_a_time();
    failover("async", false, Fault::Hang);
}

/// The master that dies also holds the fleet's keys (live nodes, resets): the node count
/// waits, limits do not.
#[test]
fn losing_the_fleet_keys_master_keeps_the_other_keys_global() {
    let _serial = one_at_a_time();
    failover("async", true, Fault::Kill);
}

#[test]
fn atomic_keys_of_a_killed_master_fail_open_alone() {
    let _serial = one_at_a_time();
    failover("atomic", false, Fault::Kill);
}

/// Sample intervals in which the other masters' keys may go local without a fault of the
/// fleet's: a round or an atomic call late past `REDIS_TIMEOUT` because the machine held
/// the process off the CPU. Each such stall is one burst; the faults these tests guard
/// against (a batch that fails whole with one master, rounds that keep waiting on a hung
/// one) make the keys go local in every round until the promotion, which is at least 20
/// sample intervals after the fault here.
const STALL_BURSTS: usize = 2;

fn failover(sync: &str, fleet_keys_on_victim: bool, fault: Fault) {
    const LIMIT: u64 = 25;
    // A hung master is failed over only after the node timeout. The longer timeout leaves
    // the promotion well after the first round that waited on it, so rounds that keep
    // waiting would show.
    let node_timeout = match fault {
        Fault::Kill => Duration::from_secs(1),
        Fault::Hang => Duration::from_secs(4),
    };
    let mut cluster = RedisCluster::start_with_node_timeout(3, node_timeout);
    let stub = Stub::start_with("a", &["--threads", "2"]);
    let ranges = slot_ranges(&cluster);
    let fleet_master = owner_of(&ranges, slot_of(b"{fleet}"));
    // The hot key sits on a master that does not hold the fleet's keys; cold keys on the
    // two others.
    let hot = paths_per_master(&cluster, "hot", "/h/", 1);
    let (&victim, hot_paths) = hot
        .iter()
        .find(|(port, _)| (**port == fleet_master) == fleet_keys_on_victim)
        .expect("a master to kill");
    let hot_path = hot_paths[0].clone();
    let cold: Vec<String> = paths_per_master(&cluster, "cold", "/c/", 3)
        .into_iter()
        .filter(|(port, _)| *port != victim)
        .flat_map(|(_, p)| p)
        .collect();
    let limits = format!(
        "  hot:\n    key: path\n    algorithm: fixed_window\n    rate: {LIMIT}/1s\n    sync: {sync}\n    on_redis_error: open\n\
         \x20 cold:\n    key: path\n    algorithm: fixed_window\n    rate: {LIMIT}/1s\n    sync: {sync}\n    on_redis_error: open\n"
    );
    let routes = "  - prefix: /h\n    upstream: a\n    limits: [hot]\n  - prefix: /c\n    upstream: a\n    limits: [cold]\n";
    let nodes = fleet(&config(&cluster, &stub, &limits, routes));
    let mut paths = vec![hot_path.clone()];
    paths.extend(cold.iter().cloned());
    let (urls, keys) = urls(&nodes, &paths);
    let load = Load::start(16, &urls, &[]);
    let (base, load_started) = (load.started_unix, load.started);
    load.wait_for_more(500);
    let hot_slot = slot("hot", &hot_path);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (faulted, promoted, seen) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch(&nodes, &["hot", "cold"], &stop));
        wait_for("the watcher's first sample", Duration::from_secs(5), || {
            (!watcher.is_finished()).then_some(())
        });
        std::thread::sleep(Duration::from_millis(200));
        let faulted = Instant::now();
        match fault {
            Fault::Kill => cluster.kill(victim),
            Fault::Hang => cluster.freeze(victim),
        }
        wait_for(
            "a node to report the killed master's slots unreachable",
            Duration::from_secs(5) + node_timeout,
            || {
                nodes
                    .iter()
                    .any(|n| n.metric("tollgate_redis_unreachable_slots").unwrap_or(0.0) > 0.0)
                    .then_some(())
            },
        );
        let promoted = cluster.wait_promoted(hot_slot, victim);
        std::thread::sleep(Duration::from_secs(6));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (faulted, promoted, watcher.join().expect("the watcher"))
    });
    let still_unreachable: Vec<f64> = nodes
        .iter()
        .map(|n| n.metric("tollgate_redis_unreachable_slots").unwrap_or(-1.0))
        .collect();
    let outcomes = load.finish();
    let recovered = growth(&seen, 0).last().map_or(Duration::ZERO, |(_, t)| {
        t.saturating_duration_since(promoted)
    });
    println!(
        "{sync}, fleet keys on the victim: {fleet_keys_on_victim}: {fault:?} master {victim}: replica promoted after {:?}; hot key global again {:?} after promotion; {} requests",
        promoted - faulted,
        recovered,
        outcomes.len()
    );
    assert_no_server_errors(&outcomes, "during the failover");
    assert!(
        still_unreachable.iter().all(|&n| n == 0.0),
        "slots still unreachable 6 s after the promotion: {still_unreachable:?}"
    );

    // When the other masters' keys may go local on account of the fault: never for a kill
    // (a refused connection answers at once); for a hang, in the first round that meets it,
    // which starts within a sync interval and waits out the round deadline (4 × the timeout),
    // while its keys' requests wait at most the timeout more. Half a second more for a
    // slow machine to get there.
    let excused_until = match fault {
        Fault::Kill => faulted,
        Fault::Hang => {
            faulted + SYNC_INTERVAL + 4 * REDIS_TIMEOUT + REDIS_TIMEOUT + Duration::from_millis(500)
        }
    };
    assert!(
        promoted >= excused_until + Duration::from_secs(1),
        "the replica took over {:?} after the fault, too soon to tell rounds that keep waiting \
         on the failed master from the first one that did; raise the node timeout",
        promoted - faulted
    );
    let cold_bursts: Vec<(Instant, Instant)> = growth(&seen, 1)
        .into_iter()
        .filter(|(_, end)| *end > excused_until)
        .collect();
    println!(
        "keys of the other masters went local {} times in all; in {} sample interval(s) after {:?} past the fault: {:?}",
        seen.last().map_or(0.0, |(_, c)| c[1]),
        cold_bursts.len(),
        excused_until - faulted,
        cold_bursts
            .iter()
            .map(|(a, b)| (a.saturating_duration_since(faulted), b.saturating_duration_since(faulted)))
            .collect::<Vec<_>>()
    );
    assert!(
        cold_bursts.len() <= STALL_BURSTS,
        "keys on the other masters went local in {} sample intervals after {:?} past the {fault:?} \
         (at most {STALL_BURSTS} stalls of a busy machine allowed): rounds kept failing or waiting on the lost master",
        cold_bursts.len(),
        excused_until - faulted
    );
    assert!(
        seen.last().map_or(0.0, |(_, c)| c[0]) > 0.0,
        "the hot key never went local: the fault did not take"
    );
    // Typically well under a second: the first round after the promotion finds the new
    // master. Five seconds allow for a machine busy enough to slow the map refresh.
    assert!(
        recovered <= Duration::from_secs(5),
        "hot key still local {recovered:?} after promotion"
    );
    // The cold keys stayed global: no window over the limit, leaving out windows in which
    // they went local (the excused first round of a hang, or a stall).
    let local_windows: std::collections::BTreeSet<u64> = growth(&seen, 1)
        .iter()
        .flat_map(|(a, b)| {
            let at = |t: &Instant| {
                (base + t.saturating_duration_since(load_started)).as_millis() as u64 / WINDOW_MS
            };
            at(a).saturating_sub(1)..=at(b) + 1
        })
        .collect();
    let cold_outcomes: Vec<Outcome> = outcomes
        .iter()
        .filter(|o| keys[o.url] != hot_path)
        .cloned()
        .collect();
    let counts = windows::whole_windows(windows::count(&cold_outcomes, base, WINDOW_MS, |i| {
        keys[i].clone()
    }));
    for ((key, window), c) in counts {
        if local_windows.contains(&window) {
            continue;
        }
        assert!(
            c.admitted as f64 <= LIMIT as f64 * 1.05,
            "cold {key} window {window} admitted {}",
            c.admitted
        );
    }
}

#[test]
fn a_slot_migrated_under_load_loses_no_decision() {
    let _serial = one_at_a_time();
    const LIMIT: u64 = 25;
    let cluster = RedisCluster::start(3);
    let stub = Stub::start_with("a", &["--threads", "2"]);
    let ranges = slot_ranges(&cluster);
    let source = owner_of(&ranges, 0);
    let target = *cluster
        .masters()
        .iter()
        .find(|p| **p != source)
        .expect("another master");
    // A hot key among the first 100 slots of the master serving slot 0: reshard moves a
    // source's lowest slots first.
    let hot_path = (0..)
        .map(|i| format!("/a/hot{i}"))
        .find(|p| slot("per_path", p) < 100)
        .expect("a path in the first slots");
    let hot_slot = slot("per_path", &hot_path);
    let limits = format!(
        "  per_path:\n    key: path\n    algorithm: fixed_window\n    rate: {LIMIT}/1s\n    on_redis_error: open\n"
    );
    let routes = "  - prefix: /a\n    upstream: a\n    limits: [per_path]\n";
    let nodes = fleet(&config(&cluster, &stub, &limits, routes));
    let (urls, keys) = urls(&nodes, std::slice::from_ref(&hot_path));
    let load = Load::start(8, &urls, &[]);
    let base = load.started_unix;
    load.wait_for_more(300);
    std::thread::sleep(Duration::from_millis(WINDOW_MS));
    let started = Instant::now();
    let out = cluster.reshard(source, target, 100);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "reshard failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cluster.owner(hot_slot), Some(target), "the hot slot moved");
    let after = load.now();
    load.wait_for_sent_after(after, 300);
    std::thread::sleep(Duration::from_millis(3 * WINDOW_MS));
    let outcomes = load.finish();
    println!(
        "resharded 100 slots (hot slot {hot_slot}) from {source} to {target} in {took:?} under {} requests",
        outcomes.len()
    );
    assert_no_server_errors(&outcomes, "during the migration");
    assert_eq!(
        failed_open(&nodes, "per_path"),
        0.0,
        "a decision fell back to local"
    );
    check_windows("reshard", &outcomes, base, &keys, LIMIT, 1.05, 3);
}

/// TLS to every node (clients, the cluster bus, replication) and a least-privilege ACL
/// user whose password comes from the environment: the keys on every master stay global.
/// A wrong password is refused safely: the node serves on local limits and says why.
#[test]
fn a_cluster_behind_tls_and_an_acl_user_keeps_limits_global() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let certs = common::certs::generate(dir.path(), "cluster");
    // On a cluster docs/fleet.md adds CLUSTER SLOTS to the rules.
    let mut tollgate_user = least_privilege_acl("tollgate", "tgpw", "~tollgate:*");
    tollgate_user.push("+cluster|slots".into());
    let cluster = RedisCluster::start_hardened(
        3,
        &Hardening {
            certs: certs.clone(),
            admin_password: "admin-pw".into(),
            users: vec![tollgate_user],
        },
    );
    let stub = Stub::start("a");
    let per_master = paths_per_master(&cluster, "per_path", "/a/k", 1);
    let body = config(
        &cluster,
        &stub,
        "  per_path:\n    key: path\n    algorithm: fixed_window\n    rate: 5/1m\n",
        "  - prefix: /a\n    upstream: a\n    limits: [per_path]\n",
    )
    .replacen(
        "redis:\n",
        &format!(
            "redis:\n  user: tollgate\n  password_env: TG_REDIS_PASSWORD\n  tls:\n    ca_file: {}\n",
            certs.ca_cert.display()
        ),
        1,
    );
    let nodes: Vec<Tollgate> = (0..2)
        .map(|_| Tollgate::start_with_env(&body, &[("TG_REDIS_PASSWORD", "tgpw")]))
        .collect();
    wait_for(
        &format!(
            "two live nodes on the hardened cluster\n{}",
            nodes[0].logs()
        ),
        Duration::from_secs(10),
        || {
            nodes
                .iter()
                .all(|n| n.metric("tollgate_redis_nodes") == Some(2.0))
                .then_some(())
        },
    );
    for (master, paths) in &per_master {
        let path = &paths[0];
        let admitted = (0..8)
            .filter(|i| get(&nodes[i % 2].url(path)).status == 200)
            .count();
        assert_eq!(
            admitted,
            5,
            "{path} (master {master}): the two nodes together admit the limit\n{}",
            nodes[0].logs()
        );
        let keys = cluster
            .cli(*master, &["--scan", "--pattern", "tollgate:*per_path*"])
            .unwrap_or_default();
        assert!(!keys.is_empty(), "no counts on master {master}");
    }
    assert_eq!(failed_open(&nodes, "per_path"), 0.0);
    drop(nodes);

    let wrong = Tollgate::start_with_env(&body, &[("TG_REDIS_PASSWORD", "not-the-password")]);
    wait_for(
        &format!("the refusal logged\n{}", wrong.logs()),
        Duration::from_secs(5),
        || {
            let logs = wrong.logs();
            (logs.contains("WRONGPASS") || logs.contains("authentication failed")).then_some(())
        },
    );
    assert_eq!(wrong.metric("tollgate_redis_up"), Some(0.0));
    assert_eq!(get(&wrong.url("/a/x")).status, 200, "still serving");
    assert!(
        !wrong.logs().contains("not-the-password"),
        "the password leaked into the log"
    );
}
