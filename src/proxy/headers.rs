//! Header work on the way through: request ids, forwarding headers and the response's
//! fields.
//!
//! Hop-by-hop fields (RFC 9110 §7.6.1), and any the `Connection` header names, are gone
//! before these run: `hop_by_hop.rs` strips them for HTTP/1 backends, as Pingora's default
//! policy would, and Pingora strips them for HTTP/2 ones.
//!
//! Adding fields: Pingora's `insert_header` parses every name into a new `HeaderName` (an
//! allocation even for a static one) and writes it into two maps, the values and a
//! case-preserving copy of every name, both grown past the size Pingora chose for the
//! backend's header. By default (`http.preserve_header_case: false`) tollgate swaps the
//! header out, works on its `http` parts (room reserved once, names made once, one map),
//! and puts it back without the case map: names then go out in lower case, as HTTP/2 sends
//! them and Envoy does for HTTP/1 (Pingora title-cases a few, `Host`, `Content-Type`,
//! `Date` and the like). BENCHMARKS.md, *The proxy path*, has what each step saved.

use http::header::{HeaderMap, HeaderName, STRICT_TRANSPORT_SECURITY};
use http::HeaderValue;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// The names tollgate adds, made once: inserting one costs neither a parse nor an
/// allocation.
pub mod names {
    use http::header::HeaderName;
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
    pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
}

/// Fields Pingora adds to a response after `response_filter` (`Date`, `Connection`), so
/// the room reserved for tollgate's also holds them.
const PINGORA_RESPONSE_FIELDS: usize = 2;

/// The client's `X-Request-Id` when it is sane, otherwise a fresh random one, with its
/// number when tollgate made it (the decision log keeps the number, not the text).
///
/// Ids from clients are kept so a request can be traced across systems; anything long or
/// odd is replaced, since ids end up in logs and upstream headers.
pub fn request_id(req: &RequestHeader) -> (HeaderValue, Option<u128>) {
    if let Some(given) = req.headers.get(names::X_REQUEST_ID) {
        let bytes = given.as_bytes();
        if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic()) {
            return (given.clone(), None);
        }
    }
    let number = rand::random::<u128>();
    (new_request_id(number), Some(number))
}

pub fn new_request_id(number: u128) -> HeaderValue {
    let mut hex = [0u8; 32];
    // 16 bytes always fit 32 hex digits; `{:032x}` through `fmt` cost a String and the
    // formatting machinery on every request that came without an id.
    let _ = hex::encode_to_slice(number.to_be_bytes(), &mut hex);
    HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&hex))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The value of a comma-separated list header with what `write` writes (at most `len`
/// bytes) appended, or only that when the header is absent or blank: one buffer, which
/// becomes the value without another copy.
fn appended(
    existing: Option<&HeaderValue>,
    len: usize,
    write: impl FnOnce(&mut Vec<u8>),
) -> Option<HeaderValue> {
    let existing = existing
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty());
    let mut joined = Vec::with_capacity(existing.map_or(0, |e| e.len() + 2) + len);
    if let Some(existing) = existing {
        joined.extend_from_slice(existing);
        joined.extend_from_slice(b", ");
    }
    write(&mut joined);
    // An existing value was a valid header value, and an address or a fixed token is one.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).ok()
}

/// An address as text, the way `Display` writes it, without `fmt` for IPv4 (nearly every
/// client, formatted on every request).
fn address_text(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

/// `X-Forwarded-For` (the peer's address appended) and `X-Forwarded-Proto` for the backend.
fn forwarding(
    headers: &HeaderMap,
    client: Option<IpAddr>,
    proto: &'static str,
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    // 39 bytes: the longest IPv6 text.
    let xff = client.and_then(|ip| {
        appended(headers.get(names::X_FORWARDED_FOR), 39, |out| {
            address_text(ip, out)
        })
    });
    let xfp = match headers.get(names::X_FORWARDED_PROTO) {
        Some(existing) => appended(Some(existing), proto.len(), |out| {
            out.extend_from_slice(proto.as_bytes())
        }),
        None => Some(HeaderValue::from_static(proto)),
    };
    (xff, xfp)
}

/// Whether the request target is the URI's path and query, so the header can go through
/// `http` parts: `From<ReqParts>` rebuilds the target from the URI and would turn an
/// absolute-form target into its path.
fn target_round_trips(req: &RequestHeader) -> bool {
    req.uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str().as_bytes() == req.raw_path())
}

