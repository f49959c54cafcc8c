//! Hot reload: file edits (in place and by rename), SIGHUP and `POST /admin/reload`; a bad
//! file changes nothing and is reported with its location; unchanged policies keep counting.

mod common;
use common::clock::*;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn body(stub: &Stub, redis: &Redis, rate_a: &str, extra_route: &str) -> String {
    format!(
        "redis:
  url: {}
upstreams:
  a:
    backends: [{}]
limits:
  la:
    key: client_ip
    algorithm: fixed_window
    rate: {rate_a}
  steady:
    key: client_ip
    algorithm: fixed_window
    rate: 5/1m
    scope: local
routes:
  - prefix: /a
    upstream: a
    limits: [la]
  - prefix: /s
    upstream: a
    limits: [steady]
{extra_route}",
        redis.url(),
        stub.address()
    )
}

fn reload_status(t: &Tollgate) -> serde_json::Value {
    get(&t.admin_url("/admin/config")).json()["reload"].clone()
}

#[test]
fn an_edit_under_load_changes_a_limit_within_two_seconds_without_failed_requests() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = Tollgate::start(&body(&stub, &redis, "1000/1m", ""));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let served = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures, served, url) = (
            stop.clone(),
            failures.clone(),
            served.clone(),
            t.url("/a/x"),
        );
        std::thread::spawn(move || {
            let agent = agent();
            while !stop.load(Ordering::Relaxed) {
                match try_get_with(&agent, &url, &[]) {
                    Ok(r) if r.status == 200 || r.status == 429 => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status)),
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }
        })
    };
    wait_for("traffic", Duration::from_secs(5), || {
        (served.load(Ordering::Relaxed) > 20).then_some(())
    });
    let policy_q = |t: &Tollgate| {
        get(&t.url("/a/x"))
            .header("ratelimit-policy")
            .map(str::to_string)
            .unwrap_or_default()
    };
    assert!(policy_q(&t).contains("q=1000"));

    let edited = Instant::now();
    t.write_config(&body(&stub, &redis, "7/1m", ""));
    wait_for("the new limit", Duration::from_secs(2), || {
        policy_q(&t).contains("q=7").then_some(())
    });
    eprintln!("the edit took effect after {:?}", edited.elapsed());
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "failed requests during the reload: {failures:?}"
    );
    let status = reload_status(&t);
    assert_eq!(status["result"], "ok");
    assert_eq!(status["trigger"], "file");
    assert_eq!(
        t.metric(r#"tollgate_config_reloads_total{result="success"}"#),
        Some(1.0)
    );
}

