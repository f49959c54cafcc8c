//! Envoy's rate limit service: a gRPC client written against the published Envoy API
//! (`envoy-types`) calls a real tollgate serving envoyproxy/ratelimit's own config files,
//! written out here in their schema, on a real Redis. The sequences are those of their
//! integration tests (test/integration/integration_test.go).

mod common;
use common::*;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::{Entry, RateLimitOverride},
    RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Their test/integration/runtime/current/ratelimit/config/basic.yaml.
const BASIC: &str = "\
domain: basic
descriptors:
  - key: key1
    rate_limit:
      unit: second
      requests_per_unit: 50

  - key: key1_local
    rate_limit:
      unit: second
      requests_per_unit: 50

  - key: one_per_minute
    rate_limit:
      unit: minute
      requests_per_unit: 1
";

/// Their another.yaml.
const ANOTHER: &str = "\
domain: another
descriptors:
  - key: key2
    rate_limit:
      unit: minute
      requests_per_unit: 20

  - key: key3
    rate_limit:
      unit: hour
      requests_per_unit: 10

  - key: key4
    rate_limit:
      unit: day
      requests_per_unit: 20
";

/// Their examples/ratelimit/config/example.yaml (the parts this test calls), and
/// config.yaml.
const EXAMPLE: &str = "\
---
domain: rl
descriptors:
  - key: category
    value: account
    rate_limit:
      replaces:
        - name: bkthomps
        - name: fake_name
      unit: minute
      requests_per_unit: 4
  - key: source_cluster
    value: proxy
    descriptors:
      - key: destination_cluster
        value: bkthomps
        rate_limit:
          replaces:
            - name: bkthomps
          unit: minute
          requests_per_unit: 2
      - key: destination_cluster
        value: mock
        rate_limit:
          unit: minute
          requests_per_unit: 1
  - key: foo
    rate_limit:
      unit: minute
      requests_per_unit: 2
    descriptors:
      - key: bar
        rate_limit:
          unit: minute
          requests_per_unit: 3
      - key: bar
        value: bkthomps
        rate_limit:
          name: bkthomps
          unit: minute
          requests_per_unit: 1
      - key: bar
        value: banned
        rate_limit:
          name: banned_limit
          unit: minute
          requests_per_unit: 0
      - key: baz
        value: shady
        rate_limit:
          unit: minute
          requests_per_unit: 3
        shadow_mode: true
      - key: bay
        rate_limit:
          unlimited: true
  - key: unspec
    detailed_metric: true
    rate_limit:
      unit: minute
      requests_per_unit: 2
  - key: qux
    rate_limit:
      unlimited: true
  - key: service
    value: service_1
    quota_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 1
    metadata:
      service_with_quota:
        name: \"service_1\"
  - key: service
    value: service_2
    quota_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 2
";

