//! The proxy's listeners: which listener a connection arrived on, its TLS handshake, and
//! which HTTP application serves it.
//!
//! Pingora listens on every proxy address as plain TCP; [`Edge`] takes each accepted
//! connection, finds its listener by the local address, and
//! - on a TLS listener performs the handshake itself, so it can be cut off after
//!   `http.header_timeout` (Pingora allows 60 s), answer plaintext HTTP sent to the TLS port
//!   with a readable 400, and count the outcome; certificates come from the listener's
//!   [`certs::SniResolver`], which reloads swap underneath;
//! - hands the connection to the HTTP application: the h2c one (prior-knowledge HTTP/2) on a
//!   plaintext listener with `http2: true`, else the HTTP/1.1 one, which still switches to
//!   HTTP/2 when ALPN chose `h2`.

pub mod certs;
pub mod store;

use crate::gateway::SharedGateway;
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The record type byte that starts every TLS handshake (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// HTTP/2's connection preface, which a prior-knowledge h2c client sends first.
const H2_PREFACE_LEN: usize = 24;

const PLAINTEXT_ON_TLS_PORT: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 73\r\nConnection: close\r\n\r\n{\"error\":\"plain_http_to_https_port\",\"detail\":\"this port speaks TLS only\"}";

/// One listening address and how its connections are served.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The address as configured, for logs and metric labels.
    pub label: String,
    pub acceptor: Option<Arc<Acceptor>>,
    /// Prior-knowledge HTTP/2 on a plaintext listener.
    pub h2c: bool,
}

/// Builds a rustls acceptor: TLS 1.2 and 1.3 only, ring's AEAD suites with forward
/// secrecy, certificates by SNI from `resolver`, ALPN `h2` (when enabled) and `http/1.1`,
/// and session tickets so returning clients skip the full handshake.
pub fn acceptor(resolver: Arc<certs::SniResolver>, http2: bool) -> Result<Acceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| format!("the TLS settings are refused: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    // Tickets need a random key; without one (no system randomness) full handshakes still work.
    if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(Acceptor::from_server_config(Arc::new(config)))
}

/// The endpoint a connection that arrived at `local` belongs to: an exact address first,
/// then a wildcard (`0.0.0.0`, `[::]`) on the same port.
pub fn endpoint_index(
    addrs: impl Iterator<Item = SocketAddr> + Clone,
    local: SocketAddr,
) -> Option<usize> {
    addrs.clone().position(|a| a == local).or_else(|| {
        addrs.clone().position(|a| {
            a.port() == local.port() && a.ip().is_unspecified() && (a.is_ipv6() || local.is_ipv4())
        })
    })
}

/// The proxy's `ServerApp`: finds the listener, does TLS, picks the HTTP application.
pub struct Edge<A> {
    endpoints: Vec<Endpoint>,
    http1: Arc<A>,
    h2c: Arc<A>,
    gateway: SharedGateway,
    metrics: Arc<Metrics>,
}

impl<A> Edge<A> {
    /// `http1` serves HTTP/1.1 (and HTTP/2 chosen by ALPN); `h2c` also takes prior-knowledge
    /// HTTP/2 on plaintext.
    pub fn new(
        endpoints: Vec<Endpoint>,
        http1: A,
        h2c: A,
        gateway: SharedGateway,
        metrics: Arc<Metrics>,
    ) -> Self {
        Edge {
            endpoints,
            http1: Arc::new(http1),
            h2c: Arc::new(h2c),
            gateway,
            metrics,
        }
    }

    fn endpoint_of(&self, stream: &Stream) -> Option<&Endpoint> {
        let local = *stream.get_socket_digest()?.local_addr()?.as_inet()?;
        let index = endpoint_index(self.endpoints.iter().map(|e| e.addr), local)?;
        self.endpoints.get(index)
    }

    fn count(&self, endpoint: &Endpoint, result: &str) {
        self.metrics
            .tls_handshakes
            .with_label_values(&[endpoint.label.as_str(), result])
            .inc();
    }

    /// The TLS handshake within `deadline`, counted and (at debug level) logged; `None`
    /// when the connection ends there.
    async fn accept_tls(
        &self,
        endpoint: &Endpoint,
        acceptor: &Acceptor,
        stream: Stream,
        deadline: std::time::Duration,
    ) -> Option<Stream> {
        let outcome = tokio::time::timeout(deadline, tls_handshake(acceptor, stream))
            .await
            .unwrap_or(Err(Refused::Timeout));
        let listener = endpoint.label.as_str();
        match outcome {
            Ok(stream) => {
                self.count(endpoint, "ok");
                return Some(stream);
            }
            Err(Refused::Timeout) => {
                self.count(endpoint, "timeout");
                tracing::debug!(
                    listener,
                    ?deadline,
                    "TLS handshake not finished in time; closed"
                );
            }
            Err(Refused::Plaintext) => {
                self.count(endpoint, "plaintext");
                tracing::debug!(listener, "plaintext HTTP on a TLS port; answered 400");
            }
            Err(Refused::Failed(e)) => {
                self.count(endpoint, "failed");
                tracing::debug!(listener, "TLS handshake failed: {e}");
            }
        }
        None
    }
}

/// Why a connection ended before HTTP.
enum Refused {
    Timeout,
    Plaintext,
    Failed(String),
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Edge<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Pingora only accepts on the addresses it was given, so an unknown local address
        // cannot happen; serve it as plain HTTP/1.1 rather than drop it if it ever does.
        let Some(endpoint) = self.endpoint_of(&stream) else {
            return self.http1.process_new(stream, shutdown).await;
        };
        let deadline = self.gateway.load().config.http.header_timeout;
        match &endpoint.acceptor {
            Some(acceptor) => {
                let stream = self
                    .accept_tls(endpoint, acceptor, stream, deadline)
                    .await?;
                self.http1.process_new(stream, shutdown).await
            }
            None if endpoint.h2c => {
                // Pingora reads the HTTP/2 preface with no deadline of its own; wait for it
                // (or for as many bytes of an HTTP/1.1 request) no longer than a header.
                let mut stream = stream;
                let mut preface = [0u8; H2_PREFACE_LEN];
                match tokio::time::timeout(deadline, stream.try_peek(&mut preface)).await {
                    Ok(Ok(_)) => self.h2c.process_new(stream, shutdown).await,
                    Ok(Err(_)) | Err(_) => None,
                }
            }
            None => self.http1.process_new(stream, shutdown).await,
        }
    }

    async fn cleanup(&self) {
        self.http1.cleanup().await;
        self.h2c.cleanup().await;
    }
}

