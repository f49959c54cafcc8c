use super::*;
use pingora_error::ErrorSource;

/// Pingora 0.9.1's `sanitize_h1_upstream_request` under the default policy, transcribed
/// from `pingora-proxy/src/proxy_common.rs` (Apache-2.0, Cloudflare) with the policy's
/// branches folded: what [`strip`] must match, request for request.
fn pingora_default(req: &mut RequestHeader, downstream_is_http11: bool) -> Result<()> {
    let mut names: Vec<HeaderName> = Vec::new();
    let mut count = 0;
    for token in req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .map(|token| token.trim_ascii())
        .filter(|token| !token.is_empty())
    {
        count += 1;
        if count >= 10 {
            return Err(refuse("too many Connection header nominations"));
        }
        if token.starts_with(b":") {
            return Err(refuse(
                "protected header cannot be nominated by the Connection header",
            ));
        }
        if !token.iter().all(|&byte| is_tchar(byte)) {
            return Err(refuse("invalid token nominated by the Connection header"));
        }
        let Ok(name) = HeaderName::from_bytes(token) else {
            return Err(refuse("invalid token nominated by the Connection header"));
        };
        if matches!(
            name.as_str(),
            "host" | "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
        ) {
            return Err(refuse(
                "protected header cannot be nominated by the Connection header",
            ));
        }
        names.push(name);
    }
    let websocket = downstream_is_http11
        && req
            .headers
            .get(header::UPGRADE)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
    for name in &names {
        req.remove_header(name);
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "connection",
        "upgrade",
        "http2-settings",
        "connection",
        "upgrade",
        "http2-settings",
    ] {
        req.remove_header(name);
    }
    if websocket {
        req.insert_header(header::CONNECTION, "Upgrade")?;
        req.insert_header(header::UPGRADE, "websocket")?;
    }
    Ok(())
}

fn request(lines: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/a/x", None).unwrap();
    for (name, value) in lines {
        req.append_header(name.to_string(), *value).unwrap();
    }
    req
}

fn wire(req: &RequestHeader) -> String {
    let mut out = Vec::new();
    req.header_to_h1_wire(&mut out);
    String::from_utf8(out).unwrap()
}

/// What the backend gets, or the refusal's words, through [`strip`].
fn stripped(lines: &[(&str, &str)], http11: bool) -> std::result::Result<String, String> {
    let mut req = request(lines);
    match strip(&mut req, http11) {
        Ok(()) => Ok(wire(&req)),
        Err(e) => {
            assert_eq!(e.etype(), &InvalidHTTPHeader);
            assert_eq!(
                e.esource(),
                &ErrorSource::Downstream,
                "the client's fault: 400"
            );
            Err(e
                .context
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default())
        }
    }
}

/// [`stripped`] checked against Pingora's strip.
fn same_as_pingora(lines: &[(&str, &str)], http11: bool) -> std::result::Result<String, String> {
    let ours = stripped(lines, http11);
    let mut req = request(lines);
    let theirs = match pingora_default(&mut req, http11) {
        Ok(()) => Ok(wire(&req)),
        Err(e) => Err(e
            .context
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default()),
    };
    assert_eq!(
        ours.as_ref().map(|w| by_name(w)),
        theirs.as_ref().map(|w| by_name(w)),
        "{lines:?} http11={http11}"
    );
    ours
}

/// A wire form's fields sorted by name, the values of one name kept in order: removals
/// may move a field (`HeaderMap` swaps a removed entry with its last), and HTTP gives the
/// order of differently named fields no meaning.
fn by_name(wire: &str) -> Vec<(String, &str)> {
    let mut fields: Vec<(String, &str)> = wire
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let name = l.split(':').next().unwrap_or_default();
            (name.to_ascii_lowercase(), l)
        })
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

#[test]
fn a_request_without_hop_by_hop_fields_is_untouched() {
    let lines = [("Host", "x"), ("User-Agent", "ua"), ("X-Custom", "1")];
    assert_eq!(same_as_pingora(&lines, true), Ok(wire(&request(&lines))));
}

