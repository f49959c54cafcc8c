//! The YAML config: types, defaults, loading and validation.
//!
//! Every key is documented in docs/configuration.md (or the page of the feature that owns it);
//! `tests/reference.rs` fails when the two drift apart.

pub mod duration;
mod env;
mod errors;
pub mod limits;
mod locate;
pub mod redis;
pub mod rls;
pub mod runtime;
pub mod size;
pub mod store;
pub mod tokens;
mod validate;
pub mod web;
pub use validate::{canonical_prefix, listen_path, parse_net, split_host_port};

pub use errors::{ConfigError, LoadError, Problem};
pub use limits::{
    Algorithm, ApiKeyConfig, ApiKeysConfig, CalendarUnit, ClientIpHeader, CostSpec, KeyPart,
    KeySpec, LimitConfig, Mode, OnLimit, OnRedisError, RateSpec, RedisConfig, Scope, SyncMode,
    TierConfig,
};
pub use locate::Position;

use serde::{de, Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Proxy listeners: `ip:port` or `{ address, tls, http2, redirect_https, hsts }`; one
    /// or a list.
    #[serde(default = "default_listen", deserialize_with = "one_or_many")]
    pub listen: Vec<ListenConfig>,
    /// HTTP/2 settings for clients (every listener that speaks it).
    #[serde(default)]
    pub http2: Http2Config,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub server: ServerConfig,
    /// Limits on what a client may send, checked before routing; reloadable.
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The shared store of global limits; without it only `scope: local` limits work.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Peers (addresses or CIDR ranges) whose client-address header is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub client_ip_header: ClientIpHeader,
    #[serde(default)]
    pub api_keys: ApiKeysConfig,
    /// Named rate limit policies, applied by routes.
    #[serde(default)]
    pub limits: BTreeMap<String, LimitConfig>,
    /// Where registered API keys are kept: SQLite beside the config file by default.
    #[serde(default)]
    pub store: store::StoreConfig,
    /// Envoy's rate limit service (gRPC) on envoyproxy/ratelimit's config files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rls: Option<rls::RlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// How long a connection may take to deliver a whole request header (slowloris); on a
    /// kept-alive connection the clock starts when the first byte of the next request arrives
    /// or the idle keep-alive period ends.
    #[serde(default = "default_header_timeout", with = "duration")]
    pub header_timeout: Duration,
    /// How long a kept-alive connection may sit idle between requests.
    #[serde(default = "default_keepalive_timeout", with = "duration")]
    pub keepalive_timeout: Duration,
    /// The largest request header (request line and all fields); larger gets 431.
    #[serde(default = "default_max_header_bytes", with = "size")]
    pub max_header_bytes: u64,
    /// The longest request target (path and query); longer gets 414.
    #[serde(default = "default_max_uri_bytes", with = "size")]
    pub max_uri_bytes: u64,
    /// The largest request body for routes that do not set their own; larger gets 413.
    #[serde(
        default,
        with = "size::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_body_size: Option<u64>,
    /// Send header names in the case they arrived in (and tollgate's own in canonical
    /// case) rather than lower case; costs a case-preserving copy of every name per
    /// request (docs/performance.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserve_header_case: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout: default_header_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_uri_bytes: default_max_uri_bytes(),
            max_body_size: None,
            preserve_header_case: false,
        }
    }
}

/// One proxy listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// `ip:port`.
    pub address: String,
    /// Terminate TLS on this listener with these certificates.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// HTTP/2: on a TLS listener offered through ALPN (default on); on a plaintext listener
    /// prior-knowledge h2c (default off).
    #[serde(default)]
    pub http2: Option<bool>,
    /// On a plaintext listener: answer every request (but `/health`) with a 308 to
    /// `https://host:PORT/...` (no port in the URL for 443).
    #[serde(default)]
    pub redirect_https: Option<u16>,
    /// On a TLS listener: send `Strict-Transport-Security` with every response.
    #[serde(default)]
    pub hsts: Option<HstsConfig>,
}