#[test]
fn an_invalid_edit_keeps_the_running_config_and_reports_where_it_is_wrong() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let good = body(&stub, &redis, "50/1m", "");
    let t = Tollgate::start(&good);
    let broken = good.replace(
        "upstream: a\n    limits: [steady]",
        "upstream: nowhere\n    limits: [steady]",
    );
    t.write_config(&broken);
    let status = wait_for("the refusal", Duration::from_secs(3), || {
        let s = reload_status(&t);
        (s["result"] == "error").then_some(s)
    });
    let errors = status["error"]["errors"].as_array().unwrap();
    let line = errors[0].as_str().unwrap();
    assert!(
        line.contains("config.yaml:")
            && line.contains("routes[1].upstream: unknown upstream `nowhere`"),
        "{line}"
    );
    assert_eq!(
        t.metric(r#"tollgate_config_reloads_total{result="failure"}"#),
        Some(1.0)
    );
    // Still serving with the old config.
    assert_eq!(get(&t.url("/s/x")).status, 200);
    assert!(t.logs().contains("unknown upstream `nowhere`"));
    // The error stays visible, and is reported once, until a good file arrives.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        t.metric(r#"tollgate_config_reloads_total{result="failure"}"#),
        Some(1.0)
    );
    // Truncated and deleted files are refused the same way.
    std::fs::write(&t.config_path, "").unwrap();
    wait_for("the empty file refused", Duration::from_secs(3), || {
        (t.metric(r#"tollgate_config_reloads_total{result="failure"}"#) == Some(2.0)).then_some(())
    });
    std::fs::remove_file(&t.config_path).unwrap();
    let refused = get_with(&agent(), &t.admin_url("/admin/reload"), &[]);
    assert_eq!(refused.status, 405, "reload is a POST");
    let refused = send_json(&agent(), "POST", &t.admin_url("/admin/reload"), "");
    assert_eq!(refused.status, 422);
    assert!(refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cannot read config"));
    assert_eq!(get(&t.url("/s/x")).status, 200, "still serving");

    t.write_config(&good.replace("50/1m", "51/1m"));
    wait_for("recovery", Duration::from_secs(3), || {
        (reload_status(&t)["result"] == "ok").then_some(())
    });
    assert!(reload_status(&t)["error"].is_null());
}

#[test]
fn editors_that_replace_the_file_by_rename_are_followed() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = Tollgate::start(&body(&stub, &redis, "50/1m", ""));
    let temp = t.dir.path().join(".config.yaml.swp");
    std::fs::write(
        &temp,
        body(
            &stub,
            &redis,
            "50/1m",
            "  - prefix: /new\n    upstream: a\n",
        ),
    )
    .unwrap();
    std::fs::rename(&temp, &t.config_path).unwrap();
    wait_for("the new route", Duration::from_secs(2), || {
        (get(&t.url("/new/x")).status == 200).then_some(())
    });
}

#[test]
fn sighup_and_the_admin_api_reload_too() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let mut t = Tollgate::start(&body(&stub, &redis, "50/1m", ""));
    // Edit without waiting for the watcher: write the file and signal at once.
    t.write_config(&body(
        &stub,
        &redis,
        "50/1m",
        "  - prefix: /hup\n    upstream: a\n",
    ));
    t.signal(libc::SIGHUP);
    wait_for("the SIGHUP reload", Duration::from_secs(2), || {
        (get(&t.url("/hup/x")).status == 200).then_some(())
    });
    assert!(
        t.wait_exit(Duration::from_millis(100)).is_none(),
        "SIGHUP must not stop the process"
    );

    t.write_config(&body(
        &stub,
        &redis,
        "50/1m",
        "  - prefix: /api\n    upstream: a\n",
    ));
    let r = send_json(&agent(), "POST", &t.admin_url("/admin/reload"), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"], "ok");
    assert_eq!(get(&t.url("/api/x")).status, 200);
}

#[test]
fn a_request_in_flight_finishes_under_the_config_it_started_with() {
    let redis = Redis::start();
    let old_backend = Stub::start("old");
    let new_backend = Stub::start("new");
    let t = Tollgate::start(&body(&old_backend, &redis, "1000/1m", ""));
    // A slow request to `old`, still in flight while the route moves to `new`.
    let slow = {
        let url = t.url("/a/slow");
        std::thread::spawn(move || get_with(&agent(), &url, &[("x-stub-delay-ms", "1500")]))
    };
    wait_for("the slow request in flight", Duration::from_secs(3), || {
        (t.metric("tollgate_requests_in_flight").unwrap_or(0.0) >= 1.0).then_some(())
    });
    t.write_config(&body(&new_backend, &redis, "1000/1m", ""));
    wait_for("the reload", Duration::from_secs(2), || {
        (get(&t.url("/a/x")).json()["service"] == "new").then_some(())
    });
    let finished = slow.join().unwrap();
    assert_eq!(finished.status, 200, "{}", finished.body);
    assert_eq!(
        finished.json()["service"],
        "old",
        "the request kept the upstream it started with"
    );
}

/// Spends 3 of `path`'s quota, reloads a config that changes `la`'s rate from `rate_before`
/// to `rate_after` and adds a route, and checks the statuses of the requests that follow
/// (inside, so that a failure still prints the proxy's log).
fn count_survives_a_reload(path: &str, rate_before: &str, rate_after: &str, expected: &[u16]) {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = Tollgate::start(&body(&stub, &redis, rate_before, ""));
    t.wait_redis_up(Duration::from_secs(3));
    wait_until_in_window(60_000, 0, 50_000);
    let agent = agent();
    for _ in 0..3 {
        assert_eq!(get_with(&agent, &t.url(path), &[]).status, 200);
    }
    t.write_config(&body(
        &stub,
        &redis,
        rate_after,
        "  - prefix: /more\n    upstream: a\n",
    ));
    wait_for("the reload", Duration::from_secs(2), || {
        (get(&t.url("/more/x")).status == 200).then_some(())
    });
    let statuses: Vec<u16> = (0..expected.len())
        .map(|_| get_with(&agent, &t.url(path), &[]).status)
        .collect();
    assert_eq!(statuses, expected, "3 used before the reload");
}

#[test]
fn an_unchanged_policy_keeps_its_counters_across_a_reload() {
    // `steady` (local, 5 per minute) is untouched while `la` changes.
    // 5 per minute: two left.
    count_survives_a_reload("/s/x", "50/1m", "60/1m", &[200, 200, 429]);
}

#[test]
fn an_unchanged_global_policy_keeps_its_fleet_count_across_a_reload() {
    // `la` (global async, 4 per minute) is untouched; only a route is added.
    // 4 per minute: one left.
    count_survives_a_reload("/a/x", "4/1m", "4/1m", &[200, 429]);
}

#[test]
fn listener_changes_wait_for_a_restart_and_say_so() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let original = body(&stub, &redis, "50/1m", "");
    let t = Tollgate::start(&original);
    let moved = format!("listen: 127.0.0.1:{}\nthreads: 3\n{original}", free_port());
    t.write_config(&moved);
    let status = wait_for("the reload", Duration::from_secs(2), || {
        let s = reload_status(&t);
        (s["generation"] == 2).then_some(s)
    });
    assert_eq!(status["result"], "ok");
    assert_eq!(
        status["restart_required"],
        serde_json::json!(["listen", "threads"])
    );
    assert_eq!(
        get(&t.url("/s/x")).status,
        200,
        "the old listener keeps its socket"
    );
}
