//! TLS termination: certificates by SNI, protocol versions, ALPN, certificate reload,
//! HTTPS redirects and HSTS, and hostile handshakes, against a real tollgate with real
//! clients (rustls, openssl s_client, curl).

mod common;
use common::certs::Ca;
use common::tls::{client_config, leaf_der, TlsConn};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Certificates for three names from one CA: the default (listed first), an exact name and
/// a wildcard.
struct Site {
    _dir: tempfile::TempDir,
    ca: Ca,
    default: (PathBuf, PathBuf),
    api: (PathBuf, PathBuf),
    wild: (PathBuf, PathBuf),
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "site");
    let default = ca.issue("default", &["default.test", "127.0.0.1"]);
    let api = ca.issue("api", &["api.example.com"]);
    let wild = ca.issue("wild", &["*.example.com"]);
    Site {
        _dir: dir,
        ca,
        default,
        api,
        wild,
    }
}

fn certs_yaml(pairs: &[&(PathBuf, PathBuf)]) -> String {
    pairs
        .iter()
        .map(|(c, k)| {
            format!(
                "\n        - {{ cert: {}, key: {} }}",
                c.display(),
                k.display()
            )
        })
        .collect()
}

/// A tollgate with a plaintext listener and a TLS one in front of a stub.
fn proxy(site: &Site) -> (Stub, Tollgate) {
    let a = Stub::start("a");
    let config = format!(
        "listen:
  - {{proxy_listen}}
  - address: {{tls_listen}}
    tls:
      certs:{certs}
http:
  header_timeout: 1s
upstreams:
  service_a:
    backends: [{a}]
routes:
  - prefix: /
    upstream: service_a
",
        certs = certs_yaml(&[&site.default, &site.api, &site.wild]),
        a = a.address()
    );
    (a, Tollgate::start(&config))
}

/// The leaf certificate `openssl s_client` is shown for `servername` (`None`: no SNI).
fn served_by_openssl(addr: std::net::SocketAddr, servername: Option<&str>) -> String {
    require_tool("openssl", "install it with `apt-get install -y openssl`");
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()]);
    match servername {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let out = output_within(
        cmd.stdin(std::process::Stdio::null()),
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate from s_client:\n{text}"));
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start + 25;
    text[start..end].to_string()
}

fn pem_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
    text[start..end].to_string()
}

#[test]
fn two_names_on_one_port_get_two_certificates_and_others_the_default() {
    let site = site();
    let (_a, t) = proxy(&site);
    assert_eq!(
        served_by_openssl(t.tls, Some("api.example.com")),
        pem_of(&site.api.0)
    );
    assert_eq!(
        served_by_openssl(t.tls, Some("www.example.com")),
        pem_of(&site.wild.0)
    );
    assert_eq!(
        served_by_openssl(t.tls, Some("API.EXAMPLE.COM")),
        pem_of(&site.api.0)
    );
    assert_eq!(
        served_by_openssl(t.tls, Some("unknown.test")),
        pem_of(&site.default.0)
    );
    assert_eq!(served_by_openssl(t.tls, None), pem_of(&site.default.0));
    // A real client verifies the chain and the name.
    let config = client_config(&site.ca.cert, &["http/1.1"]);
    let mut conn = TlsConn::connect(t.tls, "api.example.com", &config).unwrap();
    assert_eq!(conn.peer_leaf(), leaf_der(&site.api.0));
    let reply = conn.get("api.example.com", "/x").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[test]
fn only_tls_1_2_and_1_3_are_spoken() {
    let site = site();
    let (_a, t) = proxy(&site);
    let version = |flag: &str| {
        let mut cmd = Command::new("openssl");
        cmd.args([
            "s_client",
            "-connect",
            &t.tls.to_string(),
            "-servername",
            "api.example.com",
            flag,
            // Let the client offer old versions, so a refusal is the server's.
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-brief",
        ]);
        let out = output_within(
            cmd.stdin(std::process::Stdio::null()),
            Duration::from_secs(10),
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), all)
    };
    let (ok, text) = version("-tls1_1");
    assert!(!ok && !text.contains("Protocol version: TLSv1.1"), "{text}");
    let (ok, text) = version("-tls1");
    assert!(!ok, "{text}");
    let (ok, text) = version("-tls1_2");
    assert!(ok && text.contains("Protocol version: TLSv1.2"), "{text}");
    let (ok, text) = version("-tls1_3");
    assert!(ok && text.contains("Protocol version: TLSv1.3"), "{text}");
    // The TLS 1.2 suites are ECDHE with AEAD only.
    assert!(
        text.contains("Ciphersuite: TLS_AES") || text.contains("Ciphersuite: TLS_CHACHA20"),
        "{text}"
    );
    let (_, text) = version("-tls1_2");
    assert!(text.contains("Ciphersuite: ECDHE-"), "{text}");
    assert!(text.contains("GCM") || text.contains("CHACHA20"), "{text}");
}

