//! Memory stays bounded however many distinct keys clients invent: 200,000 client
//! addresses through one node grow its resident memory by less than `BOUND_MB`, the key
//! table stops at `max_keys`, and the heavy hitter among them is still limited.

mod common;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEYS: usize = 200_000;
const MAX_KEYS: usize = 50_000;
/// The stated bound: estimators are fixed-size (4 × 16384 counters per window), the exact
/// key table holds at most `MAX_KEYS` entries of a few hundred bytes each.
const BOUND_MB: u64 = 64;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn two_hundred_thousand_client_keys_keep_memory_bounded() {
    let redis = Redis::start();
    let stub = Stub::start_with("a", &["--threads", "2"]);
    let t = Tollgate::start(&format!(
        "threads: 2
trusted_proxies: [127.0.0.1/32]
redis:
  url: {}
upstreams:
  a:
    backends: [{}]
limits:
  per_client:
    key: client_ip
    algorithm: sliding_window
    rate: 100/1m
    max_keys: {MAX_KEYS}
routes:
  - prefix: /a
    upstream: a
    limits: [per_client]
",
        redis.url(),
        stub.address()
    ));
    // Warm up allocator pools and connection pools before the baseline.
    let warm = agent();
    for i in 0..2_000 {
        get_with(
            &warm,
            &t.url("/a/w"),
            &[("x-forwarded-for", &format!("10.9.{}.{}", i / 250, i % 250))],
        );
    }
    let before = rss_kb(t.pid());

    let next = Arc::new(AtomicUsize::new(0));
    let heavy_admitted = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let url = t.url("/a/x");
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (next, heavy_admitted, url) = (next.clone(), heavy_admitted.clone(), url.clone());
            std::thread::spawn(move || {
                let agent = agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= KEYS {
                        break;
                    }
                    // Every 20th request is the heavy hitter; the rest are new clients.
                    let ip = if i % 20 == 0 {
                        "192.0.2.1".to_string()
                    } else {
                        format!(
                            "{}.{}.{}.{}",
                            11 + i / 16_777_216,
                            (i / 65_536) % 256,
                            (i / 256) % 256,
                            i % 256
                        )
                    };
                    let r = get_with(&agent, &url, &[("x-forwarded-for", &ip)]);
                    assert!(matches!(r.status, 200 | 429), "{}: {}", r.status, r.body);
                    if ip == "192.0.2.1" && r.status == 200 {
                        heavy_admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let after = rss_kb(t.pid());
    let grown_mb = after.saturating_sub(before) / 1024;
    let active = t
        .metric(r#"tollgate_ratelimit_active_keys{policy="per_client"}"#)
        .unwrap_or(0.0);
    let untracked = t
        .metric(r#"tollgate_ratelimit_untracked_total{policy="per_client"}"#)
        .unwrap_or(0.0);
    eprintln!(
        "RSS {} MB -> {} MB (+{grown_mb} MB) after {KEYS} keys; active keys {active}, untracked decisions {untracked}",
        before / 1024,
        after / 1024
    );
    assert!(grown_mb < BOUND_MB, "RSS grew by {grown_mb} MB");
    assert!(
        active <= MAX_KEYS as f64,
        "the key table holds {active} keys"
    );
    assert!(
        untracked > 0.0,
        "keys beyond max_keys were decided by the estimator"
    );
    // The heavy hitter sent 10,000 requests against 100 per minute: it gets at most the
    // limit for each minute the flood touched (plus the sliding window's carry-over).
    let admitted = heavy_admitted.load(Ordering::Relaxed) as u64;
    let minutes = started.elapsed().as_secs() / 60 + 2;
    assert!(
        admitted <= 100 * minutes,
        "the heavy hitter got {admitted} requests through"
    );
    wait_for("the node to stay healthy", Duration::from_secs(2), || {
        (get(&t.url("/health")).status == 200).then_some(())
    });
}
