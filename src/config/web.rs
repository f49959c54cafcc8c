//! Host names and web origins, as the admin listener compares them with `Host`, `Origin`
//! and `Referer`: parsed once into a normalized form (lower case, no trailing dot, default
//! ports filled in), so that comparing two of them is `==`.
//!
//! The config's `admin.allowed_hosts` and `admin.allowed_origins` use the same parsers as
//! the request headers, so an entry that passes `tollgate check` is one a browser can send.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Config text in, normalized text out. The error is raised while the YAML scalar is the
/// current node, so serde_yaml locates it at the entry itself.
macro_rules! text_serde {
    ($type:ty, $expecting:literal) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $type;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$type, E> {
                        <$type>::parse(v.trim()).map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

/// The host part of a `Host` header or an origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    /// An IPv4 or IPv6 literal (IPv6 written in brackets on the wire).
    Ip(IpAddr),
    /// A DNS name, lower case, without a trailing dot.
    Name(String),
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostName::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            HostName::Ip(ip) => write!(f, "{ip}"),
            HostName::Name(name) => f.write_str(name),
        }
    }
}

/// `host[:port]`, as in a `Host` header (RFC 9110 §7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: HostName,
    /// The port as written; `None` when the sender left it out (the scheme's default).
    pub port: Option<u16>,
}

/// Parses `host[:port]`: a name, a dotted IPv4 address or a bracketed IPv6 address.
pub fn parse_authority(text: &str) -> Result<Authority, String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{text}` opens [ without closing it"))?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| format!("`{inside}` in brackets is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| {
                format!("`{text}` has `{after}` after the address; expected :port")
            })?),
        };
        (HostName::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = match text.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(format!(
                    "`{text}` looks like an IPv6 address; write it in brackets, like [::1]"
                ))
            }
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        (parse_name(host)?, port)
    };
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p).ok_or_else(|| {
            format!("`{text}` has port `{p}`; a port is a number from 1 to 65535")
        })?),
    };
    Ok(Authority { host, port })
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|p| *p != 0)
}

/// A DNS name or an IPv4 literal, without brackets or port. One trailing dot (the fully
/// qualified spelling) is dropped: `localhost.` is `localhost`.
pub fn parse_name(text: &str) -> Result<HostName, String> {
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Ok(HostName::Ip(IpAddr::V4(ip)));
    }
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() {
        return Err("the host name is empty".into());
    }
    if name.len() > 253 {
        return Err("the host name is longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("`{text}` has an empty label (..)"));
        }
        if label.len() > 63 {
            return Err(format!("`{text}` has a label longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return Err(format!(
                "`{text}` contains `{c}`, which a host name cannot hold (non-ASCII names are written in punycode, xn--...)"
            ));
        }
    }
    Ok(HostName::Name(name.to_ascii_lowercase()))
}

/// A web origin, `scheme://host[:port]` (RFC 6454), as browsers send it in `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: Scheme,
    pub host: HostName,
    /// The port, with the scheme's default filled in.
    pub port: u16,
}

