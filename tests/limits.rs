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
    t.wait_redis_up(Duration::from_secs(3));
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
        "  sw:\n    key: [client_ip, header:x-user]\n    algorithm: sliding_window\n    rate: 20/1s",
        "    limits: [sw]",
        "",
    );
    // Two bursts of 25, the first late in one window and the second early in the next.
    // Each must stay inside the part of the window it is for, which a machine busy with
    // builds cannot always manage in 150 ms: an attempt whose burst ran over is not judged,
    // and the next one starts over with a key of its own.
    for attempt in 0..5 {
        let user = format!("user-{attempt}");
        let headers = [("x-user", user.as_str())];
        // Warm the key up so both bursts use synced leases, then wait for a quiet window.
        statuses(&s.t, 1, &headers);
        wait_until_in_window(1_000, 2, 30);
        wait_until_in_window(1_000, 850, 870);
        let window = now_ms() / 1_000;
        let late = statuses(&s.t, 25, &headers);
        if now_ms() / 1_000 != window {
            eprintln!("attempt {attempt}: the late burst ran into the next window; again");
            continue;
        }
        wait_until_in_window(1_000, 20, 60);
        let next = now_ms() / 1_000;
        let early = statuses(&s.t, 25, &headers);
        let ended = now_ms();
        if next != window + 1 || ended / 1_000 != next {
            eprintln!("attempt {attempt}: the early burst missed its window; again");
            continue;
        }
        let (late_ok, early_ok) = (count(&late, 200), count(&early, 200));
        assert!(
            (15..=20).contains(&late_ok),
            "late burst admitted {late_ok}"
        );
        // A fixed window would admit 20 + 20 here. The sliding estimate weighs the late
        // burst by the part of the new window still to come: at `into` ms in, it leaves room
        // for 20 − late × (1000 − into) / 1000, plus one for rounding. The burst's end
        // bounds `into`: on an idle machine the room is 2 or 3.
        let into = ended % 1_000;
        let room = (20_000 - late_ok as u64 * (1_000 - into)).div_ceil(1_000) + 1;
        if room > 10 {
            eprintln!("attempt {attempt}: the early burst ran to {into} ms; again");
            continue;
        }
        assert!(
            early_ok as u64 <= room,
            "early burst admitted {early_ok} after {late_ok}, ending {into} ms into the window (room for {room})"
        );
        return;
    }
    panic!("in 5 attempts, no pair of bursts fitted the parts of the windows they are for");
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
        serde_json::json!({"error": "rate_limited", "policy": "hdr", "key": "127.0.0.1", "retry_after": retry})
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
    for (policy, suffix) in [("fw", ":w10000:"), ("tb", ":b:v2"), ("log", ":l10000")] {
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
    t.wait_redis_up(Duration::from_secs(3));
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

#[test]
fn the_redis_url_can_come_from_the_environment() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let config = "redis:
  url: ${TG_TEST_REDIS_URL}
  sync_interval: ${TG_TEST_SYNC:-50ms}
upstreams:
  a:
    backends: [\"${TG_TEST_BACKEND}\"]
limits:
  fw:
    key: client_ip
    algorithm: fixed_window
    rate: 3/10s
routes:
  - prefix: /a
    upstream: a
    limits: [fw]
";
    let t = Tollgate::start_with_env(
        config,
        &[
            ("TG_TEST_REDIS_URL", &redis.url()),
            ("TG_TEST_BACKEND", &stub.address()),
        ],
    );
    t.wait_redis_up(Duration::from_secs(3));
    wait_until_in_window(10_000, 0, 7_000);
    assert_eq!(count(&statuses(&t, 5, &[]), 200), 3);
    let shown = get(&t.admin_url("/admin/config")).json();
    assert_eq!(
        shown["config"]["redis"]["url"],
        redis.url().as_str(),
        "{shown}"
    );
    assert_eq!(shown["config"]["redis"]["sync_interval"], "50ms", "{shown}");
}

#[test]
fn a_refused_request_consumes_nothing_from_the_routes_other_policies() {
    // `wide` (10/30s) then `tight` (2/30s), both per client: six requests, two admitted,
    // and `wide` counts those two only, in every mode.
    for (scope, sync) in [
        ("local", "async"),
        ("global", "async"),
        ("global", "atomic"),
    ] {
        let limits = format!(
            "  wide:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 10/30s\n    scope: {scope}\n    sync: {sync}\n  tight:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 2/30s\n    scope: {scope}\n    sync: {sync}"
        );
        let s = setup(&limits, "    limits: [wide, tight]", "");
        wait_until_in_window(30_000, 0, 25_000);
        let got = statuses(&s.t, 6, &[]);
        assert_eq!(count(&got, 200), 2, "{scope}/{sync}: {got:?}");
        let used = |policy: &str| {
            let usage = get(&s.t.admin_url(&format!("/admin/limits/{policy}/127.0.0.1"))).json();
            usage["used"].as_u64().unwrap_or(u64::MAX)
        };
        // A global count reaches Redis with the next sync.
        let wide = wait_for("wide's count", Duration::from_secs(3), || {
            let n = used("wide");
            (n == 2).then_some(n)
        });
        eprintln!(
            "{scope}/{sync}: six requests, two admitted; wide used {wide}, tight used {}",
            used("tight")
        );
        assert_eq!(used("tight"), 2, "{scope}/{sync}");
    }
}

#[test]
fn count_status_counts_only_the_responses_it_names() {
    // Failed logins per client: 200s pass without counting, and after three 401s the
    // client is refused, in every mode.
    for (scope, sync) in [
        ("local", "async"),
        ("global", "async"),
        ("global", "atomic"),
    ] {
        let limits = format!(
            "  logins:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 3/30s\n    scope: {scope}\n    sync: {sync}\n    count_status: [401, 403]"
        );
        let s = setup(&limits, "    limits: [logins]", "");
        wait_until_in_window(30_000, 0, 25_000);
        let ok = statuses(&s.t, 10, &[]);
        assert_eq!(ok, [200; 10], "{scope}/{sync}: 200s do not count");
        let failed = statuses(&s.t, 5, &[("x-stub-status", "401")]);
        assert_eq!(
            failed,
            [401, 401, 401, 429, 429],
            "{scope}/{sync}: three 401s, then refused"
        );
        // Refused now, whatever the response would have been.
        assert_eq!(statuses(&s.t, 1, &[]), [429], "{scope}/{sync}");
        eprintln!("{scope}/{sync}: 10 × 200 uncounted, then {failed:?}");
    }
}

#[test]
fn exempt_clients_are_never_refused_and_still_counted() {
    let limits = "  ip:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 2/10s\n    exempt: [10.9.0.0/16, \"tenant:ops\"]";
    let extra = "trusted_proxies: [127.0.0.1/32]\napi_keys:\n  keys:\n    ops-secret-key: { tenant: ops }\n    acme-secret-key: { tenant: acme }";
    let s = setup(limits, "    limits: [ip]", extra);
    wait_until_in_window(10_000, 0, 7_000);
    let exempt = statuses(&s.t, 6, &[("x-forwarded-for", "10.9.4.4")]);
    assert_eq!(exempt, [200; 6], "an exempt range");
    let by_tenant = statuses(
        &s.t,
        6,
        &[
            ("x-forwarded-for", "192.0.2.7"),
            ("x-api-key", "ops-secret-key"),
        ],
    );
    assert_eq!(by_tenant, [200; 6], "an exempt tenant");
    let other = statuses(
        &s.t,
        4,
        &[
            ("x-forwarded-for", "192.0.2.8"),
            ("x-api-key", "acme-secret-key"),
        ],
    );
    assert_eq!(count(&other, 200), 2, "everyone else is limited: {other:?}");
    assert_eq!(
        s.t.metric(r#"tollgate_ratelimit_decisions_total{policy="ip",result="exempt"}"#),
        Some(12.0)
    );
    // An exemption that is not an address, key:ID or tenant:NAME is a located error.
    let (code, _, stderr) = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.yaml");
        std::fs::write(
            &path,
            "upstreams:\n  a:\n    backends: [127.0.0.1:1]\nlimits:\n  ip:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 2/10s\n    scope: local\n    exempt: [key:nothex]\nroutes:\n  - prefix: /a\n    upstream: a\n    limits: [ip]\n",
        )
        .unwrap();
        let out = std::process::Command::new(tollgate_bin())
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::new(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(2));
    assert!(stderr.contains("a key id is the 16 hex digits"), "{stderr}");
}

#[test]
fn block_for_keeps_a_refused_key_out_beyond_its_window_on_every_node() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let config = format!(
        "redis:\n  url: {}\n  sync_interval: 50ms\ntrusted_proxies: [127.0.0.1/32]\nupstreams:\n  a:\n    backends: [{}]\nlimits:\n  strict:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 2/1s\n    block_for: 3s\nroutes:\n  - prefix: /a\n    upstream: a\n    limits: [strict]\n",
        redis.url(),
        stub.address()
    );
    let (one, two) = (Tollgate::start(&config), Tollgate::start(&config));
    wait_for("both nodes on redis", Duration::from_secs(5), || {
        [&one, &two]
            .iter()
            .all(|n| n.metric("tollgate_redis_nodes") == Some(2.0))
            .then_some(())
    });
    let agent = agent();
    let client = [("x-forwarded-for", "198.51.100.77")];
    let ask = |node: &Tollgate| get_with(&agent, &node.url("/a/x"), &client);
    wait_until_in_window(1_000, 0, 500);
    let first: Vec<u16> = (0..3).map(|_| ask(&one).status).collect();
    assert_eq!(first, [200, 200, 429]);
    let blocked_at = Instant::now();
    // The other node refuses the key within a heartbeat or two.
    wait_for(
        "the block on the other node",
        Duration::from_secs(2),
        || (ask(&two).status == 429).then_some(()),
    );
    // A new window does not lift it, and Retry-After counts to the block's end.
    wait_for_window_start(1_000);
    let refused = ask(&one);
    assert_eq!(refused.status, 429, "blocked past its window");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    let left = 3 - blocked_at.elapsed().as_secs().min(3);
    assert!(
        retry >= left && retry <= 3,
        "Retry-After {retry}, block ends in {left}s"
    );
    // Another client is not blocked.
    let other = get_with(
        &agent,
        &one.url("/a/x"),
        &[("x-forwarded-for", "198.51.100.78")],
    );
    assert_eq!(other.status, 200);
    // Once it has run out, the key is back on both nodes.
    let lifted = wait_for("the block to end", Duration::from_secs(5), || {
        (ask(&one).status == 200).then_some(blocked_at.elapsed())
    });
    assert!(
        lifted >= Duration::from_millis(2_900),
        "lifted after {lifted:?}"
    );
    // The other node lifts it too. Asked without requests: a request refused there for want
    // of quota (the first node may hold this window's reservation) would rightly block again.
    let inspect = |node: &Tollgate| {
        get_with(
            &agent,
            &node.admin_url("/admin/limits/strict/198.51.100.77"),
            &[],
        )
    };
    wait_for(
        "the block to end everywhere",
        Duration::from_secs(2),
        || (!inspect(&two).body.contains("blocked_until_ms")).then_some(()),
    );
    assert!(
        inspect(&one).status == 200 && !inspect(&one).body.contains("blocked_until_ms"),
        "{}",
        inspect(&one).body
    );
    wait_for_window_start(1_000);
    assert_eq!(ask(&two).status, 200, "the other node admits the key again");
    eprintln!("blocked for 3s on both nodes; lifted after {lifted:?}");
}

#[test]
fn on_limit_delay_spaces_requests_by_the_rate_and_refuses_past_max_delay() {
    for scope in ["local", "global"] {
        let limits = format!("  paced:\n    key: client_ip\n    algorithm: token_bucket\n    rate: 10/s\n    burst: 1\n    scope: {scope}\n    on_limit: delay\n    max_delay: 500ms");
        let s = setup(&limits, "    limits: [paced]", "");
        let agent = agent();
        // Sequential requests over the rate all pass, about one per 100 ms.
        let started = Instant::now();
        let sequential: Vec<u16> = (0..6)
            .map(|_| get_with(&agent, &s.t.url("/a/x"), &[]).status)
            .collect();
        let took = started.elapsed();
        assert_eq!(sequential, [200; 6], "{scope}");
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_millis(1_500),
            "{scope}: six requests at 10/s took {took:?}"
        );
        // A burst that would need more than 500 ms of waiting: the tail is refused.
        std::thread::sleep(Duration::from_millis(200));
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let url = s.t.url("/a/x");
                std::thread::spawn(move || get_with(&common::agent(), &url, &[]).status)
            })
            .collect();
        let burst: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let (passed, refused) = (count(&burst, 200), count(&burst, 429));
        eprintln!("{scope}: six sequential in {took:?}; a burst of 20: {passed} passed, {refused} refused");
        assert_eq!(passed + refused, 20, "{scope}: {burst:?}");
        assert!((3..=8).contains(&passed), "{scope}: {burst:?}");
        let delayed =
            s.t.metric(r#"tollgate_ratelimit_delayed_total{policy="paced"}"#)
                .unwrap_or(0.0);
        assert!(delayed >= 5.0, "{scope}: {delayed} delayed");
    }
}

