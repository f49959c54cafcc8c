//! Runtime policies through `/admin/policies`: validated by the file's own validator (422
//! with the field's path, nothing changed), conditional on their ETag (412), read-only for
//! the file's own (409), kept in the store across restarts, audited, and applied by every
//! node of a fleet sharing one PostgreSQL within a second.

mod common;
use common::postgres::Database;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn config(redis: &Redis, stub: &Stub, store: &str) -> String {
    format!(
        "redis:
  url: {}
  sync_interval: 50ms
upstreams:
  a:
    backends: [{}]
limits:
  from_file:
    key: client_ip
    algorithm: fixed_window
    rate: 1000/1m
routes:
  - prefix: /a
    upstream: a
  - prefix: /b
    upstream: a
    limits: [from_file]
{store}",
        redis.url(),
        stub.address()
    )
}

fn call(t: &Tollgate, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send_with(&agent(), method, &t.admin_url(path), &all, body)
}

fn statuses(t: &Tollgate, n: usize) -> Vec<u16> {
    (0..n).map(|_| get(&t.url("/a/x")).status).collect()
}

fn policy_names(t: &Tollgate) -> Vec<(String, String)> {
    let r = call(t, "GET", "/admin/policies", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_runtime_policy_is_validated_conditional_audited_and_kept() {
    // No `store` section: the embedded SQLite file beside the config.
    let mut redis = Redis::start();
    let stub = Stub::start("a");
    let mut t = Tollgate::start(&config(&redis, &stub, ""));
    t.wait_redis_up(Duration::from_secs(5));
    // Daily windows, away from the day's end (UTC), so no window ends during the test: a
    // minute's window ended in it about once in six runs on a busy machine.
    common::clock::wait_until_in_window(86_400_000, 0, 86_280_000);
    assert_eq!(statuses(&t, 4), [200; 4], "no limit on /a yet");

    let create = call(
        &t,
        "POST",
        "/admin/policies",
        &[],
        r#"{"name": "api_rule", "key": "path", "algorithm": "fixed_window", "rate": "3/1d", "routes": ["/a"]}"#,
    );
    assert_eq!(create.status, 201, "{}", create.body);
    assert_eq!(create.header("etag"), Some("\"1\""));
    assert_eq!(create.json()["applied"], true);
    assert_eq!(statuses(&t, 4), [200, 200, 200, 429], "applied at once");
    let stats = call(&t, "GET", "/admin/stats", &[], "").json();
    let sources: Vec<(String, String)> = stats["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["source"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        sources.contains(&("api_rule".into(), "api".into())),
        "{sources:?}"
    );
    assert!(
        sources.contains(&("from_file".into(), "file".into())),
        "{sources:?}"
    );
    assert_eq!(
        policy_names(&t),
        [
            ("from_file".to_string(), "file".to_string()),
            ("api_rule".to_string(), "api".to_string())
        ]
    );

    // Bad policies: 422 with the field's path, and nothing changes.
    for (body, path) in [
        (
            r#"{"name": "x", "key": "path", "algorithm": "fixed_window", "rate": "often", "routes": ["/a"]}"#,
            "rate",
        ),
        (
            r#"{"name": "x", "key": "path", "algorithm": "fixed_window", "rat": "5/1m"}"#,
            "rat",
        ),
        (
            r#"{"name": "x", "algorithm": "fixed_window", "rate": "5/1m"}"#,
            "key",
        ),
        (
            r#"{"name": "x", "key": "path", "algorithm": "leaky", "rate": "5/1m"}"#,
            "algorithm",
        ),
        (
            r#"{"name": "x", "key": "path", "algorithm": "fixed_window", "rate": "5/1m", "routes": ["/nope"]}"#,
            "routes[0]",
        ),
        (
            r#"{"name": "x y", "key": "path", "algorithm": "fixed_window", "rate": "5/1m"}"#,
            "name",
        ),
        (
            r#"{"name": "x", "key": "path", "algorithm": "fixed_window", "rate": "5/1m", "routes": "/a"}"#,
            "routes",
        ),
        (
            r#"{"name": "x", "key": "path", "algorithm": "concurrency", "rate": "5/1m"}"#,
            "",
        ),
    ] {
        let r = call(&t, "POST", "/admin/policies", &[], body);
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        let errors = r.json()["errors"].as_array().unwrap().clone();
        let paths: Vec<&str> = errors.iter().map(|e| e["path"].as_str().unwrap()).collect();
        if path.is_empty() {
            assert!(!errors.is_empty(), "{body}: {}", r.body);
        } else {
            assert!(paths.contains(&path), "{body}: want `{path}` in {}", r.body);
        }
    }
    assert_eq!(
        policy_names(&t).len(),
        2,
        "a refused policy changed nothing"
    );

    // The file's policies are read-only here, and a taken name is refused.
    for (method, path) in [
        ("PUT", "/admin/policies/from_file"),
        ("DELETE", "/admin/policies/from_file"),
    ] {
        let r = call(
            &t,
            method,
            path,
            &[],
            r#"{"key": "path", "algorithm": "fixed_window", "rate": "5/1m"}"#,
        );
        assert_eq!(r.status, 409, "{method} {path}: {}", r.body);
        assert!(r.body.contains("config.yaml"), "{}", r.body);
    }
    let again = call(
        &t,
        "POST",
        "/admin/policies",
        &[],
        r#"{"name": "api_rule", "key": "path", "algorithm": "fixed_window", "rate": "3/1d"}"#,
    );
    assert_eq!(again.status, 409, "{}", again.body);

    // Two operators with the same ETag: the first wins, the second gets 412.
    let shown = call(&t, "GET", "/admin/policies/api_rule", &[], "");
    assert_eq!(shown.header("etag"), Some("\"1\""));
    let update =
        r#"{"key": "path", "algorithm": "fixed_window", "rate": "5/1d", "routes": ["/a"]}"#;
    let first = call(
        &t,
        "PUT",
        "/admin/policies/api_rule",
        &[("if-match", "\"1\"")],
        update,
    );
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("etag"), Some("\"2\""));
    let second = call(
        &t,
        "PUT",
        "/admin/policies/api_rule",
        &[("if-match", "\"1\"")],
        update,
    );
    assert_eq!(second.status, 412, "{}", second.body);
    assert_eq!(second.json()["etag"], "\"2\"");
    // The new rate keeps the window's count: 3 were admitted, 2 more fit in 5.
    assert_eq!(statuses(&t, 3), [200, 200, 429]);

    // A file that defines the same name is refused at reload, with a located error, and
    // the running config stays.
    let original = config(&redis, &stub, "");
    t.write_config(&original.replace(
        "limits:\n",
        "limits:\n  api_rule:\n    key: path\n    algorithm: fixed_window\n    rate: 9/1m\n",
    ));
    let reload = call(&t, "POST", "/admin/reload", &[], "{}");
    assert_eq!(reload.status, 422, "{}", reload.body);
    assert!(
        reload.body.contains("config.yaml:") && reload.body.contains("defined both"),
        "{}",
        reload.body
    );
    assert_eq!(statuses(&t, 1), [429], "the runtime policy still runs");
    t.write_config(&original);

    // Kept in the store: a restart still enforces it (once Redis answers: until then a
    // node with no history decides on its local share).
    t.restart();
    t.wait_redis_up(Duration::from_secs(5));
    assert_eq!(
        statuses(&t, 1),
        [429],
        "the window's count and the policy survived"
    );
    assert!(policy_names(&t).contains(&("api_rule".to_string(), "api".to_string())));

    // Redis loses everything, and with it the window's count (this process admitted
    // nothing to report again since its restart). The policy still limits: it is in the
    // store.
    redis.kill();
    redis.restart();
    t.wait_redis_up(Duration::from_secs(5));
    let after = statuses(&t, 8);
    assert!(after.contains(&429), "8 requests against 5/1d: {after:?}");

    let set = call(
        &t,
        "PUT",
        "/admin/overrides/api_rule/tenant:acme",
        &[],
        r#"{"rate": "7/1d"}"#,
    );
    assert_eq!(set.status, 200, "{}", set.body);
    let stale = call(
        &t,
        "DELETE",
        "/admin/policies/api_rule",
        &[("if-match", "\"1\"")],
        "",
    );
    assert_eq!(stale.status, 412, "{}", stale.body);
    let deleted = call(
        &t,
        "DELETE",
        "/admin/policies/api_rule",
        &[("if-match", "\"2\"")],
        "",
    );
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(statuses(&t, 2), [200, 200], "deleted at once");
    assert_eq!(
        call(&t, "GET", "/admin/policies/api_rule", &[], "").status,
        404
    );

    let audit = call(&t, "GET", "/admin/audit?object=policy:api_rule", &[], "");
    let actions: Vec<String> = audit.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["create", "update", "delete"], "{}", audit.body);
    // The policy's override went with it, audited too.
    let left = call(&t, "GET", "/admin/overrides", &[], "").json();
    assert_eq!(
        left["overrides"].as_array().map(Vec::len),
        Some(0),
        "{left}"
    );
    let audit = call(
        &t,
        "GET",
        "/admin/audit?object=override:api_rule/tenant:acme",
        &[],
        "",
    );
    let actions: Vec<String> = audit.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["create", "delete"], "{}", audit.body);
}