/// The schemes of the web origins the admin listener deals with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl Origin {
    /// Parses an `Origin` header value (or a config entry): an http or https origin with
    /// nothing after the authority.
    pub fn parse(text: &str) -> Result<Origin, String> {
        if text == "*" {
            return Err("`*` would let every web site drive the admin API; list origins like https://ops.example.com".into());
        }
        if text == "null" {
            return Err("`null` is the origin of sandboxed frames, local files and redirects; it names no site, so it cannot be trusted".into());
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("`{text}` is not an origin like https://ops.example.com"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => {
                return Err(format!(
                    "`{text}` has scheme `{scheme}`; an origin here is http:// or https://"
                ))
            }
        };
        if let Some(i) = rest.find(['/', '?', '#']) {
            return Err(format!(
                "`{text}` has `{}` after the host; an origin is only scheme://host[:port], like {}://{}",
                &rest[i..],
                scheme.as_str(),
                &rest[..i]
            ));
        }
        if rest.contains('@') {
            return Err(format!("`{text}` has user information; an origin has none"));
        }
        if rest.contains('*') {
            return Err(format!("`{text}` has a wildcard; list each origin in full"));
        }
        let authority = parse_authority(rest).map_err(|e| format!("origin {e}"))?;
        Ok(Origin {
            scheme,
            host: authority.host,
            port: authority.port.unwrap_or(scheme.default_port()),
        })
    }

    /// The origin of a `Referer` URL: its scheme and authority, the path cut off.
    pub fn of_url(url: &str) -> Result<Origin, String> {
        let start = url.find("://").map(|i| i + 3).unwrap_or(0);
        let end = url[start..]
            .find(['/', '?', '#'])
            .map(|i| start + i)
            .unwrap_or(url.len());
        Origin::parse(&url[..end])
    }

    /// Whether this origin names the same host and port as a request's `Host`. The scheme
    /// is not compared: a TLS proxy in front of the admin listener makes the browser's
    /// origin `https` while the listener itself speaks plain HTTP, and nothing but this
    /// listener (or that proxy) can serve pages from its own host and port.
    pub fn is_host(&self, host: &Authority) -> bool {
        self.host == host.host && self.port == host.port.unwrap_or(self.scheme.default_port())
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

text_serde!(Origin, "an origin like https://ops.example.com");

/// An `admin.allowed_hosts` entry, in nginx `server_name` spelling: `ops.example.com`
/// (that name), `.example.com` (the name and every subdomain) or `*.example.com`
/// (subdomains only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: HostName,
    /// `*.` (false) or `.` (true) in front; `None` for an exact name.
    subdomains: Option<bool>,
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        if text == "*" {
            return Err("`*` would turn the Host check off and let DNS rebinding through; list the names (.example.com allows a domain and its subdomains)".into());
        }
        if text.contains("://") {
            return Err(format!(
                "`{text}` is a URL; give the host name alone, like ops.example.com"
            ));
        }
        let (rest, subdomains) = if let Some(rest) = text.strip_prefix("*.") {
            (rest, Some(false))
        } else if let Some(rest) = text.strip_prefix('.') {
            (rest, Some(true))
        } else {
            (text, None)
        };
        let authority = parse_authority(rest)?;
        if authority.port.is_some() {
            return Err(format!(
                "`{text}` has a port; list the name alone (it is accepted on any port)"
            ));
        }
        if subdomains.is_some() && matches!(authority.host, HostName::Ip(_)) {
            return Err(format!("`{text}`: an IP address has no subdomains"));
        }
        Ok(HostPattern {
            host: authority.host,
            subdomains,
        })
    }

    pub fn matches(&self, host: &HostName) -> bool {
        match (self.subdomains, &self.host, host) {
            (None, _, _) => self.host == *host,
            (Some(bare_too), HostName::Name(domain), HostName::Name(name)) => {
                (bare_too && name == domain)
                    || name
                        .strip_suffix(domain.as_str())
                        .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
            }
            _ => false,
        }
    }

    /// An IP address, or `localhost`: accepted without being listed.
    pub fn is_always_accepted(&self) -> bool {
        self.subdomains.is_none() && always_accepted(&self.host)
    }
}

/// The hosts every admin listener answers to: `localhost` and IP literals. DNS rebinding
/// needs a name the attacker controls; an IP literal in `Host` means the browser connected
/// to that very address, so a page from that origin came from the listener itself.
pub fn always_accepted(host: &HostName) -> bool {
    match host {
        HostName::Ip(_) => true,
        HostName::Name(name) => name == "localhost",
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.subdomains {
            None => {}
            Some(true) => f.write_str(".")?,
            Some(false) => f.write_str("*.")?,
        }
        write!(f, "{}", self.host)
    }
}

