//! Checks on the request message itself, before anything routes on it: sizes (414, 431,
//! 413 by `Content-Length`) and framing that two HTTP parsers could read differently.
//!
//! Pingora already refuses differing `Content-Length` values and a final transfer coding
//! other than `chunked`, and quietly drops `Content-Length` when `Transfer-Encoding` is also
//! present. A proxy in front of other proxies should not be that forgiving: any request
//! whose length a backend could compute differently is refused with 400 and the connection
//! closed, as the RFC 9112 §6.3 advice for intermediaries suggests.

use crate::config::HttpConfig;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora_http::RequestHeader;
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UriTooLong { limit: u64 },
    HeaderTooLarge { limit: u64 },
    BodyTooLarge { limit: u64 },
    AmbiguousFraming(&'static str),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::UriTooLong { .. } => 414,
            Refusal::HeaderTooLarge { .. } => 431,
            Refusal::BodyTooLarge { .. } => 413,
            Refusal::AmbiguousFraming(_) => 400,
        }
    }

    /// Whether the connection must close: after a framing doubt nothing that follows on it
    /// can be trusted to be where a request starts.
    /// An unread body is still on the wire, too.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Refusal::AmbiguousFraming(_) | Refusal::BodyTooLarge { .. }
        )
    }

    pub fn body(&self) -> Value {
        match self {
            Refusal::UriTooLong { limit } => json!({"error": "uri_too_long", "limit_bytes": limit}),
            Refusal::HeaderTooLarge { limit } => {
                json!({"error": "header_too_large", "limit_bytes": limit})
            }
            Refusal::BodyTooLarge { limit } => {
                json!({"error": "body_too_large", "limit_bytes": limit})
            }
            Refusal::AmbiguousFraming(detail) => json!({"error": "bad_request", "detail": detail}),
        }
    }
}

/// `raw_header` is the request header as it arrived (HTTP/1), used for its exact size and
/// to see a `Content-Length` that Pingora removed because `Transfer-Encoding` won.
pub fn check(
    req: &RequestHeader,
    raw_header: Option<&[u8]>,
    limits: &HttpConfig,
) -> Result<(), Refusal> {
    let target_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len()) as u64;
    if target_len > limits.max_uri_bytes {
        return Err(Refusal::UriTooLong {
            limit: limits.max_uri_bytes,
        });
    }
    if let Some(raw) = raw_header {
        if raw.len() as u64 > limits.max_header_bytes {
            return Err(Refusal::HeaderTooLarge {
                limit: limits.max_header_bytes,
            });
        }
    }
    let mut lengths = req.headers.get_all(CONTENT_LENGTH).iter();
    let length = lengths.next();
    if lengths.next().is_some() || length.is_some_and(|l| l.as_bytes().contains(&b',')) {
        return Err(Refusal::AmbiguousFraming("more than one Content-Length"));
    }
    let mut codings = req.headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        if codings.next().is_some() {
            return Err(Refusal::AmbiguousFraming("more than one Transfer-Encoding"));
        }
        if !coding.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(Refusal::AmbiguousFraming(
                "Transfer-Encoding other than exactly `chunked`",
            ));
        }
        if length.is_some() || raw_header.is_some_and(has_content_length_field) {
            return Err(Refusal::AmbiguousFraming(
                "both Content-Length and Transfer-Encoding",
            ));
        }
    }
    if req.headers.keys().any(disguised_framing_name) {
        return Err(Refusal::AmbiguousFraming(
            "a Content_Length or Transfer_Encoding field, which some servers read as the real one",
        ));
    }
    Ok(())
}

/// Refuses a body its `Content-Length` already declares too large for the route, before
/// any of it is sent upstream.
pub fn check_declared_body(req: &RequestHeader, limit: Option<u64>) -> Result<(), Refusal> {
    let (Some(limit), Some(length)) = (limit, req.headers.get(CONTENT_LENGTH)) else {
        return Ok(());
    };
    let declared = std::str::from_utf8(length.as_bytes())
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .ok_or(Refusal::AmbiguousFraming(
            "Content-Length is not one number",
        ))?;
    if declared > limit {
        return Err(Refusal::BodyTooLarge { limit });
    }
    Ok(())
}

