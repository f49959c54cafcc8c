//! TLS and HTTP/2 to backends, with nginx as the backend: verification against a CA file,
//! SNI, the wrong CA refused (and never served from another upstream's pooled connection),
//! health checks over the same transport, and HTTP/2 over TLS and h2c.

mod common;
use common::certs::Ca;
use common::nginx::Nginx;
use common::*;
use std::time::Duration;

struct Setup {
    _dir: tempfile::TempDir,
    _nginx: Nginx,
    t: Tollgate,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "backend");
    let other_ca = Ca::new(dir.path(), "other");
    let (cert, key) = ca.issue("backend", &["backend.test", "127.0.0.1"]);
    let body = r#"'{"service":"nginx","protocol":"$server_protocol","sni":"$ssl_server_name","path":"$uri"}'"#;
    let nginx = Nginx::start(
        2,
        &format!(
            "  server {{
    listen 127.0.0.1:{{port0}} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location = /health {{ return 200 '{{\"status\":\"ok\"}}'; }}
    location / {{ return 200 {body}; }}
  }}
  server {{
    listen 127.0.0.1:{{port1}} http2;
    location / {{ return 200 {body}; }}
  }}",
            cert = cert.display(),
            key = key.display(),
        ),
    );
    let tls = format!("127.0.0.1:{}", nginx.ports[0]);
    let h2c = format!("127.0.0.1:{}", nginx.ports[1]);
    let (ca, other) = (ca.cert.display(), other_ca.cert.display());
    let check = "health_check: { path: /health, interval: 100ms, timeout: 1s }";
    let config = format!(
        "upstreams:
  good:
    backends: [{{ address: '{tls}', tls: true, ca_file: '{ca}' }}]
    {check}
  wrong_ca:
    backends: [{{ address: '{tls}', tls: true, ca_file: '{other}' }}]
    {check}
  by_name:
    backends: [{{ address: '{tls}', tls: true, sni: backend.test, ca_file: '{ca}' }}]
  wrong_name:
    backends: [{{ address: '{tls}', tls: true, sni: elsewhere.test, ca_file: '{ca}' }}]
  unverified:
    backends: [{{ address: '{tls}', tls: true, verify: false }}]
  h2:
    backends: [{{ address: '{tls}', tls: true, ca_file: '{ca}', http2: true }}]
    {check}
  h2c:
    backends: [{{ address: '{h2c}', http2: true }}]
routes:
  - {{ prefix: /good, upstream: good, strip_prefix: true }}
  - {{ prefix: /wrong, upstream: wrong_ca, strip_prefix: true }}
  - {{ prefix: /name, upstream: by_name, strip_prefix: true }}
  - {{ prefix: /wrongname, upstream: wrong_name, strip_prefix: true }}
  - {{ prefix: /unverified, upstream: unverified, strip_prefix: true }}
  - {{ prefix: /h2, upstream: h2, strip_prefix: true }}
  - {{ prefix: /h2c, upstream: h2c, strip_prefix: true }}
"
    );
    let t = Tollgate::start(&config);
    Setup {
        _dir: dir,
        _nginx: nginx,
        t,
    }
}

#[test]
fn a_verified_tls_backend_works_and_the_wrong_ca_or_name_gets_502() {
    let s = setup();
    let agent = agent();
    let r = get_with(&agent, &s.t.url("/good/x"), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["protocol"], "HTTP/1.1");
    assert_eq!(r.json()["path"], "/x");
    // SNI is the address's host unless set; an IP address sends none.
    assert_eq!(r.json()["sni"], "");
    let r = get_with(&agent, &s.t.url("/name/x"), &[]);
    assert_eq!(
        (r.status, r.json()["sni"].clone()),
        (200, "backend.test".into())
    );

    for path in ["/wrong/x", "/wrongname/x"] {
        let r = get_with(&agent, &s.t.url(path), &[]);
        assert_eq!(r.status, 502, "{path}: {}", r.body);
        assert_eq!(r.json()["error"], "upstream_unavailable", "{path}");
    }
    // Without verification any certificate is accepted (and check warns about it).
    assert_eq!(get_with(&agent, &s.t.url("/unverified/x"), &[]).status, 200);
}

#[test]
fn two_upstreams_that_differ_only_in_their_ca_never_share_a_connection() {
    let s = setup();
    let agent = agent();
    // Same address, same SNI, same verification flags: Pingora's pool key alone would
    // hand the wrong-CA upstream the connection the right-CA one just left idle.
    for round in 0..10 {
        let good = get_with(&agent, &s.t.url("/good/x"), &[]);
        assert_eq!(good.status, 200, "round {round}: {}", good.body);
        let wrong = get_with(&agent, &s.t.url("/wrong/x"), &[]);
        assert_eq!(wrong.status, 502, "round {round}: {}", wrong.body);
    }
}

#[test]
fn health_checks_use_the_backends_transport() {
    let s = setup();
    let up = |upstream: &str| {
        s.t.metric(&format!(r#"tollgate_backend_up{{upstream="{upstream}"}}"#))
    };
    let shown = || {
        s.t.metrics()
            .lines()
            .filter(|l| l.starts_with("tollgate_backend_up"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let what = format!("health checks to settle (now {})", shown());
    wait_for(&what, Duration::from_secs(5), || {
        (up("good") == Some(1.0) && up("wrong_ca") == Some(0.0) && up("h2") == Some(1.0))
            .then_some(())
    });
}

#[test]
fn http2_reaches_backends_over_tls_and_h2c() {
    let s = setup();
    let agent = agent();
    for path in ["/h2/x", "/h2c/x"] {
        let r = get_with(&agent, &s.t.url(path), &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(r.json()["protocol"], "HTTP/2.0", "{path}");
        assert_eq!(r.json()["path"], "/x", "{path}");
    }
    // Many requests at once share HTTP/2 connections to the backend.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let url = s.t.url("/h2/y");
            std::thread::spawn(move || {
                let client = common::agent();
                (0..25)
                    .filter(|_| get_with(&client, &url, &[]).status == 200)
                    .count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, 200);
}
