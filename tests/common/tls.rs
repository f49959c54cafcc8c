//! A TLS client for tests (rustls, trusting only the test's CA), and the certificate a
//! server presents, for SNI and reload checks.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A client config trusting the CA in `ca_pem`, offering `alpn`.
pub fn client_config(ca_pem: &Path, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("read CA") {
        roots.add(cert.expect("CA pem")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// The first certificate of a PEM file, to compare with what a server presents.
pub fn leaf_der(cert_pem: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(cert_pem)
        .expect("read cert")
        .next()
        .expect("a certificate")
        .expect("pem")
        .to_vec()
}

/// One TLS connection driven by hand.
pub struct TlsConn {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsConn {
    /// Connects and completes the handshake, asking for `sni`.
    pub fn connect(
        addr: SocketAddr,
        sni: &str,
        config: &Arc<rustls::ClientConfig>,
    ) -> Result<TlsConn, String> {
        let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
        let conn =
            rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| e.to_string())?;
        }
        Ok(TlsConn { stream })
    }

    /// The DER of the certificate the server presented.
    pub fn peer_leaf(&self) -> Vec<u8> {
        self.stream
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    pub fn alpn(&self) -> Option<String> {
        self.stream
            .conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// Writes `request` and reads one response with a Content-Length body.
    pub fn exchange(&mut self, request: &[u8]) -> Result<String, String> {
        self.stream.write_all(request).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if super::http::response_complete(&out) {
                        break;
                    }
                }
                Err(e) if out.is_empty() => return Err(e.to_string()),
                Err(_) => break,
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// `GET path` on this connection (kept alive).
    pub fn get(&mut self, host: &str, path: &str) -> Result<String, String> {
        self.exchange(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
    }

    pub fn into_stream(self) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        self.stream
    }
}