/// Wildcards (their README's example 9 and 11) and tollgate's additions.
const WILDCARDS: &str = "\
domain: wild
descriptors:
  - key: path
    value: /api/*/action
    rate_limit:
      unit: minute
      requests_per_unit: 2
  - key: files
    value: files/*
    share_threshold: true
    rate_limit:
      unit: hour
      requests_per_unit: 3
  - key: tg
    rate_limit:
      rate: 3/30s
      algorithm: sliding_window
      sync: atomic
";

/// A sync gRPC client on its own runtime.
struct Client {
    rt: tokio::runtime::Runtime,
    client: RateLimitServiceClient<tonic::transport::Channel>,
}

impl Client {
    fn connect(addr: std::net::SocketAddr) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match RateLimitServiceClient::connect(format!("http://{addr}")).await {
                    Ok(c) => return c,
                    Err(e) if Instant::now() > deadline => {
                        panic!("the rate limit service on {addr} does not answer: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Client { rt, client }
    }

    fn call(&mut self, request: RateLimitRequest) -> Result<RateLimitResponse, tonic::Status> {
        let client = &mut self.client;
        self.rt
            .block_on(client.should_rate_limit(request))
            .map(|r| r.into_inner())
    }

    fn ok(&mut self, request: RateLimitRequest) -> RateLimitResponse {
        self.call(request).expect("a ShouldRateLimit answer")
    }
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

fn request(domain: &str, descriptors: &[&[(&str, &str)]]) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: descriptors.iter().map(|d| descriptor(d)).collect(),
        hits_addend: 0,
    }
}

fn status(r: &RateLimitResponse, i: usize) -> (Code, Option<(u32, Unit)>, u32) {
    let s: &DescriptorStatus = &r.statuses[i];
    (
        s.code(),
        s.current_limit
            .as_ref()
            .map(|l| (l.requests_per_unit, l.unit())),
        s.limit_remaining,
    )
}

fn overall(r: &RateLimitResponse) -> Code {
    r.overall_code()
}

fn write_files(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("config dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write their file");
    }
}

/// A tollgate serving `files` over RLS (with Redis when given); returns it, its RLS
/// address and the folder of the files.
fn start(
    files: &[(&str, &str)],
    redis: Option<&Redis>,
) -> (Tollgate, std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(&dir.path().join("ratelimit"), files);
    let rls: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let redis_section = redis
        // A generous timeout: a new key's first call waits for its grant, and on a busy
        // machine 25 ms (the default) could degrade it to the node's local share.
        .map(|r| {
            format!(
                "redis:\n  url: {}\n  sync_interval: 20ms\n  timeout: 2s\n",
                r.url()
            )
        })
        .unwrap_or_default();
    let body = format!(
        "{redis_section}rls:\n  listen: {rls}\n  config_dir: {}\n",
        dir.path().join("ratelimit").display()
    );
    let t = Tollgate::start(&body);
    if redis.is_some() {
        t.wait_redis_up(Duration::from_secs(10));
    }
    (t, rls, dir)
}

#[test]
fn their_integration_sequence() {
    let redis = Redis::start();
    let (_t, addr, _dir) = start(
        &[("basic.yaml", BASIC), ("another.yaml", ANOTHER)],
        Some(&redis),
    );
    let mut c = Client::connect(addr);

    // An unknown domain: OK, with no limit.
    let r = c.ok(request("foo", &[&[("hello", "world")]]));
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(status(&r, 0), (Code::Ok, None, 0));
    assert!(r.statuses[0].duration_until_reset.is_none());

    let r = c.ok(request("basic", &[&[("key1", "foo")]]));
    assert_eq!(status(&r, 0), (Code::Ok, Some((50, Unit::Second)), 49));

    // A 20/min key called 25 times: the remainder counts down, then OVER_LIMIT.
    let value = format!("{}", rand_value());
    for i in 0..25u32 {
        let r = c.ok(request("another", &[&[("key2", &value)]]));
        let (code, remaining) = if i >= 20 {
            (Code::OverLimit, 0)
        } else {
            (Code::Ok, 20 - (i + 1))
        };
        assert_eq!(overall(&r), code, "call {i}");
        assert_eq!(
            status(&r, 0),
            (code, Some((20, Unit::Minute)), remaining),
            "call {i}"
        );
        let reset = r.statuses[0]
            .duration_until_reset
            .as_ref()
            .expect("a reset")
            .seconds;
        assert!((1..=60).contains(&reset), "call {i}: reset {reset}s");
    }

    // Two descriptors together: 20/min and 10/h. Once the second is over, the request is
    // refused and charges neither (all-or-nothing): the first stays at 10 left.
    let value = format!("{}", rand_value());
    for i in 0..15u32 {
        let r = c.ok(request(
            "another",
            &[&[("key2", &value)], &[("key3", &value)]],
        ));
        let (code, first, second) = if i >= 10 {
            (Code::OverLimit, 10, 0)
        } else {
            (Code::Ok, 20 - (i + 1), 10 - (i + 1))
        };
        assert_eq!(overall(&r), code, "call {i}");
        assert_eq!(
            status(&r, 0),
            (Code::Ok, Some((20, Unit::Minute)), first),
            "call {i}"
        );
        assert_eq!(
            status(&r, 1),
            (code, Some((10, Unit::Hour)), second),
            "call {i}"
        );
    }

    // duration_until_reset counts down: call (without counting) until it has.
    let check = || {
        let mut r = request("another", &[&[("key4", "durTest")]]);
        r.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
        r
    };
    let first = c.ok(check()).statuses[0]
        .duration_until_reset
        .expect("reset")
        .seconds;
    assert!((1..=86_400).contains(&first));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = c.ok(check()).statuses[0]
            .duration_until_reset
            .expect("reset")
            .seconds;
        if now < first {
            break;
        }
        assert!(now == first, "the reset went from {first}s up to {now}s");
        assert!(
            Instant::now() < deadline,
            "duration_until_reset stayed at {first}s for 5s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rand_value() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}

#[test]
fn their_example_replaces_shadow_unlimited_zero_wildcards_and_hits_addend() {
    let redis = Redis::start();
    let (t, addr, _dir) = start(
        &[("example.yaml", EXAMPLE), ("wild.yaml", WILDCARDS)],
        Some(&redis),
    );
    let mut c = Client::connect(addr);

    // Example 7: (foo, bar=bkthomps) is 1/min alone; with (category, account) it is
    // replaced by 4/min, and its own limit is not touched.
    let r = c.ok(request(
        "rl",
        &[
            &[("foo", "x"), ("bar", "bkthomps")],
            &[("category", "account")],
        ],
    ));
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(
        status(&r, 0),
        (Code::Ok, None, 0),
        "replaced: not evaluated"
    );
    assert_eq!(status(&r, 1), (Code::Ok, Some((4, Unit::Minute)), 3));
    let r = c.ok(request("rl", &[&[("foo", "x"), ("bar", "bkthomps")]]));
    assert_eq!(status(&r, 0), (Code::Ok, Some((1, Unit::Minute)), 0));
    let r = c.ok(request("rl", &[&[("foo", "x"), ("bar", "bkthomps")]]));
    assert_eq!(status(&r, 0), (Code::OverLimit, Some((1, Unit::Minute)), 0));
    // The most specific match: bar=other takes the 3/min of `bar` without a value.
    let r = c.ok(request("rl", &[&[("foo", "x"), ("bar", "other")]]));
    assert_eq!(status(&r, 0), (Code::Ok, Some((3, Unit::Minute)), 2));

    // requests_per_unit 0 always refuses.
    for _ in 0..3 {
        let r = c.ok(request("rl", &[&[("foo", "x"), ("bar", "banned")]]));
        assert_eq!(overall(&r), Code::OverLimit);
        assert_eq!(status(&r, 0), (Code::OverLimit, Some((0, Unit::Minute)), 0));
    }

    // Unlimited: OK with the most a u32 holds left, no limit.
    let r = c.ok(request("rl", &[&[("qux", "anything")]]));
    assert_eq!(status(&r, 0), (Code::Ok, None, u32::MAX));

    // Shadow mode: OK past the limit of 3, but counted.
    for i in 0..5 {
        let r = c.ok(request("rl", &[&[("foo", "x"), ("baz", "shady")]]));
        assert_eq!(overall(&r), Code::Ok, "shadow call {i}");
        assert_eq!(r.statuses[0].code(), Code::Ok, "shadow call {i}");
    }
    let shadowed = t
        .metric(r#"tollgate_rls_shadow_mode_total{domain="rl",descriptor="foo.baz_shady"}"#)
        .unwrap_or(0.0);
    assert_eq!(
        shadowed,
        2.0,
        "calls 4 and 5 were over the limit:\n{}",
        t.metrics()
    );

    // Quota mode: over only when every quota descriptor is.
    let both = || {
        request(
            "rl",
            &[&[("service", "service_1")], &[("service", "service_2")]],
        )
    };
    assert_eq!(overall(&c.ok(both())), Code::Ok);
    let r = c.ok(both());
    assert_eq!(overall(&r), Code::Ok, "service_2 still has quota: {r:?}");
    assert_eq!(r.statuses[0].code(), Code::OverLimit);
    assert_eq!(overall(&c.ok(both())), Code::OverLimit);

    // hits_addend on the request, and per descriptor.
    let mut r = request("rl", &[&[("unspec", "a")]]);
    r.hits_addend = 2;
    assert_eq!(status(&c.ok(r), 0), (Code::Ok, Some((2, Unit::Minute)), 0));
    let mut r = request("rl", &[&[("unspec", "b")]]);
    r.descriptors[0].hits_addend = Some(UInt64Value { value: 3 });
    assert_eq!(
        status(&c.ok(r), 0).0,
        Code::OverLimit,
        "3 hits never fit in 2"
    );
    let r = request("rl", &[&[("unspec", "b")]]);
    assert_eq!(
        status(&c.ok(r), 0),
        (Code::Ok, Some((2, Unit::Minute)), 1),
        "the refused 3 counted nothing"
    );

    // A limit in the request overrides the config's.
    let mut r = request("rl", &[&[("unspec", "c")]]);
    r.descriptors[0].limit = Some(RateLimitOverride {
        requests_per_unit: 7,
        unit: Unit::Hour as i32,
    });
    assert_eq!(status(&c.ok(r), 0), (Code::Ok, Some((7, Unit::Hour)), 6));

    // Wildcards: a `*` in the middle; a shared threshold across every match.
    for i in 0..3 {
        let r = c.ok(request("wild", &[&[("path", "/api/42/action")]]));
        let expected = if i < 2 { Code::Ok } else { Code::OverLimit };
        assert_eq!(overall(&r), expected, "call {i}");
    }
    let r = c.ok(request("wild", &[&[("path", "/api/43/action")]]));
    assert_eq!(overall(&r), Code::Ok, "another value has its own threshold");
    let r = c.ok(request("wild", &[&[("path", "/api/42/other")]]));
    assert_eq!(status(&r, 0), (Code::Ok, None, 0), "no match");
    for (i, file) in ["files/a", "files/b", "files/c", "files/d"]
        .iter()
        .enumerate()
    {
        let r = c.ok(request("wild", &[&[("files", file)]]));
        let expected = if i < 3 { Code::Ok } else { Code::OverLimit };
        assert_eq!(
            overall(&r),
            expected,
            "{file}: one threshold for all files/*"
        );
    }

    // tollgate's `rate` (atomic, sliding): 3 per 30 s.
    for i in 0..4 {
        let r = c.ok(request("wild", &[&[("tg", "x")]]));
        let expected = if i < 3 { Code::Ok } else { Code::OverLimit };
        assert_eq!(overall(&r), expected, "tg call {i}");
        let reset = r.statuses[0]
            .duration_until_reset
            .as_ref()
            .expect("reset")
            .seconds;
        assert!((1..=30).contains(&reset), "tg call {i}: reset {reset}");
    }

    // Metrics per domain and descriptor.
    let hits = t
        .metric(r#"tollgate_rls_hits_total{domain="wild",descriptor="path_/api/*/action"}"#)
        .unwrap_or(0.0);
    assert_eq!(hits, 4.0, "{}", t.metrics());
}

