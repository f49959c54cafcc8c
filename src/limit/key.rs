//! Limit keys: which bucket a request counts against.
//!
//! A key is hashed straight from the request's parts (no allocation on the request path);
//! its text form, used in Redis keys and the admin API, is built only when a key is first
//! seen.

use crate::config::KeyPart;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::LazyLock;

/// What a request offers to key and cost functions.
pub struct RequestFacts<'a> {
    pub client_ip: IpAddr,
    /// A stable, non-secret id of the API key (never the key itself).
    pub api_key_id: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub tier: Option<&'a str>,
    pub path: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    /// The request's host as routing saw it (lower case, no port), if it named one.
    pub host: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

/// The value a key part takes for a request; a missing value is its own shared bucket,
/// so leaving a header out cannot dodge a limit.
enum Value<'a> {
    Ip(IpAddr),
    Text(&'a [u8]),
    Missing,
}

fn value<'a>(part: &KeyPart, facts: &RequestFacts<'a>) -> Value<'a> {
    let text = |s: Option<&'a str>| s.map_or(Value::Missing, |s| Value::Text(s.as_bytes()));
    match part {
        KeyPart::ClientIp => Value::Ip(facts.client_ip),
        KeyPart::ApiKey => text(facts.api_key_id),
        KeyPart::Tenant => text(facts.tenant),
        KeyPart::Path => Value::Text(facts.path.as_bytes()),
        KeyPart::Method => Value::Text(facts.method.as_bytes()),
        KeyPart::Route => Value::Text(facts.route.as_bytes()),
        KeyPart::Host => text(facts.host),
        KeyPart::Header(name) => facts
            .headers
            .get(name.as_str())
            .map_or(Value::Missing, |v| Value::Text(v.as_bytes())),
    }
}

/// One hasher seed per process: keys are only compared within a process, and a random
/// seed keeps clients from crafting colliding keys.
static SEED: LazyLock<ahash::RandomState> = LazyLock::new(ahash::RandomState::new);

/// The 64-bit identity of a request's key under `parts` (and `scope`, the policy's id).
pub fn hash(scope: u64, parts: &[KeyPart], facts: &RequestFacts<'_>) -> u64 {
    hash_values(scope, parts.iter().map(|p| value(p, facts)))
}

/// The identity of a key given as text (as the admin API receives it), the inverse of
/// [`text`]: parts split on `|`, `-` for a missing value, `%XX` unescaped.
pub fn hash_from_text(scope: u64, parts: &[KeyPart], text: &str) -> Result<u64, String> {
    if text.starts_with('#') {
        return Err(
            "this key was too long to keep as text; it can only be reached by requests".into(),
        );
    }
    let pieces: Vec<&str> = text.split('|').collect();
    if pieces.len() != parts.len() {
        return Err(format!(
            "the key has {} part(s) but the policy's key has {} ({})",
            pieces.len(),
            parts.len(),
            parts.iter().map(|p| p.name()).collect::<Vec<_>>().join("|")
        ));
    }
    let mut owned: Vec<Vec<u8>> = Vec::with_capacity(pieces.len());
    let mut kinds = Vec::with_capacity(pieces.len());
    for (part, piece) in parts.iter().zip(&pieces) {
        if *piece == "-" {
            kinds.push(0u8);
            owned.push(Vec::new());
        } else if *part == KeyPart::ClientIp {
            let ip: IpAddr = piece
                .parse()
                .map_err(|_| format!("`{piece}` is not an IP address"))?;
            kinds.push(1);
            owned.push(ip.to_string().into_bytes());
        } else {
            kinds.push(2);
            owned.push(unescape(piece)?);
        }
    }
    let values = kinds.iter().zip(&owned).map(|(kind, bytes)| match kind {
        0 => Value::Missing,
        1 => Value::Ip(
            std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
        ),
        _ => Value::Text(bytes),
    });
    Ok(hash_values(scope, values))
}

fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("`{text}` has a broken %-escape"))?;
            out.push(
                u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("`{text}` has a broken %-escape"))?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn hash_values<'a>(scope: u64, values: impl Iterator<Item = Value<'a>>) -> u64 {
    let mut h = SEED.build_hasher();
    scope.hash(&mut h);
    for v in values {
        match v {
            Value::Ip(ip) => {
                0u8.hash(&mut h);
                ip.hash(&mut h);
            }
            Value::Text(t) => {
                1u8.hash(&mut h);
                t.hash(&mut h);
            }
            Value::Missing => 2u8.hash(&mut h),
        }
    }
    h.finish()
}

/// The most bytes of key text kept verbatim; longer keys are replaced by a stable hash.
const MAX_TEXT: usize = 96;

