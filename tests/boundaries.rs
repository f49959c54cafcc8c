//! Traffic across window boundaries: a busy key far below its limit is never refused.
//! Its own file, since it loads both cores and would disturb timing-sensitive tests.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[test]
fn a_busy_key_far_below_its_limit_is_never_refused_at_window_boundaries() {
    // A regression: reservations a node never spent once counted as the previous window's
    // usage, so a sliding window started with no room and refused for a sync interval.
    for algorithm in ["sliding_window", "fixed_window"] {
        let redis = Redis::start();
        let stub = Stub::start("a");
        let t = Tollgate::start(&format!(
            "redis:\n  url: {}\nupstreams:\n  a:\n    backends: [{}]\nlimits:\n  big:\n    key: client_ip\n    algorithm: {algorithm}\n    rate: 1000000/1s\nroutes:\n  - prefix: /a\n    upstream: a\n    limits: [big]\n",
            redis.url(),
            stub.address()
        ));
        let url = t.url("/a/x");
        let stop_at = Instant::now() + Duration::from_millis(3_200);
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let agent = agent();
                    let mut statuses = Vec::new();
                    while Instant::now() < stop_at {
                        statuses.push(get_with(&agent, &url, &[]).status);
                    }
                    statuses
                })
            })
            .collect();
        let statuses: Vec<u16> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        let refused = count(&statuses, 429);
        assert!(
            statuses.len() > 1_000,
            "{algorithm}: only {} requests",
            statuses.len()
        );
        assert_eq!(
            refused,
            0,
            "{algorithm}: {refused} of {} refused across 3 window boundaries",
            statuses.len()
        );
    }
}
