//! Verified JWTs through real processes: keys made here with the openssl CLI, a JWKS served
//! over HTTP by a server of the test's own that counts its fetches, tokens signed with the
//! `jsonwebtoken` crate, and the real proxy, stub backend and redis-server.

mod common;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::clock::*;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ISSUER: &str = "https://id.example.com/";
const AUDIENCE: &str = "orders-api";

// ---------------------------------------------------------------------------------------
// Keys

/// A private key made by openssl, and its public half as a JWK.
struct TestKey {
    alg: Algorithm,
    kid: String,
    pem: Vec<u8>,
    jwk: Value,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().unwrap_or_else(|e| {
        panic!("the openssl CLI is needed to make test keys ({e}); install it with `apt-get install -y openssl`")
    });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

impl TestKey {
    fn new(dir: &Path, alg: Algorithm, kid: &str) -> TestKey {
        let path = dir.join(format!("{kid}.pem"));
        let p = path.to_str().unwrap();
        let gen: &[&str] = match alg {
            Algorithm::RS256 | Algorithm::RS384 => {
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
            }
            Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Algorithm::EdDSA => &["-algorithm", "ED25519"],
            other => panic!("no test key for {other:?}"),
        };
        let mut args = vec!["genpkey"];
        args.extend_from_slice(gen);
        args.extend_from_slice(&["-out", p]);
        openssl(&args);
        let pem = std::fs::read(&path).unwrap();
        let public_der = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
        let jwk = match alg {
            Algorithm::RS256 | Algorithm::RS384 => {
                let modulus =
                    String::from_utf8(openssl(&["rsa", "-in", p, "-noout", "-modulus"])).unwrap();
                let hex = modulus.trim().trim_start_matches("Modulus=");
                json!({"kty": "RSA", "kid": kid, "use": "sig", "n": B64.encode(hex_bytes(hex)), "e": "AQAB"})
            }
            Algorithm::ES256 => {
                // The SPKI ends with the uncompressed point 04 || x || y.
                let point = &public_der[public_der.len() - 64..];
                json!({"kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
                       "x": B64.encode(&point[..32]), "y": B64.encode(&point[32..])})
            }
            _ => {
                let x = &public_der[public_der.len() - 32..];
                json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": B64.encode(x)})
            }
        };
        TestKey {
            alg,
            kid: kid.into(),
            pem,
            jwk,
        }
    }

    fn encoding(&self) -> EncodingKey {
        match self.alg {
            Algorithm::RS256 | Algorithm::RS384 => EncodingKey::from_rsa_pem(&self.pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&self.pem),
            _ => EncodingKey::from_ed_pem(&self.pem),
        }
        .expect("the key openssl made")
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, Some(&self.kid), claims)
    }

    fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(String::from);
        encode(&header, claims, &self.encoding()).expect("sign")
    }
}

fn now_s() -> u64 {
    now_ms() / 1000
}

/// Claims the provider accepts, for `sub`, with `extra` merged in.
fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": now_s() + 600,
                       "iat": now_s(), "jti": format!("{}", rand_id())});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn rand_id() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    now_ms() * 1000 + N.fetch_add(1, Ordering::Relaxed) as u64
}

// ---------------------------------------------------------------------------------------
// A JWKS server of the test's own