/// Polls `check` on `node` until it holds; how long that took.
fn until(node: &Tollgate, what: &str, check: impl Fn(&Reply) -> bool) -> Duration {
    let started = Instant::now();
    wait_for(
        &format!("{what} on {}", node.proxy),
        Duration::from_secs(1),
        || check(&get(&node.url("/a/x"))).then_some(started.elapsed()),
    )
}

fn limit_header(r: &Reply) -> Option<String> {
    r.header("x-ratelimit-limit").map(str::to_string)
}

#[test]
fn a_fleet_on_one_postgres_applies_a_new_policy_an_update_and_a_delete_within_a_second() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let db = Database::create();
    let body = config(&redis, &stub, &format!("store:\n  url: {}\n", db.url()));
    let nodes: Vec<Tollgate> = (0..3).map(|_| Tollgate::start(&body)).collect();

    let created = call(
        &nodes[0],
        "POST",
        "/admin/policies",
        &[],
        r#"{"name": "fleet_rule", "key": "client_ip", "algorithm": "sliding_window", "rate": "100000/1m", "routes": ["/a"]}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let mut times = Vec::new();
    for node in &nodes[1..] {
        times.push(until(node, "the new policy", |r| {
            limit_header(r).as_deref() == Some("100000")
        }));
    }

    let updated = call(
        &nodes[1],
        "PUT",
        "/admin/policies/fleet_rule",
        &[("if-match", "\"1\"")],
        r#"{"key": "client_ip", "algorithm": "sliding_window", "rate": "200000/1m", "routes": ["/a"]}"#,
    );
    assert_eq!(updated.status, 200, "{}", updated.body);
    for node in [&nodes[0], &nodes[2]] {
        times.push(until(node, "the update", |r| {
            limit_header(r).as_deref() == Some("200000")
        }));
    }

    let deleted = call(&nodes[2], "DELETE", "/admin/policies/fleet_rule", &[], "");
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    for node in &nodes[..2] {
        times.push(until(node, "the delete", |r| limit_header(r).is_none()));
    }
    eprintln!("applied on the other nodes after {times:?}");
    let listed: Vec<Value> = call(&nodes[0], "GET", "/admin/policies", &[], "").json()["policies"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        listed.len(),
        1,
        "only the file's policy is left: {listed:?}"
    );
}

