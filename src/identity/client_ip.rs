//! The client's address: the socket peer, unless the peer is a trusted proxy, in which case
//! the forwarding header is walked from the right (the hop nearest to us) to the first
//! address that is not a trusted proxy. Anything to its left was written by the client and
//! is ignored, so a client cannot choose its own key by sending the header.

use crate::config::{self, ClientIpHeader};
use http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub struct ClientIpResolver {
    trusted: Vec<IpNet>,
    header: ClientIpHeader,
}

impl ClientIpResolver {
    pub fn new(trusted: &[String], header: ClientIpHeader) -> Self {
        ClientIpResolver {
            trusted: trusted
                .iter()
                .filter_map(|t| config::parse_net(t))
                .collect(),
            header,
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    pub fn resolve(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> IpAddr {
        let Some(peer) = peer.map(canonical) else {
            return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        };
        if self.trusted.is_empty() || !self.is_trusted(peer) {
            return peer;
        }
        let (name, parse): (&str, fn(&str) -> Option<IpAddr>) = match self.header {
            ClientIpHeader::XForwardedFor => ("x-forwarded-for", parse_xff_hop),
            ClientIpHeader::Forwarded => ("forwarded", parse_forwarded_element),
        };
        let mut client = peer;
        let hops = headers
            .get_all(name)
            .iter()
            .rev()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").rsplit(','));
        for hop in hops {
            match parse(hop.trim()) {
                // An unreadable hop ends the walk: the last hop we could read vouches for it.
                None => return client,
                Some(ip) => {
                    client = canonical(ip);
                    if !self.is_trusted(client) {
                        return client;
                    }
                }
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is the IPv4 address, so it matches IPv4 ranges and
/// keys alike.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port.
fn parse_xff_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The `for=` of one `Forwarded` element (RFC 7239): `for=192.0.2.60;proto=http`,
/// `for="[2001:db8::17]:4711"`. `unknown` and obfuscated identifiers are unreadable.
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    let value = element
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))?
        .1
        .trim()
        .trim_matches('"');
    let host = match value.strip_prefix('[') {
        Some(rest) => rest.split(']').next()?,
        None => value.split(':').next()?,
    };
    if value.starts_with('[') {
        host.parse().ok()
    } else {
        // IPv4 with an optional port.
        host.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_send() {
        let r = ClientIpResolver::new(&["10.0.0.0/8".into()], ClientIpHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["1.2.3.4"]);
        assert_eq!(r.resolve(Some(ip("203.0.113.7")), &h), ip("203.0.113.7"));
        let none = ClientIpResolver::new(&[], ClientIpHeader::XForwardedFor);
        assert_eq!(none.resolve(Some(ip("10.0.0.1")), &h), ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let r = ClientIpResolver::new(
            &["10.0.0.0/8".into(), "127.0.0.1".into()],
            ClientIpHeader::XForwardedFor,
        );
        // The client claimed 6.6.6.6; the real client is 198.51.100.9, seen by 10.1.1.1.
        let h = headers("x-forwarded-for", &["6.6.6.6, 198.51.100.9", "10.1.1.1"]);
        assert_eq!(r.resolve(Some(ip("127.0.0.1")), &h), ip("198.51.100.9"));
        // All hops trusted: the leftmost one.
        let h = headers("x-forwarded-for", &["10.2.2.2, 10.1.1.1"]);
        assert_eq!(r.resolve(Some(ip("127.0.0.1")), &h), ip("10.2.2.2"));
        // No header: the peer itself.
        assert_eq!(
            r.resolve(Some(ip("127.0.0.1")), &HeaderMap::new()),
            ip("127.0.0.1")
        );
        // Garbage stops the walk at the last readable hop.
        let h = headers("x-forwarded-for", &["junk, 10.1.1.1"]);
        assert_eq!(r.resolve(Some(ip("127.0.0.1")), &h), ip("10.1.1.1"));
        let h = headers("x-forwarded-for", &["198.51.100.9:5555"]);
        assert_eq!(r.resolve(Some(ip("127.0.0.1")), &h), ip("198.51.100.9"));
    }

    #[test]
    fn forwarded_header() {
        let r = ClientIpResolver::new(&["127.0.0.1".into()], ClientIpHeader::Forwarded);
        let h = headers(
            "forwarded",
            &["for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=http"],
        );
        assert_eq!(
            r.resolve(Some(ip("127.0.0.1")), &h),
            ip("2001:db8:cafe::17")
        );
        let h = headers("forwarded", &["for=192.0.2.60;proto=http;by=203.0.113.43"]);
        assert_eq!(r.resolve(Some(ip("127.0.0.1")), &h), ip("192.0.2.60"));
        let h = headers("forwarded", &["for=unknown"]);
        assert_eq!(r.resolve(Some(ip("127.0.0.1")), &h), ip("127.0.0.1"));
        // X-Forwarded-For is ignored when Forwarded is the configured header.
        let h = headers("x-forwarded-for", &["9.9.9.9"]);
        assert_eq!(r.resolve(Some(ip("127.0.0.1")), &h), ip("127.0.0.1"));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_ranges() {
        let r = ClientIpResolver::new(&["127.0.0.0/8".into()], ClientIpHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["198.51.100.1"]);
        assert_eq!(
            r.resolve(Some(ip("::ffff:127.0.0.1")), &h),
            ip("198.51.100.1")
        );
    }
}
