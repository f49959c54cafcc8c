//! Rate limits through a real proxy, with a real redis-server of the test's own.

mod common;
use common::clock::*;
use common::*;
use std::time::{Duration, Instant};

struct Setup {
    _redis: Redis,
    _stub: Stub,
    t: Tollgate,
}

/// A proxy with one route `/a` applying `limits` (YAML under `limits:`), plus `extra`
/// top-level YAML.
fn setup(limits: &str, route_extra: &str, extra: &str) -> Setup {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let config = format!(
        "redis:
  url: {}
upstreams:
  a:
    backends: [{}]
limits:
{limits}
routes:
  - prefix: /a
    upstream: a
{route_extra}
{extra}",
        redis.url(),
        stub.address()
    );
    let t = Tollgate::start(&config);
    // Until Redis answers, global policies decide locally; the tests count leases.
    wait_for("redis up", Duration::from_secs(3), || {
        (t.metric("tollgate_redis_up") == Some(1.0)).then_some(())
    });
    Setup {
        _redis: redis,
        _stub: stub,
        t,
    }
}

fn statuses(t: &Tollgate, n: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    let agent = agent();
    (0..n)
        .map(|_| get_with(&agent, &t.url("/a/x"), headers).status)
        .collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[test]
fn fixed_window_admits_exactly_the_rate_per_window() {
    for scope in ["global", "local"] {
        let s = setup(
            &format!("  fw:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 10/2s\n    scope: {scope}"),
            "    limits: [fw]",
            "",
        );
        for round in 0..2 {
            wait_for_window_start(2_000);
            let got = statuses(&s.t, 15, &[]);
            assert_eq!(count(&got, 200), 10, "{scope} round {round}: {got:?}");
            assert_eq!(count(&got, 429), 5, "{scope} round {round}: {got:?}");
            // Nothing refused came before something admitted.
            assert!(got[..10].iter().all(|s| *s == 200), "{scope}: {got:?}");
        }
    }
}

#[test]
fn sliding_window_keeps_a_boundary_burst_within_the_rate() {
    let s = setup(
        "  sw:\n    key: client_ip\n    algorithm: sliding_window\n    rate: 20/1s",
        "    limits: [sw]",
        "",
    );
    // Warm the key up so both bursts use synced leases, then wait for a quiet window.
    statuses(&s.t, 1, &[]);
    wait_until_in_window(1_000, 2, 30);
    wait_until_in_window(1_000, 850, 870);
    let late = statuses(&s.t, 25, &[]);
    wait_until_in_window(1_000, 20, 60);
    let early = statuses(&s.t, 25, &[]);
    let (late_ok, early_ok) = (count(&late, 200), count(&early, 200));
    // A fixed window would admit 20 + 20 here; the sliding estimate weighs the previous
    // window at 94-98% this early, so almost nothing more fits.
    assert!(
        (15..=20).contains(&late_ok),
        "late burst admitted {late_ok}"
    );
    assert!(
        early_ok <= 2,
        "early burst admitted {early_ok} after {late_ok}"
    );
    assert!(
        late_ok + early_ok <= 22,
        "{late_ok} + {early_ok} within ~200 ms"
    );
}

#[test]
fn token_bucket_admits_the_burst_then_the_refill_rate() {
    let s = setup(
        "  tb:\n    key: client_ip\n    algorithm: token_bucket\n    rate: 10/s\n    burst: 5",
        "    limits: [tb]",
        "",
    );
    let burst = statuses(&s.t, 8, &[]);
    assert_eq!(count(&burst, 200), 5, "{burst:?}");
    let agent = agent();
    let started = Instant::now();
    let mut admitted = 0;
    while started.elapsed() < Duration::from_millis(1_500) {
        if get_with(&agent, &s.t.url("/a/x"), &[]).status == 200 {
            admitted += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // 10 per second for 1.5 s: 15, give or take a token and a sync interval either side.
    assert!(
        (12..=17).contains(&admitted),
        "admitted {admitted} in 1.5 s at 10/s"
    );
}

#[test]
fn gcra_matches_the_token_bucket_locally() {
    let s = setup(
        "  g:\n    key: client_ip\n    algorithm: gcra\n    rate: 10/s\n    burst: 4\n    scope: local",
        "    limits: [g]",
        "",
    );
    let burst = statuses(&s.t, 6, &[]);
    assert_eq!(count(&burst, 200), 4, "{burst:?}");
    let r = get(&s.t.url("/a/x"));
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
}

#[test]
fn concurrency_limit_caps_requests_in_flight() {
    let s = setup(
        "  conc:\n    key: client_ip\n    algorithm: concurrency\n    limit: 2\n    scope: local",
        "    limits: [conc]",
        "",
    );
    let url = s.t.url("/a/slow");
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                get_with(&agent(), &url, &[("x-stub-delay-ms", "600")]).status
            })
        })
        .collect();
    let got: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(count(&got, 200), 2, "{got:?}");
    assert_eq!(count(&got, 429), 3, "{got:?}");
    // The slots are released when the requests end.
    wait_for("slots to be free", Duration::from_secs(3), || {
        (s.t.metric("tollgate_requests_in_flight") == Some(0.0)).then_some(())
    });
    assert_eq!(get(&s.t.url("/a/x")).status, 200);
}