#[test]
fn alpn_offers_h2_and_http_1_1_and_the_backend_hears_https() {
    let site = site();
    let (_a, t) = proxy(&site);
    let h2 = TlsConn::connect(
        t.tls,
        "api.example.com",
        &client_config(&site.ca.cert, &["h2", "http/1.1"]),
    )
    .unwrap();
    assert_eq!(h2.alpn().as_deref(), Some("h2"));
    let h1 = TlsConn::connect(
        t.tls,
        "api.example.com",
        &client_config(&site.ca.cert, &["http/1.1"]),
    )
    .unwrap();
    assert_eq!(h1.alpn().as_deref(), Some("http/1.1"));

    require_tool("curl", "install it with `apt-get install -y curl`");
    let port = t.tls.port();
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&site.ca.cert)
        .args([
            "--resolve",
            &format!("api.example.com:{port}:127.0.0.1"),
            "-H",
            "x-stub-echo: headers",
            "-w",
            "\n%{http_version}",
            &format!("https://api.example.com:{port}/a/x"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, version) = text.rsplit_once('\n').unwrap();
    assert_eq!(version, "2");
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    assert_eq!(body["path"], "/a/x");
}

/// Writes a new certificate pair over `target` the way deploy tools do: to a temporary
/// file, then renamed into place.
fn replace_pair(source: &(PathBuf, PathBuf), target: &(PathBuf, PathBuf)) {
    for (from, to) in [(&source.1, &target.1), (&source.0, &target.0)] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
}

#[test]
fn a_replaced_certificate_is_served_within_2s_with_no_failed_request() {
    let site = site();
    let (_a, t) = proxy(&site);
    let config = client_config(&site.ca.cert, &["http/1.1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for fresh_connections in [false, true] {
        let (stop, ok, failed, config) = (stop.clone(), ok.clone(), failed.clone(), config.clone());
        let addr = t.tls;
        load.push(std::thread::spawn(move || {
            let mut conn: Option<TlsConn> = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() || fresh_connections {
                    conn = match TlsConn::connect(addr, "api.example.com", &config) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            failed.lock().unwrap().push(format!("connect: {e}"));
                            continue;
                        }
                    };
                }
                let reply = conn.as_mut().unwrap().get("api.example.com", "/x");
                match reply {
                    Ok(r) if r.starts_with("HTTP/1.1 200") => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failed.lock().unwrap().push(format!("{other:?}")),
                }
            }
        }));
    }
    wait_for("load to flow", Duration::from_secs(10), || {
        (ok.load(Ordering::Relaxed) > 50).then_some(())
    });

    let renewed = site.ca.issue("api-renewed", &["api.example.com"]);
    let replaced_at = Instant::now();
    replace_pair(&renewed, &site.api);
    let new_leaf = leaf_der(&renewed.0);
    wait_for("the renewed certificate", Duration::from_secs(2), || {
        // A client config of its own: one that resumes a session sees no new certificate.
        let fresh = client_config(&site.ca.cert, &["http/1.1"]);
        let conn = TlsConn::connect(t.tls, "api.example.com", &fresh).ok()?;
        (conn.peer_leaf() == new_leaf).then_some(())
    });
    let took = replaced_at.elapsed();
    // Keep the load going a little past the swap.
    let after = ok.load(Ordering::Relaxed);
    wait_for("load after the swap", Duration::from_secs(10), || {
        (ok.load(Ordering::Relaxed) > after + 50).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().unwrap();
    }
    let failures = failed.lock().unwrap();
    assert!(
        failures.is_empty(),
        "failed requests: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    eprintln!(
        "renewed certificate served {took:?} after the files were replaced; {} requests, none failed",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        t.metric(r#"tollgate_tls_certificate_reloads_total{result="success"}"#),
        Some(1.0)
    );
}

#[test]
fn a_bad_new_certificate_keeps_the_old_one_with_a_located_error() {
    let site = site();
    let (_a, t) = proxy(&site);
    let original = pem_of(&site.api.0);
    std::fs::write(&site.api.0, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    let status = wait_for(
        "the refusal in /admin/config",
        Duration::from_secs(3),
        || {
            let config = get(&t.admin_url("/admin/config")).json();
            (config["tls"][0]["result"] == "error").then_some(config)
        },
    );
    let error = status["tls"][0]["errors"][0].as_str().unwrap().to_string();
    let file = t.config_path.display().to_string();
    // Located at the line that names the file.
    let text = std::fs::read_to_string(&t.config_path).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.contains(&format!("cert: {}", site.api.0.display())))
        .unwrap();
    assert!(
        error.starts_with(&format!("{file}:{line}:"))
            && error.contains("listen[1].tls.certs[1].cert:"),
        "{error}"
    );
    assert!(error.contains(&site.api.0.display().to_string()), "{error}");
    assert!(
        t.logs().contains("listen[1].tls.certs[1].cert"),
        "{}",
        t.logs()
    );
    // The old certificate still serves.
    assert_eq!(served_by_openssl(t.tls, Some("api.example.com")), original);
    // Good files clear the error.
    let renewed = site.ca.issue("api-fixed", &["api.example.com"]);
    replace_pair(&renewed, &site.api);
    wait_for("the fixed certificate", Duration::from_secs(3), || {
        let config = get(&t.admin_url("/admin/config")).json();
        (config["tls"][0]["result"] == "ok").then_some(())
    });
    assert_eq!(
        served_by_openssl(t.tls, Some("api.example.com")),
        pem_of(&renewed.0)
    );
}

#[test]
fn plaintext_redirects_to_https_and_tls_sends_hsts() {
    let site = site();
    let a = Stub::start("a");
    let config = format!(
        "listen:
  - address: {{proxy_listen}}
    redirect_https: {{tls_port}}
  - address: {{tls_listen}}
    hsts: {{ max_age: 365d, include_subdomains: true }}
    tls:
      certs:{certs}
upstreams:
  service_a:
    backends: [{a}]
routes:
  - prefix: /a
    upstream: service_a
",
        certs = certs_yaml(&[&site.default, &site.api]),
        a = a.address()
    );
    let t = Tollgate::start(&config);
    let reply = raw(
        t.proxy,
        b"GET /a/x?y=1 HTTP/1.1\r\nHost: API.example.com:8080\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw_status(&reply), 308, "{reply}");
    let location = format!(
        "location: https://api.example.com:{}/a/x?y=1\r\n",
        t.tls.port()
    );
    assert!(reply.to_ascii_lowercase().contains(&location), "{reply}");
    // Load balancers' plain health checks are not redirected.
    assert_eq!(get(&t.url("/health")).status, 200);

    let tls = client_config(&site.ca.cert, &["http/1.1"]);
    let mut conn = TlsConn::connect(t.tls, "api.example.com", &tls).unwrap();
    for path in ["/a/x", "/nowhere"] {
        let reply = conn.get("api.example.com", path).unwrap();
        assert!(
            reply
                .to_ascii_lowercase()
                .contains("strict-transport-security: max-age=31536000; includesubdomains\r\n"),
            "{path}: {reply}"
        );
    }
}

#[test]
fn plaintext_on_the_tls_port_gets_a_readable_400_and_others_are_served() {
    let site = site();
    let (_a, t) = proxy(&site);
    let reply = raw(t.tls, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(raw_status(&reply), 400, "{reply}");
    assert!(reply.contains("plain_http_to_https_port"), "{reply}");
    let config = client_config(&site.ca.cert, &["http/1.1"]);
    let mut conn = TlsConn::connect(t.tls, "api.example.com", &config).unwrap();
    assert!(conn
        .get("api.example.com", "/x")
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    assert_eq!(
        t.metric(&format!(
            r#"tollgate_tls_handshakes_total{{listener="{}",result="plaintext"}}"#,
            t.tls
        )),
        Some(1.0)
    );
}

#[test]
fn a_stalled_handshake_is_cut_off_after_the_header_timeout() {
    let site = site();
    let (_a, t) = proxy(&site);
    let config = client_config(&site.ca.cert, &["http/1.1"]);
    // One client sends nothing at all, another the first bytes of a ClientHello.
    let mut silent = std::net::TcpStream::connect(t.tls).unwrap();
    let mut partial = std::net::TcpStream::connect(t.tls).unwrap();
    use std::io::{Read, Write};
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let started = Instant::now();
    // Others are served meanwhile.
    let mut conn = TlsConn::connect(t.tls, "api.example.com", &config).unwrap();
    assert!(conn
        .get("api.example.com", "/x")
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    for stream in [&mut silent, &mut partial] {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the stalled handshake got an answer");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let sample = format!(
        r#"tollgate_tls_handshakes_total{{listener="{}",result="timeout"}}"#,
        t.tls
    );
    wait_for("both timeouts counted", Duration::from_secs(2), || {
        (t.metric(&sample) == Some(2.0)).then_some(())
    });
}

#[test]
fn a_config_reload_changes_the_certificate_list_or_is_refused_whole() {
    let site = site();
    let a = Stub::start("a");
    let config = |certs: &[&(PathBuf, PathBuf)], hsts: &str| {
        format!(
            "listen:
  - {{proxy_listen}}
  - address: {{tls_listen}}
    tls:
      certs:{certs}
{hsts}
upstreams:
  service_a:
    backends: [{a}]
routes:
  - prefix: /
    upstream: service_a
",
            certs = certs_yaml(certs),
            a = a.address()
        )
    };
    let t = Tollgate::start(&config(&[&site.default], ""));
    assert_eq!(
        served_by_openssl(t.tls, Some("api.example.com")),
        pem_of(&site.default.0)
    );
    // A new certificate for the listener, and HSTS: both apply without a restart.
    t.write_config(&config(&[&site.default, &site.api], "    hsts: {}"));
    wait_for("the added certificate", Duration::from_secs(3), || {
        (served_by_openssl(t.tls, Some("api.example.com")) == pem_of(&site.api.0)).then_some(())
    });
    let tls = client_config(&site.ca.cert, &["http/1.1"]);
    let mut conn = TlsConn::connect(t.tls, "api.example.com", &tls).unwrap();
    let reply = conn.get("api.example.com", "/x").unwrap();
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000\r\n"),
        "{reply}"
    );
    let status = get(&t.admin_url("/admin/config")).json();
    assert!(status["reload"]["restart_required"].is_null(), "{status}");
    // A list naming a file that does not exist refuses the whole reload.
    let missing = (site.api.0.with_file_name("missing.crt"), site.api.1.clone());
    t.write_config(&config(&[&site.default, &missing], ""));
    let status = wait_for("the refused reload", Duration::from_secs(3), || {
        let status = get(&t.admin_url("/admin/config")).json();
        (status["reload"]["result"] == "error").then_some(status)
    });
    let errors = status["reload"]["error"]["errors"].to_string();
    assert!(
        errors.contains("listen[1].tls.certs[1].cert: cannot read"),
        "{errors}"
    );
    assert_eq!(
        served_by_openssl(t.tls, Some("api.example.com")),
        pem_of(&site.api.0)
    );
}

#[test]
fn a_slow_header_over_tls_is_cut_off_without_plaintext_in_the_stream() {
    let site = site();
    let (_a, t) = proxy(&site);
    let config = client_config(&site.ca.cert, &["http/1.1"]);
    let conn = TlsConn::connect(t.tls, "api.example.com", &config).unwrap();
    let mut stream = conn.into_stream();
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: api.example.com\r\n")
        .unwrap();
    stream.flush().unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let outcome = stream.read(&mut buf);
    let took = started.elapsed();
    // The socket is closed at the header deadline (1 s); a plaintext 408 written into the
    // TLS stream would read as a corrupt record instead.
    match outcome {
        Ok(0) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
        Ok(n) => panic!("got {n} bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
    }
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "{took:?}"
    );
}
