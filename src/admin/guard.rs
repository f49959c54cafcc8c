//! Keeps other web sites out of the admin listener.
//!
//! Without a token the admin listener trusts whoever reaches it on loopback, and every web
//! page the operator's browser opens can reach loopback. Two attacks follow, and each has
//! its check here:
//!
//! - **Cross-site requests.** A page on `evil.example` sends `POST /admin/keys` with
//!   `Content-Type: text/plain`: a "simple" request, sent without a CORS preflight. The
//!   `Origin` check refuses it (403), and writes must be `application/json` (415), which a
//!   cross-site page can only send after a preflight that tollgate does not allow.
//! - **DNS rebinding.** `evil.example` re-resolves to 127.0.0.1, so the page is "same
//!   origin" and can read `/admin/config`. Its requests still say `Host: evil.example`;
//!   the `Host` check refuses them (421).
//!
//! Everything here reads request headers only, before the body and before the token check.

use crate::config::web::{always_accepted, parse_authority, Authority, HostPattern, Origin};
use crate::config::AdminConfig;
use http::{header, HeaderMap, Method};

/// Why a request is refused: the status and the JSON error the admin listener answers.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub error: &'static str,
    pub detail: String,
}

fn refuse(status: u16, error: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        status,
        error,
        detail: detail.into(),
    }
}

/// What to do with a request to the dashboard or `/admin/*`.
#[derive(Debug, PartialEq, Eq)]
pub enum Screen {
    /// Serve it; `cors` is a listed foreign origin to name in `Access-Control-Allow-Origin`.
    Pass {
        cors: Option<String>,
    },
    /// A CORS preflight from a listed origin: answer it with the allow headers.
    Preflight {
        origin: String,
    },
    Refuse(Refusal),
}

/// The parts of a request the screen looks at.
pub struct Facts<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// The authority of an absolute-form request target (`GET http://host/...`).
    pub target_authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// Whether the query has `access_token`.
    pub token_in_query: bool,
}

/// The pages that are only HTML: they carry no data, so any site may link to them.
pub fn is_page(path: &str) -> bool {
    matches!(path, "/" | "/dashboard")
}

/// Routes whose GET answers hold nothing but tollgate's own description.
fn is_static(path: &str) -> bool {
    is_page(path) || matches!(path, "/admin/docs" | "/admin/openapi.json")
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// The one route where a token may sit in the URL: EventSource cannot send headers.
pub fn token_may_be_in_query(method: &Method, path: &str) -> bool {
    *method == Method::GET && path == "/admin/events"
}

/// Checks `Host`, then (for routes with data or effects) `Origin`/`Referer`, answers CORS
/// preflights, and refuses a token in the URL outside `GET /admin/events`.
pub fn screen(facts: &Facts, rules: &AdminConfig) -> Screen {
    let host = match check_host(facts, &rules.allowed_hosts) {
        Ok(host) => host,
        Err(refusal) => return Screen::Refuse(refusal),
    };
    if is_page(facts.path) {
        return Screen::Pass { cors: None };
    }
    let origin = match single(facts.headers, header::ORIGIN) {
        Ok(origin) => origin,
        Err(()) => {
            return Screen::Refuse(refuse(
                403,
                "origin_not_allowed",
                "more than one Origin header",
            ))
        }
    };
    if *facts.method == Method::OPTIONS
        && facts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return preflight(origin, rules);
    }
    // A listed origin gets CORS answers everywhere, so its pages can read what they asked.
    let cors = origin
        .and_then(|o| Origin::parse(o).ok())
        .filter(|o| rules.allowed_origins.contains(o))
        .map(|o| o.to_string());
    if !(is_safe(facts.method) && is_static(facts.path)) {
        if let Err(refusal) = check_origin(facts.headers, origin, host.as_ref(), rules) {
            return Screen::Refuse(refusal);
        }
    }
    if facts.token_in_query && !token_may_be_in_query(facts.method, facts.path) {
        return Screen::Refuse(refuse(
            400,
            "token_in_url",
            "`access_token` in the URL is accepted only on GET /admin/events (for EventSource); send `Authorization: Bearer <token>`",
        ));
    }
    Screen::Pass { cors }
}

/// The value of a header that may appear at most once; `Ok(None)` when absent, `Err` when
/// repeated or not text.
fn single(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<&str>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v.to_str().map(Some).map_err(|_| ()),
        _ => Err(()),
    }
}