struct JwksServer {
    addr: SocketAddr,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    /// While set, answers 500.
    failing: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JwksServer {
    fn start(keys: Vec<Value>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(AtomicBool::new(false));
        let thread = {
            let (keys, fetches, failing, stopped) = (
                keys.clone(),
                fetches.clone(),
                failing.clone(),
                stopped.clone(),
            );
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    // The request head, to its blank line.
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = if failing.load(Ordering::SeqCst) {
                        ("500 Internal Server Error", "{}".to_string())
                    } else {
                        let keys = keys.lock().unwrap().clone();
                        ("200 OK", json!({"keys": keys}).to_string())
                    };
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: max-age=3600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            })
        };
        JwksServer {
            addr,
            keys,
            fetches,
            failing,
            stopped,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn publish(&self, jwk: Value) {
        self.keys.lock().unwrap().push(jwk);
    }

    /// Closes the listening socket: fetches meet a refused connection.
    fn stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// The proxy

fn provider(jwks_url: &str, extra: &str) -> String {
    format!(
        "auth:
  jwt:
    main:
      issuer: \"{ISSUER}\"
      audiences: [{AUDIENCE}]
      jwks_url: {jwks_url}
      algorithms: [RS256, ES256, EdDSA]
      leeway: 30s
{extra}"
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn call(t: &Tollgate, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Reply {
    let auth = token.map(bearer);
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    get_with(&agent(), &t.url(path), &headers)
}

fn wait_keys_loaded(t: &Tollgate) {
    wait_for("the JWKS to load", Duration::from_secs(15), || {
        (t.metric(r#"tollgate_jwks_keys{provider="main"}"#)
            .unwrap_or(0.0)
            > 0.0)
            .then_some(())
    });
}

fn assert_refused(reply: &Reply, what: &str, error: &str) {
    assert_eq!(reply.status, 401, "{what}: {} {}", reply.status, reply.body);
    let challenge = reply
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(&format!("error=\"{error}\"")),
        "{what}: {challenge}"
    );
    assert!(
        challenge.contains("error_description=\""),
        "{what}: {challenge}"
    );
    let body = reply.json();
    assert!(
        body["error"].is_string() && body["detail"].is_string(),
        "{what}: {body}"
    );
    assert_eq!(body["provider"], "main", "{what}: {body}");
}

#[test]
fn tokens_of_each_algorithm_pass_and_each_bad_token_gets_a_bearer_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::new(dir.path(), Algorithm::RS256, "rsa-1");
    let ec = TestKey::new(dir.path(), Algorithm::ES256, "ec-1");
    let ed = TestKey::new(dir.path(), Algorithm::EdDSA, "ed-1");
    let other_rsa = TestKey::new(dir.path(), Algorithm::RS256, "rsa-1");
    let jwks = JwksServer::start(vec![rsa.jwk.clone(), ec.jwk.clone(), ed.jwk.clone()]);
    let stub = Stub::start("orders");
    let t = Tollgate::start(&format!(
        "{}
upstreams:
  orders:
    backends: [{}]
routes:
  - prefix: /orders
    upstream: orders
    auth: {{ jwt: main }}
  - prefix: /open
    upstream: orders
    auth: {{ jwt: main, optional: true }}
  - prefix: /plain
    upstream: orders
",
        provider(&jwks.url(), ""),
        stub.address()
    ));
    wait_keys_loaded(&t);

    for key in [&rsa, &ec, &ed] {
        let token = key.sign(&claims("alice", json!({})));
        let r = call(&t, "/orders/1", Some(&token), &[]);
        assert_eq!(r.status, 200, "{:?}: {}", key.alg, r.body);
    }

    let now = now_s();
    let none_token = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(claims("alice", json!({})).to_string())
    );
    // HS256 with the RSA public key as the secret: the classic key-confusion forgery.
    let public_pem = openssl(&[
        "pkey",
        "-in",
        dir.path().join("rsa-1.pem").to_str().unwrap(),
        "-pubout",
    ]);
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("rsa-1".into());
    let confused = encode(
        &hs_header,
        &claims("alice", json!({})),
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    let big = format!(
        "{}{}",
        rsa.sign(&claims("alice", json!({}))),
        "A".repeat(9000)
    );
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "invalid_request"),
        ("alg none", Some(none_token), "invalid_token"),
        (
            "an algorithm not listed (RS384)",
            Some(rsa.sign_as(Algorithm::RS384, Some("rsa-1"), &claims("alice", json!({})))),
            "invalid_token",
        ),
        (
            "HS256 signed with the RSA public key",
            Some(confused),
            "invalid_token",
        ),
        (
            "a bad signature",
            Some(other_rsa.sign(&claims("alice", json!({})))),
            "invalid_token",
        ),
        (
            "exp past the leeway",
            Some(rsa.sign(&claims("alice", json!({"exp": now - 120})))),
            "invalid_token",
        ),
        (
            "nbf beyond the leeway",
            Some(rsa.sign(&claims("alice", json!({"nbf": now + 300})))),
            "invalid_token",
        ),
        (
            "the wrong issuer",
            Some(rsa.sign(&claims(
                "alice",
                json!({"iss": "https://evil.example.com/"}),
            ))),
            "invalid_token",
        ),
        (
            "the wrong audience",
            Some(rsa.sign(&claims("alice", json!({"aud": "billing-api"})))),
            "invalid_token",
        ),
        (
            "a kid that is not published",
            Some(rsa.sign_as(Algorithm::RS256, Some("nope"), &claims("alice", json!({})))),
            "invalid_token",
        ),
        ("not a JWT", Some("hello.world".into()), "invalid_token"),
        ("a token past the size bound", Some(big), "invalid_token"),
    ];
    for (what, token, error) in &cases {
        let r = call(&t, "/orders/1", token.as_deref(), &[]);
        if *what == "a token past the size bound" && r.status == 431 {
            continue; // the header limit answered first, as the issue allows
        }
        assert_refused(&r, what, error);
    }
    // An optional route lets a request without a token through, but not a bad token.
    assert_eq!(call(&t, "/open/1", None, &[]).status, 200);
    let expired = rsa.sign(&claims("alice", json!({"exp": now - 120})));
    assert_refused(
        &call(&t, "/open/1", Some(&expired), &[]),
        "optional, expired",
        "invalid_token",
    );
    // A route without auth ignores tokens.
    assert_eq!(call(&t, "/plain/1", Some("garbage"), &[]).status, 200);

    // The second use of a token is a cache hit.
    let token = rsa.sign(&claims("bob", json!({})));
    for _ in 0..3 {
        assert_eq!(call(&t, "/orders/1", Some(&token), &[]).status, 200);
    }
    let metric = |result: &str| {
        t.metric(&format!(
            r#"tollgate_auth_total{{provider="main",result="{result}"}}"#
        ))
        .unwrap_or(0.0)
    };
    assert!(metric("cached") >= 2.0, "{}", t.metrics());
    assert!(metric("expired") >= 2.0, "{}", t.metrics());
    assert!(metric("unknown_kid") >= 1.0, "{}", t.metrics());
    assert_eq!(
        t.metric(r#"tollgate_jwks_keys{provider="main"}"#),
        Some(3.0)
    );
}

#[test]
fn a_provider_without_keys_answers_503_until_they_load() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::new(dir.path(), Algorithm::RS256, "rsa-1");
    let jwks = JwksServer::start(vec![rsa.jwk.clone()]);
    jwks.failing.store(true, Ordering::SeqCst);
    let stub = Stub::start("orders");
    let t = Tollgate::start(&format!(
        "{}
upstreams:
  orders:
    backends: [{}]
routes:
  - prefix: /orders
    upstream: orders
    auth: {{ jwt: main }}
",
        provider(&jwks.url(), ""),
        stub.address()
    ));
    let token = rsa.sign(&claims("alice", json!({})));
    wait_for("a failed fetch", Duration::from_secs(10), || {
        (t.metric(r#"tollgate_jwks_fetch_failures_total{provider="main"}"#)
            .unwrap_or(0.0)
            >= 1.0)
            .then_some(())
    });
    let r = call(&t, "/orders/1", Some(&token), &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "auth_unavailable", "{}", r.body);
    assert!(
        r.json()["detail"].as_str().unwrap().contains("not loaded"),
        "{}",
        r.body
    );
    jwks.failing.store(false, Ordering::SeqCst);
    // Retries back off from 1 s doubling; the next few land within 15 s.
    wait_for(
        "the keys to load and the token to pass",
        Duration::from_secs(20),
        || (call(&t, "/orders/1", Some(&token), &[]).status == 200).then_some(()),
    );
}

#[test]
fn new_keys_are_picked_up_unknown_kids_are_rate_limited_and_a_dead_jwks_keeps_the_last_keys() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestKey::new(dir.path(), Algorithm::ES256, "ec-1");
    let second = TestKey::new(dir.path(), Algorithm::EdDSA, "ed-2");
    let mut jwks = JwksServer::start(vec![first.jwk.clone()]);
    let stub = Stub::start("orders");
    let t = Tollgate::start(&format!(
        "{}
upstreams:
  orders:
    backends: [{}]
routes:
  - prefix: /orders
    upstream: orders
    auth: {{ jwt: main }}
",
        provider(&jwks.url(), ""),
        stub.address()
    ));
    wait_keys_loaded(&t);

    // A key published mid-test: its first token asks for a refetch, and within seconds
    // the token passes.
    jwks.publish(second.jwk.clone());
    let token = second.sign(&claims("carol", json!({})));
    let started = std::time::Instant::now();
    wait_for(
        "the new key to be accepted",
        Duration::from_secs(15),
        || {
            let r = call(&t, "/orders/1", Some(&token), &[]);
            if r.status != 200 {
                std::thread::sleep(Duration::from_millis(200));
            }
            (r.status == 200).then_some(())
        },
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // 200 tokens with invented kids: at most one refetch per 2 s, so even if sending them
    // takes 15 s on a busy machine, at most 8 fetches.
    let before = jwks.fetches();
    let agent = agent();
    for i in 0..200 {
        let token = first.sign_as(
            Algorithm::ES256,
            Some(&format!("made-up-{i}")),
            &claims("mallory", json!({})),
        );
        let r = get_with(
            &agent,
            &t.url("/orders/1"),
            &[("authorization", &bearer(&token))],
        );
        assert_eq!(r.status, 401, "{}", r.body);
    }
    // A refetch the flood asked for may still be on its way: count once the server has
    // seen no fetch for longer than the cool-down.
    let mut last = jwks.fetches();
    wait_for("the refetches to settle", Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(2500));
        let now = jwks.fetches();
        let settled = now == last;
        last = now;
        settled.then_some(())
    });
    let flood_fetches = jwks.fetches() - before;
    assert!(
        flood_fetches <= 10,
        "200 unknown kids cost the JWKS server {flood_fetches} fetches"
    );

    // The JWKS server goes away: fresh tokens (never cached) still verify with the last
    // good keys, and a failed refetch is counted.
    jwks.stop();
    let bogus = first.sign_as(
        Algorithm::ES256,
        Some("made-up-late"),
        &claims("mallory", json!({})),
    );
    let _ = call(&t, "/orders/1", Some(&bogus), &[]);
    wait_for("a failed fetch", Duration::from_secs(10), || {
        (t.metric(r#"tollgate_jwks_fetch_failures_total{provider="main"}"#)
            .unwrap_or(0.0)
            >= 1.0)
            .then_some(())
    });
    for (key, user) in [(&first, "dave"), (&second, "erin")] {
        let token = key.sign(&claims(user, json!({})));
        let r = call(&t, "/orders/1", Some(&token), &[]);
        assert_eq!(r.status, 200, "{user}: {}", r.body);
    }
    assert_eq!(
        t.metric(r#"tollgate_jwks_keys{provider="main"}"#),
        Some(2.0)
    );
}

#[test]
fn tier_claim_picks_the_tier_and_forward_claims_reach_the_backend_alone() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::new(dir.path(), Algorithm::RS256, "rsa-1");
    let jwks = JwksServer::start(vec![rsa.jwk.clone()]);
    let stub = Stub::start("orders");
    let t = Tollgate::start(&format!(
        "{}
upstreams:
  orders:
    backends: [{}]
limits:
  per_user:
    key: jwt:sub
    algorithm: fixed_window
    rate: 2/1m
    scope: local
    tiers:
      pro: {{ rate: 5/1m }}
  per_org:
    key: [jwt:org.id, query:region]
    algorithm: fixed_window
    rate: 1000/1m
    scope: local
routes:
  - prefix: /orders
    upstream: orders
    auth: {{ jwt: main }}
    limits: [per_user, per_org]
",
        provider(
            &jwks.url(),
            "      tier_claim: plan\n      tenant_claim: org.id\n      forward_claims: { sub: X-User-Id, org.id: X-Org-Id }\n"
        ),
        stub.address()
    ));
    wait_keys_loaded(&t);
    wait_until_in_window(60_000, 0, 50_000);
    let admitted = |user: &str, plan: &str| {
        let token = rsa.sign(&claims(user, json!({"plan": plan, "org": {"id": 7}})));
        (0..8)
            .filter(|_| call(&t, "/orders/1?region=eu", Some(&token), &[]).status == 200)
            .count()
    };
    assert_eq!(admitted("paula", "pro"), 5, "the pro tier's rate");
    assert_eq!(admitted("fred", "free"), 2, "the policy's own rate");
    // A new token of the same user shares the user's bucket.
    assert_eq!(admitted("fred", "free"), 0, "fred's bucket is spent");

    let token = rsa.sign(&claims("grace", json!({"org": {"id": 7}})));
    let r = call(
        &t,
        "/orders/1",
        Some(&token),
        &[
            ("x-stub-echo", "headers"),
            ("x-user-id", "admin"),
            ("x-org-id", "1"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-user-id"], "grace", "{seen}");
    assert_eq!(seen["x-org-id"], "7", "{seen}");
    // Without a token nothing passes, so a forged copy cannot reach the backend either.
    let r = call(&t, "/orders/1", None, &[("x-user-id", "admin")]);
    assert_eq!(r.status, 401);
}

#[test]
fn forged_claim_headers_are_removed_on_an_optional_route() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::new(dir.path(), Algorithm::RS256, "rsa-1");
    let jwks = JwksServer::start(vec![rsa.jwk.clone()]);
    let stub = Stub::start("orders");
    let t = Tollgate::start(&format!(
        "{}
upstreams:
  orders:
    backends: [{}]
routes:
  - prefix: /open
    upstream: orders
    auth: {{ jwt: main, optional: true }}
",
        provider(&jwks.url(), "      forward_claims: { sub: X-User-Id }\n"),
        stub.address()
    ));
    wait_keys_loaded(&t);
    let r = call(
        &t,
        "/open/1",
        None,
        &[("x-stub-echo", "headers"), ("x-user-id", "admin")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &r.json()["headers"];
    assert!(
        seen.get("x-user-id").is_none(),
        "the client's copy reached the backend: {seen}"
    );
}

#[test]
fn jwt_sub_limits_each_user_across_a_three_node_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::new(dir.path(), Algorithm::RS256, "rsa-1");
    let jwks = JwksServer::start(vec![rsa.jwk.clone()]);
    let redis = Redis::start();
    let stub = Stub::start("orders");
    let body = format!(
        "{}
admin:
  listen: {{admin_listen}}
  token: test-admin-token-0123456789
redis:
  url: {}
upstreams:
  orders:
    backends: [{}]
limits:
  per_user:
    key: jwt:sub
    algorithm: fixed_window
    rate: 5/1m
    scope: global
    sync: atomic
routes:
  - prefix: /orders
    upstream: orders
    auth: {{ jwt: main }}
    limits: [per_user]
",
        provider(&jwks.url(), ""),
        redis.url(),
        stub.address()
    );
    let nodes: Vec<Tollgate> = (0..3).map(|_| Tollgate::start(&body)).collect();
    for n in &nodes {
        n.wait_redis_up(Duration::from_secs(10));
        wait_keys_loaded(n);
    }
    wait_until_in_window(60_000, 0, 45_000);
    let spend = |user: &str| {
        // A fresh token per request: the user, not the token, is the key.
        (0..12)
            .filter(|i| {
                let token = rsa.sign(&claims(user, json!({})));
                call(&nodes[i % 3], "/orders/1", Some(&token), &[]).status == 200
            })
            .count()
    };
    assert_eq!(spend("alice"), 5, "alice's 12 requests over three nodes");
    assert_eq!(spend("bob"), 5, "bob has a limit of his own");
    let r = call(
        &nodes[0],
        "/orders/1",
        Some(&rsa.sign(&claims("alice", json!({})))),
        &[],
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["key"], "alice", "{}", r.body);
    // The decision log names the user each decision was for.
    let users = wait_for("the decisions to be logged", Duration::from_secs(5), || {
        let logs = get_with(
            &agent(),
            &nodes[0].admin_url("/admin/logs?client=127.0.0.1&limit=1000"),
            &[("authorization", "Bearer test-admin-token-0123456789")],
        )
        .json();
        let users: std::collections::BTreeSet<String> = logs["entries"]
            .as_array()?
            .iter()
            .filter_map(|e| e["user"].as_str().map(String::from))
            .collect();
        (users.contains("alice") && users.contains("bob")).then_some(users)
    });
    assert_eq!(users.len(), 2, "{users:?}");
}

#[test]
fn providers_are_checked_with_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "auth:
  jwt:
    main:
      issuer: \"\"
      jwks_url: ftp://id.example.com/keys
      algorithms: [RS256, none, HS256]
      token_from: [body:token]
upstreams:
  a:
    backends: [127.0.0.1:9]
routes:
  - prefix: /a
    upstream: a
    auth: { jwt: other }
",
    )
    .unwrap();
    let out = Command::new(tollgate_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "FILE");
    assert!(!out.status.success(), "{text}");
    for expected in [
        "FILE:4:15: auth.jwt.main.issuer: is empty",
        "FILE:5:17: auth.jwt.main.jwks_url: `ftp://id.example.com/keys` is not an http or https URL",
        "auth.jwt.main.algorithms[1]: unsigned tokens are never accepted",
        "auth.jwt.main.algorithms[2]: HS256 needs `secret_env`",
        "auth.jwt.main.token_from[0]: `body:token` is not a token source",
        "routes[0].auth.jwt: unknown provider `other` (defined under auth.jwt: main)",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn a_jwks_file_is_read_again_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestKey::new(dir.path(), Algorithm::EdDSA, "ed-1");
    let second = TestKey::new(dir.path(), Algorithm::RS256, "rsa-2");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, json!({"keys": [first.jwk]}).to_string()).unwrap();
    let stub = Stub::start("orders");
    let t = Tollgate::start(&format!(
        "auth:
  jwt:
    main:
      issuer: \"{ISSUER}\"
      audiences: [{AUDIENCE}]
      jwks_file: {}
upstreams:
  orders:
    backends: [{}]
routes:
  - prefix: /orders
    upstream: orders
    auth: {{ jwt: main }}
",
        file.display(),
        stub.address()
    ));
    wait_keys_loaded(&t);
    let token = first.sign(&claims("alice", json!({})));
    assert_eq!(call(&t, "/orders/1", Some(&token), &[]).status, 200);
    // A broken write keeps the last good keys.
    std::fs::write(&file, "{ not json").unwrap();
    wait_for(
        "the broken file to be read",
        Duration::from_secs(10),
        || {
            (t.metric(r#"tollgate_jwks_fetch_failures_total{provider="main"}"#)
                .unwrap_or(0.0)
                >= 1.0)
                .then_some(())
        },
    );
    let fresh = first.sign(&claims("alice2", json!({})));
    assert_eq!(call(&t, "/orders/1", Some(&fresh), &[]).status, 200);
    std::fs::write(&file, json!({"keys": [first.jwk, second.jwk]}).to_string()).unwrap();
    let token = second.sign(&claims("bob", json!({})));
    wait_for("the rewritten file's key", Duration::from_secs(10), || {
        let ok = call(&t, "/orders/1", Some(&token), &[]).status == 200;
        if !ok {
            std::thread::sleep(Duration::from_millis(200));
        }
        ok.then_some(())
    });
}

#[test]
fn a_reload_keeps_the_keys_and_applies_the_new_claim_mapping_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::new(dir.path(), Algorithm::RS256, "rsa-1");
    let mut jwks = JwksServer::start(vec![rsa.jwk.clone()]);
    let url = jwks.url();
    let stub = Stub::start("orders");
    let body = |forward: &str| {
        format!(
            "{}
upstreams:
  orders:
    backends: [{}]
routes:
  - prefix: /orders
    upstream: orders
    auth: {{ jwt: main }}
",
            provider(
                &url,
                &format!("      forward_claims: {{ sub: {forward} }}\n")
            ),
            stub.address()
        )
    };
    let t = Tollgate::start(&body("X-User-Id"));
    wait_keys_loaded(&t);
    // With the JWKS server gone, a rebuilt provider could only verify with the keys it
    // took over from the one it replaces.
    jwks.stop();
    let reloads = || {
        t.metric(r#"tollgate_config_reloads_total{result="success"}"#)
            .unwrap_or(0.0)
    };
    let before = reloads();
    t.write_config(&body("X-Subject"));
    wait_for("the reload", Duration::from_secs(10), || {
        (reloads() > before).then_some(())
    });
    let token = rsa.sign(&claims("henry", json!({})));
    let r = call(&t, "/orders/1", Some(&token), &[("x-stub-echo", "headers")]);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-subject"], "henry", "{seen}");
    assert!(seen.get("x-user-id").is_none(), "{seen}");
}
