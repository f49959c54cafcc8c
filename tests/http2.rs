//! HTTP/2 to clients: every stream is a request to routing and limits, h2 over TLS and
//! prior-knowledge h2c, and the rapid-reset defence, with h2load and hand-written frames.

mod common;
use common::certs::Ca;
use common::h2load::h2load;
use common::tls::{client_config, TlsConn};
use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

struct Setup {
    _dir: tempfile::TempDir,
    ca: Ca,
    stub: Stub,
    t: Tollgate,
}

/// A TLS listener and an h2c listener in front of a stub, with a limit of 5 per minute on
/// `/limited`.
fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "h2");
    let (cert, key) = ca.issue("server", &["localhost", "127.0.0.1"]);
    let stub = Stub::start("a");
    let config = format!(
        "listen:
  - address: {{proxy_listen}}
    http2: true
  - address: {{tls_listen}}
    tls:
      certs: [{{ cert: {cert}, key: {key} }}]
limits:
  five:
    algorithm: fixed_window
    rate: 5/1m
    scope: local
    key: client_ip
upstreams:
  service_a:
    backends: [{a}]
routes:
  - prefix: /
    upstream: service_a
  - prefix: /limited
    upstream: service_a
    limits: [five]
{extra}",
        cert = cert.display(),
        key = key.display(),
        a = stub.address()
    );
    let t = Tollgate::start(&config);
    Setup {
        _dir: dir,
        ca,
        stub,
        t,
    }
}

#[test]
fn ten_streams_on_one_connection_are_ten_requests_against_the_limit() {
    let s = setup("");
    // Over TLS (h2 through ALPN)...
    let (ok, limited, text) = h2load(
        &format!("https://127.0.0.1:{}/limited/x", s.t.tls.port()),
        &["-c1", "-m10", "-n10"],
    );
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert_eq!((ok, limited), (5, 5), "{text}");
    let limited_metric =
        s.t.metric(r#"tollgate_ratelimit_decisions_total{policy="five",result="limited"}"#);
    assert_eq!(limited_metric, Some(5.0));
    // ...and over prior-knowledge h2c: the same client's window is spent already.
    let (ok, limited, text) = h2load(
        &format!("http://{}/limited/x", s.t.proxy),
        &["-c1", "-m10", "-n10"],
    );
    assert!(text.contains("Application protocol: h2c"), "{text}");
    assert_eq!((ok, limited), (0, 10), "{text}");
    // Unlimited routes serve every stream.
    let (ok, _, text) = h2load(
        &format!("http://{}/x", s.t.proxy),
        &["-c2", "-m20", "-n400"],
    );
    assert_eq!(ok, 400, "{text}");
    assert_eq!(
        s.t.metric(r#"tollgate_requests_total{route="/",method="GET",status="200"}"#),
        Some(400.0)
    );
}

#[test]
fn an_h2c_listener_still_speaks_http_1_1() {
    let s = setup("");
    let r = get(&s.t.url("/x"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["service"], "a");
}

#[test]
fn the_stream_limit_is_advertised_from_the_config() {
    let s = setup("http2:\n  max_concurrent_streams: 7\n");
    // The server's SETTINGS frame carries MAX_CONCURRENT_STREAMS (id 3).
    let mut conn = std::net::TcpStream::connect(s.t.proxy).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    conn.write_all(PREFACE).unwrap();
    conn.write_all(&frame(4, 0, 0, &[])).unwrap();
    let frames = read_frames(&mut conn);
    let settings = frames
        .iter()
        .find(|f| f.kind == 4 && f.flags & 1 == 0)
        .expect("server SETTINGS");
    let value = settings
        .payload
        .chunks(6)
        .find(|c| c[..2] == [0, 3])
        .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]));
    assert_eq!(value, Some(7));
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `GET /x` for `authority`, in HPACK without the dynamic table.
fn get_headers(authority: &str, https: bool) -> Vec<u8> {
    let mut block = vec![0x82, if https { 0x87 } else { 0x86 }];
    block.extend_from_slice(&[0x04, 2, b'/', b'x']);
    block.push(0x01);
    block.push(authority.len() as u8);
    block.extend_from_slice(authority.as_bytes());
    block
}

struct Frame {
    kind: u8,
    flags: u8,
    payload: Vec<u8>,
}

/// Reads frames until the peer closes or the socket's read timeout passes.
fn read_frames(stream: &mut impl Read) -> Vec<Frame> {
    read_frames_until_closed(stream).0
}

/// The frames read until the server closed the connection, and whether it reset it (a
/// close with the client's bytes still unread, which may discard what the server sent
/// last, its GOAWAY included).
fn read_frames_until_closed(stream: &mut impl Read) -> (Vec<Frame>, bool) {
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    let mut reset = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => {
                reset = e.kind() == std::io::ErrorKind::ConnectionReset;
                break;
            }
        }
    }
    (parse_frames(&data), reset)
}