#[test]
fn an_override_changes_one_tenants_numbers_and_beats_the_tier() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = Tollgate::start(&format!(
        "redis:
  url: {}
  sync_interval: 50ms
api_keys:
  header: X-API-Key
  keys:
    acme-key-0000000001: {{ tenant: acme, tier: pro }}
    globex-key-00000001: {{ tenant: globex, tier: pro }}
upstreams:
  a:
    backends: [{}]
limits:
  per_tenant:
    key: tenant
    algorithm: fixed_window
    rate: 2/1d
    tiers:
      pro: {{ rate: 3/1d }}
routes:
  - prefix: /k
    upstream: a
    require_api_key: true
    limits: [per_tenant]
",
        redis.url(),
        stub.address()
    ));
    let send = |key: &str, n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| get_with(&agent(), &t.url("/k/x"), &[("x-api-key", key)]).status)
            .collect()
    };
    t.wait_redis_up(Duration::from_secs(5));
    // Daily windows, away from the day's end (UTC), so no window ends during the test.
    common::clock::wait_until_in_window(86_400_000, 0, 86_280_000);
    let acme = "acme-key-0000000001";
    let globex = "globex-key-00000001";
    assert_eq!(send(acme, 4), [200, 200, 200, 429], "the tier's 3");

    let r = call(
        &t,
        "PUT",
        "/admin/overrides/per_tenant/tenant:acme",
        &[],
        r#"{"rate": "5/1d"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        send(acme, 3),
        [200, 200, 429],
        "5 now, counting the 3 already used"
    );
    assert_eq!(
        send(globex, 4),
        [200, 200, 200, 429],
        "another tenant keeps the tier"
    );

    // An override for one key beats its tenant's.
    let keys = call(&t, "GET", "/admin/keys", &[], "").json();
    let globex_id = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["tenant"] == "globex")
        .and_then(|k| k["id"].as_str())
        .unwrap()
        .to_string();
    let r = call(
        &t,
        "PUT",
        &format!("/admin/overrides/per_tenant/key:{globex_id}"),
        &[],
        r#"{"rate": "4/1d"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(send(globex, 2), [200, 429]);

    for (path, body, want, field) in [
        (
            "/admin/overrides/per_tenant/user:x",
            r#"{"rate": "5/1m"}"#,
            422,
            "subject",
        ),
        (
            "/admin/overrides/per_tenant/tenant:acme",
            r#"{"rate": "fast"}"#,
            422,
            "rate",
        ),
        (
            "/admin/overrides/per_tenant/tenant:acme",
            r#"{"rat": "5/1m"}"#,
            422,
            "rat",
        ),
        (
            "/admin/overrides/per_tenant/tenant:acme",
            r#"{"burst": 0}"#,
            422,
            "burst",
        ),
        (
            "/admin/overrides/nope/tenant:acme",
            r#"{"rate": "5/1m"}"#,
            404,
            "",
        ),
    ] {
        let r = call(&t, "PUT", path, &[], body);
        assert_eq!(r.status, want, "{path} {body}: {}", r.body);
        if !field.is_empty() {
            assert!(
                r.json()["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["path"] == field),
                "{path} {body}: want `{field}` in {}",
                r.body
            );
        }
    }
    let listed = call(&t, "GET", "/admin/overrides", &[], "").json();
    assert_eq!(listed["overrides"].as_array().unwrap().len(), 2, "{listed}");

    let r = call(
        &t,
        "DELETE",
        "/admin/overrides/per_tenant/tenant:acme",
        &[],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(send(acme, 1), [429], "back to the tier's 3, with 5 used");
    assert_eq!(
        call(
            &t,
            "GET",
            "/admin/overrides/per_tenant/tenant:acme",
            &[],
            ""
        )
        .status,
        404
    );
    let audit = call(&t, "GET", "/admin/audit", &[], "").json();
    let objects: Vec<String> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["action"].as_str().unwrap(),
                e["object"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        objects,
        [
            "create override:per_tenant/tenant:acme".to_string(),
            format!("create override:per_tenant/key:{globex_id}"),
            "delete override:per_tenant/tenant:acme".to_string(),
        ]
    );
}

#[test]
fn changing_a_policys_numbers_keeps_what_it_counted() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = Tollgate::start(&config(&redis, &stub, ""));
    t.wait_redis_up(Duration::from_secs(5));
    // Hourly windows, away from the hour's end, so no window ends during the test.
    common::clock::wait_until_in_window(3_600_000, 0, 3_590_000);
    for (name, algorithm, scope) in [
        ("local_fixed", "fixed_window", "local"),
        ("local_sliding", "sliding_window", "local"),
        ("global_fixed", "fixed_window", "global"),
        ("global_sliding", "sliding_window", "global"),
        ("global_bucket", "token_bucket", "global"),
        ("local_bucket", "token_bucket", "local"),
    ] {
        let bucket = algorithm == "token_bucket";
        let policy = |count: u64| {
            let burst = if bucket {
                format!(r#", "burst": {count}"#)
            } else {
                String::new()
            };
            format!(
                r#"{{"name": "{name}", "key": "client_ip", "algorithm": "{algorithm}", "scope": "{scope}", "rate": "{count}/1h"{burst}, "routes": ["/a"]}}"#
            )
        };
        let created = call(&t, "POST", "/admin/policies", &[], &policy(5));
        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(statuses(&t, 3), [200; 3], "{name}: 3 of 5");

        // Down to 4: what the node held under 5 goes back, and only one more fits.
        let path = format!("/admin/policies/{name}");
        let lowered = call(&t, "PUT", &path, &[("if-match", "\"1\"")], &policy(4));
        assert_eq!(lowered.status, 200, "{}", lowered.body);
        assert_eq!(
            statuses(&t, 2),
            [200, 429],
            "{name}: 4 now, counting the 3 already used"
        );

        if !bucket {
            // Up to 6: two more, though the window was spent under 4. (A bucket's state
            // is its arrival time, which a new rate reads differently.)
            let raised = call(&t, "PUT", &path, &[("if-match", "\"2\"")], &policy(6));
            assert_eq!(raised.status, 200, "{}", raised.body);
            assert_eq!(statuses(&t, 3), [200, 200, 429], "{name}: 6 now, 4 used");
        }
        let deleted = call(&t, "DELETE", &path, &[], "");
        assert_eq!(deleted.status, 200, "{}", deleted.body);
    }
}