#[test]
fn bad_requests_get_invalid_argument_and_the_service_keeps_answering() {
    let (_t, addr, _dir) = start(&[("basic.yaml", BASIC)], None);
    let mut c = Client::connect(addr);
    for _ in 0..3 {
        let e = c.call(request("", &[&[("key1", "a")]])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let e = c.call(request("basic", &[])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let r = c.ok(request("basic", &[&[("key1", "a")]]));
        assert_eq!(overall(&r), Code::Ok);
    }
}

#[test]
fn three_nodes_on_one_redis_admit_a_one_per_minute_key_once() {
    let redis = Redis::start();
    let (_a, addr_a, _da) = start(&[("basic.yaml", BASIC)], Some(&redis));
    let (_b, addr_b, _db) = start(&[("basic.yaml", BASIC)], Some(&redis));
    let (_c, addr_c, _dc) = start(&[("basic.yaml", BASIC)], Some(&redis));
    // Far enough from the end of the minute that every call falls in one window.
    common::clock::wait_until_in_window(60_000, 0, 45_000);
    let value = format!("fleet-{}", rand_value());
    let mut clients = [addr_a, addr_b, addr_c].map(Client::connect);
    let mut admitted = 0;
    for round in 0..10 {
        for c in clients.iter_mut() {
            let r = c.ok(request("basic", &[&[("one_per_minute", &value)]]));
            if overall(&r) == Code::Ok {
                admitted += 1;
            }
            let _ = round;
        }
    }
    assert_eq!(admitted, 1, "30 calls over three nodes, one Redis, 1/min");
}

#[test]
fn check_refuses_their_bad_files_with_the_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rl = dir.path().join("ratelimit");
    write_files(
        &rl,
        &[
            ("a.yaml", "domain: same\n"),
            ("b.yaml", "domain: same\n"),
            (
                "c.yaml",
                "domain: c\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: true\n      unit: second\n",
            ),
        ],
    );
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "rls:\n  config_dir: ratelimit\n").expect("write config");
    let out = std::process::Command::new(tollgate_bin())
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .expect("run tollgate check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("b.yaml:1:9: domain: duplicate domain `same`"),
        "{err}"
    );
    assert!(
        err.contains(
            "c.yaml:6:13: descriptors[0].rate_limit.unit: an unlimited rate limit takes no unit"
        ),
        "{err}"
    );

    // Fixed, the files pass and the summary names the service.
    write_files(
        &rl,
        &[
            ("b.yaml", "domain: other\n"),
            (
                "c.yaml",
                "domain: c\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: true\n",
            ),
        ],
    );
    let out = std::process::Command::new(tollgate_bin())
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .expect("run tollgate check");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("rls    127.0.0.1:8081 (gRPC, h2c; 3 domains with 1 rate limit"),
        "{report}"
    );
}

