//! Hostile input: request smuggling, oversized messages, slowloris clients and path tricks.
//! Every attack goes over a raw socket, since an HTTP library would refuse to send it, and
//! the stub backend's own request count shows what (if anything) got through.

mod common;
use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

fn setup(extra: &str, route_extra: &str) -> (Stub, Tollgate) {
    let a = Stub::start("a");
    let t = Tollgate::start(&format!(
        "{extra}upstreams:\n  a:\n    backends: [{}]\nroutes:\n  - prefix: /a\n    upstream: a\n{route_extra}",
        a.address()
    ));
    (a, t)
}

fn answered(stub: &Stub) -> u64 {
    stub.stats().0
}

/// Requests whose length two parsers could disagree on. Each must get 400 and a closed
/// connection, and nothing of it may reach the backend.
const SMUGGLING: &[(&str, &str)] = &[
    (
        "CL.TE",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    ),
    (
        "TE.CL",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST /a/y HTTP/1.1\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n",
    ),
    (
        "duplicate equal Content-Length",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "duplicate differing Content-Length",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello",
    ),
    (
        "Content-Length list",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello",
    ),
    (
        "Content-Length with a sign",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
    ),
    (
        "chunked not last",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ),
    (
        "coding before chunked",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "xchunked",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "two Transfer-Encoding fields",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "space before the colon",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    ),
    (
        "vertical tab in the value",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "underscore field name",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding on HTTP/1.0",
        "POST /a/x HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "bad chunk size",
        "POST /a/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "bare LF line endings",
        "POST /a/x HTTP/1.1\nHost: t\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\n\n",
    ),
];