/// The request's host, or a refusal. `None` when it names none (HTTP/1.0 tools): no
/// browser sends a request without `Host`, so a missing one is no rebinding attempt.
fn check_host(facts: &Facts, allowed: &[HostPattern]) -> Result<Option<Authority>, Refusal> {
    let misdirected = |host: &str, why: String| {
        refuse(
            421,
            "misdirected_request",
            format!("`Host: {host}`: {why}. The admin listener answers to localhost, IP addresses and the names in admin.allowed_hosts."),
        )
    };
    let host = single(facts.headers, header::HOST)
        .map_err(|()| refuse(400, "bad_request", "more than one Host header"))?;
    let mut found = None;
    // An absolute-form target names the host too (and wins over Host): both must pass.
    for text in [facts.target_authority, host].into_iter().flatten() {
        let authority = parse_authority(text).map_err(|why| misdirected(text, why))?;
        if !(always_accepted(&authority.host) || allowed.iter().any(|p| p.matches(&authority.host)))
        {
            return Err(misdirected(
                text,
                "this is not a name of this admin listener".into(),
            ));
        }
        found = found.or(Some(authority));
    }
    Ok(found)
}

/// `Origin`, or without one `Referer`, must be the listener's own origin or a listed one.
/// A request with neither comes from a tool, not from a page (browsers send `Origin` on
/// every cross-origin request that is not a plain GET), and passes.
fn check_origin(
    headers: &HeaderMap,
    origin: Option<&str>,
    host: Option<&Authority>,
    rules: &AdminConfig,
) -> Result<(), Refusal> {
    let (source, text) = match origin {
        Some(o) => ("Origin", o),
        None => match single(headers, header::REFERER) {
            Ok(Some(r)) => ("Referer", r),
            Ok(None) => return Ok(()),
            Err(()) => {
                return Err(refuse(
                    403,
                    "origin_not_allowed",
                    "more than one Referer header",
                ))
            }
        },
    };
    let parsed = if source == "Origin" {
        Origin::parse(text)
    } else {
        Origin::of_url(text)
    };
    let allowed = parsed
        .as_ref()
        .is_ok_and(|o| host.is_some_and(|h| o.is_host(h)) || rules.allowed_origins.contains(o));
    if allowed {
        return Ok(());
    }
    let shown = match &parsed {
        Ok(o) => o.to_string(),
        Err(_) if source == "Origin" => text.to_string(),
        Err(_) => "an unreadable URL".to_string(),
    };
    Err(refuse(
        403,
        "origin_not_allowed",
        format!("requests from {shown} ({source}) are refused: only the admin listener's own pages and the origins in admin.allowed_origins may call the admin API"),
    ))
}

/// A CORS preflight is allowed only for a listed origin; the browser then checks the
/// method and headers against what is allowed here.
fn preflight(origin: Option<&str>, rules: &AdminConfig) -> Screen {
    match origin.map(Origin::parse) {
        Some(Ok(o)) if rules.allowed_origins.contains(&o) => Screen::Preflight {
            origin: o.to_string(),
        },
        _ => Screen::Refuse(refuse(
            403,
            "origin_not_allowed",
            format!(
                "no cross-origin access for {}: list the origin in admin.allowed_origins",
                origin.unwrap_or("a request without Origin")
            ),
        )),
    }
}

/// The headers of a preflight answer for a listed origin.
pub fn preflight_headers(origin: &str, headers: &HeaderMap) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("access-control-allow-origin", origin.to_string()),
        ("access-control-allow-methods", "GET, POST, DELETE".into()),
        (
            "access-control-allow-headers",
            "Authorization, Content-Type".into(),
        ),
        ("access-control-max-age", "600".into()),
        ("vary", "Origin".into()),
    ];
    // Chrome asks before a public page may reach a private or loopback address; the
    // operator listed this origin, so it may.
    if headers
        .get("access-control-request-private-network")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        out.push(("access-control-allow-private-network", "true".into()));
    }
    out
}

