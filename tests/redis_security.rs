//! A hardened Redis link: password, a least-privilege ACL user, and TLS with the
//! operator's own CA and a client certificate. Each is shown working (the fleet's keys
//! appear in Redis) and failing safe (wrong secret: Redis counted as down, a clear log
//! line, traffic still served by local limits).

mod common;
use common::*;
use std::time::Duration;

fn config(redis_section: &str, stub: &Stub) -> String {
    format!(
        "{redis_section}upstreams:
  a:
    backends: [{}]
limits:
  fleet:
    key: client_ip
    algorithm: fixed_window
    rate: 1000/1m
routes:
  - prefix: /a
    upstream: a
    limits: [fleet]
",
        stub.address()
    )
}

/// Waits for the link to come up, sends traffic and checks its counts reached Redis.
fn assert_global_limits_work(t: &Tollgate, redis: &Redis) {
    t.wait_redis_up(Duration::from_secs(5));
    for _ in 0..5 {
        let reply = get(&t.url("/a/x"));
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    wait_for("counts in redis", Duration::from_secs(3), || {
        let keys = redis.cli(&["--scan", "--pattern", "tollgate:*fleet*"])?;
        (!keys.is_empty()).then_some(())
    });
}

/// A wrong credential must leave the node serving on local limits and say why.
fn assert_refused_safely(t: &Tollgate, log_fragment: &str) {
    wait_for(
        &format!("the refusal logged ({log_fragment})\n{}", t.logs()),
        Duration::from_secs(5),
        || t.logs().contains(log_fragment).then_some(()),
    );
    assert_eq!(t.metric("tollgate_redis_up"), Some(0.0));
    assert_eq!(get(&t.url("/a/x")).status, 200, "still serving");
}

#[test]
fn password_from_the_url_or_the_environment() {
    let redis = Redis::start_with(&["--requirepass", "s3cret"]);
    let stub = Stub::start("a");
    let port = redis.port;

    let t = Tollgate::start(&config(
        &format!("redis:\n  url: redis://:s3cret@127.0.0.1:{port}\n"),
        &stub,
    ));
    assert_global_limits_work(&t, &redis);
    // The password never shows in the admin API's view of the config.
    let shown = get_with(&agent(), &t.admin_url("/admin/config"), &[]).body;
    assert!(!shown.contains("s3cret"), "{shown}");
    drop(t);
    // The node was SIGKILLed holding a reservation; start the next from a clean slate
    // rather than wait out its expiry (tests/fleet.rs covers that).
    redis.cli(&["FLUSHALL"]);

    let t = Tollgate::start_with_env(
        &config(
            &format!(
                "redis:\n  url: redis://127.0.0.1:{port}\n  password_env: TEST_REDIS_PASSWORD\n"
            ),
            &stub,
        ),
        &[("TEST_REDIS_PASSWORD", "s3cret")],
    );
    assert_global_limits_work(&t, &redis);
    drop(t);
    redis.cli(&["FLUSHALL"]);

    let t = Tollgate::start(&config(
        &format!("redis:\n  url: redis://:wrong@127.0.0.1:{port}\n"),
        &stub,
    ));
    assert_refused_safely(&t, "Password authentication failed");
    assert!(
        !t.logs().contains(":wrong@"),
        "the password leaked into the log"
    );
}

#[test]
fn a_least_privilege_acl_user_is_enough_and_a_wrong_one_is_refused() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let acl = |user: &str, keys: &str| {
        let rules = least_privilege_acl(user, "tgpw", keys);
        let mut args = vec!["ACL", "SETUSER"];
        args.extend(rules.iter().map(String::as_str));
        let reply = redis.cli(&args).unwrap_or_default();
        assert_eq!(reply, "OK");
    };
    acl("tollgate", "~tollgate:*");
    acl("elsewhere", "~other:*");
    let port = redis.port;

    let t = Tollgate::start(&config(
        &format!("redis:\n  url: redis://tollgate:tgpw@127.0.0.1:{port}\n"),
        &stub,
    ));
    assert_global_limits_work(&t, &redis);
    drop(t);

    // Right password, wrong keys: the scripts are refused, and the node fails open.
    let t = Tollgate::start(&config(
        &format!("redis:\n  url: redis://elsewhere:tgpw@127.0.0.1:{port}\n"),
        &stub,
    ));
    for _ in 0..20 {
        assert_eq!(get(&t.url("/a/x")).status, 200);
    }
    assert_refused_safely(&t, "NOPERM");
}

#[test]
fn tls_with_a_private_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = common::certs::generate(dir.path(), "tollgate");
    let redis = Redis::start_tls(&certs);
    let stub = Stub::start("a");
    let tls = |ca: &std::path::Path, client: bool| {
        let mut section = format!(
            "redis:\n  url: {}\n  tls:\n    ca_file: {}\n",
            redis.url(),
            ca.display()
        );
        if client {
            section.push_str(&format!(
                "    cert_file: {}\n    key_file: {}\n",
                certs.client_cert.display(),
                certs.client_key.display()
            ));
        }
        section
    };

    let t = Tollgate::start(&config(&tls(&certs.ca_cert, true), &stub));
    assert_global_limits_work(&t, &redis);
    drop(t);

    // Without the client certificate the server hangs up during the handshake.
    let t = Tollgate::start(&config(&tls(&certs.ca_cert, false), &stub));
    assert_refused_safely(&t, "redis is unreachable");
    drop(t);

    // A server certificate from another CA is not trusted.
    let other_dir = tempfile::tempdir().unwrap();
    let other = common::certs::generate(other_dir.path(), "impostor");
    let t = Tollgate::start(&config(&tls(&other.ca_cert, true), &stub));
    assert_refused_safely(&t, "UnknownIssuer");
}

#[test]
fn tls_settings_are_checked_before_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    for (section, expected) in [
        (
            "redis:\n  url: redis://127.0.0.1:6379\n  tls:\n    ca_file: /nonexistent/ca.pem\n",
            "redis.tls: certificates are only used with a rediss:// URL",
        ),
        (
            "redis:\n  url: rediss://127.0.0.1:6379\n  tls:\n    ca_file: /nonexistent/ca.pem\n",
            "redis.tls.ca_file: cannot read `/nonexistent/ca.pem`",
        ),
        (
            "redis:\n  url: redis://127.0.0.1:6379\n  password_env: TOLLGATE_TEST_UNSET_VARIABLE\n",
            "redis.password_env: the environment variable `TOLLGATE_TEST_UNSET_VARIABLE` is not set",
        ),
    ] {
        std::fs::write(
            &path,
            format!("{section}upstreams:\n  a:\n    backends: [127.0.0.1:1]\nroutes:\n  - prefix: /a\n    upstream: a\n"),
        )
        .unwrap();
        let out = output_within(
            std::process::Command::new(tollgate_bin())
                .args(["check", "-c"])
                .arg(&path),
            Duration::from_secs(10),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains("bad.yaml:"), "located: {stderr}");
    }
}
