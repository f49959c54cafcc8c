//! What a limit binds: IPv6 clients by their network, IPv4-mapped addresses as IPv4, and
//! cookie and query-parameter keys, through a real proxy and a real redis-server.

mod common;
use common::clock::*;
use common::*;
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";

struct Setup {
    _redis: Redis,
    _stub: Stub,
    t: Tollgate,
}

/// One node, loopback trusted for `X-Forwarded-For`, route `/a` limited by `per_ip`
/// (whose extra lines are `policy`), as in the report.
fn setup(policy: &str, limits: &str) -> Setup {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let config = format!(
        "admin:
  listen: {{admin_listen}}
  token: {TOKEN}
redis:
  url: {}
trusted_proxies: [127.0.0.1/32]
upstreams:
  a:
    backends: [{}]
limits:
  per_ip:
    key: client_ip
    algorithm: fixed_window
    rate: 3/1m
    scope: global
{policy}
{limits}
routes:
  - prefix: /a
    upstream: a
    limits: [per_ip]
  - prefix: /k
    upstream: a
    limits: [by_parts]
",
        redis.url(),
        stub.address()
    );
    let t = Tollgate::start(&config);
    t.wait_redis_up(Duration::from_secs(10));
    Setup {
        _redis: redis,
        _stub: stub,
        t,
    }
}

const NO_PARTS: &str =
    "  by_parts:\n    key: route\n    algorithm: fixed_window\n    rate: 1000/1m";

fn from(s: &Setup, agent: &ureq::Agent, client: &str) -> Reply {
    get_with(agent, &s.t.url("/a/x"), &[("x-forwarded-for", client)])
}

