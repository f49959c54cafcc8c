//! The checks every request meets before routing, on arbitrary input: path normalization
//! and the framing and size checks. Never a panic; a normalized path is absolute, has no
//! dot segments or empty segments, and normalizing it again changes nothing.
//!
//! Shared by the libFuzzer target (`fuzz/fuzz_targets/request_checks.rs`) and the bounded smoke
//! run in `cargo test` (`tests/fuzz.rs`).

use tollgate::config::HttpConfig;
use tollgate::path;
use tollgate::proxy::framing;

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (target, raw_header) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(normal) = path::normalize(target) {
        assert!(normal.starts_with('/'), "{normal:?}");
        assert!(!normal.contains("//"), "{normal:?}");
        assert!(
            !normal.split('/').any(|s| s == "." || s == ".."),
            "{normal:?}"
        );
        assert_eq!(
            path::normalize(&normal).as_deref(),
            Ok(&*normal),
            "not idempotent"
        );
    }

    let Ok(mut req) = pingora_http::RequestHeader::build("POST", b"/", None) else {
        return;
    };
    if let Ok(uri) = target.parse() {
        req.set_uri(uri);
    }
    for line in raw_header.split("\r\n") {
        if let Some((name, value)) = line.split_once(':') {
            let _ = req.append_header(name.trim().to_string(), value.trim());
        }
    }
    let limits = HttpConfig::default();
    let _ = framing::check(&req, Some(raw_header.as_bytes()), &limits);
    let _ = framing::check_declared_body(&req, Some(1024));
}
