//! Hop-by-hop fields (RFC 9110 §7.6.1) stay between the client and tollgate.
//!
//! This is Pingora's default `HttpUpstreamRequestPolicy` (`sanitize_h1_upstream_request` in
//! `pingora-proxy` 0.9.1, `proxy_common.rs`) done in one pass: tollgate's HTTP/1 peers get
//! `HttpUpstreamRequestPolicy::preserve()` and `upstream_request_filter` calls [`strip`]
//! first, where Pingora would have run its strip, just before the filter. Pingora's strip
//! does thirteen removals, each looking the name up in the header map and in the case map,
//! and parses every `Connection` nomination into an owned `HeaderName`, on every request;
//! [`strip`] reads each distinct name once, and a request with none of these fields (what
//! most clients send) leaves after that scan. BENCHMARKS.md, *The proxy path*, has the
//! figures.
//!
//! The semantics are Pingora's default, field by field:
//! - fields the `Connection` header nominates are removed; a nomination of a protected field
//!   (`Host`, `X-Forwarded-For`, `-Host`, `-Proto`, a `:` pseudo-header), one that is not an
//!   HTTP token, or a tenth nomination refuses the request (`InvalidHTTPHeader` from the
//!   client: a `400`, and nothing reaches the backend);
//! - the standard set below is removed;
//! - a WebSocket upgrade from an HTTP/1.1 client goes on as `Connection: Upgrade` and
//!   `Upgrade: websocket`; any other upgrade (h2c, say) is dropped.
//!
//! Removing `Transfer-Encoding` is safe: after the filter Pingora frames a body that has
//! neither `Content-Length` nor `Transfer-Encoding` as chunked
//! (`finalize_h1_upstream_request_framing`), as it does after its own strip. HTTP/2 peers
//! keep Pingora's policy (`sanitize_h2_upstream_request`): [`strip`]'s WebSocket fields
//! would be wrong on HTTP/2, and there is no per-request cost to save there.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_error::{Error, ErrorType::InvalidHTTPHeader};
use pingora_http::RequestHeader;

/// Pingora's bound on `Connection` nominations: the tenth non-empty one refuses the request.
const MAX_CONNECTION_NOMINATIONS: usize = 10;
/// `http`'s longest header name; a longer nomination does not parse as one, which Pingora
/// refuses.
const MAX_HEADER_NAME_LEN: usize = (1 << 16) - 1;

/// The standard hop-by-hop set, as Pingora strips it. Bit `i` of [`hop_by_hop_bit`] is
/// `HOP_BY_HOP[i]`. A `static`: a `const` array would be built and dropped at each use.
static HOP_BY_HOP: [HeaderName; 10] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];
const CONNECTION: u16 = 1 << 7;
const UPGRADE: u16 = 1 << 8;

/// The bit of a standard hop-by-hop name, 0 for any other: one `match` on the name's text,
/// no hashing.
fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    match name.as_str() {
        "keep-alive" => 1 << 0,
        "proxy-connection" => 1 << 1,
        "proxy-authenticate" => 1 << 2,
        "proxy-authorization" => 1 << 3,
        "te" => 1 << 4,
        "trailer" => 1 << 5,
        "transfer-encoding" => 1 << 6,
        "connection" => CONNECTION,
        "upgrade" => UPGRADE,
        "http2-settings" => 1 << 9,
        _ => 0,
    }
}

/// Fields a client may not have removed on the way to the backend.
const PROTECTED: [&[u8]; 4] = [
    b"host",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
];

/// The refusal Pingora raises, with its words: the client's fault (`400`).
fn refuse(why: &'static str) -> Box<Error> {
    Error::explain(InvalidHTTPHeader, why).into_down()
}

/// Whether `byte` may be in an HTTP `token` (RFC 9110 §5.6.2), as Pingora checks it.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// The non-empty, trimmed tokens of one `Connection` value.
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|byte| *byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// Whether a nomination names a field of the standard set, which [`strip`] removes anyway
/// when it is there.
fn is_standard(token: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|name| token.eq_ignore_ascii_case(name.as_str().as_bytes()))
}

/// The `Connection` values that nominate a field outside the standard set, checked as
/// Pingora checks them. Kept as values (a reference count each, no copy of the text) so the
/// request can be changed while they are read: nearly always one (`close`, looked up as
/// Pingora does), or none for the usual `keep-alive` and `Upgrade`.
#[derive(Default)]
struct Nominations {
    first: Option<HeaderValue>,
    rest: Vec<HeaderValue>,
}

impl Nominations {
    fn parse(headers: &HeaderMap) -> Result<Self> {
        let mut kept = Nominations::default();
        let mut count = 0;
        for value in headers.get_all(header::CONNECTION) {
            let mut nominates = false;
            for token in tokens(value) {
                count += 1;
                if count >= MAX_CONNECTION_NOMINATIONS {
                    return Err(refuse("too many Connection header nominations"));
                }
                if token.starts_with(b":") {
                    return Err(refuse(
                        "protected header cannot be nominated by the Connection header",
                    ));
                }
                // Every `tchar` is a valid header-name byte, so this is exactly when
                // Pingora's `HeaderName::from_bytes` would fail too.
                if token.len() > MAX_HEADER_NAME_LEN || !token.iter().all(|&b| is_tchar(b)) {
                    return Err(refuse("invalid token nominated by the Connection header"));
                }
                if PROTECTED.iter().any(|p| token.eq_ignore_ascii_case(p)) {
                    return Err(refuse(
                        "protected header cannot be nominated by the Connection header",
                    ));
                }
                nominates |= !is_standard(token);
            }
            if nominates {
                match kept.first {
                    None => kept.first = Some(value.clone()),
                    Some(_) => kept.rest.push(value.clone()),
                }
            }
        }
        Ok(kept)
    }

    fn remove_from(self, req: &mut RequestHeader) {
        for value in self.first.iter().chain(&self.rest) {
            for token in tokens(value).filter(|token| !is_standard(token)) {
                // Only `tchar`s, so UTF-8; a `&str` name is looked up case-insensitively
                // without being allocated.
                if let Ok(name) = std::str::from_utf8(token) {
                    req.remove_header(name);
                }
            }
        }
    }
}

/// Removes the hop-by-hop fields of a request bound for an HTTP/1 backend, as Pingora's
/// default policy does; `Err` (the client's, a `400`) when `Connection` nominates what it
/// may not. `downstream_is_http11`: the client spoke HTTP/1.1, the only version that can
/// ask for a WebSocket upgrade this way.
pub fn strip(req: &mut RequestHeader, downstream_is_http11: bool) -> Result<()> {
    // Each distinct name once: most requests carry none of these and stop here.
    let present = req
        .headers
        .keys()
        .fold(0, |present, name| present | hop_by_hop_bit(name));
    if present == 0 {
        return Ok(());
    }
    let nominations = if present & CONNECTION != 0 {
        Nominations::parse(&req.headers)?
    } else {
        Nominations::default()
    };
    // Decided before anything is removed, as Pingora does (a client may nominate `Upgrade`).
    let websocket = downstream_is_http11
        && present & UPGRADE != 0
        && req
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    nominations.remove_from(req);
    // Only the names that were there: removing an absent one changes nothing. This also
    // removes the nominated ones of the standard set.
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            req.remove_header(name);
        }
    }
    if websocket {
        req.insert_header(header::CONNECTION, "Upgrade")?;
        req.insert_header(header::UPGRADE, "websocket")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