/// The key as text, safe inside a Redis Cluster hash tag: parts joined by `|`, bytes outside
/// printable ASCII (and `{`, `}`, `|`, `%`, `#`, space) percent-encoded, a missing value as
/// `-` (so a value that is itself `-` is written `%2D`). `#` starts the form of keys too
/// long to keep, so it never appears otherwise; the text always leads back to its key.
pub fn text(parts: &[KeyPart], facts: &RequestFacts<'_>) -> String {
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        match value(part, facts) {
            Value::Ip(ip) => out.push_str(&ip.to_string()),
            Value::Missing => out.push('-'),
            Value::Text(b"-") => out.push_str("%2D"),
            Value::Text(bytes) => {
                for &b in bytes {
                    if b.is_ascii_graphic() && !matches!(b, b'{' | b'}' | b'|' | b'%' | b'#') {
                        out.push(b as char);
                    } else {
                        out.push_str(&format!("%{b:02X}"));
                    }
                }
            }
        }
    }
    if out.len() > MAX_TEXT {
        format!("#{:016x}", fnv1a(out.as_bytes()))
    } else {
        out
    }
}

/// FNV-1a: stable across processes and versions, for keys every node must spell alike.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        headers: &'a http::HeaderMap,
        ip: &str,
        tenant: Option<&'a str>,
    ) -> RequestFacts<'a> {
        RequestFacts {
            client_ip: ip.parse().unwrap(),
            api_key_id: None,
            tenant,
            tier: None,
            path: "/a/x",
            method: "GET",
            route: "/a",
            host: None,
            headers,
        }
    }

    #[test]
    fn keys_differ_by_their_parts_only() {
        let h = http::HeaderMap::new();
        let ip = [KeyPart::ClientIp];
        assert_eq!(
            hash(1, &ip, &facts(&h, "10.0.0.1", None)),
            hash(1, &ip, &facts(&h, "10.0.0.1", Some("t")))
        );
        assert_ne!(
            hash(1, &ip, &facts(&h, "10.0.0.1", None)),
            hash(1, &ip, &facts(&h, "10.0.0.2", None))
        );
        assert_ne!(
            hash(1, &ip, &facts(&h, "10.0.0.1", None)),
            hash(2, &ip, &facts(&h, "10.0.0.1", None))
        );
    }

    #[test]
    fn text_hashes_like_the_request() {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", "a b|c".parse().unwrap());
        let parts = [
            KeyPart::ClientIp,
            KeyPart::Header("x-user".into()),
            KeyPart::Tenant,
        ];
        let f = facts(&h, "10.1.2.3", None);
        let t = text(&parts, &f);
        assert_eq!(t, "10.1.2.3|a%20b%7Cc|-");
        assert_eq!(hash_from_text(9, &parts, &t), Ok(hash(9, &parts, &f)));
        assert!(hash_from_text(9, &parts, "x|y|z").is_err(), "not an IP");
        assert!(
            hash_from_text(9, &parts, "10.1.2.3").is_err(),
            "too few parts"
        );
    }

    #[test]
    fn values_that_look_like_markers_keep_their_own_key() {
        // Found by the client_key fuzz target: a value `-` read back as "missing", and one
        // starting with `#` as the long-key form.
        let parts = [KeyPart::Header("x-user".into())];
        for value in ["-", "#1234", "a#b"] {
            let mut h = http::HeaderMap::new();
            h.insert("x-user", value.parse().unwrap());
            let f = facts(&h, "10.0.0.1", None);
            let t = text(&parts, &f);
            assert_eq!(
                hash_from_text(3, &parts, &t),
                Ok(hash(3, &parts, &f)),
                "{value} as {t}"
            );
        }
        let none = http::HeaderMap::new();
        assert_ne!(
            hash_from_text(3, &parts, "%2D"),
            Ok(hash(3, &parts, &facts(&none, "10.0.0.1", None)))
        );
    }

    #[test]
    fn composite_text_is_escaped_and_bounded() {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", "a b{c}|d".parse().unwrap());
        let parts = [
            KeyPart::Tenant,
            KeyPart::Header("x-user".into()),
            KeyPart::Method,
        ];
        assert_eq!(
            text(&parts, &facts(&h, "10.0.0.1", Some("acme"))),
            "acme|a%20b%7Bc%7D%7Cd|GET"
        );
        assert_eq!(
            text(&parts, &facts(&http::HeaderMap::new(), "10.0.0.1", None)),
            "-|-|GET"
        );
        h.insert("x-user", "x".repeat(500).parse().unwrap());
        let long = text(&parts, &facts(&h, "10.0.0.1", None));
        assert!(long.starts_with('#') && long.len() == 17, "{long}");
    }
}