/// Peeks at the first byte (a ClientHello starts with 0x16; an HTTP method with a letter),
/// then runs the rustls handshake on the TCP stream underneath.
async fn tls_handshake(acceptor: &Acceptor, mut stream: Stream) -> Result<Stream, Refused> {
    let mut first = [0u8; 1];
    stream
        .try_peek(&mut first)
        .await
        .map_err(|e| Refused::Failed(e.to_string()))?;
    if first[0] != TLS_HANDSHAKE_RECORD {
        if first[0].is_ascii_alphabetic() {
            let _ = stream.write_all(PLAINTEXT_ON_TLS_PORT).await;
            let _ = stream.flush().await;
            return Err(Refused::Plaintext);
        }
        return Err(Refused::Failed(format!(
            "the first byte {:#04x} does not start a TLS handshake",
            first[0]
        )));
    }
    let l4 = stream
        .into_any()
        .downcast::<L4Stream>()
        .map_err(|_| Refused::Failed("the connection is not a TCP stream".into()))?;
    let tls = acceptor
        .tls_handshake(*l4)
        .await
        .map_err(|e| Refused::Failed(e.to_string()))?;
    Ok(Box::new(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_connection_finds_its_listener_by_local_address() {
        let listeners = addrs(&[
            "0.0.0.0:8443",
            "127.0.0.1:8000",
            "0.0.0.0:8000",
            "[::]:9000",
        ]);
        let at = |local: &str| endpoint_index(listeners.iter().copied(), local.parse().unwrap());
        assert_eq!(at("127.0.0.1:8443"), Some(0));
        assert_eq!(at("127.0.0.1:8000"), Some(1));
        assert_eq!(at("10.0.0.5:8000"), Some(2));
        assert_eq!(at("[::1]:9000"), Some(3));
        assert_eq!(at("10.0.0.5:9000"), Some(3));
        assert_eq!(at("127.0.0.1:1"), None);
    }

    #[test]
    fn the_plaintext_answer_has_the_right_length() {
        let text = std::str::from_utf8(PLAINTEXT_ON_TLS_PORT).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