/// Seconds from `now_ms` to `boundary_ms`, as a header counts them (rounded up).
fn seconds_until(boundary_ms: u64, now_ms: u64) -> i64 {
    boundary_ms.saturating_sub(now_ms).div_ceil(1000) as i64
}

/// The `t=` parameter of a `RateLimit` field.
fn ratelimit_t(field: &str) -> i64 {
    field
        .split(';')
        .find_map(|p| p.trim().strip_prefix("t="))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no t= in {field}"))
}

/// Asserts that a refused reply counts to `boundary_ms` (give or take the second the
/// request took) in `Retry-After`, `X-RateLimit-Reset` and `RateLimit`'s `t`.
fn assert_counts_to(reply: &Reply, boundary_ms: u64, sent_ms: u64, what: &str) {
    assert_eq!(reply.status, 429, "{what}");
    let expected = seconds_until(boundary_ms, sent_ms);
    let header = |name: &str| -> i64 {
        reply
            .header(name)
            .unwrap_or_else(|| panic!("{what}: no {name}"))
            .parse()
            .unwrap_or_else(|_| panic!("{what}: {name} is not a number"))
    };
    let t = ratelimit_t(reply.header("ratelimit").unwrap_or_default());
    for (name, got) in [
        ("Retry-After", header("retry-after")),
        ("X-RateLimit-Reset", header("x-ratelimit-reset")),
        ("RateLimit t", t),
    ] {
        assert!(
            (got - expected).abs() <= 1,
            "{what}: {name} is {got}, the boundary is {expected} s away"
        );
    }
}

