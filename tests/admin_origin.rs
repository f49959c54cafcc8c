//! The admin listener keeps other web sites out: cross-site requests (Origin and Referer,
//! JSON-only writes, no CORS but for listed origins) and DNS rebinding (Host), with and
//! without an admin token. The browser's side of it is in tests/dashboard_browser.rs.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

const TOKEN: &str = "origin-test-admin-token-0123";
const EVIL: &str = "http://evil.example";

/// A tollgate with Redis (registered keys live there), with or without an admin token.
fn start(redis: &Redis, stub: &Stub, token: Option<&str>, admin_extra: &str) -> Tollgate {
    let token_line = token.map(|t| format!("  token: {t}\n")).unwrap_or_default();
    Tollgate::start(&config_text(redis, stub, &token_line, admin_extra))
}

fn config_text(redis: &Redis, stub: &Stub, token_line: &str, admin_extra: &str) -> String {
    format!(
        "admin:
  listen: {{admin_listen}}
{token_line}  rate_limit: 1000/1s
{admin_extra}redis:
  url: {}
upstreams:
  a:
    backends: [{}]
routes:
  - prefix: /a
    upstream: a
",
        redis.url(),
        stub.address()
    )
}

/// A request to the admin listener, with the bearer token when there is one.
fn call(
    t: &Tollgate,
    token: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(b) = &bearer {
        all.push(("authorization", b));
    }
    send_with(&agent(), method, &t.admin_url(path), &all, body)
}

