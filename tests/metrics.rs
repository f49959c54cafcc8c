//! The admin listener's Prometheus metrics move with traffic and pass `promtool`.

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

fn setup() -> (Stub, Tollgate) {
    let a = Stub::start("a");
    let t = Tollgate::start(&format!(
        "upstreams:
  service_a:
    backends: [{}]
    health_check: {{ path: /health, interval: 200ms, timeout: 100ms }}
limits:
  lim:
    key: client_ip
    algorithm: sliding_window
    rate: 1000/1m
    scope: local
routes:
  - prefix: /a
    upstream: service_a
    limits: [lim]
",
        a.address()
    ));
    (a, t)
}

#[test]
fn counters_and_histograms_follow_traffic() {
    let (a, t) = setup();
    let agent = agent();
    for _ in 0..7 {
        assert_eq!(get_with(&agent, &t.url("/a/x"), &[]).status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get_with(&agent, &t.url("/zzz"), &[]).status, 404);
    }
    assert_eq!(send(&agent, "POST", &t.url("/a/p"), "x").status, 200);

    // A request is counted in Pingora's logging phase, just after its response is sent:
    // the client can read its answer a moment before the counter moves.
    let text = wait_for(
        "the last request to be counted",
        std::time::Duration::from_secs(5),
        || {
            let text = t.metrics();
            metric_value(
                &text,
                r#"tollgate_request_duration_seconds_count{route="/a"}"#,
            )
            .is_some_and(|n| n >= 8.0)
            .then_some(text)
        },
    );
    let value = |s: &str| metric_value(&text, s);
    assert_eq!(
        value(r#"tollgate_requests_total{route="/a",method="GET",status="200"}"#),
        Some(7.0)
    );
    assert_eq!(
        value(r#"tollgate_requests_total{route="/a",method="POST",status="200"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(r#"tollgate_requests_total{route="unmatched",method="GET",status="404"}"#),
        Some(3.0)
    );
    assert_eq!(
        value(r#"tollgate_request_duration_seconds_count{route="/a"}"#),
        Some(8.0)
    );
    assert_eq!(
        value(r#"tollgate_request_duration_seconds_bucket{route="/a",le="+Inf"}"#),
        Some(8.0)
    );
    assert_eq!(
        value(&format!(
            r#"tollgate_backend_up{{upstream="service_a",backend="{}"}}"#,
            a.address()
        )),
        Some(1.0)
    );
    assert!(text.contains("# TYPE tollgate_upstream_errors_total counter"));
    assert_eq!(
        value(r#"tollgate_ratelimit_decisions_total{policy="lim",result="allowed"}"#),
        Some(8.0)
    );
    assert_eq!(value("tollgate_redis_up"), Some(0.0));
    assert!(text.contains("# TYPE tollgate_request_duration_seconds histogram"));
}

#[test]
fn promtool_accepts_the_exposition() {
    let promtool = require_tool(
        "promtool",
        "install it with `apt-get install -y prometheus` (it ships promtool); .ci/run does this",
    );
    let (_a, t) = setup();
    let agent = agent();
    get_with(&agent, &t.url("/a/x"), &[]);
    get_with(&agent, &t.url("/nope"), &[]);
    get_with(&agent, &t.url(&format!("/a/dead/{}", free_port())), &[]);
    let text = t.metrics();
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_admin_paths_are_404_json() {
    let (_a, t) = setup();
    let r = get(&t.admin_url("/nope"));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
}