/// Adds the forwarding headers and the request id to the request for the backend.
pub fn add_to_request(
    req: &mut RequestHeader,
    client: Option<IpAddr>,
    proto: &'static str,
    request_id: &HeaderValue,
    preserve_case: bool,
) -> Result<()> {
    let (xff, xfp) = forwarding(&req.headers, client, proto);
    if preserve_case || !target_round_trips(req) {
        if let Some(xff) = xff {
            req.insert_header(X_FORWARDED_FOR, xff)?;
        }
        if let Some(xfp) = xfp {
            req.insert_header(X_FORWARDED_PROTO, xfp)?;
        }
        return req.insert_header(X_REQUEST_ID, request_id);
    }
    let send_end_stream = req.send_end_stream();
    // An empty `http` request allocates nothing.
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, empty));
    parts.headers.reserve(3);
    if let Some(xff) = xff {
        parts.headers.insert(names::X_FORWARDED_FOR, xff);
    }
    if let Some(xfp) = xfp {
        parts.headers.insert(names::X_FORWARDED_PROTO, xfp);
    }
    parts
        .headers
        .insert(names::X_REQUEST_ID, request_id.clone());
    *req = RequestHeader::from(parts);
    if let Some(send_end_stream) = send_end_stream {
        req.set_send_end_stream(send_end_stream);
    }
    Ok(())
}

/// The lower-case name of a rate limit field (`Fields` carry their canonical case).
fn field_name(canonical: &'static str) -> Option<HeaderName> {
    Some(match canonical {
        "RateLimit-Policy" => names::RATELIMIT_POLICY,
        "RateLimit" => names::RATELIMIT,
        "X-RateLimit-Limit" => names::X_RATELIMIT_LIMIT,
        "X-RateLimit-Remaining" => names::X_RATELIMIT_REMAINING,
        "X-RateLimit-Reset" => names::X_RATELIMIT_RESET,
        "Retry-After" => http::header::RETRY_AFTER,
        other => return HeaderName::from_bytes(other.as_bytes()).ok(),
    })
}

