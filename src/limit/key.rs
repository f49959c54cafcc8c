//! Limit keys: which bucket a request counts against.
//!
//! A key is hashed straight from the request's parts (no allocation on the request path);
//! its text form, used in Redis keys and the admin API, is built only when a key is first
//! seen.

use crate::config::{ClientNet, KeyPart};
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
    /// The request's query string, without the `?`.
    pub query: Option<&'a str>,
    /// The claims of the request's verified JWT.
    pub claims: Option<&'a serde_json::Value>,
}

/// The value a key part takes for a request; a missing value is its own shared bucket,
/// so leaving a header out cannot dodge a limit.
enum Value<'a> {
    /// A client's network: its masked address and prefix length.
    Net(IpAddr, u8),
    Text(&'a [u8]),
    /// A value that had to be decoded or formatted; it keys like the same text.
    Owned(Vec<u8>),
    Missing,
}

fn value<'a>(part: &KeyPart, facts: &RequestFacts<'a>) -> Value<'a> {
    let text = |s: Option<&'a str>| s.map_or(Value::Missing, |s| Value::Text(s.as_bytes()));
    match part {
        KeyPart::ClientIp(net) => {
            let (ip, bits) = net.network(facts.client_ip);
            Value::Net(ip, bits)
        }
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
        KeyPart::Cookie(name) => cookie(facts.headers, name).map_or(Value::Missing, Value::Text),
        KeyPart::Query(name) => match facts.query.and_then(|q| query_param(q, name)) {
            None => Value::Missing,
            Some(raw) => match percent_decoded(raw) {
                std::borrow::Cow::Borrowed(b) => Value::Text(b),
                std::borrow::Cow::Owned(v) => Value::Owned(v),
            },
        },
        KeyPart::Jwt(path) => match facts.claims.and_then(|c| claim(c, path)) {
            None | Some(serde_json::Value::Null) => Value::Missing,
            Some(serde_json::Value::String(s)) => Value::Text(s.as_bytes()),
            // Numbers and booleans key as their JSON text; objects and arrays too.
            Some(other) => Value::Owned(other.to_string().into_bytes()),
        },
    }
}

/// The first cookie called `name` in the request's `Cookie` headers (RFC 6265 §5.4).
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            (k.trim_ascii() == name.as_bytes()).then(|| {
                let v = v.trim_ascii();
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v)
            })
        })
}

/// The raw value of the first query parameter called `name`.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a [u8]> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name || percent_decoded(k.as_bytes()).as_ref() == name.as_bytes())
            .then_some(v.as_bytes())
    })
}

