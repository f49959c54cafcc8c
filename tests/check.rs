//! `tollgate check`: every broken config gets a located error and exit status 2.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn check(yaml: &str) -> (i32, String, String) {
    check_with_env(yaml, &[])
}

fn check_with_env(yaml: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(tollgate_bin())
        .args(["check", "-c"])
        .arg(&path)
        .envs(env.iter().copied())
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
fn the_summary_shows_hosts_and_methods() {
    let yaml = "upstreams:\n  a:\n    backends: [127.0.0.1:1]\nroutes:\n  - prefix: /a\n    upstream: a\n  - prefix: /a\n    host: '*.Example.com'\n    methods: [get, POST]\n    upstream: a\n";
    let (code, stdout, stderr) = check(yaml);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("  /a               -> a\n"), "{stdout}");
    assert!(
        stdout.contains("  *.example.com/a  -> a  (GET POST)"),
        "{stdout}"
    );
}

#[test]
fn certificates_are_loaded_and_summarized_and_a_bad_one_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::certs::Ca::new(dir.path(), "check");
    let (cert, key) = ca.issue("site", &["example.com", "*.example.com"]);
    let listen = |cert: &str| {
        format!(
            "listen:\n  - address: 0.0.0.0:8443\n    tls:\n      certs:\n        - {{ cert: {cert}, key: {} }}\n    hsts: {{ max_age: 365d }}\n  - address: 0.0.0.0:8000\n    http2: true\nupstreams: {{}}\nroutes: []\n",
            key.display()
        )
    };
    let (code, stdout, stderr) = check(&listen(&cert.display().to_string()));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "proxy  0.0.0.0:8443 (TLS 1.2/1.3, ALPN h2 and http/1.1; HSTS max-age=31536000)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "cert {}: example.com, *.example.com (until ",
            cert.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("proxy  0.0.0.0:8000 (HTTP/1.1 and h2c)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("HTTP/2: up to 100 streams per connection, closed after 20 streams reset"),
        "{stdout}"
    );

    // A certificate that is missing, and one whose key belongs to another certificate.
    let (code, _, stderr) = check(&listen("missing.pem"));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("FILE:5:19: listen[0].tls.certs[0].cert: cannot read ")
            && stderr.contains("missing.pem: No such file"),
        "{stderr}"
    );
    let (other, _) = ca.issue("other", &["other.test"]);
    let (code, _, stderr) = check(&listen(&other.display().to_string()));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("listen[0].tls.certs[0].key: ")
            && stderr.contains("does not belong to the certificate"),
        "{stderr}"
    );
}