#[test]
fn a_daily_quota_refuses_until_the_next_utc_midnight() {
    const DAY: u64 = 86_400_000;
    // A request sent in the last seconds of a day would see the next one begin.
    wait_until_in_window(DAY, 0, DAY - 10_000);
    for sync in ["async", "atomic"] {
        let s = setup(
            &format!("  daily:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 3/1d\n    sync: {sync}"),
            "    limits: [daily]",
            "",
        );
        let agent = agent();
        let got: Vec<u16> = (0..3)
            .map(|_| get_with(&agent, &s.t.url("/a/x"), &[]).status)
            .collect();
        assert_eq!(got, [200; 3], "{sync}");
        let sent = now_ms();
        let refused = get_with(&agent, &s.t.url("/a/x"), &[]);
        let midnight = (sent / DAY + 1) * DAY;
        assert_counts_to(&refused, midnight, sent, sync);
        assert!(
            refused
                .header("ratelimit-policy")
                .is_some_and(|p| p.contains("q=3;w=86400")),
            "{sync}: {:?}",
            refused.header("ratelimit-policy")
        );
        let usage = get(&s.t.admin_url("/admin/limits/daily/127.0.0.1")).json();
        assert_eq!(usage["used"], 3, "{sync}: {usage}");
        assert_eq!(usage["period"], "1d", "{usage}");
        assert_eq!(usage["window_end_ms"], midnight, "{usage}");
        assert_eq!(usage["window_start_ms"], midnight - DAY, "{usage}");
    }
}

