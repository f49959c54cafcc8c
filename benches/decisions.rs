//! Micro-benchmarks of the request path's pure parts: a rate limit decision per algorithm
//! (local, and global async from a lease) on one hot key and across 100,000 keys, with
//! governor's keyed limiter as the in-process reference; route matching over 100 routes;
//! and building the rate limit response headers.
//!
//! Global policies decide from leases that the background sync refills, so the benchmark
//! starts its own `redis-server` and runs tollgate's sync loop beside the measurement, as a
//! live node does: a key's first decision in a window waits for a round, the rest decide
//! on the spot.
//!
//! `cargo bench --bench decisions`

// The tests' harness: its `redis-server` on a free port and its deadline polls.
#[path = "../tests/common/mod.rs"]
mod common;

use common::{wait_for, Redis};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pingora_core::services::background::BackgroundService;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tollgate::config;
use tollgate::decisions::DecisionHub;
use tollgate::gateway::{Gateway, SharedGateway};
use tollgate::limit::sync::LimitSync;
use tollgate::limit::{headers, key, Policy, RedisLink, RequestFacts};
use tollgate::metrics::Metrics;
use tollgate::routing::{RouteKey, Router};

/// Runs a decision that could not be made on the spot: a global key whose lease is empty
/// waits here for the sync loop's next round.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("bench runtime");
    }
    RUNTIME.with(|rt| rt.block_on(f))
}

/// One decision the way the proxy makes it: on the spot, or after waiting for a lease.
fn decide(
    policy: &Policy,
    limiter: &tollgate::limit::policy::Limiter,
    facts: &RequestFacts<'_>,
    link: &RedisLink,
) -> bool {
    match policy.decide_now(limiter, facts, 1, Some(link)) {
        Some(check) => check.verdict.allowed,
        None => {
            ready(policy.check(limiter, facts, 1, Some(link)))
                .verdict
                .allowed
        }
    }
}

/// A gateway holding every policy under test, with tollgate's sync loop running on a
/// thread of its own against `redis`, as on a live node.
struct Node {
    gateway: SharedGateway,
    link: Arc<RedisLink>,
    stop: tokio::sync::watch::Sender<bool>,
    sync: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    fn start(redis: &Redis, metrics: &Arc<Metrics>) -> Node {
        let mut yaml = format!(
            "redis:\n  url: redis://127.0.0.1:{}\nupstreams:\n  a:\n    backends: [127.0.0.1:9]\nlimits:\n",
            redis.port
        );
        for (label, limit) in POLICIES.iter().filter(|(label, _)| is_global(label)) {
            yaml.push_str(&format!("  {}: {limit}\n", policy_name(label)));
        }
        yaml.push_str("routes:\n  - prefix: /a\n    upstream: a\n");
        let config = config::parse(&yaml, "bench.yaml")
            .unwrap_or_else(|e| panic!("bench config: {e}"))
            .config;
        let hub = DecisionHub::new(metrics);
        let gateway = Gateway::build(config, None, metrics, &hub)
            .unwrap_or_else(|e| panic!("bench gateway: {e}"));
        let link = gateway.redis.clone().expect("the bench config has redis");
        let gateway: SharedGateway = Arc::new(arc_swap::ArcSwap::from_pointee(gateway));
        let (stop, watch) = tokio::sync::watch::channel(false);
        let sync = LimitSync::new(gateway.clone());
        let sync = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("sync runtime")
                .block_on(sync.start(watch));
        });
        wait_for(
            "the sync loop to reach redis",
            Duration::from_secs(10),
            || link.is_up().then_some(()),
        );
        Node {
            gateway,
            link,
            stop,
            sync: Some(sync),
        }
    }

    /// Waits until the sync loop has granted the key a lease, so the measurement starts
    /// from the steady state and a sync that stopped granting fails the benchmark.
    fn wait_for_lease(&self, policy: &Policy, facts: &RequestFacts<'_>) {
        let limiter = policy.limiter(None);
        assert!(
            decide(policy, limiter, facts, &self.link),
            "the first decision was refused"
        );
        wait_for(
            &format!("the sync loop to grant {} a lease", policy.name),
            Duration::from_secs(10),
            || policy.decide_now(limiter, facts, 1, Some(&self.link)),
        );
    }

    fn policy(&self, label: &str) -> Arc<Policy> {
        self.gateway.load().policies[&policy_name(label)].clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(sync) = self.sync.take() {
            let _ = sync.join();
        }
    }
}