impl ListenConfig {
    pub fn plain(address: &str) -> ListenConfig {
        ListenConfig {
            address: address.to_string(),
            tls: None,
            http2: None,
            redirect_https: None,
            hsts: None,
        }
    }

    /// Whether the listener speaks HTTP/2 (through ALPN on TLS, h2c on plaintext).
    pub fn http2_enabled(&self) -> bool {
        self.http2.unwrap_or(self.tls.is_some())
    }

    /// The settings that belong to the listening socket itself, which only a restart
    /// (graceful upgrade) can change. Certificates, `redirect_https` and `hsts` reload.
    pub fn socket_identity(&self) -> (&str, bool, bool) {
        (&self.address, self.tls.is_some(), self.http2_enabled())
    }
}

impl Serialize for ListenConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.tls.is_none()
            && self.http2.is_none()
            && self.redirect_https.is_none()
            && self.hsts.is_none()
        {
            return s.serialize_str(&self.address);
        }
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("address", &self.address)?;
        if let Some(tls) = &self.tls {
            map.serialize_entry("tls", tls)?;
        }
        if let Some(http2) = self.http2 {
            map.serialize_entry("http2", &http2)?;
        }
        if let Some(port) = self.redirect_https {
            map.serialize_entry("redirect_https", &port)?;
        }
        if let Some(hsts) = &self.hsts {
            map.serialize_entry("hsts", hsts)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates chosen by SNI from the names each one carries; the first is the
    /// default for clients that send no name or an unknown one.
    pub certs: Vec<CertConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// PEM certificate chain (leaf first); relative paths start at the config file's folder.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    #[serde(default = "default_hsts_max_age", with = "duration")]
    pub max_age: Duration,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

impl HstsConfig {
    /// The `Strict-Transport-Security` value.
    pub fn header_value(&self) -> String {
        let mut value = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        value
    }
}

fn default_hsts_max_age() -> Duration {
    Duration::from_secs(365 * 86_400)
}

/// HTTP/2 to clients.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Config {
    /// Streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[serde(default = "default_h2_streams")]
    pub max_concurrent_streams: u32,
    /// The rapid-reset defence (CVE-2023-44487): streams a client may open and reset
    /// before tollgate has taken them up; one more closes the connection with GOAWAY
    /// `ENHANCE_YOUR_CALM`.
    #[serde(default = "default_h2_resets")]
    pub max_pending_resets: usize,
    /// Streams tollgate itself may reset because of the client's protocol errors before
    /// the connection is closed the same way.
    #[serde(default = "default_h2_error_resets")]
    pub max_error_resets: usize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: default_h2_streams(),
            max_pending_resets: default_h2_resets(),
            max_error_resets: default_h2_error_resets(),
        }
    }
}

fn default_h2_streams() -> u32 {
    100
}
fn default_h2_resets() -> usize {
    20
}
fn default_h2_error_resets() -> usize {
    1024
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// The bearer token guarding `/admin/*`. Prefer `token_env`: secrets stay out of files.
    #[serde(default)]
    pub token: Option<String>,
    /// The environment variable holding the token; it wins over `token`.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// Named tokens, each with a role (`read` or `write`), beside or instead of `token`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<tokens::AdminToken>,
    /// Requests per client address to the admin listener.
    #[serde(default = "default_admin_rate")]
    pub rate_limit: RateSpec,
    #[serde(default)]
    pub decision_log: DecisionLogConfig,
    /// Host names, besides `localhost` and IP addresses, that `/admin/*` and the dashboard
    /// answer to; any other `Host` gets 421 (DNS rebinding).
    #[serde(default)]
    pub allowed_hosts: Vec<web::HostPattern>,
    /// Web origins, besides the admin listener's own, whose pages may call the admin API
    /// (and get CORS answers); any other `Origin` gets 403 (cross-site requests).
    #[serde(default)]
    pub allowed_origins: Vec<web::Origin>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token: None,
            token_env: default_token_env(),
            tokens: Vec::new(),
            rate_limit: default_admin_rate(),
            decision_log: DecisionLogConfig::default(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// The admin token from the environment or the config, if either has one.
    pub fn resolved_token(&self) -> Option<String> {
        std::env::var(&self.token_env)
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| self.token.clone().filter(|t| !t.is_empty()))
    }

    /// Every token that has a secret: the single `token` (as `admin`, role write), then
    /// `tokens`. Empty means the listener trusts whoever reaches it (loopback only).
    pub fn resolved_tokens(&self) -> Vec<tokens::ResolvedToken> {
        let single = self.resolved_token().map(|secret| tokens::ResolvedToken {
            name: tokens::LEGACY_TOKEN_NAME.into(),
            role: tokens::AdminRole::Write,
            secret,
        });
        let named = self.tokens.iter().filter_map(|t| {
            t.secret().ok().map(|secret| tokens::ResolvedToken {
                name: t.name.clone(),
                role: t.role,
                secret,
            })
        });
        single.into_iter().chain(named).collect()
    }
}

