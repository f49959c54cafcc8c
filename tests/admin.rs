//! The admin API: the token, every route, keys shared by a fleet, per-client logs, live
//! events, and the admin listener's own rate limit.

mod common;
use common::clock::*;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";

fn config(redis: &Redis, stub: &Stub, extra: &str) -> String {
    format!(
        "admin:
  listen: {{admin_listen}}
  token: {TOKEN}
  rate_limit: 200/1s
redis:
  url: {}
api_keys:
  header: X-API-Key
  keys:
    config-key-000001: {{ tenant: cfg, tier: free }}
upstreams:
  a:
    backends: [{}]
limits:
  per_client:
    key: client_ip
    algorithm: fixed_window
    rate: 5/1m
  per_tenant:
    key: tenant
    algorithm: fixed_window
    rate: 100/1m
    tiers:
      pro: {{ rate: 3/1m }}
routes:
  - prefix: /a
    upstream: a
    limits: [per_client]
  - prefix: /k
    upstream: a
    require_api_key: true
    limits: [per_tenant]
{extra}",
        redis.url(),
        stub.address()
    )
}

/// Starts a node and waits until it reaches Redis: before that a global policy fails
/// open on the node's local share, so counted outcomes would depend on start-up timing.
fn start_connected(body: &str) -> Tollgate {
    let t = Tollgate::start(body);
    t.wait_redis_up(Duration::from_secs(10));
    t
}

fn auth() -> [(&'static str, String); 1] {
    [("authorization", format!("Bearer {TOKEN}"))]
}

fn admin_get(t: &Tollgate, path: &str) -> Reply {
    let h = auth();
    get_with(&agent(), &t.admin_url(path), &[(h[0].0, h[0].1.as_str())])
}

fn admin_send(t: &Tollgate, method: &str, path: &str, body: &str) -> Reply {
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(t.admin_url(path))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .unwrap();
    let resp = agent().run(req).unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().read_to_string().unwrap_or_default();
    Reply {
        status,
        headers: Default::default(),
        body,
    }
}

#[test]
fn every_admin_route_needs_the_token() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = Tollgate::start(&config(&redis, &stub, ""));
    let routes = [
        ("GET", "/admin/config"),
        ("POST", "/admin/reload"),
        ("POST", "/admin/check"),
        ("GET", "/admin/stats"),
        ("GET", "/admin/limits/per_client/127.0.0.1"),
        ("DELETE", "/admin/limits/per_client/127.0.0.1"),
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("DELETE", "/admin/keys/abc"),
        ("GET", "/admin/logs?client=127.0.0.1"),
        ("GET", "/admin/events"),
        ("GET", "/admin/openapi.json"),
        ("GET", "/admin/docs"),
    ];
    for (method, path) in routes {
        let r = send(&agent(), method, &t.admin_url(path), "");
        assert_eq!(r.status, 401, "{method} {path}: {}", r.body);
        assert_eq!(r.json()["error"], "unauthorized");
        let wrong = get_with(
            &agent(),
            &t.admin_url(path),
            &[("authorization", "Bearer nope")],
        );
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
    }
    assert_eq!(admin_get(&t, "/admin/config").status, 200);
    // In the URL the token is taken only by the event stream (tests/admin_origin.rs).
    let in_url = get(&t.admin_url(&format!("/admin/stats?access_token={TOKEN}")));
    assert_eq!(in_url.status, 400, "{}", in_url.body);
    assert_eq!(in_url.json()["error"], "token_in_url");
    // Metrics, health and the dashboard page itself are open (the page asks for the token).
    assert_eq!(get(&t.admin_url("/metrics")).status, 200);
    assert_eq!(get(&t.admin_url("/health")).status, 200);
    let page = get(&t.admin_url("/"));
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    // No other site may frame it and overlay its buttons (clickjacking).
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(
        page.header("content-security-policy"),
        Some("frame-ancestors 'none'")
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
}

#[test]
fn the_admin_token_can_come_from_the_environment() {
    let stub = Stub::start("a");
    let body = format!(
        "admin:\n  listen: {{admin_listen}}\nupstreams:\n  a:\n    backends: [{}]\nroutes:\n  - prefix: /a\n    upstream: a\n",
        stub.address()
    );
    let t = Tollgate::start_with_env(&body, &[("TOLLGATE_ADMIN_TOKEN", "from-the-env-42")]);
    assert_eq!(get(&t.admin_url("/admin/config")).status, 401);
    let wrong = get_with(
        &agent(),
        &t.admin_url("/admin/config"),
        &[("authorization", "Bearer from-the-env-43")],
    );
    assert_eq!(wrong.status, 401);
    let right = get_with(
        &agent(),
        &t.admin_url("/admin/config"),
        &[("authorization", "Bearer from-the-env-42")],
    );
    assert_eq!(right.status, 200, "{}", right.body);
    assert!(
        !right.body.contains("from-the-env-42"),
        "the token is shown"
    );
}

#[test]
fn a_public_admin_listener_refuses_to_start_without_a_token() {
    let stub = Stub::start("a");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:{}\nadmin:\n  listen: 0.0.0.0:{}\nupstreams:\n  a:\n    backends: [{}]\nroutes:\n  - prefix: /a\n    upstream: a\n",
            free_port(),
            free_port(),
            stub.address()
        ),
    )
    .unwrap();
    let out = output_within(
        std::process::Command::new(tollgate_bin())
            .args(["run", "-c"])
            .arg(&path)
            .env_remove("TOLLGATE_ADMIN_TOKEN"),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin.listen") && stderr.contains("needs a token"),
        "{stderr}"
    );
}

