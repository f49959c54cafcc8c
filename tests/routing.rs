//! Black-box routing: real stub services behind a real tollgate process.

mod common;
use common::*;

fn two_services() -> (Stub, Stub, Tollgate) {
    let a = Stub::start("a");
    let b = Stub::start("b");
    let config = format!(
        "upstreams:
  service_a:
    backends: [{a}]
  service_b:
    backends: [{b}]
routes:
  - prefix: /a
    upstream: service_a
  - prefix: /b
    upstream: service_b
  - prefix: /a/deep
    upstream: service_b
  - prefix: /strip
    upstream: service_a
    strip_prefix: true
",
        a = a.address(),
        b = b.address()
    );
    let t = Tollgate::start(&config);
    (a, b, t)
}

#[test]
fn prefixes_reach_their_services() {
    let (_a, _b, t) = two_services();
    let agent = agent();
    let r = get_with(&agent, &t.url("/a/hello"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["service"], "a");
    assert_eq!(r.json()["path"], "/a/hello");
    let r = get_with(&agent, &t.url("/b/x/y"), &[]);
    assert_eq!(r.json()["service"], "b");
    let r = get_with(&agent, &t.url("/a"), &[]);
    assert_eq!(r.json()["service"], "a");
}

#[test]
fn longest_prefix_wins_on_whole_segments() {
    let (_a, _b, t) = two_services();
    let agent = agent();
    assert_eq!(
        get_with(&agent, &t.url("/a/deep/x"), &[]).json()["service"],
        "b"
    );
    assert_eq!(
        get_with(&agent, &t.url("/a/deeper"), &[]).json()["service"],
        "a"
    );
    let r = get_with(&agent, &t.url("/ab"), &[]);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "no_route", "path": "/ab"})
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-request-id").is_some());
}