/// `%XX` and `+` decoded, so `a%20b`, `a+b` and `a b` are one key; borrowed when there is
/// nothing to decode.
fn percent_decoded(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !raw.iter().any(|b| matches!(b, b'%' | b'+')) {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < raw.len() => {
                let hex = std::str::from_utf8(&raw[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// The claim at a dotted path (`org.id`) in a token's claims.
pub fn claim<'a>(claims: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    // A claim whose own name has a dot in it is found whole first.
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, seg| v.get(seg))
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
        } else if let KeyPart::ClientIp(net) = part {
            let ip = parse_network(piece, *net)?;
            kinds.push(1);
            owned.push(ip.to_string().into_bytes());
        } else {
            kinds.push(2);
            owned.push(unescape(piece)?);
        }
    }
    let values = kinds.iter().zip(&owned).map(|(kind, bytes)| match kind {
        0 => Value::Missing,
        1 => {
            let ip = std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(IpAddr::from([0, 0, 0, 0]));
            let net = parts
                .iter()
                .find_map(|p| match p {
                    KeyPart::ClientIp(net) => Some(*net),
                    _ => None,
                })
                .unwrap_or_default();
            let (ip, bits) = net.network(ip);
            Value::Net(ip, bits)
        }
        _ => Value::Text(bytes),
    });
    Ok(hash_values(scope, values))
}

/// Key text as requests spell it: a `client_ip` part given as any address of a network (or
/// an IPv4-mapped address) is written as the network. Call after [`hash_from_text`]
/// accepted the text.
pub fn canonical_text(parts: &[KeyPart], text: &str) -> String {
    if !parts.iter().any(|p| matches!(p, KeyPart::ClientIp(_))) {
        return text.to_string();
    }
    let pieces: Vec<String> = parts
        .iter()
        .zip(text.split('|'))
        .map(
            |(part, piece)| match (part, parse_network(piece, client_net(part))) {
                (KeyPart::ClientIp(net), Ok(ip)) if piece != "-" => {
                    let (ip, bits) = net.network(ip);
                    if bits == if ip.is_ipv4() { 32 } else { 128 } {
                        ip.to_string()
                    } else {
                        format!("{ip}/{bits}")
                    }
                }
                _ => piece.to_string(),
            },
        )
        .collect();
    pieces.join("|")
}

fn client_net(part: &KeyPart) -> ClientNet {
    match part {
        KeyPart::ClientIp(net) => *net,
        _ => ClientNet::default(),
    }
}

/// A client network as the admin API names it: its CIDR form as keys are reported
/// (`2001:db8:1:1::/64`), or any address in it. IPv4-mapped IPv6 is the IPv4 address.
fn parse_network(piece: &str, net: ClientNet) -> Result<IpAddr, String> {
    let (addr, len) = match piece.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (piece, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{piece}` is not an IP address or network"))?;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (masked, bits) = net.network(ip);
    if let Some(len) = len {
        if len.parse::<u8>().ok() != Some(bits) {
            return Err(format!(
                "`{piece}`: this policy keys {} clients by /{bits} networks",
                if ip.is_ipv4() { "IPv4" } else { "IPv6" }
            ));
        }
    }
    Ok(masked)
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
            Value::Net(ip, _) => {
                0u8.hash(&mut h);
                ip.hash(&mut h);
            }
            Value::Text(t) => {
                1u8.hash(&mut h);
                t.hash(&mut h);
            }
            Value::Owned(t) => {
                1u8.hash(&mut h);
                t.as_slice().hash(&mut h);
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
            Value::Net(ip, bits) => {
                out.push_str(&ip.to_string());
                // A single address is written as one, so IPv4 keys read as before.
                if bits < if ip.is_ipv4() { 32 } else { 128 } {
                    out.push('/');
                    out.push_str(itoa::Buffer::new().format(bits));
                }
            }
            Value::Missing => out.push('-'),
            Value::Text(b"-") => out.push_str("%2D"),
            Value::Owned(bytes) if bytes == b"-" => out.push_str("%2D"),
            Value::Text(bytes) => escape_into(&mut out, bytes),
            Value::Owned(bytes) => escape_into(&mut out, &bytes),
        }
    }
    if out.len() > MAX_TEXT {
        format!("#{:016x}", fnv1a(out.as_bytes()))
    } else {
        out
    }
}

fn escape_into(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_graphic() && !matches!(b, b'{' | b'}' | b'|' | b'%' | b'#') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
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
            query: None,
            claims: None,
        }
    }

    #[test]
    fn keys_differ_by_their_parts_only() {
        let h = http::HeaderMap::new();
        let ip = [KeyPart::ClientIp(ClientNet::default())];
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
            KeyPart::ClientIp(ClientNet::default()),
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
    fn ipv6_clients_are_keyed_by_their_network() {
        let h = http::HeaderMap::new();
        let def = [KeyPart::ClientIp(ClientNet::default())];
        let a = facts(&h, "2001:db8:1:1::64", None);
        let b = facts(&h, "2001:db8:1:1:ffff::77", None);
        let other = facts(&h, "2001:db8:1:2::1", None);
        assert_eq!(hash(1, &def, &a), hash(1, &def, &b), "one /64, one key");
        assert_ne!(hash(1, &def, &a), hash(1, &def, &other));
        assert_eq!(text(&def, &a), "2001:db8:1:1::/64");
        assert_eq!(text(&def, &facts(&h, "10.1.2.3", None)), "10.1.2.3");
        for given in ["2001:db8:1:1::/64", "2001:db8:1:1::5"] {
            assert_eq!(
                hash_from_text(1, &def, given),
                Ok(hash(1, &def, &a)),
                "{given}"
            );
        }
        assert!(hash_from_text(1, &def, "2001:db8:1:1::/56").is_err());
        assert_eq!(canonical_text(&def, "2001:db8:1:1::5"), "2001:db8:1:1::/64");
        assert_eq!(canonical_text(&def, "::ffff:10.0.0.1"), "10.0.0.1");

        let wide = [KeyPart::ClientIp(ClientNet { v4: 24, v6: 56 })];
        assert_eq!(hash(1, &wide, &a), hash(1, &wide, &other), "one /56");
        assert_eq!(text(&wide, &a), "2001:db8:1::/56");
        let v4 = facts(&h, "198.51.100.7", None);
        assert_eq!(text(&wide, &v4), "198.51.100.0/24");
        assert_eq!(
            hash_from_text(1, &wide, "198.51.100.0/24"),
            Ok(hash(1, &wide, &v4))
        );
        let exact = [KeyPart::ClientIp(ClientNet { v4: 32, v6: 128 })];
        assert_ne!(hash(1, &exact, &a), hash(1, &exact, &b));
        assert_eq!(text(&exact, &a), "2001:db8:1:1::64");
    }

    #[test]
    fn cookies_query_parameters_and_claims_key_requests() {
        let mut h = http::HeaderMap::new();
        h.append("cookie", "theme=dark; session=\"s-1\"".parse().unwrap());
        h.append("cookie", "session=later".parse().unwrap());
        let claims = serde_json::json!({"sub": "alice", "org": {"id": 42}, "a.b": "flat"});
        let mut f = facts(&h, "10.0.0.1", None);
        f.query = Some("x=1&user=al%69ce+b&user=eve");
        f.claims = Some(&claims);
        let parts = [
            KeyPart::Cookie("session".into()),
            KeyPart::Query("user".into()),
            KeyPart::Jwt("sub".into()),
            KeyPart::Jwt("org.id".into()),
            KeyPart::Jwt("a.b".into()),
            KeyPart::Jwt("missing".into()),
        ];
        let t = text(&parts, &f);
        assert_eq!(t, "s-1|alice%20b|alice|42|flat|-");
        assert_eq!(hash_from_text(5, &parts, &t), Ok(hash(5, &parts, &f)));
        // Encodings of one value are one key.
        let mut g = facts(&h, "10.0.0.1", None);
        g.query = Some("user=alice%20b");
        g.claims = Some(&claims);
        let user = [KeyPart::Query("user".into())];
        assert_eq!(hash(5, &user, &f), hash(5, &user, &g));
        g.query = None;
        assert_eq!(text(&user, &g), "-");
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
