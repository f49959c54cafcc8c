//! Header work on the way through: request ids and forwarding headers.
//!
//! Hop-by-hop fields (RFC 9110 §7.6.1), and any the `Connection` header names, are removed
//! by Pingora itself before `upstream_request_filter` runs: `HttpUpstreamRequestPolicy`'s
//! default (`pingora-proxy` `proxy_h1.rs`, `sanitize_h1_upstream_request`) strips them and
//! forwards a WebSocket upgrade normalized. tollgate does not do that work a second time.

use http::HeaderValue;
use pingora_http::RequestHeader;
use std::net::IpAddr;

pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// The client's `X-Request-Id` when it is sane, otherwise a fresh random one, with its
/// number when tollgate made it (the decision log keeps the number, not the text).
///
/// Ids from clients are kept so a request can be traced across systems; anything long or
/// odd is replaced, since ids end up in logs and upstream headers.
pub fn request_id(req: &RequestHeader) -> (HeaderValue, Option<u128>) {
    if let Some(given) = req.headers.get(X_REQUEST_ID) {
        let bytes = given.as_bytes();
        if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic()) {
            return (given.clone(), None);
        }
    }
    let number = rand::random::<u128>();
    (new_request_id(number), Some(number))
}

pub fn new_request_id(number: u128) -> HeaderValue {
    let id = format!("{number:032x}");
    HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Appends `value` to a comma-separated list header, creating it when absent.
pub fn append_to_list(req: &mut RequestHeader, name: &'static str, value: impl std::fmt::Display) {
    use std::fmt::Write;
    let mut joined = String::with_capacity(64);
    if let Some(Ok(existing)) = req.headers.get(name).map(|v| v.to_str()) {
        if !existing.trim().is_empty() {
            joined.push_str(existing);
            joined.push_str(", ");
        }
    }
    let _ = write!(joined, "{value}");
    // Values built from an IP address or a fixed token are always valid header values;
    // the String's buffer becomes the value without another copy.
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        let _ = req.insert_header(name, value);
    }
}

/// Adds `X-Forwarded-For` (the peer's address) and `X-Forwarded-Proto` for the backend.
pub fn add_forwarding(req: &mut RequestHeader, client: Option<IpAddr>, proto: &str) {
    if let Some(ip) = client {
        append_to_list(req, X_FORWARDED_FOR, ip);
    }
    append_to_list(req, X_FORWARDED_PROTO, proto);
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
        let mut r = req(&[("x-forwarded-for", "10.0.0.1")]);
        add_forwarding(&mut r, Some("127.0.0.1".parse().unwrap()), "http");
        assert_eq!(
            r.headers.get("x-forwarded-for").unwrap(),
            "10.0.0.1, 127.0.0.1"
        );
        assert_eq!(r.headers.get("x-forwarded-proto").unwrap(), "http");
    }
}