fn disguised_framing_name(name: &http::HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    let disguises = |real: &[u8]| {
        name.len() == real.len()
            && name.contains(&b'_')
            && name
                .iter()
                .zip(real)
                .all(|(&n, &r)| n == r || (n == b'_' && r == b'-'))
    };
    disguises(b"content-length") || disguises(b"transfer-encoding")
}

/// Whether any header line of `raw` is named `Content-Length` (any case).
fn has_content_length_field(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length";
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > NAME.len()
            && line[..NAME.len()].eq_ignore_ascii_case(NAME)
            && matches!(line[NAME.len()], b':' | b' ' | b'\t')
    })
}

/// Counts a streamed body against the route's limit (chunked bodies declare no length).
pub fn count_body(received: &mut u64, chunk: usize, limit: Option<u64>) -> Result<(), Refusal> {
    *received += chunk as u64;
    match limit {
        Some(limit) if *received > limit => Err(Refusal::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/a/x?q=1", None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn limits() -> HttpConfig {
        HttpConfig {
            max_uri_bytes: 16,
            max_header_bytes: 64,
            ..HttpConfig::default()
        }
    }

    #[test]
    fn plain_requests_pass() {
        let req = request(&[("content-length", "5")]);
        assert_eq!(check(&req, None, &limits()), Ok(()));
        assert_eq!(check_declared_body(&req, Some(10)), Ok(()));
        let req = request(&[("transfer-encoding", "Chunked")]);
        let raw = b"POST /a/x HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert_eq!(check(&req, Some(raw), &HttpConfig::default()), Ok(()));
    }

    #[test]
    fn sizes_are_refused_with_their_status() {
        let mut req = request(&[]);
        req.set_uri("/a/a-very-long-path-indeed".parse().unwrap());
        assert_eq!(check(&req, None, &limits()).unwrap_err().status(), 414);
        let raw = [b'x'; 65];
        let req = request(&[]);
        assert_eq!(
            check(&req, Some(&raw), &limits()).unwrap_err().status(),
            431
        );
        let req = request(&[("content-length", "11")]);
        assert_eq!(
            check_declared_body(&req, Some(10)).unwrap_err().status(),
            413
        );
        assert_eq!(check_declared_body(&req, None), Ok(()));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let cases: &[&[(&str, &str)]] = &[
            &[("content-length", "5"), ("content-length", "5")],
            &[("content-length", "5, 5")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "chunked, identity")],
            &[("transfer-encoding", "xchunked")],
            &[("transfer-encoding", "chunked"), ("content-length", "3")],
            &[("transfer_encoding", "chunked")],
            &[("Content_Length", "3")],
        ];
        for headers in cases {
            let refusal = check(&request(headers), None, &HttpConfig::default());
            assert!(
                matches!(refusal, Err(Refusal::AmbiguousFraming(_))),
                "{headers:?} gave {refusal:?}"
            );
        }
    }

    #[test]
    fn a_content_length_pingora_removed_is_still_seen() {
        let req = request(&[("transfer-encoding", "chunked")]);
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nCONTENT-LENGTH: 4\r\n\r\n";
        let refusal = check(&req, Some(raw), &HttpConfig::default());
        assert!(matches!(refusal, Err(Refusal::AmbiguousFraming(_))));
        let raw = b"POST / HTTP/1.1\r\nX-Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(check(&req, Some(raw), &HttpConfig::default()), Ok(()));
    }

    #[test]
    fn streamed_bodies_are_counted() {
        let mut received = 0;
        assert!(count_body(&mut received, 6, Some(10)).is_ok());
        assert!(count_body(&mut received, 5, Some(10)).is_err());
        assert!(count_body(&mut received, 1 << 20, None).is_ok());
    }
}