/// Per-client decision history, kept in Redis for `GET /admin/logs`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Most recent decisions kept per client.
    #[serde(default = "default_max_per_client")]
    pub max_per_client: usize,
    /// How long a quiet client's history is kept.
    #[serde(default = "default_log_ttl", with = "duration")]
    pub ttl: Duration,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        DecisionLogConfig {
            enabled: true,
            max_per_client: default_max_per_client(),
            ttl: default_log_ttl(),
        }
    }
}

fn default_token_env() -> String {
    "TOLLGATE_ADMIN_TOKEN".into()
}
fn default_admin_rate() -> RateSpec {
    RateSpec {
        count: 50,
        per: Duration::from_secs(1),
        calendar: None,
    }
}
fn default_true() -> bool {
    true
}
fn default_max_per_client() -> usize {
    1000
}
fn default_log_ttl() -> Duration {
    Duration::from_secs(86_400)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `info,tollgate=debug`; `RUST_LOG` wins over it.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Where to write one JSON line per request: a file path, `stdout` or `stderr`.
    #[serde(default)]
    pub access_log: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            access_log: None,
        }
    }
}

/// Process-level settings handed to Pingora.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// How long SIGTERM waits for in-flight requests before exiting (the process exits
    /// as soon as none are left).
    #[serde(default = "default_grace_period", with = "duration")]
    pub grace_period: Duration,
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    /// The socket through which a new process (`--upgrade`) takes the listeners over.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    /// Where a daemonized process writes its log.
    #[serde(default)]
    pub error_log: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grace_period: default_grace_period(),
            pid_file: default_pid_file(),
            upgrade_sock: default_upgrade_sock(),
            error_log: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(deserialize_with = "backends")]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Longest wait for each read from the backend (headers or a body chunk).
    #[serde(default = "default_read_timeout", with = "duration")]
    pub read_timeout: Duration,
    #[serde(default = "default_write_timeout", with = "duration")]
    pub write_timeout: Duration,
    /// How long an idle pooled connection to a backend is kept for reuse. Unset (the
    /// default), it stays until the backend closes it or the pool (128 per worker thread,
    /// least recently used first) needs the room: a timer per pooled connection costs
    /// every request (docs/performance.md).
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
}

/// One backend: `host:port`, or `{ address: host:port, weight: 3, tls: true, ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: String,
    #[serde(default = "one")]
    pub weight: usize,
    /// Connect with TLS (and health-check the same way).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls: bool,
    /// The name sent in SNI and checked against the backend's certificate; defaults to the
    /// address's host (an IP address is checked against the certificate's IP names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM file of the CAs the backend's certificate must chain to; without it, the
    /// system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Check the backend's certificate and name (default on).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub verify: bool,
    /// Speak HTTP/2 to the backend: through ALPN over TLS, prior knowledge (h2c) without.
    #[serde(default, skip_serializing_if = "is_false")]
    pub http2: bool,
}