fn parse_frames(data: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while data.len() >= at + 9 {
        let len = (usize::from(data[at]) << 16)
            | (usize::from(data[at + 1]) << 8)
            | usize::from(data[at + 2]);
        if data.len() < at + 9 + len {
            break;
        }
        frames.push(Frame {
            kind: data[at + 3],
            flags: data[at + 4],
            payload: data[at + 9..at + 9 + len].to_vec(),
        });
        at += 9 + len;
    }
    frames
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Opens `count` streams and resets each at once (CVE-2023-44487), in batches.
/// Sends `count` streams, each reset at once; false when the server closed the
/// connection before all were written.
fn rapid_reset(stream: &mut impl Write, count: u32, authority: &str, https: bool) -> bool {
    stream.write_all(PREFACE).unwrap();
    stream.write_all(&frame(4, 0, 0, &[])).unwrap();
    let headers = get_headers(authority, https);
    let mut batch = Vec::new();
    for i in 0..count {
        let id = 1 + 2 * i;
        batch.extend(frame(1, 0x5, id, &headers));
        batch.extend(frame(3, 0, id, &8u32.to_be_bytes()));
        if batch.len() > 16 * 1024 {
            if stream.write_all(&batch).is_err() {
                return false; // the server already gave up on this connection
            }
            batch.clear();
        }
    }
    stream.write_all(&batch).is_ok() && stream.flush().is_ok()
}

#[test]
fn a_rapid_reset_burst_is_cut_off_and_others_are_served_with_bounded_memory() {
    let s = setup("");
    let config = client_config(&s.ca.cert, &["h2"]);
    let before = rss_kb(s.t.pid());
    // Per burst: the GOAWAY's error code if one was read, and whether the server closed
    // the connection on the client (a reset, or writes it refused), which can discard
    // the GOAWAY before the client reads it.
    let mut goaways = Vec::new();
    let mut reached_backend = Vec::new();
    for round in 0..3 {
        let (served_before, _) = s.stub.stats();
        // Over TLS (ALPN h2) and over h2c in turn.
        let (written, (frames, reset)) = if round % 2 == 0 {
            let conn = TlsConn::connect(s.t.tls, "localhost", &config).unwrap();
            assert_eq!(conn.alpn().as_deref(), Some("h2"));
            let mut tls = conn.into_stream();
            let written = rapid_reset(&mut tls, 1000, "localhost", true);
            (written, read_frames_until_closed(&mut tls))
        } else {
            let mut tcp = std::net::TcpStream::connect(s.t.proxy).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let written = rapid_reset(&mut tcp, 1000, "localhost", false);
            (written, read_frames_until_closed(&mut tcp))
        };
        let goaway = frames
            .iter()
            .find(|f| f.kind == 7)
            .map(|f| u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]));
        goaways.push((goaway, reset || !written));
        // Another client is served while and after the burst.
        let r = get(&s.t.url("/x"));
        assert_eq!(r.status, 200);
        let (served_after, _) = s.stub.stats();
        reached_backend.push(served_after - served_before - 1);
    }
    // Every burst is cut off, and each GOAWAY read says ENHANCE_YOUR_CALM (0xb).
    assert!(
        goaways
            .iter()
            .all(|(code, closed)| *code == Some(0xb) || (code.is_none() && *closed)),
        "{goaways:?}"
    );
    assert!(
        goaways.iter().any(|(code, _)| code.is_some()),
        "no GOAWAY was read in three bursts: {goaways:?}"
    );
    let (ok, _, text) = h2load(
        &format!("http://{}/x", s.t.proxy),
        &["-c4", "-m10", "-n2000"],
    );
    assert_eq!(ok, 2000, "{text}");
    let after = rss_kb(s.t.pid());
    eprintln!(
        "rapid reset: 3 x 1000 streams opened and reset; GOAWAY {goaways:?}; requests that reached the backend per burst {reached_backend:?}; RSS {before} -> {after} KiB"
    );
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    assert!(
        reached_backend.iter().all(|n| *n < 1000),
        "{reached_backend:?}"
    );
}

#[test]
fn a_silent_connection_to_an_h2c_listener_is_closed_after_the_header_timeout() {
    let s = setup("http:\n  header_timeout: 1s\n");
    let mut silent = std::net::TcpStream::connect(s.t.proxy).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(silent.read(&mut buf).unwrap_or(0), 0);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // HTTP/1.1 and h2c clients are served meanwhile.
    assert_eq!(get(&s.t.url("/x")).status, 200);
}