#[test]
fn tls_backends_are_summarized_and_checked() {
    let yaml = "upstreams:\n  a:\n    backends:\n      - { address: 127.0.0.1:8443, tls: true, sni: api.test, verify: false, http2: true }\n      - { address: 127.0.0.1:9000, weight: 3 }\nroutes:\n  - prefix: /a\n    upstream: a\n";
    let (code, stdout, stderr) = check(yaml);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "a: 127.0.0.1:8443 (TLS to api.test, not verified; HTTP/2), 127.0.0.1:9000 (weight 3)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("upstreams.a.backends[0].verify: the backend's certificate is not checked"),
        "{stdout}"
    );
    // TLS settings on a plaintext backend, and a CA file that does not load.
    let (code, _, stderr) = check("upstreams:\n  a:\n    backends:\n      - { address: 127.0.0.1:80, sni: x.test }\nroutes:\n  - prefix: /a\n    upstream: a\n");
    assert_eq!(code, 2);
    assert!(stderr.contains("FILE:4:39: upstreams.a.backends[0].sni: only applies to a TLS backend; add `tls: true`"), "{stderr}");
    let (code, _, stderr) = check("upstreams:\n  a:\n    backends:\n      - { address: 127.0.0.1:80, tls: true, ca_file: /nonexistent/ca.pem }\nroutes:\n  - prefix: /a\n    upstream: a\n");
    assert_eq!(code, 2);
    assert!(
        stderr.contains("upstreams.a.backends[0]: cannot read ca_file /nonexistent/ca.pem"),
        "{stderr}"
    );
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
        // the same host and prefix twice (host case does not make it different)
        "upstreams:\n  a:\n    backends: [127.0.0.1:1]\nroutes:\n  - prefix: /a\n    host: api.example.com\n    upstream: a\n  - prefix: /a\n    host: API.example.com\n    upstream: a\n",
        "FILE:8:13: routes[1].prefix: duplicate prefix `/a` on host `api.example.com`: routes[0] already uses it",
    ),
    (
        // a host with a port
        "upstreams:\n  a:\n    backends: [127.0.0.1:1]\nroutes:\n  - prefix: /a\n    host: api.example.com:8080\n    upstream: a\n",
        "FILE:6:11: routes[0].host: `api.example.com:8080` has a port",
    ),
    (
        // a method that is not a token
        "upstreams:\n  a:\n    backends: [127.0.0.1:1]\nroutes:\n  - prefix: /a\n    methods: [GET, 'PO ST']\n    upstream: a\n",
        "FILE:6:20: routes[0].methods[1]: `PO ST` is not an HTTP method",
    ),
    (
        // HSTS on a plaintext listener
        "listen:\n  - address: 127.0.0.1:8000\n    hsts: {}\nupstreams: {}\nroutes: []\n",
        "FILE:3:11: listen.hsts: HSTS is only honoured over HTTPS",
    ),
    (
        // a TLS listener without certificates
        "listen:\n  - 127.0.0.1:8000\n  - address: 127.0.0.1:8443\n    tls: { certs: [] }\n    redirect_https: 443\nupstreams: {}\nroutes: []\n",
        "FILE:4:19: listen[1].tls.certs: is empty",
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
    (
        // an origin with a path, pointed at in its list
        "upstreams: {}\nroutes: []\nadmin:\n  allowed_origins:\n    - https://ops.example.com\n    - https://ops.example.com/admin\n",
        "FILE:6:7: admin.allowed_origins[1]: `https://ops.example.com/admin` has `/admin` after the host; an origin is only scheme://host[:port], like https://ops.example.com",
    ),
    (
        // a wildcard origin
        "upstreams: {}\nroutes: []\nadmin:\n  allowed_origins: ['*']\n",
        "FILE:4:21: admin.allowed_origins[0]: `*` would let every web site drive the admin API",
    ),
    (
        // the origin of sandboxed frames and files
        "upstreams: {}\nroutes: []\nadmin:\n  allowed_origins: ['null']\n",
        "admin.allowed_origins[0]: `null` is the origin of sandboxed frames",
    ),
    (
        // a host with a port, and a URL where a host name belongs
        "upstreams: {}\nroutes: []\nadmin:\n  allowed_hosts: [ops.example.com:9000]\n",
        "FILE:4:19: admin.allowed_hosts[0]: `ops.example.com:9000` has a port; list the name alone",
    ),
    (
        "upstreams: {}\nroutes: []\nadmin:\n  allowed_hosts: ['https://ops.example.com']\n",
        "admin.allowed_hosts[0]: `https://ops.example.com` is a URL; give the host name alone",
    ),
    (
        // turning the Host check off
        "upstreams: {}\nroutes: []\nadmin:\n  allowed_hosts: ['*']\n",
        "admin.allowed_hosts[0]: `*` would turn the Host check off",
    ),
    (
        // a window over a day that is not a calendar unit
        "upstreams: {}\nroutes: []\nlimits:\n  x:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 10/36h\n    scope: local\n",
        "FILE:7:11: limits.x.rate: `10/36h`: windows longer than 24h follow the calendar; use 1w (from Monday 00:00) or 1mo (from the 1st, 00:00)",
    ),
    (
        "upstreams: {}\nroutes: []\nlimits:\n  x:\n    key: client_ip\n    algorithm: sliding_window\n    rate: 10/2w\n    scope: local\n",
        "FILE:7:11: limits.x.rate: `10/2w`: a calendar period is one week; write 1w",
    ),
    (
        // a bucket refilled per calendar month
        "upstreams: {}\nroutes: []\nlimits:\n  x:\n    key: client_ip\n    algorithm: token_bucket\n    rate: 100/1mo\n    scope: local\n",
        "FILE:7:11: limits.x.rate: `100/1mo`: calendar periods need a window algorithm (fixed_window or sliding_window)",
    ),
    (
        // a time zone that moves no boundary
        "upstreams: {}\nroutes: []\nlimits:\n  x:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 10/1s\n    timezone: Europe/Berlin\n    scope: local\n",
        "FILE:8:15: limits.x.timezone: Europe/Berlin has no effect on 10/1s: a timezone sets where days, weeks and months begin",
    ),
    (
        "upstreams: {}\nroutes: []\nlimits:\n  x:\n    key: client_ip\n    algorithm: gcra\n    rate: 10/1d\n    timezone: Europe/Berlin\n    scope: local\n",
        "FILE:8:15: limits.x.timezone: gcra has no calendar periods",
    ),
    (
        // a misspelt time zone
        "upstreams: {}\nroutes: []\nlimits:\n  x:\n    key: client_ip\n    algorithm: fixed_window\n    rate: 10/1d\n    timezone: europe/paris\n    scope: local\n",
        "FILE:8:15: limits.x.timezone: `europe/paris` is not a time zone; did you mean Europe/Paris?",
    ),
];