impl BackendConfig {
    pub fn plain(address: &str) -> BackendConfig {
        BackendConfig {
            address: address.to_string(),
            weight: 1,
            tls: false,
            sni: None,
            ca_file: None,
            verify: true,
            http2: false,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_health_timeout", with = "duration")]
    pub timeout: Duration,
    /// Consecutive passing checks that bring an ejected backend back.
    #[serde(default = "one")]
    pub healthy_threshold: usize,
    /// Consecutive failing checks that eject a backend.
    #[serde(default = "one")]
    pub unhealthy_threshold: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    /// The host this route serves: `api.example.com`, or `*.example.com` for every name
    /// under it. Without one the route serves requests whose host no route names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The methods this route accepts; others get 405 with `Allow`. Empty accepts any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    pub upstream: String,
    /// Remove the prefix before forwarding (`/a/x` reaches the backend as `/x`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Policies applied to this route, in order.
    #[serde(default)]
    pub limits: Vec<String>,
    /// Answer 401 unless the request carries a known API key.
    #[serde(default)]
    pub require_api_key: bool,
    /// The largest request body this route accepts (overrides `http.max_body_size`).
    #[serde(
        default,
        with = "size::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_body_size: Option<u64>,
}

/// A config that passed validation, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigError>,
}

/// A located error for a problem found outside validation, such as a certificate file
/// that does not load: `path` is the YAML path of the setting that names it.
pub fn locate(text: &str, file: &str, path: &str, message: impl Into<String>) -> ConfigError {
    errors::Problem::at(path, message).locate(file, &locate::Locations::index(text))
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses and validates config text; `file` names it in error messages. `${VAR}` in its
/// values is filled in from the environment first.
/// The errors `tollgate check` finds in a config built in memory (the file's merged with
/// the runtime policies); warnings are left out.
pub fn problems(config: &Config) -> Vec<Problem> {
    validate::validate(config).errors
}

/// `problems` placed in the file whose text is `text` (a path the file does not have,
/// such as a runtime policy's, points at the document).
pub fn locate_problems(problems: Vec<Problem>, file: &str, text: &str) -> Vec<ConfigError> {
    let locations = locate::Locations::index(text);
    problems
        .into_iter()
        .map(|p| p.locate(file, &locations))
        .collect()
}

pub fn parse(text: &str, file: &str) -> Result<Loaded, LoadError> {
    let expanded = env::expand(text, &|name| std::env::var(name).ok()).map_err(|problems| {
        let locations = locate::Locations::index(text);
        LoadError::Invalid(
            problems
                .into_iter()
                .map(|p| p.locate(file, &locations))
                .collect(),
        )
    })?;
    let text = expanded.as_ref();
    let config: Config = if text.trim().is_empty() {
        return Err(LoadError::Invalid(vec![ConfigError {
            file: file.to_string(),
            position: Position { line: 1, column: 1 },
            path: String::new(),
            message: "the file is empty; it needs at least `upstreams` and `routes`".into(),
        }]));
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| LoadError::Invalid(vec![errors::from_serde(file, &e)]))?
    };
    let mut config = config;
    resolve_paths(
        &mut config,
        Path::new(file).parent().unwrap_or(Path::new("")),
    );
    let mut report = validate::validate(&config);
    let locations = locate::Locations::index(text);
    let locate_all = |problems: Vec<errors::Problem>| -> Vec<ConfigError> {
        problems
            .into_iter()
            .map(|p| p.locate(file, &locations))
            .collect()
    };
    let mut rls_errors = Vec::new();
    if let Some(rls) = &mut config.rls {
        rls::check_settings(rls, &mut report.errors);
        if report.errors.is_empty() {
            match rls::load_dir(Path::new(&rls.config_dir)) {
                Ok(domains) => rls.domains = std::sync::Arc::new(domains),
                Err(rls::DirError::Setting(p)) => report.errors.push(p),
                Err(rls::DirError::Files(e)) => rls_errors = e,
            }
        }
    }
    let mut errors = locate_all(report.errors);
    errors.append(&mut rls_errors);
    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors));
    }
    Ok(Loaded {
        config,
        warnings: locate_all(report.warnings),
    })
}