#[test]
fn a_failed_reload_keeps_the_running_domains() {
    let (t, addr, dir) = start(&[("basic.yaml", BASIC)], None);
    let mut c = Client::connect(addr);
    let r = c.ok(request("basic", &[&[("key1", "r")]]));
    assert_eq!(status(&r, 0).1, Some((50, Unit::Second)));
    // A bad unit: the reload is refused and key1 keeps its limit.
    let bad = BASIC.replace(
        "unit: second\n      requests_per_unit: 50\n\n  - key: key1_local",
        "unit: fortnight\n      requests_per_unit: 50\n\n  - key: key1_local",
    );
    std::fs::write(dir.path().join("ratelimit/basic.yaml"), bad).expect("write");
    let reload = send_json(&agent(), "POST", &t.admin_url("/admin/reload"), "{}");
    assert!(reload.body.contains("fortnight"), "{}", reload.body);
    let r = c.ok(request("basic", &[&[("key1", "r")]]));
    assert_eq!(status(&r, 0).1, Some((50, Unit::Second)));
    // A good one applies.
    std::fs::write(
        dir.path().join("ratelimit/basic.yaml"),
        BASIC.replace("requests_per_unit: 50", "requests_per_unit: 70"),
    )
    .expect("write");
    let reload = send_json(&agent(), "POST", &t.admin_url("/admin/reload"), "{}");
    assert!(reload.status < 300, "{}", reload.body);
    let r = c.ok(request("basic", &[&[("key1", "r2")]]));
    assert_eq!(status(&r, 0).1, Some((70, Unit::Second)));
}