#[test]
fn calendar_quotas_are_summarized_with_their_time_zone() {
    let yaml = format!(
        "{GOOD}    limits: [monthly, daily, weekly]
limits:
  monthly:
    key: api_key
    algorithm: fixed_window
    rate: 1000000/1mo
    timezone: Asia/Tokyo
    scope: local
    tiers:
      free: {{ rate: 1000/1d }}
  daily: {{ key: client_ip, algorithm: sliding_window, rate: 10000/1d, scope: local }}
  weekly: {{ key: client_ip, algorithm: fixed_window, rate: 500/1w, timezone: America/New_York, scope: local }}
"
    );
    let (code, stdout, stderr) = check(&yaml);
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "monthly: fixed_window 1000000/1mo from the 1st 00:00 Asia/Tokyo per api_key, local",
        "tier free: 1000/1d from midnight Asia/Tokyo",
        "daily: sliding_window 10000/1d from midnight UTC per client_ip, local",
        "weekly: fixed_window 500/1w from Monday 00:00 America/New_York per client_ip, local",
    ] {
        assert!(
            stdout.contains(expected),
            "expected `{expected}` in:\n{stdout}"
        );
    }
}

#[test]
fn admin_web_entries_that_change_nothing_are_warned_about() {
    let (code, stdout, stderr) = check(&format!(
        "{GOOD}admin:\n  allowed_hosts: [ops.example.com, 127.0.0.1, localhost, .example.com, OPS.example.com.]\n  allowed_origins: [https://ops.example.com, 'HTTPS://ops.example.com:443']\n"
    ));
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "admin.allowed_hosts[1]: `127.0.0.1` is always accepted",
        "admin.allowed_hosts[2]: `localhost` is always accepted",
        "admin.allowed_hosts[4]: `ops.example.com` is listed twice",
        "admin.allowed_origins[1]: `https://ops.example.com` is listed twice",
    ] {
        assert!(
            stdout.contains(expected),
            "expected `{expected}` in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("allowed_hosts[3]"), "{stdout}");
    // The summary shows the normalized entries.
    assert!(
        stdout.contains(
            "also answers to ops.example.com, 127.0.0.1, localhost, .example.com, ops.example.com"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("pages of https://ops.example.com, https://ops.example.com may call it"),
        "{stdout}"
    );
}

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

#[test]
fn environment_variables_fill_in_values_and_a_missing_one_is_a_located_error() {
    let yaml = "listen: ${TG_TEST_LISTEN:-0.0.0.0:8000}
threads: ${TG_TEST_THREADS:-1}
upstreams:
  service_a:
    backends:
      - ${TG_TEST_BACKEND}
routes:
  - prefix: /a
    upstream: service_a
";
    let (code, stdout, stderr) = check_with_env(
        yaml,
        &[
            ("TG_TEST_BACKEND", "127.0.0.1:8009"),
            ("TG_TEST_THREADS", "2"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("service_a: 127.0.0.1:8009"), "{stdout}");
    assert!(
        stdout.contains("0.0.0.0:8000"),
        "the default applies: {stdout}"
    );

    let (code, _, stderr) = check(yaml);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "FILE:6:9: upstreams.service_a.backends[0]: the environment variable TG_TEST_BACKEND is not set"
        ),
        "{stderr}"
    );
    // `$$` is a literal dollar; a broken reference says what is wrong where.
    let (code, _, stderr) = check(&yaml.replace("${TG_TEST_BACKEND}", "${TG_TEST_BACKEND"));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("FILE:6:9:") && stderr.contains("no closing"),
        "{stderr}"
    );
}

#[test]
fn redis_shapes_that_make_no_sense_are_located() {
    for (section, expected) in [
        (
            "redis:\n  url: redis://127.0.0.1:6379\n  cluster: [127.0.0.1:7000]\n",
            "FILE:10:12: redis.cluster: `url`, `cluster` and `sentinel` are three ways to reach Redis: give only one",
        ),
        (
            "redis:\n  cluster: []\n",
            "FILE:9:12: redis.cluster: must name at least one host:port",
        ),
        (
            "redis:\n  cluster: [127.0.0.1:7000, 'nohost']\n",
            "FILE:9:29: redis.cluster[1]: `nohost` is not host:port",
        ),
        (
            "redis:\n  sentinel:\n    master: main\n    nodes: [127.0.0.1:0]\n",
            "FILE:11:13: redis.sentinel.nodes[0]: `127.0.0.1:0` is not host:port",
        ),
    ] {
        let (code, _, stderr) = check(&format!("{GOOD}{section}"));
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(expected), "wanted {expected}\n{stderr}");
    }
    let (code, out, stderr) = check(&format!(
        "{GOOD}redis:\n  sentinel: {{master: main, nodes: [10.0.0.7:26379, 10.0.0.8:26379]}}\n"
    ));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        out.contains("redis: sentinel master main via 10.0.0.7:26379,10.0.0.8:26379"),
        "{out}"
    );
}