const KEYS: &str = "api_keys:
  header: X-API-Key
  keys:
    free-key-1234: { tenant: t-free, tier: free }
    pro-key-5678: { tenant: t-pro, tier: pro }
    other-free-9999: { tenant: t-free, tier: free }
";

#[test]
fn tiers_come_from_api_keys_and_protected_routes_need_one() {
    let s = setup(
        "  tiered:\n    key: tenant\n    algorithm: fixed_window\n    rate: 2/10s\n    tiers:\n      free: { rate: 3/10s }\n      pro: { rate: 6/10s }",
        "    limits: [tiered]\n    require_api_key: true",
        KEYS,
    );
    wait_until_in_window(10_000, 0, 7_000);
    let free = statuses(&s.t, 5, &[("x-api-key", "free-key-1234")]);
    assert_eq!(count(&free, 200), 3, "{free:?}");
    // Another key of the same tenant shares the tenant's count.
    let same_tenant = statuses(&s.t, 1, &[("x-api-key", "other-free-9999")]);
    assert_eq!(same_tenant, [429]);
    let pro = statuses(&s.t, 8, &[("x-api-key", "pro-key-5678")]);
    assert_eq!(count(&pro, 200), 6, "{pro:?}");
    let r = get_with(&agent(), &s.t.url("/a/x"), &[("x-api-key", "pro-key-5678")]);
    assert!(r.header("ratelimit-policy").unwrap().contains("q=6"));

    let missing = get(&s.t.url("/a/x"));
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"], "missing_api_key");
    assert!(missing.header("www-authenticate").is_some());
    let wrong = get_with(
        &agent(),
        &s.t.url("/a/x"),
        &[("x-api-key", "free-key-1235")],
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "invalid_api_key");
}

#[test]
fn composite_keys_and_costs() {
    let s = setup(
        "  comp:\n    key: [client_ip, header:x-user]\n    algorithm: fixed_window\n    rate: 3/10s\n    cost: header:x-cost",
        "    limits: [comp]",
        "",
    );
    wait_until_in_window(10_000, 0, 7_000);
    let agent = agent();
    let req = |user: &str, cost: &str| {
        get_with(
            &agent,
            &s.t.url("/a/x"),
            &[("x-user", user), ("x-cost", cost)],
        )
    };
    assert_eq!(req("alice", "2").status, 200);
    assert_eq!(req("alice", "2").status, 429, "2 + 2 > 3");
    assert_eq!(req("alice", "1").status, 200);
    assert_eq!(req("bob", "3").status, 200, "bob has his own count");
    let bad = req("carol", "abc");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "invalid_cost");
    assert_eq!(req("carol", "99").status, 400, "more than the whole quota");
    // A missing cost header costs 1.
    assert_eq!(
        get_with(&agent, &s.t.url("/a/x"), &[("x-user", "dave")]).status,
        200
    );
}

