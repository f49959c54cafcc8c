//! Client-key and header extraction on arbitrary headers: the client address walk over
//! X-Forwarded-For / Forwarded, the API key header, and the limit key built from them.
//! Never a panic, the peer's address whenever the peer is untrusted, and a key's text
//! always leads back to the same key.
//!
//! Shared by the libFuzzer target (`fuzz/fuzz_targets/client_key.rs`) and the bounded smoke
//! run in `cargo test` (`tests/fuzz.rs`).

use http::{HeaderMap, HeaderName, HeaderValue};
use std::net::{IpAddr, Ipv4Addr};
use tollgate::config::{ApiKeysConfig, ClientIpHeader, ClientNet, KeyPart};
use tollgate::identity::{ApiKeyStore, ClientIpResolver};
use tollgate::limit::key::{self, RequestFacts};

const NAMES: [&str; 6] = [
    "x-forwarded-for",
    "forwarded",
    "x-api-key",
    "x-tenant",
    "x-forwarded-for",
    "x-other",
];

pub fn check(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (control, rest) = data.split_at(2);
    let mut headers = HeaderMap::new();
    for (i, chunk) in rest.split(|b| *b == b'\n').enumerate().take(8) {
        let name = HeaderName::from_static(NAMES[i % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(chunk) {
            headers.append(name, value);
        }
    }
    let trusted_peer = control[0] & 1 == 1;
    let peer = if trusted_peer {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, control[1]))
    };
    let header = if control[0] & 2 == 2 {
        ClientIpHeader::Forwarded
    } else {
        ClientIpHeader::XForwardedFor
    };
    let resolver = ClientIpResolver::new(&["127.0.0.0/8".into(), "10.0.0.0/8".into()], header);
    let client = resolver.resolve(Some(peer), &headers);
    if !trusted_peer {
        assert_eq!(client, peer, "an untrusted peer chose its own address");
    }

    let store = ApiKeyStore::from_config(&ApiKeysConfig::default());
    let _ = store.lookup(&headers);

    // Prefix lengths from the input: a key's text (CIDR for a network) must lead back to
    // it whatever the policy's networks are.
    let net = ClientNet {
        v4: 8 + control[1] % 25,
        v6: 32 + control[1] % 97,
    };
    let parts = [
        KeyPart::ClientIp(net),
        KeyPart::Header("x-tenant".into()),
        KeyPart::Header("x-other".into()),
        KeyPart::Path,
    ];
    let path = String::from_utf8_lossy(rest);
    let facts = RequestFacts {
        client_ip: client,
        api_key_id: None,
        tenant: None,
        tier: None,
        path: &path,
        method: "GET",
        route: "/a",
        host: None,
        headers: &headers,
        query: Some(path.as_ref()),
        claims: None,
    };
    let text = key::text(&parts, &facts);
    let hash = key::hash(7, &parts, &facts);
    if !text.starts_with('#') {
        assert_eq!(
            key::hash_from_text(7, &parts, &text),
            Ok(hash),
            "the text {text:?} names another key"
        );
    }
}
