//! The gRPC listener: h2c, or TLS with the listener's certificates (ALPN h2), served by
//! tonic on a background service of its own.

use super::answer::{should_rate_limit, Invalid};
use super::metrics::RlsMetrics;
use super::pb::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use super::pb::{RateLimitRequest, RateLimitResponse};
use crate::config::rls::RlsConfig;
use crate::gateway::SharedGateway;
use crate::listener::certs::{parse_pair, CertTable, SniResolver};
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use tonic::codegen::Service as _;
use tonic::{Request, Response, Status};

/// The `RateLimitService` implementation: each call answers under the gateway current
/// when it arrives.
#[derive(Clone)]
pub struct Service {
    gateway: SharedGateway,
    metrics: Arc<Metrics>,
    rls_metrics: Arc<RlsMetrics>,
}

impl Service {
    pub fn new(gateway: SharedGateway, metrics: Arc<Metrics>) -> Service {
        let rls_metrics = Arc::new(RlsMetrics::new(metrics.registry()));
        Service {
            gateway,
            metrics,
            rls_metrics,
        }
    }
}

#[async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let gateway = self.gateway.load_full();
        let count = |code: &str| self.rls_metrics.requests.with_label_values(&[code]).inc();
        let Some(table) = gateway.rls.as_deref() else {
            count("unavailable");
            return Err(Status::unavailable(
                "the rate limit service has no configuration (`rls` was removed)",
            ));
        };
        let request = request.into_inner();
        match should_rate_limit(
            table,
            gateway.redis.as_deref(),
            &self.rls_metrics,
            &self.metrics,
            &request,
        )
        .await
        {
            Ok(response) => {
                count(if response.overall_code == 1 {
                    "ok"
                } else {
                    "over_limit"
                });
                Ok(Response::new(response))
            }
            Err(Invalid(why)) => {
                count("invalid_argument");
                Err(Status::invalid_argument(why))
            }
        }
    }
}

/// The background service that owns the listener.
pub struct RlsServer {
    config: RlsConfig,
    service: Service,
}

impl RlsServer {
    pub fn new(config: RlsConfig, gateway: SharedGateway, metrics: Arc<Metrics>) -> RlsServer {
        RlsServer {
            config,
            service: Service::new(gateway, metrics),
        }
    }
}

/// A rustls acceptor for the listener's certificates, offering only h2 (gRPC).
pub fn tls_acceptor(config: &RlsConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let mut loaded = Vec::with_capacity(tls.certs.len());
    for pair in &tls.certs {
        let cert = std::fs::read(&pair.cert).map_err(|e| format!("rls.tls: {}: {e}", pair.cert))?;
        let key = std::fs::read(&pair.key).map_err(|e| format!("rls.tls: {}: {e}", pair.key))?;
        loaded.push(
            parse_pair(&cert, &key).map_err(|(_, e)| format!("rls.tls: {}: {e}", pair.cert))?,
        );
    }
    let table = CertTable::of(&loaded).ok_or("rls.tls: no certificate")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| format!("rls.tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(table)));
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))))
}

#[async_trait]
impl BackgroundService for RlsServer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match tokio::net::TcpListener::bind(&self.config.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("rls: cannot listen on {}: {e}", self.config.listen);
                return;
            }
        };
        let acceptor = match tls_acceptor(&self.config) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("rls: {e}");
                return;
            }
        };
        tracing::info!(
            listen = %self.config.listen,
            tls = acceptor.is_some(),
            "rate limit service (gRPC) listening"
        );
        let service = RateLimitServiceServer::new(self.service.clone());
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.changed() => return,
            };
            let Ok((stream, _)) = accepted else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (service, acceptor) = (service.clone(), acceptor.clone());
            // Each connection (and its handshake) on a task of its own, so a slow client
            // holds up no other.
            tokio::spawn(async move {
                match acceptor {
                    None => serve(stream, service).await,
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            serve(tls, service).await;
                        }
                    }
                }
            });
        }
    }
}

/// Serves gRPC calls on one connection until the client closes it.
async fn serve<IO>(io: IO, service: RateLimitServiceServer<Service>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let call = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let mut service = service.clone();
        async move { service.call(request.map(tonic::body::Body::new)).await }
    });
    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(hyper_util::rt::TokioIo::new(io), call)
        .await;
}