#[test]
fn smuggling_attempts_are_refused_and_never_reach_the_backend() {
    let (a, t) = setup("", "");
    for (name, attack) in SMUGGLING {
        let before = answered(&a);
        let mut conn = RawConn::open(t.proxy);
        let response = conn.exchange(attack.as_bytes());
        let status = raw_status(&response);
        // The backend may see at most the one request the proxy framed, never a second.
        let reached = answered(&a) - before;
        if *name == "bad chunk size" {
            // The header is fine, so the request starts upstream before the body turns out
            // malformed; the proxy then drops both sides rather than forward a guess.
            assert!(reached <= 1, "{name}: backend saw {reached} requests");
            assert!(
                status == 400 || status == 0 || status == 502,
                "{name}: {response}"
            );
        } else {
            assert_eq!(status, 400, "{name}: {response}");
            assert_eq!(reached, 0, "{name}: reached the backend");
        }
        assert!(conn.is_closed(), "{name}: the connection stayed open");
    }
    // An honest chunked request still goes through, with its body intact.
    let before = answered(&a);
    let response = raw(
        t.proxy,
        b"POST /a/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(raw_status(&response), 200, "{response}");
    assert_eq!(answered(&a) - before, 1);
}

#[test]
fn oversized_urls_headers_and_bodies_get_414_431_and_413() {
    let (a, t) = setup(
        "http:\n  max_uri_bytes: 2KiB\n  max_header_bytes: 8KiB\n",
        "    max_body_size: 1KiB\n",
    );
    let before = answered(&a);
    let long_url = format!("/a/{}", "x".repeat(3000));
    let response = raw(
        t.proxy,
        format!("GET {long_url} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    );
    assert_eq!(raw_status(&response), 414, "{response}");
    assert!(response.contains("\"uri_too_long\""), "{response}");

    let big_header = format!(
        "GET /a/x HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "y".repeat(9000)
    );
    let response = raw(t.proxy, big_header.as_bytes());
    assert_eq!(raw_status(&response), 431, "{response}");
    assert!(response.contains("\"header_too_large\""), "{response}");

    // A declared length over the limit is refused before any of it is read.
    let response = raw(
        t.proxy,
        format!(
            "POST /a/x HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n{}",
            "z".repeat(2000)
        )
        .as_bytes(),
    );
    assert_eq!(raw_status(&response), 413, "{response}");
    assert!(response.contains("\"body_too_large\""), "{response}");
    assert_eq!(
        answered(&a),
        before,
        "nothing oversized reached the backend"
    );

    // A chunked body has no declared length: it is counted as it streams.
    let chunk = format!("3e8\r\n{}\r\n", "c".repeat(1000));
    let response = raw(
        t.proxy,
        format!(
            "POST /a/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(raw_status(&response), 413, "{response}");

    // Within every limit, all is well.
    let agent = agent();
    assert_eq!(
        send(&agent, "POST", &t.url("/a/x"), &"k".repeat(900)).status,
        200
    );
    assert_eq!(get(&t.url(&format!("/a/{}", "x".repeat(1500)))).status, 200);
    assert_eq!(
        t.metric(r#"tollgate_requests_total{route="/a",method="POST",status="413"}"#),
        Some(2.0)
    );
}

/// Sends a request header a few bytes at a time and never finishes it.
fn trickle(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .write_all(b"GET /a/x HTTP/1.1\r\nHost: t\r\n")
        .expect("write");
    stream
}

#[test]
fn slowloris_clients_are_cut_off_at_the_header_timeout_without_starving_others() {
    let (_a, t) = setup("http:\n  header_timeout: 1s\n", "");
    let opened = Instant::now();
    let mut slow: Vec<_> = (0..64).map(|_| trickle(t.proxy)).collect();
    let silent = std::net::TcpStream::connect(t.proxy).expect("connect");
    // While they trickle, everyone else is served at once (one proxy thread here).
    let agent = agent();
    let mut last_trickle = Instant::now();
    while opened.elapsed() < Duration::from_millis(800) {
        let started = Instant::now();
        assert_eq!(get_with(&agent, &t.url("/a/ok"), &[]).status, 200);
        assert!(started.elapsed() < Duration::from_millis(300));
        if last_trickle.elapsed() > Duration::from_millis(100) {
            for s in &mut slow {
                let _ = s.write_all(b"X-Slow: 1\r\n");
            }
            last_trickle = Instant::now();
        }
    }
    // Trickling does not extend the deadline: each is answered 408 and closed near 1 s.
    for (i, mut s) in slow.into_iter().enumerate() {
        let _ = s.write_all(b"X-Slow: 2\r\n");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "slow client {i} got {text:?}"
        );
    }
    let elapsed = opened.elapsed();
    assert!(
        elapsed < Duration::from_millis(2_500),
        "cut off after {elapsed:?}"
    );
    // A connection that never sends a byte is closed too.
    let mut silent = silent;
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let closed = std::io::Read::read_to_end(&mut silent, &mut got);
    assert!(closed.is_ok(), "silent connection: {closed:?}");
    // A request that completes in time on a kept-alive connection is unaffected by the
    // deadline that covered its predecessor.
    let mut conn = RawConn::open(t.proxy);
    for _ in 0..3 {
        let response = conn.exchange(b"GET /a/x HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(raw_status(&response), 200, "{response}");
    }
    std::thread::sleep(Duration::from_millis(1_200));
    let response = conn.exchange(b"GET /a/x HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(
        raw_status(&response),
        200,
        "an idle kept-alive connection was cut at the header timeout: {response}"
    );
}

#[test]
fn path_tricks_count_against_the_route_they_reach() {
    let a = Stub::start("a");
    let b = Stub::start("b");
    let t = Tollgate::start(&format!(
        "upstreams:
  a:
    backends: [{}]
  b:
    backends: [{}]
limits:
  b_only:
    key: client_ip
    algorithm: fixed_window
    rate: 4/1m
    scope: local
routes:
  - prefix: /a
    upstream: a
  - prefix: /b
    upstream: b
    limits: [b_only]
",
        a.address(),
        b.address()
    ));
    let tricks = [
        "/b/x",
        "/a/../b/x",
        "//b/x",
        "/%62/x",
        "/a/%2e%2e/b/x",
        "/a/./../b/./x",
        "/b//x",
        "/../../b/x",
    ];
    let mut statuses = Vec::new();
    for path in tricks {
        let response = raw(
            t.proxy,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let status = raw_status(&response);
        if status == 200 {
            assert!(response.contains("\"service\":\"b\""), "{path}: {response}");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429, 429, 429, 429],
        "every spelling of /b shares its limit"
    );
    // Encoded separators cannot smuggle a path past the router; case does not fold.
    for (path, status) in [
        ("/a/..%2Fb/x", 400),
        ("/a%2F..%2Fb", 400),
        ("/B/x", 404),
        ("/a\\..\\b", 400),
    ] {
        let response = raw(
            t.proxy,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(raw_status(&response), status, "{path}: {response}");
    }
    assert_eq!(answered(&b), 4);
}

/// Median latency of requests to `url` with header `name: value` for each value, taking the
/// values in turns so a slow moment of the machine falls on all of them alike.
fn median_latencies(url: &str, name: &str, values: &[String], rounds: usize) -> Vec<Duration> {
    let agent = agent();
    let mut samples = vec![Vec::with_capacity(rounds); values.len()];
    for _ in 0..rounds {
        for (i, value) in values.iter().enumerate() {
            let started = Instant::now();
            let r = get_with(&agent, url, &[(name, value.as_str())]);
            samples[i].push(started.elapsed());
            assert_eq!(r.status, 401, "{name}: {value}: {}", r.body);
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort();
            s[s.len() / 2]
        })
        .collect()
}

#[test]
fn a_wrong_key_or_token_takes_as_long_however_much_of_it_matches() {
    let key = "k3y-0123456789abcdef0123456789abcdef";
    let token = "t0ken-0123456789abcdef0123456789abcdef";
    let (_a, t) = setup(
        &format!(
            "admin:\n  listen: {{admin_listen}}\n  token: {token}\n  rate_limit: 1000000/1s\napi_keys:\n  keys:\n    {key}: {{ tenant: t }}\n"
        ),
        "    require_api_key: true\n",
    );
    // Same length: all but the last character right, and the first one already wrong.
    let near = |s: &str| format!("{}X", &s[..s.len() - 1]);
    let far = |s: &str| format!("X{}", &s[1..]);
    for (what, url, header, values) in [
        (
            "API key",
            t.url("/a/x"),
            "x-api-key",
            vec![near(key), far(key)],
        ),
        (
            "admin token",
            t.admin_url("/admin/config"),
            "authorization",
            vec![
                format!("Bearer {}", near(token)),
                format!("Bearer {}", far(token)),
            ],
        ),
    ] {
        let m = median_latencies(&url, header, &values, 400);
        let ratio = m[0].as_secs_f64() / m[1].as_secs_f64();
        eprintln!("{what}: near miss {:?}, far miss {:?}", m[0], m[1]);
        // The comparison is on SHA-256 digests in constant time, so nothing here depends on
        // the matching prefix; the bound only leaves room for the machine's noise.
        assert!(
            (0.8..1.25).contains(&ratio),
            "{what}: a near miss took {:?}, a far miss {:?}",
            m[0],
            m[1]
        );
    }
}
