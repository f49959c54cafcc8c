//! Upstream pools: weighted round robin over backends, active HTTP health checks, and the
//! peer (address, transport and timeouts) each proxied request connects to.
//!
//! A backend's transport is plain HTTP/1.1, TLS (SNI, CA file, verification) and/or HTTP/2
//! (ALPN over TLS, prior knowledge without). Health checks use the same transport.

use crate::config::split_host_port;
use crate::config::{BackendConfig, HealthCheckConfig, UpstreamConfig};
use async_trait::async_trait;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::tls::CaType;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{discovery, Backend, Backends, LoadBalancer};
use std::collections::BTreeSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// One backend of a pool, with the name operators gave it.
#[derive(Debug, Clone)]
pub struct Member {
    pub backend: Backend,
    /// `host:port` as written in the config, or the resolved `ip:port` when a name
    /// resolved to several addresses.
    pub label: String,
    pub transport: Arc<Transport>,
}

/// How tollgate speaks to one backend.
#[derive(Clone)]
pub struct Transport {
    pub tls: bool,
    /// The name sent in SNI and verified; the address's host unless `sni` is set.
    pub sni: String,
    pub verify: bool,
    /// The backend's CAs from `ca_file`; `None` trusts the system's store.
    pub ca: Option<Arc<CaType>>,
    pub http2: bool,
    /// Separates pooled connections whose settings Pingora's pool key leaves out: 0.9.1
    /// keys a pooled connection by address, SNI and verification flags but not by CA, so
    /// two backends at one address that differ only in `ca_file` would otherwise share a
    /// connection verified against the other's CA.
    pub pool_key: u64,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("tls", &self.tls)
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("http2", &self.http2)
            .finish()
    }
}

impl Transport {
    fn of(spec: &BackendConfig, host: &str) -> Result<Transport, String> {
        let ca = match &spec.ca_file {
            Some(path) if spec.tls => Some(load_ca(path)?),
            _ => None,
        };
        let mut key = std::collections::hash_map::DefaultHasher::new();
        spec.tls.hash(&mut key);
        spec.http2.hash(&mut key);
        if let Some(ca) = &ca {
            for cert in ca.iter() {
                cert.borrow_raw_cert().hash(&mut key);
            }
        }
        Ok(Transport {
            tls: spec.tls,
            sni: spec.sni.clone().unwrap_or_else(|| host.to_string()),
            verify: spec.verify,
            ca,
            http2: spec.http2,
            pool_key: key.finish(),
        })
    }

    /// Applies this transport to a peer (a proxied request's, or a health check's).
    fn configure(&self, peer: &mut HttpPeer) {
        peer.scheme = pingora_core::upstreams::peer::Scheme::from_tls_bool(self.tls);
        peer.sni.clone_from(&self.sni);
        peer.group_key = self.pool_key;
        let options = &mut peer.options;
        options.verify_cert = self.verify;
        options.verify_hostname = self.verify;
        options.ca = self.ca.clone();
        if self.http2 {
            options.alpn = ALPN::H2;
            // Multiplex: one connection carries up to this many requests at once.
            options.max_h2_streams = 100;
        } else {
            options.alpn = ALPN::H1;
        }
    }
}

/// The CA certificates in a PEM file.
fn load_ca(path: &str) -> Result<Arc<CaType>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let pem = std::fs::read(path).map_err(|e| format!("cannot read ca_file {path}: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("ca_file {path} is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("ca_file {path} holds no certificate"));
    }
    let mut wrapped = Vec::with_capacity(certs.len());
    for cert in certs {
        // Pingora's wrapper panics on DER it cannot parse; check it first.
        X509Certificate::from_der(cert.as_ref())
            .map_err(|e| format!("ca_file {path} holds a certificate that does not parse: {e}"))?;
        wrapped.push(WrappedX509::new(cert.to_vec(), parse_x509));
    }
    Ok(Arc::from(wrapped.into_boxed_slice()))
}

pub struct UpstreamPool {
    pub name: String,
    /// The definition this pool was built from; a reload keeps the pool (and its health
    /// state) when this is unchanged.
    pub config: UpstreamConfig,
    balancer: LoadBalancer<RoundRobin>,
    members: Vec<Member>,
}

impl fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("name", &self.name)
            .field("members", &self.members)
            .finish()
    }
}

#[derive(Debug)]
pub struct BuildError {
    pub upstream: String,
    pub backend_index: usize,
    pub message: String,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upstreams.{}.backends[{}]: {}",
            self.upstream, self.backend_index, self.message
        )
    }
}

/// The most iterations a selection may take; the fallback walk is pseudo-random, so this
/// bounds the search while still visiting every member of any realistic pool.
const MAX_SELECT_ITERATIONS: usize = 256;

