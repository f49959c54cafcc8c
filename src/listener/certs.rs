//! Server certificates: a cert/key pair loaded from PEM files, the names it serves, and the
//! table a TLS listener picks from by SNI during the handshake.
//!
//! A table is immutable; reloading builds a new one and swaps it in ([`SniResolver`]), so a
//! handshake in progress finishes with the certificate it started with and established
//! connections are never touched.

use arc_swap::ArcSwap;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// One certificate ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names from the subject alternative names (the common name when there are
    /// none), lower case; `*.example.com` for wildcards.
    pub names: Vec<String>,
    /// The end of the leaf's validity, in Unix seconds.
    pub not_after: i64,
}

/// Which file of a pair a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
}

/// Parses a certificate chain and its private key from PEM text.
pub fn parse_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<LoadedCert, (Part, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| (Part::Cert, format!("not a PEM certificate chain ({e})")))?;
    let Some(leaf) = chain.first() else {
        return Err((Part::Cert, "holds no certificate".into()));
    };
    let (names, not_after) = describe(leaf).map_err(|e| (Part::Cert, e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        (
            Part::Key,
            format!("holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })?;
    let certified =
        CertifiedKey::from_der(chain, key, &default_provider()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => (
                Part::Key,
                "does not belong to the certificate (the public keys differ)".to_string(),
            ),
            other => (Part::Key, format!("cannot be used: {other}")),
        })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// The names a leaf certificate serves and the end of its validity.
pub fn describe(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| format!("the first certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        // Old-style certificates carry their name only in the subject's common name.
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(|cn| cn.to_ascii_lowercase()),
        );
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// The certificates of one listener, by the names they serve. `K` is the certificate
/// (generic so the choosing can be tested without keys).
#[derive(Debug)]
pub struct CertTable<K = Arc<CertifiedKey>> {
    exact: HashMap<String, K>,
    /// `*.example.com` is kept as `example.com`.
    wildcard: HashMap<String, K>,
    default: K,
}

impl CertTable {
    /// The table of loaded certificates; `None` for an empty list.
    pub fn of(certs: &[LoadedCert]) -> Option<CertTable> {
        CertTable::new(certs.iter().map(|c| (c.names.as_slice(), c.key.clone())))
    }
}

impl<K: Clone> CertTable<K> {
    /// The first certificate is the default; when two claim a name the first listed wins.
    /// `None` for an empty list.
    pub fn new<'a>(certs: impl IntoIterator<Item = (&'a [String], K)>) -> Option<CertTable<K>> {
        let mut default = None;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (names, key) in certs {
            default.get_or_insert_with(|| key.clone());
            for name in names {
                let slot = match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(name.clone()),
                };
                slot.or_insert_with(|| key.clone());
            }
        }
        Some(CertTable {
            exact,
            wildcard,
            default: default?,
        })
    }

    /// The certificate for a client asking for `sni`: an exact name, then a wildcard over
    /// its parent domain (one label, as certificates define it), then the default.
    pub fn pick(&self, sni: Option<&str>) -> K {
        let Some(sni) = sni else {
            return self.default.clone();
        };
        let lower;
        let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = sni.to_ascii_lowercase();
            lower.as_str()
        } else {
            sni
        };
        self.exact
            .get(sni)
            .or_else(|| {
                sni.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent))
            })
            .unwrap_or(&self.default)
            .clone()
    }
}

/// The handshake's view of a listener's certificates; reloads swap the table underneath.
#[derive(Debug)]
pub struct SniResolver {
    table: ArcSwap<CertTable>,
}

impl SniResolver {
    pub fn new(table: CertTable) -> SniResolver {
        SniResolver {
            table: ArcSwap::from_pointee(table),
        }
    }

    pub fn replace(&self, table: CertTable) {
        self.table.store(Arc::new(table));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.table.load().pick(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(certs: &[&[&str]]) -> CertTable<usize> {
        let names: Vec<Vec<String>> = certs
            .iter()
            .map(|n| n.iter().map(|s| s.to_string()).collect())
            .collect();
        CertTable::new(names.iter().enumerate().map(|(i, n)| (n.as_slice(), i))).unwrap()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first_certificate() {
        let t = table(&[
            &["default.test"],
            &["api.example.com"],
            &["*.example.com", "example.com"],
        ]);
        assert_eq!(t.pick(Some("api.example.com")), 1);
        assert_eq!(t.pick(Some("API.Example.com")), 1);
        assert_eq!(t.pick(Some("www.example.com")), 2);
        assert_eq!(t.pick(Some("example.com")), 2);
        // A certificate wildcard covers one label only.
        assert_eq!(t.pick(Some("a.b.example.com")), 0);
        assert_eq!(t.pick(Some("other.test")), 0);
        assert_eq!(t.pick(None), 0);
    }

    #[test]
    fn the_first_certificate_listed_keeps_a_shared_name() {
        let t = table(&[&["a.test"], &["b.test", "a.test"]]);
        assert_eq!(t.pick(Some("a.test")), 0);
        assert_eq!(t.pick(Some("b.test")), 1);
    }

    #[test]
    fn broken_pem_is_a_clear_error() {
        let err = parse_pair(b"not pem", b"").unwrap_err();
        assert_eq!(err.0, Part::Cert);
        assert!(err.1.contains("no certificate"), "{}", err.1);
        assert!(CertTable::of(&[]).is_none());
    }
}