/// Unix ms of the first instant of the month after the one `now_ms` is in, at a fixed
/// offset from UTC (computed apart from the time zone database tollgate uses).
fn next_month_at_offset(now_ms: u64, offset_hours: i32) -> (u64, u64) {
    use chrono::{Datelike, NaiveDate};
    let offset_ms = offset_hours as i64 * 3_600_000;
    let local = chrono::DateTime::from_timestamp_millis(now_ms as i64 + offset_ms)
        .unwrap()
        .date_naive();
    let first = NaiveDate::from_ymd_opt(local.year(), local.month(), 1).unwrap();
    let next = if local.month() == 12 {
        NaiveDate::from_ymd_opt(local.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(local.year(), local.month() + 1, 1)
    }
    .unwrap();
    let at = |d: NaiveDate| {
        (d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis() - offset_ms) as u64
    };
    (at(first), at(next))
}

#[test]
fn a_monthly_quota_in_a_time_zone_counts_to_the_first_local_midnight() {
    let s = setup(
        "  monthly:\n    key: client_ip\n    algorithm: sliding_window\n    rate: 2/1mo\n    timezone: Asia/Tokyo\n    sync: atomic",
        "    limits: [monthly]",
        "",
    );
    let agent = agent();
    let got: Vec<u16> = (0..2)
        .map(|_| get_with(&agent, &s.t.url("/a/x"), &[]).status)
        .collect();
    assert_eq!(got, [200; 2]);
    let sent = now_ms();
    let refused = get_with(&agent, &s.t.url("/a/x"), &[]);
    // Tokyo keeps +09:00 all year.
    let (start, end) = next_month_at_offset(sent, 9);
    if end - sent < 5_000 {
        return; // the month turned over in Tokyo during the test
    }
    // Nothing came before this month, so only this month's count matters and the
    // quota is whole again when it ends.
    let expected_reset = seconds_until(end, sent);
    let reset: i64 = refused
        .header("x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (reset - expected_reset).abs() <= 1,
        "reset {reset}, the 1st is {expected_reset} s away"
    );
    assert_eq!(refused.status, 429);
    let usage = get(&s.t.admin_url("/admin/limits/monthly/127.0.0.1")).json();
    assert_eq!(usage["used"], 2, "{usage}");
    assert_eq!(usage["period"], "1mo", "{usage}");
    assert_eq!(usage["timezone"], "Asia/Tokyo", "{usage}");
    assert_eq!(usage["window_start_ms"], start, "{usage}");
    assert_eq!(usage["window_end_ms"], end, "{usage}");
    assert_eq!(usage["window_ms"], end - start, "{usage}");
}

#[test]
fn calendar_usage_survives_a_reload_and_a_restart() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let config = |rate: &str| {
        format!(
            "redis:
  url: {}
upstreams:
  a:
    backends: [{}]
limits:
  monthly_async:
    key: client_ip
    algorithm: fixed_window
    rate: {rate}
    timezone: America/New_York
  monthly_atomic:
    key: client_ip
    algorithm: fixed_window
    rate: {rate}
    timezone: America/New_York
    sync: atomic
routes:
  - prefix: /a
    upstream: a
    limits: [monthly_async, monthly_atomic]
",
            redis.url(),
            stub.address()
        )
    };
    let used = |t: &Tollgate, policy: &str| {
        get(&t.admin_url(&format!("/admin/limits/{policy}/127.0.0.1"))).json()["used"].clone()
    };
    let both_used = |t: &Tollgate, n: u64| {
        wait_for(
            &format!("both policies report {n} used"),
            Duration::from_secs(3),
            || (used(t, "monthly_async") == n && used(t, "monthly_atomic") == n).then_some(()),
        )
    };
    let mut t = Tollgate::start(&config("5/1mo"));
    t.wait_redis_up(Duration::from_secs(3));
    assert_eq!(statuses(&t, 3, &[]), [200; 3]);
    both_used(&t, 3);
    // A stopped node flushes what it admitted and hands back what it reserved; the next
    // one reads the period's count back from Redis.
    t.signal(libc::SIGTERM);
    assert!(
        t.wait_exit(Duration::from_secs(10)).is_some(),
        "tollgate did not stop"
    );
    drop(t);
    let t = Tollgate::start(&config("5/1mo"));
    t.wait_redis_up(Duration::from_secs(3));
    both_used(&t, 3);
    // A reload that changes the quota keeps the period's count.
    t.write_config(&config("6/1mo"));
    wait_for("the reload", Duration::from_secs(3), || {
        (get(&t.admin_url("/admin/config")).json()["config"]["limits"]["monthly_async"]["rate"]
            == "6/1mo")
            .then_some(())
    });
    both_used(&t, 3);
    assert_eq!(
        statuses(&t, 4, &[]),
        [200, 200, 200, 429],
        "3 of 6 were left"
    );
    both_used(&t, 6);
    // Redis keeps the month's counts at least to its end (a sliding window would weigh
    // them through the next month too).
    let usage = get(&t.admin_url("/admin/limits/monthly_atomic/127.0.0.1")).json();
    let left_ms = usage["window_end_ms"].as_u64().unwrap() - now_ms();
    let keys = redis
        .cli(&["KEYS", "*cmo@America/New_York*"])
        .unwrap_or_default();
    assert_eq!(keys.lines().count(), 2, "{keys}");
    for key in keys.lines() {
        let ttl: u64 = redis.cli(&["PTTL", key]).unwrap().trim().parse().unwrap();
        assert!(
            ttl > left_ms,
            "{key}: PTTL {ttl} ms, the month ends in {left_ms} ms"
        );
    }
}