/// Global policies come from the node, whose sync loop refills their leases. Local ones
/// are built apart: the sync loop also evicts idle keys from every table, and walking a
/// local table of 100,000 keys beside the measurement would time the walk, not the
/// decision.
fn is_global(label: &str) -> bool {
    label.starts_with("global")
}

fn limit(yaml: &str) -> config::LimitConfig {
    serde_yaml::from_str(yaml).expect("bench limit config")
}

fn policy_name(label: &str) -> String {
    label.replace('/', "_")
}

fn facts(ip: IpAddr, headers: &http::HeaderMap) -> RequestFacts<'_> {
    RequestFacts {
        client_ip: ip,
        api_key_id: None,
        tenant: None,
        tier: None,
        path: "/a/x",
        method: "GET",
        route: "/a",
        host: None,
        headers,
        query: None,
        claims: None,
    }
}

/// Policies under test: (label, YAML). Limits are high enough that every decision admits,
/// so the figures measure the steady allowed path.
const POLICIES: &[(&str, &str)] = &[
    ("local/fixed_window", "{key: client_ip, algorithm: fixed_window, rate: 1000000000/1s, scope: local}"),
    ("local/sliding_window", "{key: client_ip, algorithm: sliding_window, rate: 1000000000/1s, scope: local}"),
    ("local/token_bucket", "{key: client_ip, algorithm: token_bucket, rate: 1000000000/1s, scope: local}"),
    ("local/gcra", "{key: client_ip, algorithm: gcra, rate: 1000000000/1s, scope: local}"),
    ("local/sliding_log", "{key: client_ip, algorithm: sliding_log, rate: 10000/10ms, scope: local, max_keys: 200000}"),
    ("local/concurrency", "{key: client_ip, algorithm: concurrency, limit: 1000000, scope: local}"),
    ("global_async/fixed_window", "{key: client_ip, algorithm: fixed_window, rate: 1000000000/1s, max_keys: 200000}"),
    ("global_async/sliding_window", "{key: client_ip, algorithm: sliding_window, rate: 1000000000/1s, max_keys: 200000}"),
    ("global_async/token_bucket", "{key: client_ip, algorithm: token_bucket, rate: 1000000000/1s, max_keys: 200000}"),
    // Calendar periods: the cached period must keep these at the cost of epoch windows.
    ("local/fixed_window_1mo_berlin", "{key: client_ip, algorithm: fixed_window, rate: 1000000000/1mo, timezone: Europe/Berlin, scope: local}"),
    ("global_async/sliding_window_1mo_berlin", "{key: client_ip, algorithm: sliding_window, rate: 1000000000/1mo, timezone: Europe/Berlin, max_keys: 200000}"),
];

