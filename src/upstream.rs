//! Upstream pools: weighted round robin over backends, active HTTP health checks, and the
//! peer (address and timeouts) each proxied request connects to.

use crate::config::split_host_port;
use crate::config::{HealthCheckConfig, UpstreamConfig};
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::HttpHealthCheck;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{discovery, Backend, Backends, LoadBalancer};
use std::collections::BTreeSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// One backend of a pool, with the name operators gave it.
#[derive(Debug, Clone)]
pub struct Member {
    pub backend: Backend,
    /// `host:port` as written in the config, or the resolved `ip:port` when a name
    /// resolved to several addresses.
    pub label: String,
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
                members.push(Member { backend, label });
            }
        }
        let set: BTreeSet<Backend> = members.iter().map(|m| m.backend.clone()).collect();
        let mut balancer =
            LoadBalancer::<RoundRobin>::from_backends(Backends::new(discovery::Static::new(set)));
        if let Some(hc) = &config.health_check {
            balancer.set_health_check(Box::new(http_health_check(name, hc)));
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

    /// The peer a request connects to, carrying this pool's timeouts.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, false, String::new());
        let options = &mut peer.options;
        options.connection_timeout = Some(self.config.connect_timeout);
        options.read_timeout = Some(self.config.read_timeout);
        options.write_timeout = Some(self.config.write_timeout);
        options.idle_timeout = Some(self.config.idle_timeout);
        peer
    }

    /// The configured label of the backend at `addr`, for logs and metrics.
    pub fn label_of(&self, addr: &SocketAddr) -> &str {
        self.members
            .iter()
            .find(|m| m.backend.addr.as_inet() == Some(addr))
            .map(|m| m.label.as_str())
            .unwrap_or("unknown")
    }
}

fn http_health_check(upstream: &str, hc: &HealthCheckConfig) -> HttpHealthCheck {
    let mut check = HttpHealthCheck::new(upstream, false);
    let mut req =
        RequestHeader::build("GET", hc.path.as_bytes(), None).unwrap_or_else(|_| check.req.clone());
    // The validated path is a plain absolute path, so building the header cannot fail;
    // the fallback above keeps the default `/` rather than panicking if it ever did.
    let _ = req.insert_header("Host", upstream);
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
                    address: a.to_string(),
                    weight: *w,
                })
                .collect(),
            health_check: None,
            connect_timeout: Duration::from_millis(100),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
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

    #[test]
    fn unresolvable_names_are_errors() {
        let err = UpstreamPool::build("x", &config(&[("no-such-host.invalid:80", 1)])).unwrap_err();
        assert!(err.to_string().contains("cannot resolve"), "{err}");
    }
}