#[test]
fn the_standard_set_is_removed() {
    let sent = same_as_pingora(
        &[
            ("Host", "x"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authenticate", "Basic"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("TE", "trailers"),
            ("Trailer", "x-checksum"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
            ("X-Kept", "1"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(sent, "Host: x\r\nX-Kept: 1\r\n");
}

#[test]
fn fields_connection_nominates_are_removed() {
    let sent = same_as_pingora(
        &[
            ("Host", "x"),
            ("Connection", "close, X-Secret"),
            ("Connection", " , x-other ,"),
            ("x-secret", "1"),
            ("X-Other", "2"),
            ("X-Other", "3"),
            ("X-Kept", "1"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(sent, "Host: x\r\nX-Kept: 1\r\n");
    // Nominating `Connection` itself, or an absent field, is harmless.
    let sent = same_as_pingora(&[("Connection", "connection, keep-alive, nothing")], true);
    assert_eq!(sent.unwrap(), "");
}

#[test]
fn nominating_a_protected_field_is_refused() {
    for token in [
        "host",
        "Host",
        "X-Forwarded-For",
        "x-forwarded-host",
        "X-FORWARDED-PROTO",
        ":authority",
        ":path",
    ] {
        let refused = same_as_pingora(&[("Host", "x"), ("Connection", token)], true);
        assert_eq!(
            refused,
            Err("protected header cannot be nominated by the Connection header".into()),
            "{token}"
        );
    }
    // `X-Forwarded-Port` is not protected: it goes.
    let sent = same_as_pingora(
        &[
            ("Connection", "x-forwarded-port"),
            ("X-Forwarded-Port", "80"),
        ],
        true,
    );
    assert_eq!(sent.unwrap(), "");
}

#[test]
fn a_nomination_that_is_not_a_token_is_refused() {
    for token in [
        "\"x-forwarded-for\"",
        "a/b",
        "x y",
        "a;b",
        "(c)",
        "x=1",
        "caf\u{e9}",
    ] {
        let refused = same_as_pingora(&[("Connection", token)], true);
        assert_eq!(
            refused,
            Err("invalid token nominated by the Connection header".into()),
            "{token:?}"
        );
    }
}

#[test]
fn a_tenth_nomination_is_refused() {
    let nine = "a, b, c, d, e, f, g, h, i";
    assert!(same_as_pingora(&[("Connection", nine), ("A", "1")], true).is_ok());
    let ten = &[
        ("Connection", "a, b, c, d, e"),
        ("Connection", "f, g, h, i, j"),
    ];
    assert_eq!(
        same_as_pingora(ten, true),
        Err("too many Connection header nominations".into())
    );
    // Empty tokens do not count.
    assert!(same_as_pingora(&[("Connection", "a,,,, b, , c, d, e, f, g, h, i,")], true).is_ok());
}

#[test]
fn a_websocket_upgrade_is_rebuilt_from_http_1_1_only() {
    let ws = [
        ("Host", "x"),
        ("Connection", "keep-alive, Upgrade"),
        ("Upgrade", "WebSocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let sent = same_as_pingora(&ws, true).unwrap();
    assert!(sent.contains("Connection: Upgrade\r\n"), "{sent}");
    // Pingora's case map writes the name it inserts in lower case.
    assert!(sent.contains("upgrade: websocket\r\n"), "{sent}");
    assert!(sent.contains("Sec-WebSocket-Key: "), "{sent}");
    // An HTTP/1.0 (or HTTP/2) client cannot upgrade this way: the fields go.
    let sent = same_as_pingora(&ws, false).unwrap();
    assert!(!sent.contains("pgrade"), "{sent}");
}

#[test]
fn other_upgrades_are_dropped() {
    let h2c = [
        ("Host", "x"),
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
    ];
    assert_eq!(same_as_pingora(&h2c, true).unwrap(), "Host: x\r\n");
    // Only the first `Upgrade` value is read, as Pingora reads it.
    let sent = same_as_pingora(&[("Upgrade", "h2c"), ("Upgrade", "websocket")], true);
    assert_eq!(sent.unwrap(), "");
}

#[test]
fn transfer_encoding_goes_for_pingora_to_reframe() {
    // Pingora frames a body left without `Content-Length` or `Transfer-Encoding` as chunked
    // after the filter; `Content-Length` stays.
    let sent = same_as_pingora(&[("Transfer-Encoding", "chunked"), ("X-A", "1")], true);
    assert_eq!(sent.unwrap(), "X-A: 1\r\n");
    let sent = same_as_pingora(
        &[("Content-Length", "3"), ("Connection", "keep-alive")],
        true,
    );
    assert_eq!(sent.unwrap(), "Content-Length: 3\r\n");
}

#[test]
fn every_standard_name_has_its_bit() {
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        assert_eq!(hop_by_hop_bit(name), 1 << i, "{name}");
    }
    assert_eq!(hop_by_hop_bit(&header::CONNECTION), CONNECTION);
    assert_eq!(hop_by_hop_bit(&header::UPGRADE), UPGRADE);
    assert_eq!(hop_by_hop_bit(&header::HOST), 0);
}

#[test]
fn a_token_is_a_header_name_exactly_when_http_says_so() {
    // The check that replaces Pingora's `HeaderName::from_bytes` on each nomination.
    for byte in 0..=255u8 {
        let token = [b'a', byte];
        let ours = token.iter().all(|&b| is_tchar(b));
        assert_eq!(ours, HeaderName::from_bytes(&token).is_ok(), "{byte}");
    }
    let longest = vec![b'a'; MAX_HEADER_NAME_LEN];
    assert!(HeaderName::from_bytes(&longest).is_ok());
    assert!(HeaderName::from_bytes(&[b'a'; MAX_HEADER_NAME_LEN + 1]).is_err());
}

/// Many requests made of the fields that matter, each checked against Pingora's strip.
#[test]
fn matches_pingora_on_generated_requests() {
    const FIELDS: [(&str, &str); 22] = [
        ("Host", "x"),
        ("Connection", "close"),
        ("Connection", "Upgrade"),
        ("Connection", "keep-alive, x-a"),
        ("Connection", "X-B, te , ,"),
        ("Connection", "host"),
        ("Connection", "\"x-a\""),
        ("Connection", "a,b,c,d,e"),
        ("Connection", ""),
        ("Upgrade", "websocket"),
        ("Upgrade", "h2c"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"),
        ("Trailer", "x"),
        ("Proxy-Authorization", "Basic x"),
        ("Proxy-Connection", "keep-alive"),
        ("HTTP2-Settings", "AA"),
        ("X-A", "1"),
        ("x-b", "2"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Sec-WebSocket-Key", "k"),
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut refused, mut upgraded) = (0, 0);
    for _ in 0..20_000 {
        let n = (next() % 8) as usize;
        let lines: Vec<_> = (0..n)
            .map(|_| FIELDS[(next() % FIELDS.len() as u64) as usize])
            .collect();
        match same_as_pingora(&lines, next() % 4 != 0) {
            Err(_) => refused += 1,
            Ok(sent) if sent.contains("upgrade: websocket") => upgraded += 1,
            Ok(_) => {}
        }
    }
    assert!(refused > 100 && upgraded > 100, "{refused} {upgraded}");
}
