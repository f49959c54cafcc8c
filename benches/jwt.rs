//! A cold JWT verification per algorithm: what a request pays the first time it presents a
//! token (every later request with that token is a cache lookup). Keys are made with the
//! openssl CLI, tokens signed with `jsonwebtoken` before the measurement, and each one is
//! checked by tollgate's provider without its cache.
//!
//! `cargo bench --bench jwt`

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::process::Command;
use std::sync::Arc;
use tollgate::config::auth::JwtProviderConfig;
use tollgate::identity::jwt::keys::KeySet;
use tollgate::identity::jwt::Provider;
use tollgate::metrics::Metrics;

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("the openssl CLI makes the bench's keys ({e}); apt-get install -y openssl")
        });
    assert!(out.status.success(), "openssl {args:?}");
    out.stdout
}

/// A private key of `alg` and its public JWK.
fn key(dir: &std::path::Path, alg: Algorithm) -> (EncodingKey, serde_json::Value) {
    let path = dir.join(format!("{alg:?}.pem"));
    let p = path.to_str().expect("path");
    let gen: &[&str] = match alg {
        Algorithm::RS256 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        _ => &["-algorithm", "ED25519"],
    };
    let mut args = vec!["genpkey"];
    args.extend_from_slice(gen);
    args.extend_from_slice(&["-out", p]);
    openssl(&args);
    let pem = std::fs::read(&path).expect("key");
    let der = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
    let kid = format!("{alg:?}");
    match alg {
        Algorithm::RS256 => {
            let m =
                String::from_utf8(openssl(&["rsa", "-in", p, "-noout", "-modulus"])).expect("utf8");
            let hex = m.trim().trim_start_matches("Modulus=");
            let n: Vec<u8> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            (
                EncodingKey::from_rsa_pem(&pem).expect("rsa"),
                serde_json::json!({"kty": "RSA", "kid": kid, "n": B64.encode(n), "e": "AQAB"}),
            )
        }
        Algorithm::ES256 => {
            let point = &der[der.len() - 64..];
            (
                EncodingKey::from_ec_pem(&pem).expect("ec"),
                serde_json::json!({"kty": "EC", "kid": kid, "crv": "P-256",
                    "x": B64.encode(&point[..32]), "y": B64.encode(&point[32..])}),
            )
        }
        _ => (
            EncodingKey::from_ed_pem(&pem).expect("ed"),
            serde_json::json!({"kty": "OKP", "kid": kid, "crv": "Ed25519",
                "x": B64.encode(&der[der.len() - 32..])}),
        ),
    }
}

fn verification(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let algs = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
    let keys: Vec<_> = algs.iter().map(|a| (*a, key(dir.path(), *a))).collect();
    let config: JwtProviderConfig = serde_yaml::from_str(
        "issuer: https://id.example.com/\naudiences: [orders-api]\njwks_file: unused.json\ntenant_claim: org\n",
    )
    .expect("provider");
    let provider = Provider::build("bench", &config, &Metrics::new());
    let jwks = serde_json::json!({"keys": keys.iter().map(|(_, (_, jwk))| jwk.clone()).collect::<Vec<_>>()});
    provider.set_keys(Some(Arc::new(
        KeySet::parse(&jwks.to_string()).expect("jwks"),
    )));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let mut group = c.benchmark_group("jwt");
    for (alg, (encoding, _)) in &keys {
        let mut header = Header::new(*alg);
        header.kid = Some(format!("{alg:?}"));
        let claims = serde_json::json!({"iss": "https://id.example.com/", "aud": "orders-api",
            "sub": "user-12345", "org": "acme", "exp": exp});
        let token = encode(&header, &claims, encoding).expect("sign");
        assert!(provider.check(&token).is_ok(), "{alg:?} verifies");
        group.bench_function(format!("verify_cold/{alg:?}"), |b| {
            b.iter(|| provider.check(black_box(&token)).is_ok())
        });
    }
    group.finish();
}

criterion_group!(benches, verification);
criterion_main!(benches);