#[test]
fn health_answers_on_the_proxy_port() {
    let (_a, _b, t) = two_services();
    let r = get(&t.url("/health"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
}

#[test]
fn query_strings_pass_through_untouched() {
    let (_a, _b, t) = two_services();
    let r = get(&t.url("/a/search?q=a%20b&x=1&x=2&empty="));
    assert_eq!(r.json()["query"], "q=a%20b&x=1&x=2&empty=");
}

#[test]
fn forwarding_headers_host_and_request_id() {
    let (_a, _b, t) = two_services();
    let agent = agent();
    let echo = [
        ("x-stub-echo", "headers"),
        ("host", "example.test"),
        ("x-forwarded-for", "203.0.113.9"),
    ];
    let r = get_with(&agent, &t.url("/a/h"), &echo);
    let sent = &r.json()["headers"];
    assert_eq!(sent["host"], "example.test");
    assert_eq!(sent["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(sent["x-forwarded-proto"], "http");
    let generated = r
        .header("x-request-id")
        .expect("request id returned")
        .to_string();
    assert_eq!(generated.len(), 32);
    assert_eq!(sent["x-request-id"], generated.as_str());

    let r = get_with(
        &agent,
        &t.url("/a/h"),
        &[("x-stub-echo", "headers"), ("x-request-id", "trace-42")],
    );
    assert_eq!(r.header("x-request-id"), Some("trace-42"));
    assert_eq!(r.json()["headers"]["x-request-id"], "trace-42");
}

/// Hop-by-hop fields, and the fields `Connection` names, stay between the client and
/// tollgate, so a client's `Connection: close` cannot close a pooled backend connection and a
/// field the client marked hop-by-hop is not forwarded.
#[test]
fn hop_by_hop_fields_stop_at_the_proxy() {
    let (_a, _b, t) = two_services();
    let resp = raw(
        t.proxy,
        b"GET /a/h HTTP/1.1\r\nHost: x\r\nX-Stub-Echo: headers\r\nConnection: close, X-Secret\r\n\
          X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
          X-Kept: 1\r\n\r\n",
    );
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let body: serde_json::Value =
        serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap_or("")).expect("echoed JSON");
    let sent = body["headers"].as_object().expect("echoed headers");
    for name in ["x-secret", "keep-alive", "te", "proxy-connection"] {
        assert!(
            !sent.contains_key(name),
            "{name} reached the backend: {sent:?}"
        );
    }
    assert_ne!(
        sent.get("connection").and_then(|v| v.as_str()),
        Some("close, X-Secret")
    );
    assert_eq!(sent["x-kept"], "1");
}

/// The headers the backend received, from the stub's echo in a raw response.
fn echoed(resp: &str) -> serde_json::Map<String, serde_json::Value> {
    let body: serde_json::Value = serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap_or(""))
        .unwrap_or_else(|e| panic!("no echoed JSON ({e}): {resp}"));
    body["headers"].as_object().expect("echoed headers").clone()
}

/// The whole standard hop-by-hop set goes, whatever its case, and `Connection` nominations
/// from several lines.
#[test]
fn every_standard_hop_by_hop_field_stops_at_the_proxy() {
    let (_a, _b, t) = two_services();
    let resp = raw(
        t.proxy,
        b"GET /a/h HTTP/1.1\r\nHost: x\r\nX-Stub-Echo: headers\r\nconnection: X-One\r\n\
          Connection: , x-two ,\r\nX-One: 1\r\nX-TWO: 2\r\nProxy-Authorization: Basic eDp5\r\n\
          Proxy-Authenticate: Basic\r\nTrailer: x-sum\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\
          KEEP-ALIVE: timeout=5\r\nX-Kept: 1\r\n\r\n",
    );
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let sent = echoed(&resp);
    for name in [
        "x-one",
        "x-two",
        "connection",
        "proxy-authorization",
        "proxy-authenticate",
        "trailer",
        "http2-settings",
        "keep-alive",
        "upgrade",
        "te",
    ] {
        assert!(
            !sent.contains_key(name),
            "{name} reached the backend: {sent:?}"
        );
    }
    assert_eq!(sent["x-kept"], "1");
}

/// A client cannot have tollgate drop `Host` or a forwarding field on the way (Pingora's
/// rule, kept): such a nomination, one that is not a token, or a tenth one is refused with a
/// 400 and nothing reaches the backend.
#[test]
fn a_connection_header_nominating_a_protected_field_is_refused() {
    let (a, _b, t) = two_services();
    let before = a.stats().0;
    let nine = "n1, n2, n3, n4, n5, n6, n7, n8, n9";
    for nominated in [
        "host",
        "X-Forwarded-For",
        "x-forwarded-host",
        "X-Forwarded-Proto",
        ":authority",
        "\"x-forwarded-for\"",
        "a/b",
        &format!("{nine}, n10"),
    ] {
        let request = format!(
            "GET /a/h HTTP/1.1\r\nHost: x\r\nConnection: {nominated}\r\n\
             X-Forwarded-For: 203.0.113.9\r\n\r\n"
        );
        let resp = raw(t.proxy, request.as_bytes());
        assert_eq!(raw_status(&resp), 400, "{nominated}: {resp}");
    }
    assert_eq!(a.stats().0, before, "a refused request reached the backend");
    // Nine nominations are fine, and a field that merely looks like a protected one goes on.
    let request = format!(
        "GET /a/h HTTP/1.1\r\nHost: x\r\nX-Stub-Echo: headers\r\n\
         Connection: {nine}\r\nX-Forwarded-Port: 80\r\nn1: x\r\n\r\n"
    );
    let resp = raw(t.proxy, request.as_bytes());
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let sent = echoed(&resp);
    assert!(!sent.contains_key("n1"), "{sent:?}");
    assert_eq!(sent["x-forwarded-port"], "80");
}

/// Only WebSocket upgrades pass (tests/websocket.rs): an h2c upgrade reaches the backend as
/// a plain request, which it answers as one.
#[test]
fn an_h2c_upgrade_is_not_forwarded() {
    let (_a, _b, t) = two_services();
    let resp = raw(
        t.proxy,
        b"GET /a/h HTTP/1.1\r\nHost: x\r\nX-Stub-Echo: headers\r\n\
          Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    );
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let sent = echoed(&resp);
    for name in ["connection", "upgrade", "http2-settings"] {
        assert!(
            !sent.contains_key(name),
            "{name} reached the backend: {sent:?}"
        );
    }
}

/// The client's `Transfer-Encoding` is hop-by-hop: Pingora frames the body again for the
/// backend, so a chunked body arrives whole, chunked, and `TE` stays behind.
#[test]
fn a_chunked_request_body_is_framed_again_for_the_backend() {
    let (_a, _b, t) = two_services();
    let resp = raw(
        t.proxy,
        b"POST /a/h HTTP/1.1\r\nHost: x\r\nX-Stub-Echo: headers\r\nTE: trailers\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let body: serde_json::Value =
        serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
    assert_eq!(body["body_bytes"], 11, "{resp}");
    let sent = echoed(&resp);
    assert_eq!(sent["transfer-encoding"], "chunked", "{sent:?}");
    assert!(!sent.contains_key("te"), "{sent:?}");
    assert!(!sent.contains_key("content-length"), "{sent:?}");

    let resp = raw(
        t.proxy,
        b"POST /a/h HTTP/1.1\r\nHost: x\r\nX-Stub-Echo: headers\r\nConnection: keep-alive\r\n\
          Content-Length: 5\r\n\r\nhello",
    );
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let sent = echoed(&resp);
    assert_eq!(sent["content-length"], "5", "{sent:?}");
    assert!(!sent.contains_key("transfer-encoding"), "{sent:?}");
}

/// tollgate's strip against Pingora's own (`TOLLGATE_TUNING=pingora_hop_by_hop=1`): the same
/// raw requests, the same status and the same fields at the backend.
#[test]
fn hop_by_hop_handling_matches_pingoras_own() {
    let a = Stub::start("a");
    let config = format!(
        "upstreams:\n  service_a:\n    backends: [{}]\nroutes:\n  - prefix: /a\n    upstream: service_a\n",
        a.address()
    );
    let ours = Tollgate::start(&config);
    let pingoras =
        Tollgate::start_with_env(&config, &[("TOLLGATE_TUNING", "pingora_hop_by_hop=1")]);
    let cases: [&[u8]; 9] = [
        b"GET /a/1 HTTP/1.1\r\nHost: x\r\n",
        b"GET /a/2 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n",
        b"GET /a/3 HTTP/1.1\r\nHost: x\r\nConnection: close, X-A\r\nX-A: 1\r\nX-B: 2\r\n",
        b"GET /a/4 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\n",
        b"GET /a/5 HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n",
        b"GET /a/6 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AA\r\n",
        b"GET /a/7 HTTP/1.1\r\nHost: x\r\nConnection: x-forwarded-host\r\n",
        b"GET /a/8 HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nTrailer: x\r\nProxy-Authorization: b\r\n\
          Proxy-Connection: keep-alive\r\n",
        b"GET /a/9 HTTP/1.1\r\nHost: x\r\nConnection: a, b, c, d, e, f, g, h, i, j\r\n",
    ];
    for case in cases {
        let mut request = case.to_vec();
        request.extend_from_slice(b"X-Stub-Echo: headers\r\nX-Request-Id: fixed\r\n\r\n");
        let (mine, theirs) = (raw(ours.proxy, &request), raw(pingoras.proxy, &request));
        let text = String::from_utf8_lossy(case);
        // The WebSocket case: the stub answers a plain request, as it does any upgrade.
        assert_eq!(
            raw_status(&mine),
            raw_status(&theirs),
            "{text}\n{mine}\n{theirs}"
        );
        if raw_status(&mine) == 200 {
            assert_eq!(echoed(&mine), echoed(&theirs), "{text}");
        }
    }
}

#[test]
fn strip_prefix_sends_the_rest() {
    let (_a, _b, t) = two_services();
    assert_eq!(get(&t.url("/strip/x?y=1")).json()["path"], "/x");
    assert_eq!(get(&t.url("/strip")).json()["path"], "/");
}

#[test]
fn paths_are_normalized_before_routing_and_forwarding() {
    let (_a, _b, t) = two_services();
    // Raw requests: an HTTP library would clean these paths up before sending them.
    let cases = [
        ("/a/../b/x", 200, Some("b"), "/b/x"),
        ("//a/x", 200, Some("a"), "/a/x"),
        ("/a/%2e%2e/b", 200, Some("b"), "/b"),
        ("/%61/x", 200, Some("a"), "/a/x"),
        ("/a/./x", 200, Some("a"), "/a/x"),
        ("/A/x", 404, None, ""),
        ("/a%2Fx", 400, None, ""),
        ("/a/..%2F..%2Fb", 400, None, ""),
    ];
    for (path, status, service, seen) in cases {
        let resp = raw(
            t.proxy,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(raw_status(&resp), status, "{path}: {resp}");
        if let Some(service) = service {
            let body: serde_json::Value =
                serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
            assert_eq!(body["service"], service, "{path}");
            assert_eq!(body["path"], seen, "{path}");
        }
    }
}

#[test]
fn own_answers_keep_the_connection_alive() {
    let (_a, _b, t) = two_services();
    let mut conn = RawConn::open(t.proxy);
    let first = conn.exchange(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(first.starts_with("HTTP/1.1 404"), "{first}");
    let second = conn.exchange(b"GET /a/x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "the 404 closed the connection: {second}"
    );
    let third = conn.exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
}

fn host_routes() -> (Stub, Stub, Stub, Tollgate) {
    let a = Stub::start("a");
    let b = Stub::start("b");
    let c = Stub::start("c");
    let config = format!(
        "upstreams:
  service_a:
    backends: [{a}]
  service_b:
    backends: [{b}]
  service_c:
    backends: [{c}]
routes:
  - prefix: /
    upstream: service_a
  - prefix: /
    host: api.example.com
    upstream: service_b
  - prefix: /
    host: '*.example.com'
    upstream: service_c
  - prefix: /v2
    host: '*.eu.example.com'
    upstream: service_b
  - prefix: /items
    host: API.example.com
    methods: [GET, POST]
    upstream: service_a
",
        a = a.address(),
        b = b.address(),
        c = c.address()
    );
    let t = Tollgate::start(&config);
    (a, b, c, t)
}

fn service_for(t: &Tollgate, host: &str, path: &str) -> (u16, String) {
    let resp = raw(
        t.proxy,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let status = raw_status(&resp);
    let body: serde_json::Value =
        serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or_default();
    (
        status,
        body["service"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn the_most_specific_host_wins_then_the_longest_prefix() {
    let (_a, _b, _c, t) = host_routes();
    let cases = [
        ("api.example.com", "/x", 200, "b"),
        // Case and port are ignored.
        ("API.Example.COM:8443", "/x", 200, "b"),
        ("api.example.com.", "/x", 200, "b"),
        ("www.example.com", "/x", 200, "c"),
        ("a.b.example.com", "/x", 200, "c"),
        // The longest wildcard wins; within it the longest prefix, and a path the group
        // lacks is a 404 rather than another group's route.
        ("fr.eu.example.com", "/v2/x", 200, "b"),
        ("fr.eu.example.com", "/other", 404, ""),
        // A wildcard does not cover the bare domain; unknown hosts get the routes without one.
        ("example.com", "/x", 200, "a"),
        ("other.test", "/x", 200, "a"),
        ("127.0.0.1", "/x", 200, "a"),
        ("api.example.com", "/items/7", 200, "a"),
    ];
    for (host, path, status, service) in cases {
        assert_eq!(
            service_for(&t, host, path),
            (status, service.to_string()),
            "{host}{path}"
        );
    }
    // HTTP/1.0 without a Host header is routed among the routes without one.
    let resp = raw(t.proxy, b"GET /x HTTP/1.0\r\n\r\n");
    assert!(resp.contains("\"service\":\"a\""), "{resp}");
}

#[test]
fn a_method_the_route_does_not_accept_gets_405_with_allow() {
    let (_a, _b, _c, t) = host_routes();
    let resp = raw(
        t.proxy,
        b"DELETE /items/7 HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw_status(&resp), 405, "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(lower.contains("\r\nallow: get, post, head\r\n"), "{resp}");
    assert!(resp.contains("\"error\":\"method_not_allowed\""), "{resp}");
    for method in ["GET", "POST", "HEAD"] {
        let resp = raw(
            t.proxy,
            format!(
                "{method} /items/7 HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(raw_status(&resp), 200, "{method}: {resp}");
    }
    let m = t.metric(
        r#"tollgate_requests_total{route="api.example.com/items",method="DELETE",status="405"}"#,
    );
    assert_eq!(m, Some(1.0));
}

#[test]
fn limits_can_key_on_the_host() {
    let a = Stub::start("a");
    let config = format!(
        "upstreams:
  service_a:
    backends: [{a}]
limits:
  per_host:
    algorithm: fixed_window
    rate: 2/1m
    scope: local
    key: host
routes:
  - prefix: /
    upstream: service_a
    limits: [per_host]
",
        a = a.address()
    );
    let t = Tollgate::start(&config);
    let statuses =
        |host: &str| -> Vec<u16> { (0..3).map(|_| service_for(&t, host, "/x").0).collect() };
    assert_eq!(statuses("one.test"), [200, 200, 429]);
    // The same host with another case and a port is the same key.
    assert_eq!(service_for(&t, "ONE.test:80", "/x").0, 429);
    assert_eq!(statuses("two.test"), [200, 200, 429]);
}

/// A backend that records every request head it reads, byte for byte, and answers each
/// with mixed-case fields and a reason phrase of its own.
struct RawBackend {
    addr: std::net::SocketAddr,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RawBackend {
    fn start() -> RawBackend {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            seen.lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&head).into_owned());
                            let reply = b"HTTP/1.1 200 Fine Thanks\r\nX-Backend-Case: b\r\n\
                                Content-Length: 2\r\n\r\nok";
                            if stream.write_all(reply).is_err() {
                                return;
                            }
                        }
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        RawBackend { addr, heads }
    }

    fn last_head(&self) -> String {
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

fn case_setup(preserve: bool) -> (RawBackend, Tollgate) {
    let backend = RawBackend::start();
    let config = format!(
        "http:
  preserve_header_case: {preserve}
upstreams:
  raw:
    backends: [{addr}]
limits:
  per_ip:
    key: client_ip
    algorithm: sliding_window
    rate: 1000000/1m
    scope: local
routes:
  - prefix: /a
    upstream: raw
    limits: [per_ip]
",
        addr = backend.addr
    );
    (backend, Tollgate::start(&config))
}

/// Header names travel in lower case by default, both ways: tollgate works on the header's
/// `http` parts without Pingora's case-preserving copy of every name (BENCHMARKS.md, *The
/// proxy path*). HTTP field names are case-insensitive (RFC 9110 §5.1); Pingora still
/// title-cases a few standard ones (`Host`, `Content-Length`). Nothing is lost on the way:
/// the reason phrase, the backend's fields, the forwarding headers, the request id and the
/// rate limit fields.
#[test]
fn header_names_go_lower_case_by_default() {
    let (backend, t) = case_setup(false);
    let resp = raw(
        t.proxy,
        b"GET /a/h?q=1 HTTP/1.1\r\nHost: x\r\nX-Client-Case: c\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200 Fine Thanks\r\n"), "{resp}");
    for field in [
        "\r\nx-backend-case: b\r\n",
        "\r\nx-request-id: ",
        "\r\nratelimit-policy: ",
        "\r\nratelimit: ",
        "\r\nx-ratelimit-limit: 1000000\r\n",
        "\r\nx-ratelimit-remaining: ",
        "\r\nx-ratelimit-reset: ",
        "\r\nContent-Length: 2\r\n",
    ] {
        assert!(resp.contains(field), "{field:?} missing from\n{resp}");
    }
    let head = backend.last_head();
    assert!(head.starts_with("GET /a/h?q=1 HTTP/1.1\r\n"), "{head}");
    for field in [
        "\r\nHost: x\r\n",
        "\r\nx-client-case: c\r\n",
        "\r\nx-forwarded-for: 127.0.0.1\r\n",
        "\r\nx-forwarded-proto: http\r\n",
        "\r\nx-request-id: ",
    ] {
        assert!(head.contains(field), "{field:?} missing from\n{head}");
    }
}

/// `http.preserve_header_case: true` sends names as they came (and tollgate's own rate
/// limit fields in their canonical case).
#[test]
fn preserve_header_case_keeps_names_as_they_came() {
    let (backend, t) = case_setup(true);
    let resp = raw(
        t.proxy,
        b"GET /a/h HTTP/1.1\r\nHost: x\r\nX-Client-Case: c\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200 Fine Thanks\r\n"), "{resp}");
    for field in [
        "\r\nX-Backend-Case: b\r\n",
        "\r\nRateLimit-Policy: ",
        "\r\nX-RateLimit-Remaining: ",
    ] {
        assert!(resp.contains(field), "{field:?} missing from\n{resp}");
    }
    let head = backend.last_head();
    assert!(head.contains("\r\nX-Client-Case: c\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{head}"
    );
}

/// An absolute-form request target reaches the backend as the client sent it in either
/// mode: the lower-case route is taken only when the target is the URI's path and query.
#[test]
fn an_absolute_form_target_is_forwarded_verbatim() {
    for preserve in [false, true] {
        let (backend, t) = case_setup(preserve);
        let resp = raw(t.proxy, b"GET http://x/a/h?q=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(raw_status(&resp), 200, "{resp}");
        let head = backend.last_head();
        assert!(
            head.starts_with("GET http://x/a/h?q=1 HTTP/1.1\r\n"),
            "preserve {preserve}: {head}"
        );
        assert!(head.contains("\r\nx-request-id: "), "{head}");
    }
}

/// With Pingora's keep-alive timer off (it cost every request a timer), the request header
/// deadline is what closes an idle kept-alive connection: after `keepalive_timeout` plus
/// `header_timeout`, never before the keep-alive time, and without an answer.
#[test]
fn an_idle_kept_alive_connection_is_closed_by_the_header_deadline() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let stub = Stub::start("a");
    let t = Tollgate::start(&format!(
        "http:
  keepalive_timeout: 1s
  header_timeout: 1s
upstreams:
  a:
    backends: [{}]
routes:
  - prefix: /a
    upstream: a
",
        stub.address()
    ));
    let mut conn = RawConn::open(t.proxy);
    let resp = conn.exchange(b"GET /a/x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let idle_from = Instant::now();
    conn.stream()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("set timeout");
    let mut rest = Vec::new();
    let read = conn.stream().read_to_end(&mut rest);
    let idle = idle_from.elapsed();
    assert!(
        read.is_ok() || idle < Duration::from_secs(19),
        "the idle connection was still open after {idle:?}"
    );
    assert!(rest.is_empty(), "an idle close wrote {rest:?}");
    // Deadline 2 s (keep-alive 1 s + header 1 s); a busy machine only makes it later.
    assert!(
        idle >= Duration::from_secs(1),
        "closed after {idle:?}, before the keep-alive time"
    );
    assert!(
        idle < Duration::from_secs(15),
        "closed only after {idle:?}; the deadline is 2 s"
    );
}