fn admitted(s: &Setup, clients: &[String]) -> Vec<u16> {
    let agent = agent();
    clients.iter().map(|c| from(s, &agent, c).status).collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

fn admin_get(t: &Tollgate, path: &str) -> Reply {
    get_with(
        &agent(),
        &t.admin_url(path),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
}

#[test]
fn a_rotating_ipv6_64_admits_no_more_than_the_limit() {
    let s = setup("", NO_PARTS);
    // The 20 requests must fall in one minute window.
    wait_until_in_window(60_000, 0, 45_000);
    let rotating: Vec<String> = (0x64..0x78)
        .map(|i| format!("2001:db8:1:1::{i:x}"))
        .collect();
    let got = admitted(&s, &rotating);
    assert_eq!(
        count(&got, 200),
        3,
        "20 addresses of one /64 share its limit of 3: {got:?}"
    );
    // The refusal names the network, and so does the admin API.
    let refused = from(&s, &agent(), "2001:db8:1:1:abcd::1");
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.json()["key"],
        "2001:db8:1:1::/64",
        "{}",
        refused.body
    );
    let usage = wait_for("the admissions reported", Duration::from_secs(3), || {
        let u = admin_get(&s.t, "/admin/limits/per_ip/2001:db8:1:1::%2F64").json();
        (u["used"].as_u64() == Some(3)).then_some(u)
    });
    assert_eq!(usage["key"], "2001:db8:1:1::/64", "{usage}");
    // Any address in the network names it too.
    let by_address = admin_get(&s.t, "/admin/limits/per_ip/2001:db8:1:1::99").json();
    assert_eq!(by_address["used"], 3, "{by_address}");
    // The decision log names the network the client was limited as.
    wait_for("the refusal to be logged", Duration::from_secs(5), || {
        let logs = admin_get(&s.t, "/admin/logs?client=2001:db8:1:1:abcd::1").json();
        (logs["entries"][0]["network"] == "2001:db8:1:1::/64").then_some(())
    });
    // The neighbouring /64 is another client.
    let next: Vec<String> = (0..3).map(|i| format!("2001:db8:1:2::{i}")).collect();
    assert_eq!(admitted(&s, &next), [200; 3]);
    // IPv4 clients are still one address each.
    let v4: Vec<String> = (1..=4).map(|i| format!("198.51.100.{i}")).collect();
    assert_eq!(admitted(&s, &v4), [200; 4]);
}

#[test]
fn ipv6_prefix_56_joins_two_64s_and_mapped_addresses_join_their_ipv4() {
    let s = setup("    ipv6_prefix: 56", NO_PARTS);
    wait_until_in_window(60_000, 0, 45_000);
    // Two /64s of one /56: one client.
    let clients: Vec<String> = ["2001:db8:0:100::1", "2001:db8:0:1ff::2"]
        .iter()
        .cycle()
        .take(5)
        .map(|c| c.to_string())
        .collect();
    let got = admitted(&s, &clients);
    assert_eq!(count(&got, 200), 3, "one /56, one limit: {got:?}");
    let refused = from(&s, &agent(), "2001:db8:0:1aa::9");
    assert_eq!(
        refused.json()["key"],
        "2001:db8:0:100::/56",
        "{}",
        refused.body
    );
    // Another /56 is another client.
    assert_eq!(from(&s, &agent(), "2001:db8:0:200::1").status, 200);

    // An IPv4-mapped IPv6 address is its IPv4 address.
    let mixed: Vec<String> = ["203.0.113.9", "::ffff:203.0.113.9"]
        .iter()
        .cycle()
        .take(5)
        .map(|c| c.to_string())
        .collect();
    let got = admitted(&s, &mixed);
    assert_eq!(count(&got, 200), 3, "mapped joins its IPv4: {got:?}");
    let refused = from(&s, &agent(), "::ffff:203.0.113.9");
    assert_eq!(refused.json()["key"], "203.0.113.9", "{}", refused.body);
}

#[test]
fn prefixes_out_of_range_are_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "upstreams:
  a:
    backends: [127.0.0.1:9]
limits:
  per_ip:
    key: client_ip
    algorithm: fixed_window
    rate: 3/1m
    scope: local
    ipv6_prefix: 16
    ipv4_prefix: 33
routes:
  - prefix: /a
    upstream: a
    limits: [per_ip]
",
    )
    .unwrap();
    let out = std::process::Command::new(tollgate_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    for (key, line) in [
        ("limits.per_ip.ipv6_prefix", 10),
        ("limits.per_ip.ipv4_prefix", 11),
    ] {
        assert!(text.contains(key), "{key} named: {text}");
        assert!(
            text.contains(&format!(":{line}:")) || text.contains(&format!("line {line}")),
            "{key} located at line {line}: {text}"
        );
    }
}

#[test]
fn cookie_and_query_parts_key_requests_alone_and_in_composites() {
    let parts = "  by_parts:
    key: [cookie:session, query:user]
    algorithm: fixed_window
    rate: 2/1m
    scope: local";
    let s = setup("", parts);
    wait_until_in_window(60_000, 0, 50_000);
    let agent = agent();
    let send = |cookie: &str, query: &str| {
        get_with(
            &agent,
            &s.t.url(&format!("/k/x?{query}")),
            &[("cookie", cookie)],
        )
    };
    // One session and user: two, however the user is spelled.
    let got: Vec<u16> = ["user=alice", "other=1&user=al%69ce", "user=alice"]
        .iter()
        .map(|q| send("theme=dark; session=s-1", q).status)
        .collect();
    assert_eq!(got, [200, 200, 429], "one cookie and user share a limit");
    let refused = send("session=s-1", "user=alice");
    assert_eq!(refused.json()["key"], "s-1|alice", "{}", refused.body);
    // Another session, or another user, is another key.
    assert_eq!(send("session=s-2", "user=alice").status, 200);
    assert_eq!(send("session=s-1", "user=bob").status, 200);
    // Without the cookie, requests share the missing-value bucket: leaving it out does
    // not dodge the limit.
    let bare: Vec<u16> = (0..3)
        .map(|_| send("theme=dark", "user=carol").status)
        .collect();
    assert_eq!(bare, [200, 200, 429]);
}