#[test]
fn tls_on_the_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = common::certs::generate(dir.path(), "rls");
    write_files(&dir.path().join("ratelimit"), &[("basic.yaml", BASIC)]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let body = format!(
        "rls:\n  listen: {addr}\n  config_dir: {}\n  tls:\n    certs:\n      - cert: {}\n        key: {}\n",
        dir.path().join("ratelimit").display(),
        certs.server_cert.display(),
        certs.server_key.display()
    );
    let _t = Tollgate::start(&body);

    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&certs.ca_cert).expect("CA");
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("add the CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let response = rt.block_on(async {
        let connector = tower::service_fn(move |_: ::http::Uri| {
            let tls = tls.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .expect("a name")
                    .to_owned();
                let stream = tls.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(connector)
            .await
            .expect("a TLS connection to the RLS listener");
        RateLimitServiceClient::new(channel)
            .should_rate_limit(request("basic", &[&[("key1", "tls")]]))
            .await
            .expect("an answer over TLS")
            .into_inner()
    });
    assert_eq!(
        status(&response, 0),
        (Code::Ok, Some((50, Unit::Second)), 49)
    );

    // Plaintext HTTP/2 to the TLS listener gets no answer.
    let plain = rt.block_on(async {
        match RateLimitServiceClient::connect(format!("http://{addr}")).await {
            Ok(mut c) => c
                .should_rate_limit(request("basic", &[&[("key1", "tls")]]))
                .await
                .is_ok(),
            Err(_) => false,
        }
    });
    assert!(!plain, "a plaintext call was answered on the TLS listener");
}

#[test]
fn response_headers_carry_the_ietf_ratelimit_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(&dir.path().join("ratelimit"), &[("another.yaml", ANOTHER)]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let body = format!(
        "rls:\n  listen: {addr}\n  config_dir: {}\n  response_headers: true\n",
        dir.path().join("ratelimit").display()
    );
    let _t = Tollgate::start(&body);
    let mut c = Client::connect(addr);
    // The tightest of the two: key3 (10/h) with 9 left after this call.
    let r = c.ok(request("another", &[&[("key2", "h")], &[("key3", "h")]]));
    let headers: Vec<(String, String)> = r
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    let policy = headers
        .iter()
        .find(|(k, _)| k == "RateLimit-Policy")
        .map(|(_, v)| v.as_str());
    assert_eq!(policy, Some("\"rls\";q=10;w=3600"), "{headers:?}");
    let fields = headers
        .iter()
        .find(|(k, _)| k == "RateLimit")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(fields.starts_with("\"rls\";r=9;t="), "{headers:?}");
    let t: u64 = fields
        .rsplit("t=")
        .next()
        .and_then(|t| t.parse().ok())
        .expect("t=");
    assert!((1..=3600).contains(&t), "{fields}");
}
