//! `tollgate check`: every broken config gets a located error and exit status 2.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn check(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(tollgate_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

const GOOD: &str = "listen: 0.0.0.0:8000
upstreams:
  service_a:
    backends: [127.0.0.1:8001]
routes:
  - prefix: /a
    upstream: service_a
";

#[test]
fn a_valid_config_prints_a_summary_and_exits_0() {
    let (code, stdout, stderr) = check(GOOD);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("the config is valid"), "{stdout}");
    assert!(stdout.contains("/a  -> service_a"), "{stdout}");
    assert!(stdout.contains("service_a: 127.0.0.1:8001"), "{stdout}");
    assert!(stdout.contains("admin  127.0.0.1:9000"), "{stdout}");
}

#[test]
fn the_shipped_config_is_valid() {
    let out = Command::new(tollgate_bin())
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (config, the located error it must print)
const BROKEN: &[(&str, &str)] = &[
    (
        // unknown key, named with its location
        "upstreams:\n  a:\n    backends: [127.0.0.1:1]\n    conect_timeout: 1s\nroutes: []\n",
        "FILE:4:5: upstreams.a: unknown field `conect_timeout`",
    ),
    (
        // a route naming a missing upstream
        "upstreams:\n  a:\n    backends: [127.0.0.1:1]\nroutes:\n  - prefix: /a\n    upstream: nope\n",
        "FILE:6:15: routes[0].upstream: unknown upstream `nope` (defined upstreams: a)",
    ),
    (
        // a duplicate prefix (a trailing slash does not make it different)
        "upstreams:\n  a:\n    backends: [127.0.0.1:1]\nroutes:\n  - prefix: /a\n    upstream: a\n  - prefix: /a/\n    upstream: a\n",
        "FILE:7:13: routes[1].prefix: duplicate prefix `/a`: routes[0] already uses it",
    ),
    (
        // an empty backend list
        "upstreams:\n  a:\n    backends: []\nroutes:\n  - prefix: /a\n    upstream: a\n",
        "FILE:3:15: upstreams.a.backends: is empty",
    ),
    (
        // an unparsable address
        "upstreams:\n  a:\n    backends:\n      - localhost\nroutes:\n  - prefix: /a\n    upstream: a\n",
        "FILE:4:9: upstreams.a.backends[0]: `localhost` is not a valid backend address: missing :port",
    ),
    (
        // a duration without a unit
        "upstreams:\n  a:\n    backends: [127.0.0.1:1]\n    read_timeout: 30\nroutes: []\n",
        "FILE:4:19: upstreams.a.read_timeout: `30` has no unit; write it like 30ms or 30s",
    ),
    (
        // a bad listen address
        "listen: localhost:http\nupstreams: {}\nroutes: []\n",
        "FILE:1:9: listen: `localhost:http` is not an ip:port address",
    ),
    (
        // a bare port where an address belongs
        "listen: 8000\nupstreams: {}\nroutes: []\n",
        "FILE:1:9: listen: invalid type: integer `8000`, expected an address like 0.0.0.0:8000",
    ),
    (
        // a YAML syntax error
        "upstreams:\n  a:\n    backends: [127.0.0.1:1\nroutes: []\n",
        "FILE:4:7: did not find expected ',' or ']', while parsing a flow sequence at line 3 column 15",
    ),
    (
        // the wrong type
        "threads: many\nupstreams: {}\nroutes: []\n",
        "FILE:1:10: threads: invalid type: string \"many\", expected usize",
    ),
    (
        // a prefix that is not a path
        "upstreams:\n  a:\n    backends: [127.0.0.1:1]\nroutes:\n  - prefix: a\n    upstream: a\n",
        "FILE:5:13: routes[0].prefix: `a` must start with /",
    ),
    (
        // an empty file
        "",
        "FILE:1:1: the file is empty",
    ),
];

#[test]
fn broken_configs_give_located_errors_and_exit_2() {
    for (yaml, expected) in BROKEN {
        let (code, _, stderr) = check(yaml);
        assert_eq!(code, 2, "{yaml}\n{stderr}");
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in:\n{stderr}"
        );
        assert!(stderr.contains("the config is not valid"), "{stderr}");
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let yaml = "listen: nowhere\nupstreams:\n  a:\n    backends: []\nroutes:\n  - prefix: /b\n    upstream: b\n  - prefix: x\n    upstream: a\n";
    let (code, _, stderr) = check(yaml);
    assert_eq!(code, 2);
    for expected in [
        "FILE:1:9: listen:",
        "FILE:4:15: upstreams.a.backends: is empty",
        "FILE:7:15: routes[0].upstream: unknown upstream `b`",
        "FILE:8:13: routes[1].prefix: `x` must start with /",
        "4 errors",
    ] {
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in:\n{stderr}"
        );
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = Command::new(tollgate_bin())
        .args(["check", "-c", "/nonexistent/tollgate.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read config /nonexistent/tollgate.yaml"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_an_invalid_config_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, BROKEN[1].0).unwrap();
    let out = output_within(
        Command::new(tollgate_bin()).args(["run", "-c"]).arg(&path),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown upstream `nope`"));
}

#[test]
fn a_taken_port_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:{port}\nadmin:\n  listen: 127.0.0.1:{}\n{GOOD}",
            free_port()
        )
        .replace("listen: 0.0.0.0:8000\n", ""),
    )
    .unwrap();
    let out = output_within(
        Command::new(tollgate_bin()).args(["run", "-c"]).arg(&path),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
}