fn keys(t: &Tollgate, token: Option<&str>) -> serde_json::Value {
    let r = call(t, token, "GET", "/admin/keys", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["keys"].clone()
}

fn generation(t: &Tollgate, token: Option<&str>) -> u64 {
    let r = call(t, token, "GET", "/admin/config", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["reload"]["generation"].as_u64().unwrap()
}

/// The admin listener's own origin, as its dashboard's requests carry it.
fn own_origin(t: &Tollgate) -> String {
    format!("http://{}", t.admin)
}

/// (status, headers in lower case, body) of a request sent byte for byte, for `Host`
/// headers an HTTP library would not let a test choose.
fn raw_request(t: &Tollgate, head: &str) -> (u16, String, String) {
    let response = raw(
        t.admin,
        format!("{head}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let (headers, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        raw_status(&response),
        headers.to_ascii_lowercase(),
        body.to_string(),
    )
}

#[test]
fn the_cross_site_request_from_the_issue_is_refused_and_creates_no_key() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    for token in [None, Some(TOKEN)] {
        let t = start(&redis, &stub, token, "");
        let before = keys(&t, token);
        let reloads = generation(&t, token);
        // curl -X POST -H 'Content-Type: text/plain' -H 'Origin: http://evil.example' \
        //      --data '{"name":"csrf","tenant":"x"}' http://127.0.0.1:9000/admin/keys
        let csrf = r#"{"name":"csrf","tenant":"x"}"#;
        let plain = [("content-type", "text/plain"), ("origin", EVIL)];
        for sent_token in [None, token] {
            let r = call(&t, sent_token, "POST", "/admin/keys", &plain, csrf);
            assert_eq!(r.status, 403, "token {token:?}: {}", r.body);
            assert_eq!(r.json()["error"], "origin_not_allowed");
            assert!(r.json()["detail"].as_str().unwrap().contains(EVIL));
            assert_eq!(r.header("access-control-allow-origin"), None);
        }
        // JSON does not help a foreign page, nor does hiding behind Referer alone.
        let json_from_evil = [("content-type", "application/json"), ("origin", EVIL)];
        assert_eq!(
            call(&t, token, "POST", "/admin/keys", &json_from_evil, csrf).status,
            403
        );
        let by_referer = [
            ("content-type", "application/json"),
            ("referer", "http://evil.example/innocent-page"),
        ];
        assert_eq!(
            call(&t, token, "POST", "/admin/keys", &by_referer, csrf).status,
            403
        );
        // Reloads and deletes from the same page are refused too, and so are reads.
        assert_eq!(
            call(&t, token, "POST", "/admin/reload", &plain, "").status,
            403
        );
        let evil = [("origin", EVIL)];
        assert_eq!(
            call(&t, token, "DELETE", "/admin/limits/p/k", &evil, "").status,
            403
        );
        for path in [
            "/admin/config",
            "/admin/keys",
            "/admin/stats",
            "/admin/logs?client=x",
        ] {
            let r = call(&t, token, "GET", path, &evil, "");
            assert_eq!(r.status, 403, "GET {path}: {}", r.body);
        }
        // Nothing changed.
        assert_eq!(
            keys(&t, token),
            before,
            "token {token:?}: a key was created"
        );
        assert_eq!(generation(&t, token), reloads, "a reload happened");
        // The same write from the admin listener's own page works, so the refusals above
        // are the origin check and nothing else.
        let own = own_origin(&t);
        let from_own = [
            ("content-type", "application/json"),
            ("origin", own.as_str()),
        ];
        let created = call(&t, token, "POST", "/admin/keys", &from_own, csrf);
        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(
            keys(&t, token).as_array().unwrap().len(),
            before.as_array().unwrap().len() + 1
        );
        let referer = format!("{own}/dashboard");
        let from_dashboard = [
            ("content-type", "application/json"),
            ("referer", referer.as_str()),
        ];
        assert_eq!(
            call(&t, token, "POST", "/admin/reload", &from_dashboard, "").status,
            200
        );
        // The static description of the API is no secret: any site may link to it.
        assert_eq!(
            call(&t, token, "GET", "/admin/openapi.json", &evil, "").status,
            200
        );
    }
}

#[test]
fn a_rebound_host_name_is_misdirected_while_metrics_and_health_stay_open() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    for token in [None, Some(TOKEN)] {
        let t = start(
            &redis,
            &stub,
            token,
            "  allowed_hosts: [tollgate.internal, .ops.example.com]\n",
        );
        let auth = token
            .map(|t| format!("\r\nAuthorization: Bearer {t}"))
            .unwrap_or_default();
        let port = t.admin.port();
        for host in [
            "evil.example".to_string(),
            format!("evil.example:{port}"),
            format!("localhost.evil.example:{port}"),
            format!("127.0.0.1.evil.example:{port}"),
            "other.internal".to_string(),
        ] {
            for path in [
                "/admin/config",
                "/admin/keys",
                "/",
                "/dashboard",
                "/admin/events",
            ] {
                let (status, headers, body) =
                    raw_request(&t, &format!("GET {path} HTTP/1.1\r\nHost: {host}{auth}"));
                assert_eq!(status, 421, "Host {host} on {path}: {body}");
                assert!(
                    headers.contains("content-type: application/json"),
                    "{headers}"
                );
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(json["error"], "misdirected_request");
            }
            let write = format!(
                "POST /admin/reload HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 0{auth}"
            );
            assert_eq!(raw_request(&t, &write).0, 421, "POST with Host {host}");
            // Prometheus and load balancers use whatever name they have for the node.
            for open in ["/metrics", "/health"] {
                let (status, _, body) =
                    raw_request(&t, &format!("GET {open} HTTP/1.1\r\nHost: {host}"));
                assert_eq!(status, 200, "{open} with Host {host}: {body}");
            }
        }
        for host in [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("LocalHost.:{port}"),
            format!("[::1]:{port}"),
            "tollgate.internal".to_string(),
            format!("Tollgate.Internal:{port}"),
            "ops.example.com".to_string(),
            format!("a.ops.example.com:{port}"),
        ] {
            let (status, _, body) = raw_request(
                &t,
                &format!("GET /admin/config HTTP/1.1\r\nHost: {host}{auth}"),
            );
            assert_eq!(status, 200, "Host {host}: {body}");
        }
        // Without the token the Host check still comes first.
        if token.is_some() {
            let (status, _, _) =
                raw_request(&t, "GET /admin/config HTTP/1.1\r\nHost: evil.example");
            assert_eq!(status, 421);
            let (status, _, _) = raw_request(
                &t,
                &format!("GET /admin/config HTTP/1.1\r\nHost: localhost:{port}"),
            );
            assert_eq!(status, 401);
        }
    }
}

#[test]
fn writes_without_a_json_content_type_get_415() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    for token in [None, Some(TOKEN)] {
        let t = start(&redis, &stub, token, "");
        let before = keys(&t, token);
        let reloads = generation(&t, token);
        let body = r#"{"name":"typed","tenant":"x"}"#;
        for content_type in [
            Some("text/plain"),
            Some("text/plain;charset=UTF-8"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            None,
        ] {
            let headers: Vec<(&str, &str)> = content_type
                .map(|c| ("content-type", c))
                .into_iter()
                .collect();
            for path in ["/admin/keys", "/admin/reload", "/admin/check"] {
                let r = call(&t, token, "POST", path, &headers, body);
                assert_eq!(
                    r.status, 415,
                    "POST {path} with {content_type:?}: {}",
                    r.body
                );
                assert_eq!(r.json()["error"], "unsupported_media_type");
            }
        }
        let plain = [("content-type", "text/plain")];
        assert_eq!(
            call(&t, token, "DELETE", "/admin/keys/nope", &plain, "").status,
            415
        );
        // A DELETE has no body to type; it passes on to the route.
        let r = call(&t, token, "DELETE", "/admin/keys/nope", &[], "");
        assert_eq!(r.status, 404, "{}", r.body);
        assert_eq!(keys(&t, token), before);
        assert_eq!(generation(&t, token), reloads);
        let json = [("content-type", "application/json; charset=utf-8")];
        assert_eq!(
            call(&t, token, "POST", "/admin/keys", &json, body).status,
            201
        );
        if token.is_some() {
            // Without the token, the answer is 401 whatever the type: fix that first.
            assert_eq!(
                call(&t, None, "POST", "/admin/keys", &plain, body).status,
                401
            );
        }
    }
}

/// Reads the status line of `GET /admin/events` and leaves the stream.
fn event_stream_status(t: &Tollgate, query: &str) -> String {
    let mut stream = TcpStream::connect(t.admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /admin/events{query} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        t.admin.port()
    )
    .unwrap();
    let mut status = String::new();
    BufReader::new(stream).read_line(&mut status).unwrap();
    status
}

#[test]
fn a_token_in_the_url_is_taken_only_by_the_event_stream_and_never_logged() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    for token in [None, Some(TOKEN)] {
        let body = config_text(
            &redis,
            &stub,
            &token.map(|t| format!("  token: {t}\n")).unwrap_or_default(),
            "",
        ) + "log:\n  access_log: {dir}/access.log\n";
        let t = Tollgate::start_with_env(&body, &[("RUST_LOG", "debug")]);
        let before = keys(&t, token);
        let reloads = generation(&t, token);
        let in_url = format!("access_token={}", token.unwrap_or("anything"));
        let json = [("content-type", "application/json")];
        for (method, path) in [
            ("POST", format!("/admin/reload?{in_url}")),
            ("POST", format!("/admin/keys?{in_url}")),
            ("POST", format!("/admin/events?{in_url}")),
            ("DELETE", format!("/admin/keys/nope?{in_url}")),
            ("GET", format!("/admin/config?{in_url}")),
        ] {
            let r = send_with(
                &agent(),
                method,
                &t.admin_url(&path),
                &json,
                r#"{"name":"url"}"#,
            );
            assert_eq!(r.status, 400, "{method} {path}: {}", r.body);
            assert_eq!(r.json()["error"], "token_in_url");
        }
        assert_eq!(keys(&t, token), before);
        assert_eq!(generation(&t, token), reloads);
        // EventSource cannot send headers, so the stream takes the token in its URL.
        let status = event_stream_status(&t, &format!("?{in_url}"));
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        if let Some(token) = token {
            assert!(event_stream_status(&t, "?access_token=wrong").starts_with("HTTP/1.1 401"));
            // Traffic through the proxy, so the access log is written to.
            assert_eq!(get(&t.url("/a/x")).status, 200);
            let access = t.dir.path().join("access.log");
            wait_for("the access log", Duration::from_secs(5), || {
                std::fs::metadata(&access)
                    .is_ok_and(|m| m.len() > 0)
                    .then_some(())
            });
            let logs = t.logs() + &std::fs::read_to_string(&access).unwrap();
            assert!(logs.contains("DEBUG"), "debug logging is on");
            assert!(!logs.contains(token), "the token was logged:\n{logs}");
        }
    }
}

