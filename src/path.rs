//! Request path normalization, so that what the router matches is what the backend gets.
//!
//! The rule (documented in docs/edge.md):
//! 1. the path must start with `/`;
//! 2. percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, other
//!    escapes are kept with upper-case hex; an escaped `/`, `\` or NUL (`%2F`, `%5C`, `%00`),
//!    a literal `\` and a malformed escape are refused (400), because backends disagree
//!    on what they mean and that disagreement is how limits get dodged;
//! 3. runs of `/` merge into one;
//! 4. `.` and `..` segments are resolved (RFC 3986 §5.2.4); `..` never climbs above `/`.
//!
//! Matching stays case-sensitive, as in nginx: `/A` is not `/a`.

use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    EncodedSeparator,
    Backslash,
    BadEscape,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path must start with /",
            PathError::EncodedSeparator => "the path contains an encoded /, \\ or NUL",
            PathError::Backslash => "the path contains a backslash",
            PathError::BadEscape => "the path contains a malformed percent-escape",
        })
    }
}

/// Normalizes `path` (without its query string); borrows when nothing changes.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(resolve_segments(&decoded)))
}

fn needs_work(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in bytes {
        match b {
            b'%' | b'\\' => return true,
            b'/' if prev == b'/' => return true,
            b'.' if prev == b'/' => return true,
            _ => {}
        }
        prev = b;
    }
    false
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let value = hex_value(hex[0])
                    .zip(hex_value(hex[1]))
                    .map(|(h, l)| h << 4 | l)
                    .ok_or(PathError::BadEscape)?;
                match value {
                    b'/' | b'\\' | 0 => return Err(PathError::EncodedSeparator),
                    v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                        out.push(v as char)
                    }
                    v => {
                        out.push('%');
                        out.push_str(&format!("{v:02X}"));
                    }
                }
                i += 3;
            }
            _ => {
                // Copy the run up to the next byte of interest in one go (keeps UTF-8 intact).
                let start = i;
                while i < bytes.len() && !matches!(bytes[i], b'%' | b'\\') {
                    i += 1;
                }
                out.push_str(&path[start..i]);
            }
        }
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn resolve_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                kept.pop();
                trailing_slash = true;
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn plain_paths_are_borrowed() {
        assert!(matches!(
            normalize("/a/b.txt"),
            Ok(Cow::Borrowed("/a/b.txt"))
        ));
        assert!(matches!(normalize("/"), Ok(Cow::Borrowed("/"))));
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(norm("/a/../b").unwrap(), "/b");
        assert_eq!(norm("//a").unwrap(), "/a");
        assert_eq!(norm("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(norm("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/../../a").unwrap(), "/a");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/").unwrap(), "/a/");
        assert_eq!(norm("/..").unwrap(), "/");
        assert_eq!(norm("/a/.hidden").unwrap(), "/a/.hidden");
    }

    #[test]
    fn escapes() {
        assert_eq!(norm("/%61").unwrap(), "/a");
        assert_eq!(norm("/a/%2e%2e/b").unwrap(), "/b");
        assert_eq!(norm("/a/%2E%2E/b").unwrap(), "/b");
        assert_eq!(norm("/a%20b").unwrap(), "/a%20b");
        assert_eq!(norm("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(norm("/caf%C3%A9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn refusals() {
        assert_eq!(norm("a"), Err(PathError::NotAbsolute));
        assert_eq!(norm(""), Err(PathError::NotAbsolute));
        assert_eq!(norm("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/a%2f..%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/a%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/a%00"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/a\\..\\b"), Err(PathError::Backslash));
        assert_eq!(norm("/a%2"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
    }
}
