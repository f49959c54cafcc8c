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
    let mut hex = [0u8; 32];
    // 16 bytes always fit 32 hex digits; `{:032x}` through `fmt` cost a String and the
    // formatting machinery on every request that came without an id.
    let _ = hex::encode_to_slice(number.to_be_bytes(), &mut hex);
    HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&hex))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Appends what `write` writes (at most `len` bytes) to a comma-separated list header,
/// creating it when absent: one buffer, which becomes the value without another copy.
fn append_to_list(
    req: &mut RequestHeader,
    name: &'static str,
    len: usize,
    write: impl FnOnce(&mut Vec<u8>),
) {
    let existing = req
        .headers
        .get(name)
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty());
    let mut joined = Vec::with_capacity(existing.map_or(0, |e| e.len() + 2) + len);
    if let Some(existing) = existing {
        joined.extend_from_slice(existing);
        joined.extend_from_slice(b", ");
    }
    write(&mut joined);
    // An existing value was a valid header value, and an address or a fixed token is one.
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        let _ = req.insert_header(name, value);
    }
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

/// Adds `X-Forwarded-For` (the peer's address) and `X-Forwarded-Proto` for the backend.
pub fn add_forwarding(req: &mut RequestHeader, client: Option<IpAddr>, proto: &'static str) {
    if let Some(ip) = client {
        // 39 bytes: the longest IPv6 text.
        append_to_list(req, X_FORWARDED_FOR, 39, |out| address_text(ip, out));
    }
    if req.headers.contains_key(X_FORWARDED_PROTO) {
        append_to_list(req, X_FORWARDED_PROTO, proto.len(), |out| {
            out.extend_from_slice(proto.as_bytes())
        });
    } else {
        let _ = req.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
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

        let mut r = req(&[("x-forwarded-for", " "), ("x-forwarded-proto", "https")]);
        add_forwarding(&mut r, Some("2001:db8::1".parse().unwrap()), "http");
        assert_eq!(r.headers.get("x-forwarded-for").unwrap(), "2001:db8::1");
        assert_eq!(r.headers.get("x-forwarded-proto").unwrap(), "https, http");
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
