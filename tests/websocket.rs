//! WebSocket through the proxy, on plaintext (`ws://`) and TLS (`wss://`) listeners: the
//! upgrade passes after the limits, frames flow both ways until a side closes, the upgrade
//! counts once against a rate limit, and open sockets count against a concurrency limit.

mod common;
use common::certs::Ca;
use common::tls::client_config;
use common::ws::EchoServer;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tungstenite::Message;

struct Setup {
    _dir: tempfile::TempDir,
    ca: Ca,
    echo: EchoServer,
    t: Tollgate,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ws");
    let (cert, key) = ca.issue("server", &["localhost"]);
    let echo = EchoServer::start();
    let config = format!(
        "listen:
  - {{proxy_listen}}
  - address: {{tls_listen}}
    tls:
      certs: [{{ cert: {cert}, key: {key} }}]
limits:
  three_per_minute:
    algorithm: fixed_window
    rate: 3/1m
    scope: local
    key: client_ip
  two_open:
    algorithm: concurrency
    limit: 2
    scope: local
    key: client_ip
upstreams:
  echo:
    backends: [{echo}]
  impatient:
    backends: [{echo}]
    read_timeout: 1s
routes:
  - prefix: /quiet
    upstream: impatient
  - prefix: /ws
    upstream: echo
  - prefix: /rated
    upstream: echo
    limits: [three_per_minute]
  - prefix: /few
    upstream: echo
    limits: [two_open]
",
        cert = cert.display(),
        key = key.display(),
        echo = echo.addr
    );
    let t = Tollgate::start(&config);
    Setup {
        _dir: dir,
        ca,
        echo,
        t,
    }
}

type Socket<S> = tungstenite::WebSocket<S>;

/// Opens a WebSocket through the plaintext listener; a refused upgrade is its status.
fn ws_connect(s: &Setup, path: &str) -> Result<Socket<TcpStream>, u16> {
    let stream = TcpStream::connect(s.t.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    match tungstenite::client(format!("ws://{}{path}", s.t.proxy), stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

fn echo_round_trips<S: Read + Write>(ws: &mut Socket<S>) {
    for i in 0..20 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(text));
    }
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(big));
}

#[test]
fn websocket_echo_works_through_the_plaintext_listener() {
    let s = setup();
    let mut ws = ws_connect(&s, "/ws/echo").unwrap();
    echo_round_trips(&mut ws);
    ws.close(None).unwrap();
    // The close handshake completes through the proxy.
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    wait_for(
        "the backend to see the close",
        Duration::from_secs(5),
        || (s.echo.open_now() == 0).then_some(()),
    );
}

/// A browser's handshake (`Connection: keep-alive, Upgrade`, `Upgrade: WebSocket`, a field
/// nominated hop-by-hop) reaches the backend rebuilt as `Connection: Upgrade` and
/// `Upgrade: websocket`, which it accepts.
#[test]
fn a_browser_style_upgrade_is_forwarded_normalized() {
    use tungstenite::client::IntoClientRequest;
    let s = setup();
    let stream = TcpStream::connect(s.t.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request = format!("ws://{}/ws/echo", s.t.proxy)
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "connection",
        "keep-alive, Upgrade, X-Secret".parse().unwrap(),
    );
    headers.insert("upgrade", "WebSocket".parse().unwrap());
    headers.insert("x-secret", "1".parse().unwrap());
    let (mut ws, resp) = tungstenite::client(request, stream).expect("upgraded");
    assert_eq!(resp.status().as_u16(), 101);
    echo_round_trips(&mut ws);
    ws.close(None).unwrap();
}

#[test]
fn websocket_echo_works_through_the_tls_listener() {
    let s = setup();
    let config = client_config(&s.ca.cert, &["http/1.1"]);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = TcpStream::connect(s.t.tls).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tls = rustls::StreamOwned::new(conn, tcp);
    let (mut ws, response) =
        tungstenite::client(format!("wss://localhost:{}/ws/echo", s.t.tls.port()), tls)
            .map_err(|e| format!("{e:?}"))
            .unwrap();
    assert_eq!(response.status().as_u16(), 101);
    echo_round_trips(&mut ws);
    ws.close(None).unwrap();
    wait_for(
        "the backend to see the close",
        Duration::from_secs(5),
        || (s.echo.open_now() == 0).then_some(()),
    );
}

#[test]
fn a_websocket_counts_once_against_a_rate_limit() {
    let s = setup();
    let mut ws = ws_connect(&s, "/rated/echo").unwrap();
    // Many frames on one socket are one request to the limit.
    echo_round_trips(&mut ws);
    let _second = ws_connect(&s, "/rated/echo").unwrap();
    let _third = ws_connect(&s, "/rated/echo").unwrap();
    assert_eq!(ws_connect(&s, "/rated/echo").err(), Some(429));
    assert_eq!(s.echo.accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    // The first socket keeps working after the limit is reached.
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("still here"));
}

#[test]
fn open_websockets_count_against_a_concurrency_limit() {
    let s = setup();
    let first = ws_connect(&s, "/few/echo").unwrap();
    let mut second = ws_connect(&s, "/few/echo").unwrap();
    assert_eq!(ws_connect(&s, "/few/echo").err(), Some(429));
    // Closing one frees its slot.
    drop(first);
    wait_for("a slot to free", Duration::from_secs(5), || {
        ws_connect(&s, "/few/echo").ok()
    });
    second.send(Message::text("ping")).unwrap();
    assert_eq!(second.read().unwrap(), Message::text("ping"));
}

#[test]
fn a_silent_websocket_is_closed_after_the_upstream_read_timeout() {
    let s = setup();
    let mut ws = ws_connect(&s, "/quiet/echo").unwrap();
    ws.send(Message::text("early")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("early"));
    // Silent for longer than the upstream's read_timeout (1 s), as nginx's
    // proxy_read_timeout would close it.
    let started = std::time::Instant::now();
    let ended = loop {
        match ws.read() {
            Ok(Message::Close(_)) | Err(_) => break started.elapsed(),
            Ok(_) => continue,
        }
    };
    assert!(
        ended >= Duration::from_millis(900) && ended < Duration::from_secs(4),
        "{ended:?}"
    );
    wait_for(
        "the backend to see the close",
        Duration::from_secs(5),
        || (s.echo.open_now() == 0).then_some(()),
    );
}