#[test]
fn an_origin_in_allowed_origins_gets_cors_and_may_write() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    const OPS: &str = "https://ops.example.com";
    for token in [None, Some(TOKEN)] {
        let listed = format!("  allowed_origins: [{OPS}, 'http://localhost:3000']\n");
        let t = start(&redis, &stub, token, &listed);
        let preflight = |origin: &str| {
            call(
                &t,
                None,
                "OPTIONS",
                "/admin/keys",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "authorization,content-type",
                    ),
                ],
                "",
            )
        };
        let ok = preflight(OPS);
        assert_eq!(ok.status, 204, "{}", ok.body);
        assert_eq!(ok.header("access-control-allow-origin"), Some(OPS));
        assert!(ok
            .header("access-control-allow-methods")
            .unwrap()
            .contains("POST"));
        let allowed_headers = ok
            .header("access-control-allow-headers")
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            allowed_headers.contains("content-type") && allowed_headers.contains("authorization")
        );
        assert_eq!(ok.header("vary"), Some("Origin"));
        assert_eq!(ok.header("access-control-allow-credentials"), None);
        for other in [
            EVIL,
            "https://ops.example.com:8443",
            "http://ops.example.com",
            "null",
        ] {
            let refused = preflight(other);
            assert_eq!(refused.status, 403, "preflight from {other}");
            assert_eq!(refused.header("access-control-allow-origin"), None);
        }
        // The write the preflight allowed, and a read: both name the origin back.
        let before = keys(&t, token).as_array().unwrap().len();
        let from_ops = [("content-type", "application/json"), ("origin", OPS)];
        let r = call(
            &t,
            token,
            "POST",
            "/admin/keys",
            &from_ops,
            r#"{"name":"ops-app"}"#,
        );
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.header("access-control-allow-origin"), Some(OPS));
        assert_eq!(keys(&t, token).as_array().unwrap().len(), before + 1);
        let read = call(&t, token, "GET", "/admin/config", &[("origin", OPS)], "");
        assert_eq!(read.status, 200);
        assert_eq!(read.header("access-control-allow-origin"), Some(OPS));
        let config = &read.json()["config"]["admin"];
        assert_eq!(config["allowed_origins"][0], OPS);
        assert_eq!(config["allowed_origins"][1], "http://localhost:3000");
        // A listed origin still needs the token, and its answer is readable to it.
        if token.is_some() {
            let r = call(&t, None, "GET", "/admin/config", &[("origin", OPS)], "");
            assert_eq!(r.status, 401);
            assert_eq!(r.header("access-control-allow-origin"), Some(OPS));
        }
        assert_eq!(
            call(&t, token, "GET", "/admin/config", &[("origin", EVIL)], "").status,
            403
        );

        // The list reloads with the file: without the entry the origin is foreign again.
        t.write_config(&config_text(
            &redis,
            &stub,
            &token.map(|t| format!("  token: {t}\n")).unwrap_or_default(),
            "",
        ));
        let json = [("content-type", "application/json")];
        let reload = call(&t, token, "POST", "/admin/reload", &json, "");
        assert_eq!(reload.status, 200, "{}", reload.body);
        assert_eq!(preflight(OPS).status, 403);
        assert_eq!(
            call(
                &t,
                token,
                "POST",
                "/admin/keys",
                &from_ops,
                r#"{"name":"late"}"#
            )
            .status,
            403
        );
    }
}