#[test]
fn shadow_mode_passes_everything_and_counts_it() {
    let s = setup(
        "  sh:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 2/10s\n    mode: shadow",
        "    limits: [sh]",
        "",
    );
    wait_until_in_window(10_000, 0, 7_000);
    let got = statuses(&s.t, 5, &[]);
    assert_eq!(got, [200; 5]);
    let r = get(&s.t.url("/a/x"));
    assert!(
        r.header("ratelimit").is_none(),
        "shadow policies are invisible"
    );
    assert_eq!(
        s.t.metric(r#"tollgate_ratelimit_decisions_total{policy="sh",result="allowed"}"#),
        Some(2.0)
    );
    assert_eq!(
        s.t.metric(r#"tollgate_ratelimit_decisions_total{policy="sh",result="shadow_limited"}"#),
        Some(4.0)
    );
}

fn sf_item(field: &str) -> (String, sfv::Parameters) {
    let list = sfv::Parser::parse_list(field.as_bytes())
        .unwrap_or_else(|e| panic!("`{field}` is not an sf-list: {e}"));
    assert_eq!(list.len(), 1, "{field}");
    match &list[0] {
        sfv::ListEntry::Item(item) => match &item.bare_item {
            sfv::BareItem::String(name) => (name.to_string(), item.params.clone()),
            other => panic!("the policy name is not an sf-string: {other:?}"),
        },
        other => panic!("not an item: {other:?}"),
    }
}

fn int(params: &sfv::Parameters, key: &str) -> i64 {
    match params.get(key) {
        Some(sfv::BareItem::Integer(i)) => *i,
        other => panic!("parameter {key} is not an integer: {other:?}"),
    }
}

#[test]
fn rate_limit_headers_parse_as_structured_fields() {
    let s = setup(
        "  hdr:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 5/10s",
        "    limits: [hdr]",
        "",
    );
    wait_until_in_window(10_000, 0, 6_000);
    let agent = agent();
    let first = get_with(&agent, &s.t.url("/a/x"), &[]);
    assert_eq!(first.status, 200);
    let (name, policy) = sf_item(first.header("ratelimit-policy").expect("RateLimit-Policy"));
    assert_eq!(name, "hdr");
    assert_eq!((int(&policy, "q"), int(&policy, "w")), (5, 10));
    let (name, state) = sf_item(first.header("ratelimit").expect("RateLimit"));
    assert_eq!(name, "hdr");
    assert_eq!(int(&state, "r"), 4);
    let t = int(&state, "t");
    assert!((1..=10).contains(&t), "t={t}");
    assert_eq!(first.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("4"));
    assert_eq!(
        first.header("x-ratelimit-reset"),
        Some(t.to_string().as_str())
    );

    let mut last = first;
    for _ in 0..5 {
        last = get_with(&agent, &s.t.url("/a/x"), &[]);
    }
    assert_eq!(last.status, 429);
    let retry: u64 = last
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        last.json(),
        serde_json::json!({"error": "rate_limited", "policy": "hdr", "retry_after": retry})
    );
    let (_, state) = sf_item(last.header("ratelimit").unwrap());
    assert_eq!(int(&state, "r"), 0);
    assert_eq!(last.header("x-ratelimit-remaining"), Some("0"));
}

#[test]
fn forwarded_for_counts_only_through_trusted_proxies() {
    let limits =
        "  ip:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 2/10s\n    scope: local";
    // No trusted proxies: the header is ignored and every request is 127.0.0.1.
    let s = setup(limits, "    limits: [ip]", "");
    wait_until_in_window(10_000, 0, 7_000);
    let agent = agent();
    let spoofed: Vec<u16> = (0..4)
        .map(|i| {
            get_with(
                &agent,
                &s.t.url("/a/x"),
                &[("x-forwarded-for", &format!("198.51.100.{i}"))],
            )
            .status
        })
        .collect();
    assert_eq!(count(&spoofed, 200), 2, "{spoofed:?}");
    drop(s);
    // Behind a trusted proxy, the address it reports is the client.
    let s = setup(
        limits,
        "    limits: [ip]",
        "trusted_proxies: [127.0.0.1/32]",
    );
    let forwarded: Vec<u16> = (0..4)
        .map(|i| {
            get_with(
                &agent,
                &s.t.url("/a/x"),
                &[("x-forwarded-for", &format!("198.51.100.{i}"))],
            )
            .status
        })
        .collect();
    assert_eq!(forwarded, [200; 4]);
}

#[test]
fn redis_keys_are_namespaced_tagged_and_expire() {
    let s = setup(
        "  fw:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 50/10s\n  tb:\n    key: client_ip\n    algorithm: token_bucket\n    rate: 5/s\n  log:\n    key: [client_ip, method]\n    algorithm: sliding_log\n    rate: 50/10s\n    sync: atomic",
        "    limits: [fw, tb, log]",
        "",
    );
    let agent = agent();
    for _ in 0..3 {
        get_with(&agent, &s.t.url("/a/x"), &[]);
    }
    let keys = wait_for("the sync to write its keys", Duration::from_secs(3), || {
        let out = s._redis.cli(&["--scan"]).unwrap_or_default();
        let keys: Vec<String> = out.lines().map(str::to_string).collect();
        (keys.iter().filter(|k| k.contains(":rl:")).count() >= 3).then_some(keys)
    });
    for key in &keys {
        assert!(key.starts_with("tollgate:"), "{key}");
        let ttl: i64 = s._redis.cli(&["PTTL", key]).unwrap().parse().unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
    for (policy, suffix) in [
        ("fw", ":w10000:"),
        ("tb", ":b200000000x5"),
        ("log", ":l10000"),
    ] {
        assert!(
            keys.iter().any(
                |k| k.starts_with(&format!("tollgate:rl:{{{policy}|127.0.0.1"))
                    && k.contains(suffix)
            ),
            "no {policy} key among {keys:?}"
        );
    }
    assert!(
        keys.iter()
            .any(|k| k == "tollgate:rl:{log|127.0.0.1|GET}:l10000"),
        "{keys:?}"
    );
}

#[test]
fn the_tightest_policy_speaks_and_each_policy_keeps_its_own_status_and_key() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = Tollgate::start(&format!(
        "redis:
  url: {}
upstreams:
  a:
    backends: [{}]
limits:
  loose:
    key: client_ip
    algorithm: fixed_window
    rate: 100/1m
  tight:
    key: path
    algorithm: fixed_window
    rate: 3/1m
    status: 503
  hidden:
    key: client_ip
    algorithm: fixed_window
    rate: 100/1m
    headers: false
routes:
  - prefix: /a
    upstream: a
    limits: [loose, tight]
  - prefix: /b
    upstream: a
    limits: [hidden]
",
        redis.url(),
        stub.address()
    ));
    // Before Redis answers, a global policy decides locally: wait, so every count below is
    // the lease's.
    wait_for("redis up", Duration::from_secs(3), || {
        (t.metric("tollgate_redis_up") == Some(1.0)).then_some(())
    });
    wait_until_in_window(60_000, 0, 50_000);
    let agent = agent();
    // Allowed responses carry the policy with the smallest share left: `tight`.
    for left in (0..3).rev() {
        let r = get_with(&agent, &t.url("/a/x"), &[]);
        assert_eq!(r.status, 200);
        let (name, params) = sf_item(r.header("ratelimit-policy").unwrap());
        assert_eq!(name, "tight");
        assert_eq!(int(&params, "q"), 3);
        assert_eq!(r.header("x-ratelimit-remaining"), Some(&*left.to_string()));
    }
    // `tight` refuses with its own status, and counts each path apart.
    let refused = get_with(&agent, &t.url("/a/x"), &[]);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()["error"], "rate_limited");
    assert_eq!(refused.json()["policy"], "tight");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(get_with(&agent, &t.url("/a/y"), &[]).status, 200);
    // `headers: false` keeps allowed responses free of rate limit fields.
    let quiet = get_with(&agent, &t.url("/b/x"), &[]);
    assert_eq!(quiet.status, 200);
    for name in ["ratelimit-policy", "ratelimit", "x-ratelimit-limit"] {
        assert_eq!(
            quiet.header(name),
            None,
            "{name} on a headers: false policy"
        );
    }
}