#[test]
fn named_admin_tokens_are_checked_with_their_paths() {
    let yaml = format!(
        "{GOOD}admin:
  tokens:
    - name: deployer
      role: write
      token: a-long-enough-token-1
    - name: deployer
      role: read
      token_env: TG_UNSET_TOKEN_FOR_CHECK
    - name: both
      role: read
      token: a-long-enough-token-2
      token_env: TG_SOME_TOKEN
    - name: same-secret
      role: read
      token: a-long-enough-token-1
"
    );
    let (code, _, stderr) = check(&yaml);
    assert_eq!(code, 2, "{stderr}");
    for expected in [
        "admin.tokens[1].name: `deployer` is used by another token",
        "admin.tokens[1]: the environment variable `TG_UNSET_TOKEN_FOR_CHECK` is not set",
        "admin.tokens[2]: give `token` or `token_env`, not both",
        "admin.tokens[3]: the same secret as admin.tokens[0]",
    ] {
        assert!(stderr.contains(expected), "no `{expected}` in:\n{stderr}");
    }
    let (code, _, stderr) = check(&format!(
        "{GOOD}admin:\n  tokens:\n    - name: viewer\n      role: admin\n      token: a-long-enough-token-1\n"
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("unknown variant `admin`, expected `read` or `write`"),
        "{stderr}"
    );
}

#[test]
fn fleet_wide_concurrency_is_accepted_and_what_makes_no_sense_is_located() {
    let config = |redis: bool, extra: &str| {
        format!(
            "{}upstreams:\n  a:\n    backends: [127.0.0.1:1]\nlimits:\n  c:\n    key: client_ip\n    algorithm: concurrency\n    limit: 6\n    scope: global\n{extra}routes:\n  - prefix: /a\n    upstream: a\n    limits: [c]\n",
            if redis { "redis:\n  url: redis://127.0.0.1:6379\n" } else { "" }
        )
    };
    for sync in ["async", "atomic"] {
        let (code, stdout, stderr) = check(&config(true, &format!("    sync: {sync}\n")));
        assert_eq!(code, 0, "{sync}: {stderr}");
        assert!(stdout.contains("6 in flight"), "{stdout}");
    }
    // Each error names the file, line and column, and the key.
    for (redis, extra, expected) in [
        (
            false,
            "",
            "FILE:9:12: limits.c.scope: a global limit needs a `redis` section",
        ),
        (
            true,
            "    on_limit: delay\n",
            "FILE:12:15: limits.c.on_limit: a concurrency limit cannot tell when a slot frees up",
        ),
        (
            true,
            "    cost: response_json:usage.total_tokens\n",
            "FILE:12:11: limits.c.cost:",
        ),
        (
            true,
            "    count_status: [200]\n",
            "FILE:12:19: limits.c.count_status: a concurrency limit counts requests in flight",
        ),
    ] {
        let (code, _, stderr) = check(&config(redis, extra));
        assert_eq!(code, 2, "{extra}: {stderr}");
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in:\n{stderr}"
        );
    }
}