/// Relative certificate, key and CA paths name files next to the config file, wherever
/// tollgate was started from; they are made absolute once, here.
fn resolve_paths(config: &mut Config, base: &Path) {
    let resolve = |path: &mut String| {
        if !path.is_empty() && Path::new(path.as_str()).is_relative() {
            *path = base.join(path.as_str()).display().to_string();
        }
    };
    for listener in &mut config.listen {
        for cert in listener.tls.iter_mut().flat_map(|t| t.certs.iter_mut()) {
            resolve(&mut cert.cert);
            resolve(&mut cert.key);
        }
    }
    if let Some(rls) = &mut config.rls {
        resolve(&mut rls.config_dir);
        for cert in rls.tls.iter_mut().flat_map(|t| t.certs.iter_mut()) {
            resolve(&mut cert.cert);
            resolve(&mut cert.key);
        }
    }
    for upstream in config.upstreams.values_mut() {
        for backend in &mut upstream.backends {
            if let Some(ca) = &mut backend.ca_file {
                resolve(ca);
            }
        }
    }
}

fn default_listen() -> Vec<ListenConfig> {
    vec![ListenConfig::plain("0.0.0.0:8000")]
}
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
fn default_admin_listen() -> String {
    "127.0.0.1:9000".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_grace_period() -> Duration {
    Duration::from_secs(5)
}
fn default_pid_file() -> String {
    "/tmp/tollgate.pid".into()
}
fn default_upgrade_sock() -> String {
    "/tmp/tollgate-upgrade.sock".into()
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_header_bytes() -> u64 {
    32 << 10
}
fn default_max_uri_bytes() -> u64 {
    8 << 10
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_health_path() -> String {
    "/health".into()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}
fn one() -> usize {
    1
}

/// `listen: 0.0.0.0:8000`, `listen: { address: ..., tls: ... }`, or a list of either.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ListenConfig>, D::Error> {
    struct V;
    impl<'de> de::Visitor<'de> for V {
        type Value = Vec<ListenConfig>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(
                "an address like 0.0.0.0:8000, { address: ..., tls: ... }, or a list of them",
            )
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![ListenConfig::plain(v)])
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Ok(vec![Deserialize::deserialize(
                de::value::MapAccessDeserializer::new(map),
            )?])
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(one) = seq.next_element::<OneListener>()? {
                out.push(one.0);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// One entry of a `listen` list: an address, or a listener map.
struct OneListener(ListenConfig);

impl<'de> Deserialize<'de> for OneListener {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = OneListener;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address like 0.0.0.0:8000, or { address: ..., tls: ... }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneListener(ListenConfig::plain(v)))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Ok(OneListener(Deserialize::deserialize(
                    de::value::MapAccessDeserializer::new(map),
                )?))
            }
        }
        d.deserialize_any(V)
    }
}

/// A backend list entry: `host:port`, or the full map.
fn backend<'de, D: Deserializer<'de>>(d: D) -> Result<BackendConfig, D::Error> {
    struct V;
    impl<'de> de::Visitor<'de> for V {
        type Value = BackendConfig;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(
                "a backend as host:port, or { address: host:port, weight: N, tls: true, ... }",
            )
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<BackendConfig, E> {
            Ok(BackendConfig::plain(v))
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<BackendConfig, A::Error> {
            BackendConfig::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(V)
}

/// `backends: [...]`, each entry through [`backend`].
fn backends<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BackendConfig>, D::Error> {
    struct Entry(BackendConfig);
    impl<'de> Deserialize<'de> for Entry {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            backend(d).map(Entry)
        }
    }
    Ok(Vec::<Entry>::deserialize(d)?
        .into_iter()
        .map(|e| e.0)
        .collect())
}