#[test]
fn config_is_shown_with_secrets_redacted() {
    let redis = Redis::start_with(&["--requirepass", "s3cret-pass"]);
    let stub = Stub::start("a");
    let url = format!("redis://:s3cret-pass@127.0.0.1:{}", redis.port);
    let t = Tollgate::start(&config(&redis, &stub, "").replace(&redis.url(), &url));
    let r = admin_get(&t, "/admin/config");
    assert_eq!(r.status, 200);
    let text = r.body.clone();
    for secret in ["s3cret-pass", TOKEN, "config-key-000001"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let json = r.json();
    assert_eq!(json["config"]["admin"]["token"], "***");
    assert_eq!(json["config"]["api_keys"]["keys"][0]["tenant"], "cfg");
    assert_eq!(json["reload"]["result"], "ok");
    assert!(json["source"].as_str().unwrap().ends_with("config.yaml"));
    // Password auth works end to end.
    t.wait_redis_up(Duration::from_secs(3));
}

#[test]
fn check_decides_without_proxying_and_dry_runs_consume_nothing() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = start_connected(&config(&redis, &stub, ""));
    wait_until_in_window(60_000, 0, 50_000);
    let req = r#"{"path": "/a/x", "client_ip": "203.0.113.5", "dry_run": true}"#;
    for _ in 0..3 {
        let r = admin_send(&t, "POST", "/admin/check", req);
        assert_eq!(r.status, 200, "{}", r.body);
        let j = r.json();
        assert_eq!(j["allowed"], true);
        assert_eq!(
            j["decisions"][0]["remaining"], 4,
            "a dry run leaves the count alone"
        );
    }
    let real = r#"{"path": "/a/x", "client_ip": "203.0.113.5"}"#;
    let mut last = serde_json::Value::Null;
    for _ in 0..6 {
        last = admin_send(&t, "POST", "/admin/check", real).json();
    }
    assert_eq!(last["allowed"], false);
    assert_eq!(last["status"], 429);
    assert!(last["headers"]["retry-after"].as_str().is_some());
    // A key-protected route without a key.
    let r = admin_send(&t, "POST", "/admin/check", r#"{"route": "/k"}"#).json();
    assert_eq!(
        (r["allowed"].clone(), r["status"].clone()),
        (serde_json::json!(false), serde_json::json!(401))
    );
    // An API key (given as such, or among the headers) picks the tenant to count, and a
    // cost takes that many units.
    let r = admin_send(
        &t,
        "POST",
        "/admin/check",
        r#"{"route": "/k", "api_key": "config-key-000001", "cost": 7}"#,
    )
    .json();
    assert_eq!(r["allowed"], true, "{r}");
    let d = &r["decisions"][0];
    assert_eq!(
        (
            &d["policy"],
            &d["key"],
            &d["tier"],
            &d["cost"],
            &d["remaining"]
        ),
        (
            &serde_json::json!("per_tenant"),
            &serde_json::json!("cfg"),
            &serde_json::json!(null),
            &serde_json::json!(7),
            &serde_json::json!(93)
        ),
        "{r}"
    );
    let r = admin_send(
        &t,
        "POST",
        "/admin/check",
        r#"{"path": "/k/x", "headers": {"X-API-Key": "config-key-000001"}, "cost": 3}"#,
    )
    .json();
    assert_eq!(r["decisions"][0]["remaining"], 90, "{r}");
    // A cost beyond the policy's whole quota is refused, as the proxy refuses it.
    let r = admin_send(
        &t,
        "POST",
        "/admin/check",
        r#"{"route": "/k", "api_key": "config-key-000001", "cost": 101}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("quota"), "{}", r.body);
    // Bad input gets a clear error.
    let bad = admin_send(
        &t,
        "POST",
        "/admin/check",
        r#"{"path": "/a/x", "client_ip": "nope"}"#,
    );
    assert_eq!(bad.status, 400);
    let bad = admin_send(&t, "POST", "/admin/check", "not json");
    assert_eq!(bad.status, 400);
    assert_eq!(
        admin_send(&t, "POST", "/admin/check", r#"{"path": "/zzz"}"#).status,
        404
    );
}

#[test]
fn check_routes_by_host_and_method_like_the_proxy() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let extra = "  - prefix: /a
    host: '*.example.com'
    methods: [POST]
    upstream: a
";
    let t = start_connected(&config(&redis, &stub, extra));
    let r = admin_send(
        &t,
        "POST",
        "/admin/check",
        r#"{"path": "/a/x", "host": "WWW.example.com:443", "method": "post", "dry_run": true}"#,
    )
    .json();
    assert_eq!(
        (&r["route"], &r["allowed"]),
        (
            &serde_json::json!("*.example.com/a"),
            &serde_json::json!(true)
        ),
        "{r}"
    );
    let r = admin_send(
        &t,
        "POST",
        "/admin/check",
        r#"{"path": "/a/x", "host": "www.example.com", "dry_run": true}"#,
    )
    .json();
    assert_eq!(r["status"], 405, "{r}");
    assert_eq!(r["allow"], "POST", "{r}");
    // Without a host the routes without one apply.
    let r = admin_send(
        &t,
        "POST",
        "/admin/check",
        r#"{"path": "/a/x", "dry_run": true}"#,
    )
    .json();
    assert_eq!(r["route"], "/a", "{r}");
}

#[test]
fn limits_show_usage_and_reset_fleet_wide() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let body = config(&redis, &stub, "");
    let one = start_connected(&body);
    let two = start_connected(&body);
    wait_for("each node to see the other", Duration::from_secs(5), || {
        [&one, &two]
            .iter()
            .all(|n| n.metric("tollgate_redis_nodes") == Some(2.0))
            .then_some(())
    });
    wait_until_in_window(60_000, 0, 50_000);
    let agent = agent();
    // The second node spends the whole limit; the first reads it and resets it.
    let statuses: Vec<u16> = (0..5)
        .map(|_| get_with(&agent, &two.url("/a/x"), &[]).status)
        .collect();
    assert_eq!(statuses, [200; 5]);
    assert_eq!(get_with(&agent, &two.url("/a/x"), &[]).status, 429);
    // A node reports what it admitted within a sync.
    let usage = wait_for("the admissions reported", Duration::from_secs(2), || {
        let u = admin_get(&one, "/admin/limits/per_client/127.0.0.1").json();
        (u["window"]["current"].as_u64() == Some(5)).then_some(u)
    });
    assert_eq!(usage["source"], "redis");
    assert_eq!(usage["limit"], 5);
    assert_eq!(usage["remaining"], 0, "{usage}");
    assert_eq!(usage["used"], 5, "{usage}");

    let r = admin_send(&one, "DELETE", "/admin/limits/per_client/127.0.0.1", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["scope"], "fleet");
    // The node that spent the limit drops its state for the key within a heartbeat.
    wait_for(
        "the reset to reach the other node",
        Duration::from_secs(2),
        || (get_with(&agent, &two.url("/a/x"), &[]).status == 200).then_some(()),
    );

    assert_eq!(admin_get(&one, "/admin/limits/nope/127.0.0.1").status, 404);
    assert_eq!(
        admin_get(&one, "/admin/limits/per_client/not-an-ip").status,
        400
    );
}

#[test]
fn registered_keys_work_on_every_node_and_revocation_takes_effect() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let db = postgres::Database::create();
    let body = config(&redis, &stub, &format!("store:\n  url: {}\n", db.url()));
    let one = start_connected(&body);
    let two = start_connected(&body);
    let r = admin_send(
        &one,
        "POST",
        "/admin/keys",
        r#"{"name": "my-app", "tenant": "acme", "tier": "pro"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let created = r.json();
    let secret = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("tg_"));

    // The second process, sharing the store, accepts the new key with its tier.
    let agent = agent();
    let through_two = wait_for(
        "the key to reach the second node",
        Duration::from_secs(2),
        || {
            let r = get_with(&agent, &two.url("/k/x"), &[("x-api-key", &secret)]);
            (r.status == 200).then_some(r)
        },
    );
    assert!(
        through_two
            .header("ratelimit-policy")
            .unwrap()
            .contains("q=3"),
        "pro tier numbers"
    );

    // The store holds the key's digest, never the key itself; Redis holds nothing of it.
    let stored = db.query("SELECT digest, record FROM api_keys");
    assert_eq!(
        redis
            .cli(&["EXISTS", "tollgate:apikeys", "tollgate:{fleet}:apikeys"])
            .as_deref()
            .map(str::trim),
        Some("0")
    );
    assert!(stored.contains("my-app"), "{stored}");
    assert!(!stored.contains(&secret), "the secret is stored: {stored}");
    assert!(
        !stored.contains(secret.trim_start_matches("tg_")),
        "{stored}"
    );

    let listed = admin_get(&two, "/admin/keys").body;
    assert!(listed.contains(&id) && listed.contains("my-app"));
    assert!(!listed.contains(&secret), "secrets are never listed");
    assert!(!listed.contains("config-key-000001"));

    assert_eq!(
        admin_send(&two, "DELETE", &format!("/admin/keys/{id}"), "").status,
        200
    );
    wait_for(
        "revocation on the first node",
        Duration::from_secs(2),
        || {
            (get_with(&agent, &one.url("/k/x"), &[("x-api-key", &secret)]).status == 401)
                .then_some(())
        },
    );
    assert_eq!(
        admin_send(&one, "DELETE", &format!("/admin/keys/{id}"), "").status,
        404
    );
    let config_key_id = admin_get(&one, "/admin/keys").json()["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        admin_send(&one, "DELETE", &format!("/admin/keys/{config_key_id}"), "").status,
        409
    );
    assert_eq!(
        admin_send(&one, "POST", "/admin/keys", r#"{"nam": "x"}"#).status,
        400
    );
}

#[test]
fn per_client_logs_keep_the_last_thousand_decisions() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = start_connected(&config(&redis, &stub, "trusted_proxies: [127.0.0.1]\n"));
    let agent = agent();
    for i in 0..1_200 {
        let r = get_with(
            &agent,
            &t.url(&format!("/a/{i}")),
            &[("x-forwarded-for", "198.51.100.77")],
        );
        assert!(matches!(r.status, 200 | 429));
    }
    let logs = wait_for(
        "the last decision to be logged",
        Duration::from_secs(3),
        || {
            let r = admin_get(&t, "/admin/logs?client=198.51.100.77&limit=1000").json();
            (r["entries"][0]["path"] == "/a/1199").then_some(r)
        },
    );
    assert_eq!(logs["count"], 1000);
    let entries = logs["entries"].as_array().unwrap();
    // Exactly the newest thousand, newest first, none missing or repeated.
    let paths: Vec<&str> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (200..1_200).rev().map(|i| format!("/a/{i}")).collect();
    assert_eq!(paths, expected);
    assert_eq!(entries[0]["outcome"], "limited");
    assert_eq!(entries[0]["policy"], "per_client");
    assert_eq!(entries[0]["status"], 429);
    assert_eq!(entries[0]["method"], "GET");
    assert_eq!(entries[0]["client"], "198.51.100.77");
    assert_eq!(entries[0]["route"], "/a");
    assert_eq!(entries[0]["remaining"], 0);
    assert_eq!(entries[0]["request_id"].as_str().unwrap().len(), 32);
    assert!(entries[0]["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        redis.cli(&["LLEN", "tollgate:log:198.51.100.77"]).unwrap(),
        "1000"
    );
    assert!(
        redis
            .cli(&["PTTL", "tollgate:log:198.51.100.77"])
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    assert_eq!(admin_get(&t, "/admin/logs").status, 400);
    assert_eq!(admin_get(&t, "/admin/logs?client=x&limit=5000").status, 400);
}

#[test]
fn the_log_loses_nothing_at_a_moderate_rate() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = start_connected(&config(&redis, &stub, "trusted_proxies: [127.0.0.1]\n"));
    let clients: Vec<String> = (1..=4).map(|i| format!("203.0.113.{i}")).collect();
    std::thread::scope(|s| {
        for client in &clients {
            let t = &t;
            s.spawn(move || {
                let agent = agent();
                for i in 0..300 {
                    let r = get_with(
                        &agent,
                        &t.url(&format!("/a/{i}")),
                        &[
                            ("x-forwarded-for", client),
                            ("x-request-id", &format!("{client}-{i}")),
                        ],
                    );
                    assert!(matches!(r.status, 200 | 429));
                }
            });
        }
    });
    for client in &clients {
        let logs = wait_for(
            "every decision to be logged",
            Duration::from_secs(3),
            || {
                let r = admin_get(&t, &format!("/admin/logs?client={client}&limit=1000")).json();
                (r["count"] == 300).then_some(r)
            },
        );
        let ids: Vec<&str> = logs["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request_id"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = (0..300).rev().map(|i| format!("{client}-{i}")).collect();
        assert_eq!(ids, expected, "{client}'s decisions, newest first");
    }
    let metrics = get(&t.admin_url("/metrics")).body;
    assert!(
        metrics.contains("tollgate_decision_log_dropped_total 0"),
        "{metrics}"
    );
}

#[test]
fn an_event_stream_client_receives_decisions() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = start_connected(&config(&redis, &stub, ""));
    let mut stream = TcpStream::connect(t.admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /admin/events?route=/a HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // Wait for the stream's opening comment, so the subscription exists before traffic.
    let mut line = String::new();
    while !line.contains("tollgate decisions") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    let agent = agent();
    for _ in 0..7 {
        get_with(&agent, &t.url("/a/x"), &[]);
    }
    let mut decisions = Vec::new();
    while decisions.len() < 7 {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream closed"
        );
        if let Some(data) = line.trim().strip_prefix("data: ") {
            decisions.push(serde_json::from_str::<serde_json::Value>(data).unwrap());
        }
    }
    assert!(decisions.iter().all(|d| d["route"] == "/a"));
    let outcomes: Vec<&str> = decisions
        .iter()
        .map(|d| d["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "allowed").count(),
        5,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == "limited").count(),
        2,
        "{outcomes:?}"
    );
}

#[test]
fn the_admin_listener_rate_limits_each_address() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = Tollgate::start(
        &config(&redis, &stub, "").replace("rate_limit: 200/1s", "rate_limit: 5/1s"),
    );
    let statuses: Vec<u16> = (0..30)
        .map(|_| admin_get(&t, "/admin/keys").status)
        .collect();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= 15, "{statuses:?}");
    assert_eq!(
        get(&t.admin_url("/metrics")).status,
        200,
        "metrics are not limited"
    );
}

#[test]
fn the_openapi_document_describes_every_route() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = Tollgate::start(&config(&redis, &stub, ""));
    let doc = admin_get(&t, "/admin/openapi.json").json();
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/admin/config",
        "/admin/reload",
        "/admin/check",
        "/admin/limits/{policy}/{key}",
        "/admin/keys",
        "/admin/keys/{id}",
        "/admin/logs",
        "/admin/events",
        "/admin/stats",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    let docs = admin_get(&t, "/admin/docs");
    assert_eq!(docs.status, 200);
    assert!(docs.body.contains("openapi.json"));
}
