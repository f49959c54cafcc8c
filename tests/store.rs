//! The control-plane store: registered API keys outlive Redis and tollgate restarts, reach
//! a fleet sharing one PostgreSQL within a second, survive the database going away, and
//! the keys an older tollgate kept in Redis are imported once.

mod common;
use common::postgres::{Database, Server};
use common::*;
use std::time::{Duration, Instant};

fn config(redis: &Redis, stub: &Stub, store: &str) -> String {
    format!(
        "redis:
  url: {}
  sync_interval: 50ms
api_keys:
  header: X-API-Key
upstreams:
  a:
    backends: [{}]
routes:
  - prefix: /k
    upstream: a
    require_api_key: true
{store}",
        redis.url(),
        stub.address()
    )
}

fn postgres_store(url: &str) -> String {
    format!("store:\n  url: {url}\n")
}

fn send_json(t: &Tollgate, method: &str, path: &str, body: &str) -> Reply {
    common::send_json(&agent(), method, &t.admin_url(path), body)
}

/// Registers a key through `t`; returns (secret, id).
fn register(t: &Tollgate, name: &str) -> (String, String) {
    let r = send_json(
        t,
        "POST",
        "/admin/keys",
        &format!(r#"{{"name": "{name}"}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let j = r.json();
    (
        j["key"].as_str().unwrap().to_string(),
        j["id"].as_str().unwrap().to_string(),
    )
}

fn status_with_key(t: &Tollgate, secret: &str) -> u16 {
    get_with(&agent(), &t.url("/k/x"), &[("x-api-key", secret)]).status
}

/// Waits until `t` answers `want` for `secret`; returns how long that took.
fn until_status(t: &Tollgate, secret: &str, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    wait_for(
        &format!("{want} for the key on {}", t.proxy),
        within,
        || (status_with_key(t, secret) == want).then_some(started.elapsed()),
    )
}

#[test]
fn a_registered_key_outlives_a_redis_restart_and_a_tollgate_restart() {
    // No `store` section: the embedded SQLite file beside the config.
    let mut redis = Redis::start();
    let stub = Stub::start("a");
    let mut t = Tollgate::start(&config(&redis, &stub, ""));
    let (secret, id) = register(&t, "my-app");
    assert_eq!(status_with_key(&t, &secret), 200);
    assert!(t.dir.path().join("tollgate-state.db").is_file());

    // Redis loses everything: the key is not in Redis, so nothing changes.
    redis.kill();
    redis.restart();
    t.wait_redis_up(Duration::from_secs(5));
    assert_eq!(status_with_key(&t, &secret), 200, "after a Redis restart");

    // tollgate restarts on the same config (and so the same file).
    t.restart();
    let again = &t;
    assert_eq!(status_with_key(again, &secret), 200, "after a restart");
    let listed = get(&again.admin_url("/admin/keys")).body;
    assert!(
        listed.contains(&id) && listed.contains("my-app"),
        "{listed}"
    );
    assert!(!listed.contains(&secret));
    assert_eq!(get(&again.admin_url("/metrics")).status, 200);
    assert_eq!(again.metric("tollgate_store_up"), Some(1.0));
}

#[test]
fn a_fleet_on_one_postgres_sees_a_new_key_and_a_revocation_within_a_second() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let db = Database::create();
    let body = config(&redis, &stub, &postgres_store(&db.url()));
    let nodes: Vec<Tollgate> = (0..3).map(|_| Tollgate::start(&body)).collect();
    // A node that subscribes after a change hears of it only by polling, so the count of
    // announced changes below is only meaningful once every node listens.
    for node in &nodes {
        wait_for("every node listening", Duration::from_secs(5), || {
            (node.metric("tollgate_store_listening") == Some(1.0)).then_some(())
        });
    }
    let (secret, id) = register(&nodes[0], "fleet-app");
    let mut seen = Vec::new();
    for node in &nodes[1..] {
        seen.push(until_status(node, &secret, 200, Duration::from_secs(1)));
    }
    // The secret itself is never stored.
    let rows = db.query("SELECT digest || record FROM api_keys");
    assert!(
        rows.contains("fleet-app") && !rows.contains(&secret),
        "{rows}"
    );

    let r = send_json(&nodes[1], "DELETE", &format!("/admin/keys/{id}"), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let mut revoked = Vec::new();
    for node in [&nodes[0], &nodes[2]] {
        revoked.push(until_status(node, &secret, 401, Duration::from_secs(1)));
    }
    eprintln!("new key live on the other nodes after {seen:?}; revocation after {revoked:?}");
    // The changes came by LISTEN/NOTIFY, not only by the version check.
    for node in &nodes {
        wait_for(
            "both changes announced to every node",
            Duration::from_secs(2),
            || (node.metric("tollgate_store_notifications_total") >= Some(2.0)).then_some(()),
        );
    }

    // One audit trail for the fleet, read from any node: both changes, in order, by the
    // node's clients (no tokens on this loopback listener).
    let r = get(&nodes[2].admin_url(&format!("/admin/audit?object=key:{id}")));
    assert_eq!(r.status, 200, "{}", r.body);
    let entries = r.json()["entries"].as_array().unwrap().clone();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["register", "revoke"], "{entries:?}");
    assert!(entries.iter().all(|e| e["actor"] == "anonymous@127.0.0.1"));
    assert!(!r.body.contains(&secret), "{}", r.body);
}

#[test]
fn keys_an_older_tollgate_left_in_redis_are_imported_once() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    // What an older tollgate wrote: digest (hex) to record.
    let secret = "tg_legacykey0000000000000000000000000000000";
    let digest = sha256_hex(secret);
    let record = format!(
        r#"{{"id":"{}","tenant":"old","tier":null,"name":"legacy"}}"#,
        &digest[..16]
    );
    redis
        .cli(&["HSET", "tollgate:apikeys", &digest, &record])
        .expect("HSET");
    let db = Database::create();
    let body = config(&redis, &stub, &postgres_store(&db.url()));
    let t = Tollgate::start(&body);
    until_status(&t, secret, 200, Duration::from_secs(3));
    wait_for("the import to be logged", Duration::from_secs(2), || {
        t.logs().contains("imported the API keys").then_some(())
    });
    // Revoked after the import, it stays revoked: the import never runs again.
    let r = send_json(&t, "DELETE", &format!("/admin/keys/{}", &digest[..16]), "");
    assert_eq!(r.status, 200, "{}", r.body);
    drop(t);
    let t = Tollgate::start(&body);
    assert_eq!(status_with_key(&t, secret), 401, "imported again");
    assert_eq!(t.logs().matches("imported the API keys").count(), 0);
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn when_postgres_is_away_every_key_still_works_and_writes_get_503() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let mut pg = Server::start();
    let db = Database::create_on(pg.port);
    let body = config(&redis, &stub, &postgres_store(&db.url()));
    let one = Tollgate::start(&body);
    let two = Tollgate::start(&body);
    let (secret, _) = register(&one, "before-the-crash");
    until_status(&two, &secret, 200, Duration::from_secs(1));
    // A runtime policy, seen by its limit header, must survive the outage too.
    let policy = send_json(
        &one,
        "POST",
        "/admin/policies",
        r#"{"name": "kept", "key": "client_ip", "algorithm": "fixed_window", "rate": "100000/1m", "routes": ["/k"]}"#,
    );
    assert_eq!(policy.status, 201, "{}", policy.body);
    let limited_by_kept = |t: &Tollgate| {
        get_with(&agent(), &t.url("/k/x"), &[("x-api-key", &secret)])
            .header("x-ratelimit-limit")
            .map(str::to_string)
            == Some("100000".into())
    };
    wait_for("the policy on node two", Duration::from_secs(1), || {
        limited_by_kept(&two).then_some(())
    });

    pg.kill();
    wait_for(
        "the store to be marked down",
        Duration::from_secs(5),
        || (one.metric("tollgate_store_up") == Some(0.0)).then_some(()),
    );
    // Requests keep flowing with every key.
    let agent = agent();
    let failed = (0..200)
        .filter(|_| get_with(&agent, &one.url("/k/x"), &[("x-api-key", &secret)]).status != 200)
        .count();
    assert_eq!(failed, 0, "requests failed while the store was away");
    let r = send_json(&one, "POST", "/admin/keys", r#"{"name": "during"}"#);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "store_unavailable");
    let r = send_json(&one, "DELETE", "/admin/policies/kept", "");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(limited_by_kept(&one), "the policy still runs");

    // A node restarted while the database is down still honours the key (local cache).
    let mut two = two;
    two.restart();
    assert_eq!(
        status_with_key(&two, &secret),
        200,
        "restarted without its store"
    );
    assert!(
        limited_by_kept(&two),
        "the policy came back from the local cache\n{}",
        two.logs()
    );

    // The database comes back: writes work again and reach the other node.
    pg.restart();
    wait_for("the store to be back", Duration::from_secs(10), || {
        (one.metric("tollgate_store_up") == Some(1.0)).then_some(())
    });
    let (after, _) = register(&one, "after");
    until_status(&two, &after, 200, Duration::from_secs(2));
    assert!(
        one.metric("tollgate_store_errors_total{op=\"poll\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
}

const WRITE_TOKEN: &str = "deployer-token-0123456789";
const READ_TOKEN: &str = "grafana-token-0123456789";

fn call(t: &Tollgate, token: &str, method: &str, path: &str, body: &str) -> Reply {
    let bearer = format!("Bearer {token}");
    send_with(
        &agent(),
        method,
        &t.admin_url(path),
        &[
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ],
        body,
    )
}

#[test]
fn named_tokens_have_roles_and_the_audit_trail_says_who_changed_what() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let admin = format!(
        "admin:
  listen: {{admin_listen}}
  tokens:
    - name: ci-deployer
      role: write
      token_env: TG_WRITE_TOKEN
    - name: grafana
      role: read
      token: {READ_TOKEN}
"
    );
    let mut t = Tollgate::start_with_env(
        &config(&redis, &stub, &admin),
        &[("TG_WRITE_TOKEN", WRITE_TOKEN)],
    );
    assert_eq!(get(&t.admin_url("/admin/keys")).status, 401);

    // A read token reads, and every write it tries is refused with 403, changing nothing.
    assert_eq!(call(&t, READ_TOKEN, "GET", "/admin/keys", "").status, 200);
    assert_eq!(call(&t, READ_TOKEN, "GET", "/admin/stats", "").status, 200);
    for (method, path, body) in [
        ("POST", "/admin/keys", r#"{"name": "sneaky"}"#),
        ("DELETE", "/admin/keys/0123456789abcdef", ""),
        ("POST", "/admin/reload", "{}"),
        ("DELETE", "/admin/limits/none/x", ""),
    ] {
        let r = call(&t, READ_TOKEN, method, path, body);
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        assert_eq!(r.json()["error"], "forbidden");
        assert!(r.body.contains("grafana"), "{}", r.body);
    }

    // The write token registers two keys and revokes one.
    let register = |name: &str| {
        let r = call(
            &t,
            WRITE_TOKEN,
            "POST",
            "/admin/keys",
            &format!(r#"{{"name": "{name}", "tier": "pro"}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        let j = r.json();
        (
            j["key"].as_str().unwrap().to_string(),
            j["id"].as_str().unwrap().to_string(),
        )
    };
    let (secret_a, id_a) = register("app-a");
    let (secret_b, id_b) = register("app-b");
    let revoked = call(
        &t,
        WRITE_TOKEN,
        "DELETE",
        &format!("/admin/keys/{id_a}"),
        "",
    );
    assert_eq!(revoked.status, 200, "{}", revoked.body);

    let audit = |t: &Tollgate, query: &str| {
        let r = call(t, READ_TOKEN, "GET", &format!("/admin/audit{query}"), "");
        assert_eq!(r.status, 200, "{}", r.body);
        for secret in [&secret_a, &secret_b] {
            assert!(
                !r.body.contains(secret.as_str()),
                "a key leaked: {}",
                r.body
            );
        }
        for token in [WRITE_TOKEN, READ_TOKEN] {
            assert!(!r.body.contains(token), "a token leaked: {}", r.body);
        }
        r.json()["entries"].as_array().unwrap().clone()
    };
    let entries = audit(&t, "");
    let summary: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["object"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("register".to_string(), format!("key:{id_a}")),
            ("register".to_string(), format!("key:{id_b}")),
            ("revoke".to_string(), format!("key:{id_a}")),
        ],
        "{entries:?}"
    );
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for e in &entries {
        assert_eq!(e["actor"], "ci-deployer@127.0.0.1", "{e}");
        assert!(e["at"].as_str().is_some_and(|a| a.ends_with('Z')), "{e}");
    }
    assert!(entries[0]["before"].is_null());
    assert_eq!(entries[0]["after"]["name"], "app-a");
    assert_eq!(entries[0]["after"]["tier"], "pro");
    assert_eq!(entries[2]["before"]["id"], id_a.as_str());
    assert!(entries[2]["after"].is_null());

    // Filters: one object, after a seq, since a time, a limit.
    assert_eq!(audit(&t, &format!("?object=key:{id_a}")).len(), 2);
    assert_eq!(audit(&t, &format!("?after={}", seqs[0])).len(), 2);
    assert_eq!(audit(&t, "?limit=1").len(), 1);
    assert_eq!(audit(&t, "?since=2999-01-01T00:00:00Z").len(), 0);
    assert_eq!(audit(&t, "?since=0").len(), 3);
    for bad in ["?since=yesterday", "?limit=0", "?limit=1001", "?after=-1"] {
        let r = call(&t, READ_TOKEN, "GET", &format!("/admin/audit{bad}"), "");
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }

    // The trail is in the store: a restart keeps it.
    t.restart();
    assert_eq!(audit(&t, "").len(), 3);
    assert_eq!(status_with_key(&t, &secret_b), 200);
}