impl UpstreamPool {
    /// Resolves the backends (blocking DNS for names) and builds the pool.
    pub fn build(name: &str, config: &UpstreamConfig) -> Result<Self, BuildError> {
        let mut members = Vec::new();
        for (i, spec) in config.backends.iter().enumerate() {
            let fail = |message: String| BuildError {
                upstream: name.to_string(),
                backend_index: i,
                message,
            };
            let (host, port) = split_host_port(&spec.address).map_err(fail)?;
            let transport = Arc::new(Transport::of(spec, host).map_err(fail)?);
            let resolved: Vec<SocketAddr> = (host, port)
                .to_socket_addrs()
                .map_err(|e| fail(format!("cannot resolve `{}`: {e}", spec.address)))?
                .collect();
            if resolved.is_empty() {
                return Err(fail(format!("`{}` resolved to no address", spec.address)));
            }
            let single = resolved.len() == 1;
            for addr in resolved {
                let label = if single {
                    spec.address.clone()
                } else {
                    addr.to_string()
                };
                let backend = Backend {
                    addr: PeerAddr::Inet(addr),
                    weight: spec.weight,
                    ext: Default::default(),
                };
                members.push(Member {
                    backend,
                    label,
                    transport: transport.clone(),
                });
            }
        }
        let set: BTreeSet<Backend> = members.iter().map(|m| m.backend.clone()).collect();
        let mut balancer =
            LoadBalancer::<RoundRobin>::from_backends(Backends::new(discovery::Static::new(set)));
        if let Some(hc) = &config.health_check {
            balancer.set_health_check(Box::new(TransportHealthCheck::new(name, hc, &members)));
        }
        // Static discovery never blocks; this fills the selector before the first request.
        futures_lite_block_on(balancer.update()).map_err(|e| BuildError {
            upstream: name.to_string(),
            backend_index: 0,
            message: format!("cannot build the balancer: {e}"),
        })?;
        Ok(UpstreamPool {
            name: name.to_string(),
            config: config.clone(),
            balancer,
            members,
        })
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn health_check_interval(&self) -> Option<Duration> {
        self.config.health_check.as_ref().map(|hc| hc.interval)
    }

    /// Whether the health check currently lets `backend` take traffic.
    pub fn is_up(&self, backend: &Backend) -> bool {
        self.balancer.backends().ready(backend)
    }

    pub async fn run_health_check(&self) {
        self.balancer.backends().run_health_check(true).await;
    }

    /// Picks the next backend not in `tried`: a healthy one if there is one, otherwise any,
    /// because a health check can be stale and trying beats refusing outright.
    pub fn select(&self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let untried = |b: &Backend| match &b.addr {
            PeerAddr::Inet(a) => !tried.contains(a),
            _ => false,
        };
        self.balancer
            .select_with(b"", MAX_SELECT_ITERATIONS, |b, healthy| {
                healthy && untried(b)
            })
            .or_else(|| {
                self.balancer
                    .select_with(b"", MAX_SELECT_ITERATIONS, |b, _| untried(b))
            })
            .and_then(|b| b.addr.as_inet().copied())
    }

    /// How many distinct addresses a request may try before giving up.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// The peer a request connects to, carrying its backend's transport and this pool's
    /// timeouts. Built per request: cloning a peer prepared per backend measured 110
    /// instructions more than this (BENCHMARKS.md, *The proxy path*).
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, false, String::new());
        if let Some(member) = self.member_at(&addr) {
            member.transport.configure(&mut peer);
        }
        let tuning = crate::tuning::current();
        if peer.options.alpn == ALPN::H1 && !tuning.pingora_hop_by_hop {
            // `upstream_request_filter` strips hop-by-hop fields itself, the same way for
            // less (`proxy/hop_by_hop.rs`). HTTP/2 peers keep Pingora's strip.
            peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
        }
        if !tuning.peer_timeouts {
            return peer;
        }
        let options = &mut peer.options;
        options.connection_timeout = Some(self.config.connect_timeout);
        options.read_timeout = Some(self.config.read_timeout);
        options.write_timeout = Some(self.config.write_timeout);
        // Unset, a pooled connection arms no timer: the pool is bounded by its LRU, and a
        // backend's close still evicts the connection (Pingora watches the idle socket).
        options.idle_timeout = self
            .config
            .idle_timeout
            .or_else(|| tuning.pool_idle_timeout.map(Duration::from_secs));
        peer
    }

    fn member_at(&self, addr: &SocketAddr) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.backend.addr.as_inet() == Some(addr))
    }

    /// The configured label of the backend at `addr`, for logs and metrics.
    pub fn label_of(&self, addr: &SocketAddr) -> &str {
        self.member_at(addr)
            .map(|m| m.label.as_str())
            .unwrap_or("unknown")
    }
}

/// Pingora's HTTP health check, one per backend so each is checked over its own transport
/// (TLS, SNI, CA, HTTP/2) exactly as requests reach it.
struct TransportHealthCheck {
    checks: Vec<(SocketAddr, HttpHealthCheck)>,
    healthy_threshold: usize,
    unhealthy_threshold: usize,
}