/// A write must say its body is JSON. Cross-site pages can send `text/plain`, form
/// encodings or no type at all without a preflight; `application/json` needs one. A
/// `DELETE` carries no body, so it may leave the type out; browsers preflight it anyway.
pub fn check_media_type(method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let unsupported = |what: String| {
        refuse(
            415,
            "unsupported_media_type",
            format!("{what}; admin API writes take `Content-Type: application/json`"),
        )
    };
    let types: Vec<_> = headers.get_all(header::CONTENT_TYPE).iter().collect();
    match types.as_slice() {
        [] if *method == Method::DELETE && !has_body(headers) => Ok(()),
        [] => Err(unsupported(format!("{method} without a Content-Type"))),
        [one] if is_json(one.as_bytes()) => Ok(()),
        [one] => Err(unsupported(format!(
            "Content-Type `{}`",
            String::from_utf8_lossy(one.as_bytes())
        ))),
        _ => Err(unsupported("more than one Content-Type".into())),
    }
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// `application/json`, in any case, with or without parameters (`; charset=utf-8`).
fn is_json(value: &[u8]) -> bool {
    let essence = value.split(|b| *b == b';').next().unwrap_or_default();
    essence
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn rules(hosts: &[&str], origins: &[&str]) -> AdminConfig {
        AdminConfig {
            allowed_hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            allowed_origins: origins.iter().map(|o| Origin::parse(o).unwrap()).collect(),
            ..AdminConfig::default()
        }
    }

    fn run(method: Method, path: &str, pairs: &[(&str, &str)], rules: &AdminConfig) -> Screen {
        let h = headers(pairs);
        screen(
            &Facts {
                method: &method,
                path,
                target_authority: None,
                headers: &h,
                token_in_query: false,
            },
            rules,
        )
    }

    fn status(s: &Screen) -> u16 {
        match s {
            Screen::Pass { .. } => 200,
            Screen::Preflight { .. } => 204,
            Screen::Refuse(r) => r.status,
        }
    }

    const OWN: &str = "127.0.0.1:9000";

    #[test]
    fn hosts_other_than_loopback_ips_and_listed_names_are_misdirected() {
        let r = rules(&[".ops.example.com"], &[]);
        for (host, expected) in [
            (OWN, 200),
            ("localhost:9000", 200),
            ("LOCALHOST.", 200),
            ("[::1]:9000", 200),
            ("10.1.2.3:9000", 200),
            ("ops.example.com", 200),
            ("a.ops.example.com:9000", 200),
            ("evil.example", 421),
            ("evil.example:9000", 421),
            ("localhost.evil.example", 421),
            ("127.0.0.1.evil.example", 421),
            ("evil.localhost", 421),
            ("::1", 421),
            ("ev il", 421),
        ] {
            for path in ["/admin/config", "/", "/dashboard", "/admin/openapi.json"] {
                let s = run(Method::GET, path, &[("host", host)], &r);
                assert_eq!(status(&s), expected, "Host {host} on {path}: {s:?}");
            }
        }
        let two = run(
            Method::GET,
            "/admin/config",
            &[("host", OWN), ("host", "evil.example")],
            &r,
        );
        assert_eq!(status(&two), 400);
        assert_eq!(status(&run(Method::GET, "/admin/config", &[], &r)), 200);
    }

    #[test]
    fn an_absolute_target_must_pass_the_host_check_too() {
        let h = headers(&[("host", OWN)]);
        let facts = Facts {
            method: &Method::GET,
            path: "/admin/config",
            target_authority: Some("evil.example"),
            headers: &h,
            token_in_query: false,
        };
        assert_eq!(status(&screen(&facts, &rules(&[], &[]))), 421);
    }

    #[test]
    fn foreign_origins_are_refused_on_writes_and_data_but_not_on_static_pages() {
        let r = rules(&[], &["https://ops.example.com"]);
        let evil = [("host", OWN), ("origin", "http://evil.example")];
        for (method, path, expected) in [
            (Method::POST, "/admin/keys", 403),
            (Method::POST, "/admin/reload", 403),
            (Method::DELETE, "/admin/keys/x", 403),
            (Method::GET, "/admin/config", 403),
            (Method::GET, "/admin/events", 403),
            (Method::GET, "/admin/nowhere", 403),
            (Method::POST, "/admin/docs", 403),
            (Method::GET, "/admin/docs", 200),
            (Method::GET, "/admin/openapi.json", 200),
            (Method::GET, "/", 200),
            (Method::POST, "/", 200), // pages answer 405 to anything but GET
        ] {
            let s = run(method.clone(), path, &evil, &r);
            assert_eq!(status(&s), expected, "{method} {path}: {s:?}");
        }
        for origin in [
            "http://127.0.0.1:9000",
            "https://127.0.0.1:9000",
            "https://ops.example.com",
            "https://OPS.example.com:443",
        ] {
            let s = run(
                Method::POST,
                "/admin/keys",
                &[("host", OWN), ("origin", origin)],
                &r,
            );
            assert_eq!(status(&s), 200, "{origin}");
        }
        for origin in [
            "null",
            "http://127.0.0.1:9001",
            "http://localhost:9000",
            "http://ops.example.com",
            "https://ops.example.com:8443",
            "garbage",
        ] {
            let s = run(
                Method::POST,
                "/admin/keys",
                &[("host", OWN), ("origin", origin)],
                &r,
            );
            assert_eq!(status(&s), 403, "{origin}");
        }
        let twice = [
            ("host", OWN),
            ("origin", "http://127.0.0.1:9000"),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(status(&run(Method::POST, "/admin/reload", &twice, &r)), 403);
    }

    #[test]
    fn without_origin_the_referer_decides_and_without_either_a_tool_passes() {
        let r = rules(&[], &[]);
        let post = |pairs: &[(&str, &str)]| status(&run(Method::POST, "/admin/reload", pairs, &r));
        assert_eq!(post(&[("host", OWN)]), 200);
        assert_eq!(
            post(&[
                ("host", OWN),
                ("referer", "http://127.0.0.1:9000/dashboard")
            ]),
            200
        );
        assert_eq!(
            post(&[("host", OWN), ("referer", "http://evil.example/page")]),
            403
        );
        assert_eq!(post(&[("host", OWN), ("referer", "not a url")]), 403);
        // Origin wins over Referer.
        assert_eq!(
            post(&[
                ("host", OWN),
                ("origin", "http://evil.example"),
                ("referer", "http://127.0.0.1:9000/")
            ]),
            403
        );
    }

    #[test]
    fn listed_origins_get_cors_and_preflights_others_get_neither() {
        let r = rules(&[], &["https://ops.example.com"]);
        let s = run(
            Method::GET,
            "/admin/config",
            &[("host", OWN), ("origin", "https://ops.example.com")],
            &r,
        );
        assert_eq!(
            s,
            Screen::Pass {
                cors: Some("https://ops.example.com".into())
            }
        );
        let own = run(
            Method::GET,
            "/admin/config",
            &[("host", OWN), ("origin", "http://127.0.0.1:9000")],
            &r,
        );
        assert_eq!(own, Screen::Pass { cors: None });
        let asks = |origin: &str| {
            run(
                Method::OPTIONS,
                "/admin/keys",
                &[
                    ("host", OWN),
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                ],
                &r,
            )
        };
        assert_eq!(
            asks("https://ops.example.com"),
            Screen::Preflight {
                origin: "https://ops.example.com".into()
            }
        );
        assert_eq!(status(&asks("http://evil.example")), 403);
        assert_eq!(status(&asks("http://127.0.0.1:9000")), 403);
        let h = headers(&[("access-control-request-private-network", "true")]);
        let allow = preflight_headers("https://ops.example.com", &h);
        assert!(allow.contains(&(
            "access-control-allow-origin",
            "https://ops.example.com".into()
        )));
        assert!(allow.contains(&("access-control-allow-private-network", "true".into())));
        assert!(!allow
            .iter()
            .any(|(k, _)| *k == "access-control-allow-credentials"));
    }

    #[test]
    fn a_token_in_the_url_is_only_for_the_event_stream() {
        let r = rules(&[], &[]);
        let h = headers(&[("host", OWN)]);
        let facts = |method: &'static Method, path: &'static str| Facts {
            method,
            path,
            target_authority: None,
            headers: &h,
            token_in_query: true,
        };
        assert_eq!(
            status(&screen(&facts(&Method::GET, "/admin/events"), &r)),
            200
        );
        for (method, path) in [
            (&Method::POST, "/admin/reload"),
            (&Method::POST, "/admin/keys"),
            (&Method::DELETE, "/admin/keys/x"),
            (&Method::GET, "/admin/config"),
            (&Method::POST, "/admin/events"),
        ] {
            let s = screen(&facts(method, path), &r);
            assert_eq!(status(&s), 400, "{method} {path}");
        }
    }

    #[test]
    fn writes_take_json_only() {
        let ok = |m: Method, pairs: &[(&str, &str)]| check_media_type(&m, &headers(pairs)).is_ok();
        assert!(ok(Method::POST, &[("content-type", "application/json")]));
        assert!(ok(
            Method::POST,
            &[("content-type", "Application/JSON; charset=utf-8")]
        ));
        assert!(ok(
            Method::POST,
            &[("content-type", " application/json ;x=y")]
        ));
        assert!(ok(Method::GET, &[]));
        assert!(ok(Method::DELETE, &[]));
        assert!(ok(Method::DELETE, &[("content-length", "0")]));
        assert!(!ok(Method::DELETE, &[("content-length", "12")]));
        assert!(!ok(Method::DELETE, &[("content-type", "text/plain")]));
        assert!(!ok(Method::POST, &[]));
        for bad in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "application/json-seq",
            "",
        ] {
            assert!(!ok(Method::POST, &[("content-type", bad)]), "{bad}");
        }
        assert!(!ok(
            Method::POST,
            &[
                ("content-type", "application/json"),
                ("content-type", "text/plain")
            ]
        ));
        let refusal = check_media_type(&Method::POST, &headers(&[("content-type", "text/plain")]))
            .unwrap_err();
        assert_eq!(refusal.status, 415);
    }
}
