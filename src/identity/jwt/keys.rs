//! A provider's signing keys, read from a JWKS document (RFC 7517).

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::str::FromStr;

/// One usable public key.
pub struct Key {
    pub decoding: DecodingKey,
    /// The `alg` the JWKS pins this key to, if it names one.
    pub alg: Option<Algorithm>,
    pub kind: KeyKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    Ec,
    Ed,
}

impl KeyKind {
    /// Whether a token signed with `alg` can be checked with a key of this kind.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::Ec, ES256 | ES384)
                | (KeyKind::Ed, EdDSA)
        )
    }
}

/// The keys of one JWKS: by `kid`, and those published without one.
#[derive(Default)]
pub struct KeySet {
    pub by_kid: HashMap<String, Key>,
    pub unnamed: Vec<Key>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key for a token's `kid` and `alg`; without a `kid`, the one published key that
    /// fits the algorithm (several would be a guess).
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        let key = match kid {
            Some(kid) => self.by_kid.get(kid)?,
            None => {
                let mut fitting = self
                    .by_kid
                    .values()
                    .chain(&self.unnamed)
                    .filter(|k| k.kind.fits(alg));
                let one = fitting.next()?;
                if fitting.next().is_some() {
                    return None;
                }
                one
            }
        };
        Some(key)
    }

    /// Reads a JWKS document. Keys tollgate cannot use (encryption keys, symmetric keys,
    /// unknown types or curves) are skipped, so one odd key does not cost the others;
    /// a document with no usable key is an error, so the last good keys stay.
    pub fn parse(text: &str) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut set = KeySet::default();
        for raw in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let kind = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => KeyKind::Rsa,
                AlgorithmParameters::EllipticCurve(_) => KeyKind::Ec,
                AlgorithmParameters::OctetKeyPair(_) => KeyKind::Ed,
                // A shared secret published in a JWKS would let anyone who reads it sign.
                AlgorithmParameters::OctetKey(_) => continue,
            };
            let alg = match jwk.common.key_algorithm {
                Some(a) => match Algorithm::from_str(&a.to_string()) {
                    Ok(alg) if kind.fits(alg) => Some(alg),
                    _ => continue,
                },
                None => None,
            };
            let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let key = Key {
                decoding,
                alg,
                kind,
            };
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, key);
                }
                None => set.unnamed.push(key),
            }
        }
        if set.is_empty() {
            return Err("the JWKS has no usable signing key".into());
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_keys_are_skipped_and_none_usable_is_an_error() {
        let doc = r#"{"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed", "use": "sig"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "enc", "use": "enc"},
            {"kty": "RSA", "kid": "pinned", "alg": "ES256", "n": "AQAB", "e": "AQAB"},
            {"kty": "weird", "kid": "x"}
        ]}"#;
        let set = KeySet::parse(doc).unwrap();
        assert_eq!(set.by_kid.keys().collect::<Vec<_>>(), ["ed"]);
        assert!(set.find(Some("ed"), Algorithm::EdDSA).is_some());
        assert!(set.find(None, Algorithm::EdDSA).is_some(), "the one Ed key");
        assert!(set.find(None, Algorithm::RS256).is_none());
        assert!(KeySet::parse(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).is_err());
        assert!(KeySet::parse("<html>").is_err());
    }
}