impl TransportHealthCheck {
    fn new(upstream: &str, hc: &HealthCheckConfig, members: &[Member]) -> Self {
        let checks = members
            .iter()
            .filter_map(|m| {
                let addr = *m.backend.addr.as_inet()?;
                let mut check = http_health_check(upstream, hc, m.transport.http2);
                m.transport.configure(&mut check.peer_template);
                Some((addr, check))
            })
            .collect();
        TransportHealthCheck {
            checks,
            healthy_threshold: hc.healthy_threshold,
            unhealthy_threshold: hc.unhealthy_threshold,
        }
    }
}

#[async_trait]
impl HealthCheck for TransportHealthCheck {
    async fn check(&self, target: &Backend) -> pingora_core::Result<()> {
        let addr = target.addr.as_inet();
        match self.checks.iter().find(|(a, _)| Some(a) == addr) {
            Some((_, check)) => check.check(target).await,
            None => pingora_error::Error::e_explain(
                pingora_error::ErrorType::InternalError,
                "no health check for this backend",
            ),
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy_threshold
        } else {
            self.unhealthy_threshold
        }
    }
}

fn http_health_check(upstream: &str, hc: &HealthCheckConfig, http2: bool) -> HttpHealthCheck {
    let mut check = HttpHealthCheck::new(upstream, false);
    // Over HTTP/2 the host travels as `:authority`, taken from the target: a `Host` header
    // as well is a duplicate that servers such as nginx refuse with 400.
    let mut req =
        RequestHeader::build("GET", hc.path.as_bytes(), None).unwrap_or_else(|_| check.req.clone());
    // The validated path is a plain absolute path, so building the header cannot fail;
    // the fallback above keeps the default `/` rather than panicking if it ever did.
    match format!("https://{upstream}{}", hc.path).parse::<http::Uri>() {
        Ok(uri) if http2 => req.set_uri(uri),
        _ => {
            let _ = req.insert_header("Host", upstream);
        }
    }
    let _ = req.insert_header("User-Agent", "tollgate-health-check");
    check.req = req;
    check.peer_template.options.connection_timeout = Some(hc.timeout);
    check.peer_template.options.read_timeout = Some(hc.timeout);
    check.consecutive_success = hc.healthy_threshold;
    check.consecutive_failure = hc.unhealthy_threshold;
    check
}

/// Polls a future that is known not to wait (static discovery) to completion.
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    fn config(backends: &[(&str, usize)]) -> UpstreamConfig {
        UpstreamConfig {
            backends: backends
                .iter()
                .map(|(a, w)| BackendConfig {
                    weight: *w,
                    ..BackendConfig::plain(a)
                })
                .collect(),
            health_check: None,
            connect_timeout: Duration::from_millis(100),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            idle_timeout: None,
        }
    }

    #[test]
    fn weighted_round_robin_follows_weights() {
        let pool =
            UpstreamPool::build("x", &config(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 3)])).unwrap();
        let mut counts = [0usize; 3];
        for _ in 0..400 {
            let a = pool.select(&[]).unwrap();
            counts[a.port() as usize] += 1;
        }
        assert_eq!(counts[1], 100);
        assert_eq!(counts[2], 300);
    }

    #[test]
    fn select_skips_tried_backends_and_ends() {
        let pool =
            UpstreamPool::build("x", &config(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)])).unwrap();
        let first = pool.select(&[]).unwrap();
        let second = pool.select(&[first]).unwrap();
        assert_ne!(first, second);
        assert_eq!(pool.select(&[first, second]), None);
    }

    #[test]
    fn names_resolve_and_keep_their_label() {
        let pool = UpstreamPool::build("x", &config(&[("localhost:8080", 1)])).unwrap();
        assert!(pool
            .members()
            .iter()
            .all(|m| m.backend.addr.as_inet().unwrap().port() == 8080));
        let addr = *pool.members()[0].backend.addr.as_inet().unwrap();
        let label = pool.label_of(&addr);
        assert!(
            label == "localhost:8080" || label.ends_with(":8080"),
            "{label}"
        );
    }

    /// HTTP/1 peers leave hop-by-hop fields to `upstream_request_filter`
    /// (`proxy/hop_by_hop.rs`); HTTP/2 peers keep Pingora's strip, which that filter does not
    /// replace.
    #[test]
    fn only_http1_peers_leave_the_hop_by_hop_strip_to_tollgate() {
        let mut upstream = config(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)]);
        upstream.backends[1].http2 = true;
        let pool = UpstreamPool::build("x", &upstream).unwrap();
        let policy = |port: u16| {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            pool.peer(addr).options.http_upstream_request_policy
        };
        assert_eq!(policy(1), HttpUpstreamRequestPolicy::preserve());
        assert_eq!(policy(2), HttpUpstreamRequestPolicy::default());
    }

    #[test]
    fn unresolvable_names_are_errors() {
        let err = UpstreamPool::build("x", &config(&[("no-such-host.invalid:80", 1)])).unwrap_err();
        assert!(err.to_string().contains("cannot resolve"), "{err}");
    }
}