fn decisions(c: &mut Criterion) {
    let metrics = Arc::new(Metrics::new());
    let redis = Redis::start();
    let node = Node::start(&redis, &metrics);
    let link = node.link.clone();
    let headers = http::HeaderMap::new();
    let keys: Vec<IpAddr> = (0..100_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();

    let mut group = c.benchmark_group("decision");
    group.throughput(Throughput::Elements(1));
    for (label, yaml) in POLICIES {
        let policy = if is_global(label) {
            node.policy(label)
        } else {
            Arc::new(Policy::build(label, &limit(yaml), &metrics))
        };
        let limiter = policy.limiter(None);
        if policy.is_leased() {
            node.wait_for_lease(&policy, &facts(keys[0], &headers));
        }
        group.bench_function(BenchmarkId::new("hot_key", label), |b| {
            let f = facts(keys[0], &headers);
            b.iter(|| decide(&policy, limiter, black_box(&f), &link))
        });
        group.bench_function(BenchmarkId::new("100k_keys", label), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) % keys.len();
                let f = facts(keys[i], &headers);
                decide(&policy, limiter, black_box(&f), &link)
            })
        });
    }

    let quota = governor::Quota::per_second(NonZeroU32::new(1_000_000_000).expect("non-zero"));
    let keyed = governor::RateLimiter::keyed(quota);
    group.bench_function(BenchmarkId::new("hot_key", "governor/keyed"), |b| {
        b.iter(|| keyed.check_key(black_box(&keys[0])).is_ok())
    });
    group.bench_function(BenchmarkId::new("100k_keys", "governor/keyed"), |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % keys.len();
            keyed.check_key(black_box(&keys[i])).is_ok()
        })
    });
    group.finish();
    drop(node);
    drop(redis);

    let mut group = c.benchmark_group("key");
    let f = facts(keys[0], &headers);
    let parts = [config::KeyPart::ClientIp(config::ClientNet::default())];
    group.bench_function("hash/client_ip", |b| {
        b.iter(|| key::hash(7, black_box(&parts), &f))
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let prefixes: Vec<String> = (0..100)
        .map(|i| format!("/service{}/v{}", i % 50, i / 50 + 1))
        .collect();
    // Half the routes under a host, the other half without, plus a wildcard group: the
    // lookup of a request's host picks a group before the prefix walk.
    let router = Router::new(prefixes.iter().enumerate().map(|(i, p)| {
        let host = match i % 3 {
            0 => Some("api.example.com".to_string()),
            1 => Some("*.example.com".to_string()),
            _ => None,
        };
        (
            RouteKey {
                host,
                prefix: p.clone(),
            },
            p.clone(),
        )
    }));
    let host = Some("api.example.com");
    // The same 100 prefixes with no host at all, as a config without `host:` routes has.
    let any_host = Router::new(prefixes.iter().map(|p| {
        (
            RouteKey {
                host: None,
                prefix: p.clone(),
            },
            p.clone(),
        )
    }));
    let mut group = c.benchmark_group("routing");
    group.bench_function("100_routes_no_hosts/hit", |b| {
        b.iter(|| any_host.lookup(black_box(host), black_box("/service37/v2/users/42/orders")))
    });
    group.bench_function("100_routes_no_hosts/miss", |b| {
        b.iter(|| any_host.lookup(black_box(host), black_box("/nothing/here/at/all")))
    });
    group.bench_function("100_routes/hit", |b| {
        b.iter(|| router.lookup(black_box(host), black_box("/service37/v2/users/42/orders")))
    });
    group.bench_function("100_routes/miss", |b| {
        b.iter(|| router.lookup(black_box(host), black_box("/nothing/here/at/all")))
    });
    group.bench_function("100_routes/wildcard_host_hit", |b| {
        b.iter(|| {
            let host = tollgate::routing::normalize_host(black_box("WWW.eu.Example.com:443"));
            router
                .lookup(host.as_deref(), black_box("/service37/v1/users/42/orders"))
                .is_some()
        })
    });
    group.bench_function("100_routes/normalize_and_match", |b| {
        b.iter(|| {
            let path = tollgate::path::normalize(black_box("/service37/v2/users/42/orders"))
                .expect("valid");
            router.lookup(host, &path).is_some()
        })
    });
    group.finish();
}

fn response_headers(c: &mut Criterion) {
    let params = tollgate::limit::policy::Params::Window {
        limit: 100,
        window_ms: 60_000,
        sliding: true,
        calendar: None,
    };
    let verdict = tollgate::limit::algorithm::Verdict {
        allowed: false,
        limit: 100,
        remaining: 0,
        reset_ms: 16_200,
        retry_after_ms: 16_200,
    };
    // What an allowed or refused request pays: the limiter keeps its template.
    let template = headers::FieldTemplate::new("per_client", &params);
    c.bench_function("headers/ratelimit_fields", |b| {
        b.iter(|| template.fields(black_box(&verdict)))
    });
    // Once per limiter, when a config is loaded.
    c.bench_function("headers/template", |b| {
        b.iter(|| headers::FieldTemplate::new(black_box("per_client"), &params))
    });
}

criterion_group!(benches, decisions, routing, response_headers);
criterion_main!(benches);
