//! Assembling and running the Pingora server: the proxy service, the admin service and the
//! background tasks, with process settings taken from the config.

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::config::{self, Config};
use crate::decisions::drain::DecisionDrain;
use crate::decisions::DecisionHub;
use crate::gateway::{Gateway, SharedGateway};
use crate::header_deadline::HeaderDeadline;
use crate::health::HealthChecker;
use crate::lifecycle::{self, InFlight};
use crate::limit::sync::LimitSync;
use crate::listener::store::CertStore;
use crate::listener::{self, Edge, Endpoint};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::{ConfigWatcher, Reloader};
use crate::store::service::StoreService;
use crate::store::Store;
use crate::tuning::Tuning;
use arc_swap::ArcSwap;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Process options from the command line (Pingora's own flags that operators use).
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// Fork into the background.
    pub daemon: bool,
    /// Take the listening sockets over from a running process (graceful upgrade).
    pub upgrade: bool,
}

#[derive(Debug)]
pub enum StartError {
    Config(config::LoadError),
    Build(crate::gateway::BuildFailure),
    Listen {
        address: String,
        source: std::io::Error,
    },
    AccessLog {
        target: String,
        source: std::io::Error,
    },
    Tls(String),
    Store(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Build(e) => write!(f, "{e}"),
            StartError::Listen { address, source } => {
                write!(f, "cannot listen on {address}: {source}")
            }
            StartError::AccessLog { target, source } => {
                write!(f, "cannot open the access log {target}: {source}")
            }
            StartError::Tls(e) => write!(f, "{e}"),
            StartError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Everything `run` needs, prepared before any socket is handed to Pingora so that a bad
/// config or a taken port fails with a clear message instead of a panic in a worker.
pub struct Prepared {
    pub config_path: PathBuf,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub decisions: Arc<DecisionHub>,
    pub gateway: SharedGateway,
    pub access_log: Option<Arc<AccessLog>>,
    /// Every TLS listener's certificates, loaded before any socket is opened.
    pub certs: Arc<CertStore>,
    pub endpoints: Vec<Endpoint>,
    pub store: Arc<Store>,
}

pub fn prepare(config_path: &Path, options: &ProcessOptions) -> Result<Prepared, StartError> {
    let loaded = config::load(config_path).map_err(StartError::Config)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let config = loaded.config;
    let metrics = Arc::new(Metrics::new());
    let text = std::fs::read_to_string(config_path).map_err(|source| {
        StartError::Config(config::LoadError::Read {
            path: config_path.to_path_buf(),
            source,
        })
    })?;
    let certs = CertStore::load(&config, config_path, &text, metrics.clone())
        .map_err(|errors| StartError::Config(config::LoadError::Invalid(errors)))?;
    let decisions = Arc::new(DecisionHub::new(&metrics));
    let store = Arc::new(
        Store::new(&config.store, config_path, metrics.clone()).map_err(StartError::Store)?,
    );
    store.load_at_start();
    // The file's config with the store's runtime policies; if they no longer fit the file,
    // the file alone, said loudly (the config watcher retries on the next change).
    let running =
        crate::reload::with_runtime_policies(&config, &store).unwrap_or_else(|problems| {
            tracing::error!(
                "the runtime policies in the store do not fit {}; starting without them:",
                config_path.display()
            );
            for p in problems {
                tracing::error!("  {}: {}", p.path, p.message);
            }
            config.clone()
        });
    let mut gateway =
        Gateway::build(running, None, &metrics, &decisions).map_err(StartError::Build)?;
    gateway.store = Some(store.clone());
    if !options.upgrade {
        // During an upgrade the old process still holds the ports; they arrive over the
        // upgrade socket instead.
        let addresses = config.listen.iter().map(|l| &l.address);
        let rls = config.rls.iter().map(|r| &r.listen);
        for address in addresses.chain([&config.admin.listen]).chain(rls) {
            TcpListener::bind(address).map_err(|source| StartError::Listen {
                address: address.clone(),
                source,
            })?;
        }
    }
    let access_log = match &config.log.access_log {
        Some(target) => Some(Arc::new(
            AccessLog::open(target, metrics.access_log_dropped.clone()).map_err(|source| {
                StartError::AccessLog {
                    target: target.clone(),
                    source,
                }
            })?,
        )),
        None => None,
    };
    let endpoints = endpoints(&config, &certs)?;
    Ok(Prepared {
        config_path: config_path.to_path_buf(),
        config,
        metrics,
        decisions,
        gateway: Arc::new(ArcSwap::from_pointee(gateway)),
        access_log,
        endpoints,
        certs: Arc::new(certs),
        store,
    })
}

/// Each proxy listener with its TLS acceptor (built from the loaded certificates).
fn endpoints(config: &Config, certs: &CertStore) -> Result<Vec<Endpoint>, StartError> {
    let mut endpoints = Vec::with_capacity(config.listen.len());
    for (index, listen) in config.listen.iter().enumerate() {
        let Ok(addr) = listen.address.parse() else {
            continue; // validation refuses it first
        };
        let acceptor = match certs.resolver(index) {
            Some(resolver) => Some(Arc::new(
                listener::acceptor(resolver, listen.http2_enabled())
                    .map_err(|e| StartError::Tls(format!("listener {}: {e}", listen.address)))?,
            )),
            None => None,
        };
        endpoints.push(Endpoint {
            addr,
            label: listen.address.clone(),
            acceptor,
            h2c: listen.tls.is_none() && listen.http2_enabled(),
        });
    }
    Ok(endpoints)
}

fn server_conf(config: &Config, tuning: &Tuning) -> ServerConf {
    let server = &config.server;
    ServerConf {
        threads: config.threads,
        work_stealing: tuning.work_stealing,
        upstream_keepalive_pool_size: tuning.keepalive_pool,
        pid_file: server.pid_file.clone(),
        upgrade_sock: server.upgrade_sock.clone(),
        error_log: server.error_log.clone(),
        // Pingora counts in whole seconds; round up so a 1500ms grace is not cut to 1s.
        grace_period_seconds: Some(server.grace_period.as_millis().div_ceil(1000) as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// Runs the proxy until a signal stops it. Does not return while the server runs.
pub fn run(prepared: Prepared, options: &ProcessOptions) {
    let Prepared {
        config_path,
        config,
        metrics,
        decisions,
        gateway,
        access_log,
        certs,
        endpoints,
        store,
    } = prepared;
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        ..Opt::default()
    };
    let tuning = Tuning::from_env();
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config, &tuning));
    server.bootstrap();

    let in_flight = InFlight::new(metrics.requests_in_flight.clone());
    let proxy = Proxy::new(
        gateway.clone(),
        metrics.clone(),
        access_log.clone(),
        in_flight.clone(),
        decisions.clone(),
        tuning.downstream_modules,
    );
    let http_app = |h2c: bool| {
        let mut app = pingora_proxy::http_proxy(&server.configuration, proxy.clone());
        let mut options = pingora_core::apps::HttpServerOptions::default();
        options.h2c = h2c;
        // An HTTP/2 connection with no stream open is idle, like a kept-alive HTTP/1.1 one.
        options.h2_idle_timeout = Some(config.http.keepalive_timeout);
        app.server_options = Some(options);
        HeaderDeadline::new(app, gateway.clone())
    };
    let edge = Edge::new(
        endpoints,
        http_app(false),
        http_app(true),
        gateway.clone(),
        metrics.clone(),
    );
    let mut proxy_service = Service::new("tollgate proxy".to_string(), edge);
    for listen in &config.listen {
        let mut endpoint = pingora_core::listeners::ListenerConfig::tcp(&listen.address);
        if let Some(read) = tuning.l4_read_buffer {
            endpoint = endpoint.l4_buffer(
                pingora_core::protocols::l4::stream::L4BufferSettings::default().read(read),
            );
        }
        proxy_service.add_listener(endpoint);
    }
    proxy_service.threads = Some(config.threads);

    let reloader = Arc::new(Reloader::new(
        &config_path,
        config.clone(),
        gateway.clone(),
        metrics.clone(),
        decisions.clone(),
        certs.clone(),
        store.clone(),
    ));
    let mut admin_service = Service::new(
        "tollgate admin".to_string(),
        Admin::new(
            gateway.clone(),
            metrics.clone(),
            decisions.clone(),
            reloader.clone(),
        ),
    );
    admin_service.add_tcp(&config.admin.listen);
    admin_service.threads = Some(1);

    let health = background_service("health checks", HealthChecker::new(gateway.clone()));
    let limit_sync = LimitSync::new(gateway.clone());
    let limits_flushed = limit_sync.flushed();
    let limit_sync = background_service("rate limit sync", limit_sync);

    if let Some(rls) = &config.rls {
        server.add_service(background_service(
            "rate limit service",
            crate::rls::RlsServer::new(rls.clone(), gateway.clone(), metrics.clone()),
        ));
    }
    server.add_service(proxy_service);
    server.add_service(admin_service);
    server.add_service(health);
    server.add_service(limit_sync);
    server.add_service(background_service(
        "config watcher",
        ConfigWatcher::new(reloader),
    ));
    server.add_service(background_service(
        "control-plane store",
        StoreService::new(store, gateway.clone()),
    ));
    server.add_service(background_service(
        "decisions",
        DecisionDrain::new(gateway.clone(), decisions.clone()),
    ));

    tracing::info!(
        config = %config_path.display(),
        listen = ?config.listen.iter().map(|l| l.address.as_str()).collect::<Vec<_>>(),
        admin = %config.admin.listen,
        threads = config.threads,
        ?tuning,
        "tollgate starting"
    );
    lifecycle::exit_when_drained(server.watch_execution_phase(), in_flight, move || {
        // The sync flushes what this node admitted since its last round trip, so the
        // fleet's counts stay right; wait for it briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while !limits_flushed.load(std::sync::atomic::Ordering::Acquire)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if let Some(log) = &access_log {
            log.flush();
        }
    });
    server.run(RunArgs::default());
}