text_serde!(
    HostPattern,
    "a host name like ops.example.com or .example.com"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> HostName {
        HostName::Name(n.into())
    }

    #[test]
    fn host_headers_parse_with_ports_brackets_case_and_trailing_dots() {
        let a = |t: &str| parse_authority(t).unwrap();
        assert_eq!(
            a("127.0.0.1:9000"),
            Authority {
                host: HostName::Ip("127.0.0.1".parse().unwrap()),
                port: Some(9000)
            }
        );
        assert_eq!(a("[::1]:9000").host, HostName::Ip("::1".parse().unwrap()));
        assert_eq!(a("[::1]").port, None);
        assert_eq!(a("LocalHost.:9000").host, name("localhost"));
        assert_eq!(a("Ops.Example.COM").host, name("ops.example.com"));
        assert_eq!(a("ops.example.com.").host, name("ops.example.com"));
        assert_eq!(a("docker_svc:80").host, name("docker_svc"));
        for bad in [
            "",
            ":9000",
            "::1",
            "::1:9000",
            "[::1",
            "[::1]9000",
            "[zz]:1",
            "host:",
            "host:0",
            "host:65536",
            "host:+80",
            "host:80:80",
            "a..b",
            "..",
            "user@host",
            "evil.example/x",
            "ex ample",
            "bücher.example",
            "[fe80::1%25eth0]",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn origins_normalize_default_ports_and_refuse_what_names_no_site() {
        let o = |t: &str| Origin::parse(t).unwrap();
        assert_eq!(o("http://localhost:80"), o("http://localhost"));
        assert_eq!(
            o("HTTPS://Ops.Example.com:443"),
            o("https://ops.example.com")
        );
        assert_ne!(o("http://ops.example.com"), o("https://ops.example.com"));
        assert_eq!(o("http://[::1]:9000").to_string(), "http://[::1]:9000");
        assert_eq!(
            o("https://ops.example.com.").to_string(),
            "https://ops.example.com"
        );
        assert_eq!(o("http://127.0.0.1:9000").port, 9000);
        for bad in [
            "*",
            "null",
            "ops.example.com",
            "ftp://ops.example.com",
            "https://ops.example.com/",
            "https://ops.example.com/path",
            "https://ops.example.com?q",
            "https://*.example.com",
            "https://user@ops.example.com",
            "https://",
            "https://ops.example.com:0",
            "chrome-extension://abcdef",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_referer_gives_its_origin() {
        let r = |t: &str| Origin::of_url(t).unwrap().to_string();
        assert_eq!(r("http://127.0.0.1:9000/"), "http://127.0.0.1:9000");
        assert_eq!(
            r("http://127.0.0.1:9000/dashboard?x=1#y"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(r("https://evil.example"), "https://evil.example");
        assert!(Origin::of_url("http://user:pw@127.0.0.1:9000/").is_err());
        assert!(Origin::of_url("/relative").is_err());
    }

    #[test]
    fn an_origin_is_its_host_scheme_aside() {
        let host = parse_authority("127.0.0.1:9000").unwrap();
        assert!(Origin::parse("http://127.0.0.1:9000")
            .unwrap()
            .is_host(&host));
        assert!(!Origin::parse("http://127.0.0.1:9001")
            .unwrap()
            .is_host(&host));
        assert!(!Origin::parse("http://127.0.0.1").unwrap().is_host(&host));
        assert!(!Origin::parse("http://localhost:9000")
            .unwrap()
            .is_host(&host));
        // Behind a TLS proxy: Host without a port, the page on https.
        let proxied = parse_authority("ops.example.com").unwrap();
        assert!(Origin::parse("https://ops.example.com")
            .unwrap()
            .is_host(&proxied));
        assert!(Origin::parse("http://OPS.example.com.")
            .unwrap()
            .is_host(&proxied));
        assert!(!Origin::parse("https://ops.example.com:8443")
            .unwrap()
            .is_host(&proxied));
        let v6 = parse_authority("[::1]:9000").unwrap();
        assert!(Origin::parse("http://[::1]:9000").unwrap().is_host(&v6));
    }

    #[test]
    fn host_patterns_follow_nginx_server_name() {
        let p = |t: &str| HostPattern::parse(t).unwrap();
        assert!(p("ops.example.com").matches(&name("ops.example.com")));
        assert!(!p("ops.example.com").matches(&name("x.ops.example.com")));
        assert!(p(".example.com").matches(&name("example.com")));
        assert!(p(".example.com").matches(&name("a.b.example.com")));
        assert!(!p(".example.com").matches(&name("badexample.com")));
        assert!(p("*.example.com").matches(&name("a.example.com")));
        assert!(!p("*.example.com").matches(&name("example.com")));
        assert!(!p("*.example.com").matches(&name(".example.com")));
        assert!(p("OPS.Example.com.").matches(&name("ops.example.com")));
        assert!(p("10.0.0.5").is_always_accepted());
        assert!(p("[::1]").is_always_accepted());
        assert!(p("localhost").is_always_accepted());
        assert!(!p(".localhost").is_always_accepted());
        assert_eq!(p(".Example.com").to_string(), ".example.com");
        for bad in [
            "*",
            "",
            "https://ops.example.com",
            "ops.example.com:9000",
            "ops.example.com/x",
            "*.10.0.0.5",
            "a..b",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