/// Adds the request id, the listener's HSTS field and the rate limit fields to the
/// backend's response.
pub fn add_to_response(
    resp: &mut ResponseHeader,
    request_id: &HeaderValue,
    hsts: Option<&HeaderValue>,
    fields: crate::limit::headers::Fields,
    preserve_case: bool,
) -> Result<()> {
    if preserve_case {
        resp.insert_header(X_REQUEST_ID, request_id)?;
        if let Some(hsts) = hsts {
            resp.insert_header(STRICT_TRANSPORT_SECURITY, hsts)?;
        }
        for (name, value) in fields {
            resp.insert_header(name, value)?;
        }
        return Ok(());
    }
    // `From<RespParts>` drops the reason phrase; a backend's own one goes on unchanged.
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    // An empty `http` response allocates nothing.
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, empty));
    parts
        .headers
        .reserve(1 + usize::from(hsts.is_some()) + fields.len() + PINGORA_RESPONSE_FIELDS);
    parts
        .headers
        .insert(names::X_REQUEST_ID, request_id.clone());
    if let Some(hsts) = hsts {
        parts
            .headers
            .insert(STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    for (name, value) in fields {
        if let Some(name) = field_name(name) {
            parts.headers.insert(name, value);
        }
    }
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        resp.set_reason_phrase(reason.as_deref())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/a", None).unwrap();
        for (k, v) in headers {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    #[test]
    fn keeps_a_sane_request_id_and_replaces_odd_ones() {
        let r = req(&[("x-request-id", "abc-123")]);
        assert_eq!(request_id(&r), (HeaderValue::from_static("abc-123"), None));
        let r = req(&[("x-request-id", "has space")]);
        assert_eq!(request_id(&r).0.len(), 32);
        let r = req(&[]);
        let (a, number) = request_id(&r);
        let b = request_id(&r).0;
        assert_eq!(a.len(), 32);
        assert_eq!(a, format!("{:032x}", number.unwrap()).as_str());
        assert_ne!(a, b);
    }

    #[test]
    fn appends_forwarding_headers() {
        let id = HeaderValue::from_static("id-1");
        for preserve in [false, true] {
            let mut r = req(&[("x-forwarded-for", "10.0.0.1")]);
            add_to_request(
                &mut r,
                Some("127.0.0.1".parse().unwrap()),
                "http",
                &id,
                preserve,
            )
            .unwrap();
            assert_eq!(
                r.headers.get("x-forwarded-for").unwrap(),
                "10.0.0.1, 127.0.0.1"
            );
            assert_eq!(r.headers.get("x-forwarded-proto").unwrap(), "http");
            assert_eq!(r.headers.get("x-request-id").unwrap(), "id-1");

            let mut r = req(&[("x-forwarded-for", " "), ("x-forwarded-proto", "https")]);
            add_to_request(
                &mut r,
                Some("2001:db8::1".parse().unwrap()),
                "http",
                &id,
                preserve,
            )
            .unwrap();
            assert_eq!(r.headers.get("x-forwarded-for").unwrap(), "2001:db8::1");
            assert_eq!(r.headers.get("x-forwarded-proto").unwrap(), "https, http");
        }
    }

    fn wire(req: &RequestHeader) -> String {
        let mut out = Vec::new();
        req.header_to_h1_wire(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_names_go_lower_case_unless_preserved() {
        let id = HeaderValue::from_static("id-1");
        let mut r = req(&[("Host", "x"), ("X-Custom-Case", "1")]);
        add_to_request(&mut r, None, "http", &id, false).unwrap();
        let text = wire(&r);
        assert!(text.contains("Host: x\r\n"), "{text}");
        assert!(text.contains("x-custom-case: 1\r\n"), "{text}");
        assert!(text.contains("x-request-id: id-1\r\n"), "{text}");
        assert_eq!(r.raw_path(), b"/a");

        let mut r = req(&[("Host", "x"), ("X-Custom-Case", "1")]);
        add_to_request(&mut r, None, "http", &id, true).unwrap();
        assert!(wire(&r).contains("X-Custom-Case: 1\r\n"), "{}", wire(&r));
    }

    #[test]
    fn an_absolute_form_target_keeps_its_bytes() {
        let id = HeaderValue::from_static("id-1");
        let mut r = RequestHeader::build("GET", b"http://example.test/a?q=1", None).unwrap();
        r.append_header("X-Custom-Case", "1").unwrap();
        add_to_request(&mut r, None, "http", &id, false).unwrap();
        assert_eq!(r.raw_path(), b"http://example.test/a?q=1");
        assert_eq!(r.headers.get("x-request-id").unwrap(), "id-1");
    }

    #[test]
    fn response_fields_keep_status_reason_and_backend_fields() {
        let id = HeaderValue::from_static("id-1");
        let hsts = HeaderValue::from_static("max-age=60");
        let fields = vec![
            ("RateLimit-Policy", HeaderValue::from_static("\"p\";q=5")),
            ("X-RateLimit-Remaining", HeaderValue::from_static("4")),
        ];
        for preserve in [false, true] {
            let mut resp = ResponseHeader::build(203, None).unwrap();
            resp.set_reason_phrase(Some("Fine Indeed")).unwrap();
            resp.append_header("X-Backend-Case", "b").unwrap();
            resp.append_header("Set-Cookie", "a=1").unwrap();
            resp.append_header("Set-Cookie", "b=2").unwrap();
            add_to_response(&mut resp, &id, Some(&hsts), fields.clone(), preserve).unwrap();
            assert_eq!(resp.status.as_u16(), 203);
            assert_eq!(resp.get_reason_phrase(), Some("Fine Indeed"));
            assert_eq!(resp.headers.get_all("set-cookie").iter().count(), 2);
            assert_eq!(resp.headers.get("x-request-id").unwrap(), "id-1");
            assert_eq!(
                resp.headers.get("strict-transport-security").unwrap(),
                "max-age=60"
            );
            assert_eq!(resp.headers.get("ratelimit-policy").unwrap(), "\"p\";q=5");
            assert_eq!(resp.headers.get("x-ratelimit-remaining").unwrap(), "4");
            let mut out = Vec::new();
            resp.header_to_h1_wire(&mut out);
            let text = String::from_utf8(out).unwrap();
            let (backend, ours) = if preserve {
                ("X-Backend-Case: b", "X-RateLimit-Remaining: 4")
            } else {
                ("x-backend-case: b", "x-ratelimit-remaining: 4")
            };
            assert!(text.contains(backend), "{text}");
            assert!(text.contains(ours), "{text}");
            assert!(text.contains("Set-Cookie: a=1"), "{text}");
        }
    }

    #[test]
    fn every_rate_limit_field_has_a_made_name() {
        let p = crate::limit::policy::Params::Window {
            limit: 1,
            window_ms: 1000,
            sliding: false,
            calendar: None,
        };
        let template = crate::limit::headers::FieldTemplate::new("p", &p);
        let refused = crate::limit::algorithm::Verdict {
            allowed: false,
            limit: 1,
            remaining: 0,
            reset_ms: 500,
            retry_after_ms: 500,
        };
        for (canonical, _) in template.fields(&refused) {
            let name = field_name(canonical).unwrap();
            assert_eq!(name.as_str(), canonical.to_ascii_lowercase());
        }
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "203.0.113.255",
            "10.20.3.4",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            address_text(ip, &mut out);
            assert_eq!(out, ip.to_string().as_bytes());
        }
        let number = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        assert_eq!(new_request_id(number), format!("{number:032x}").as_str());
    }
}
