//! The YAML config: types, defaults, loading and validation.
//!
//! Every key is documented in the README's config reference; keep the two in step.

pub mod duration;
mod errors;
pub mod limits;
mod locate;
pub mod size;
mod validate;
pub use validate::{canonical_prefix, parse_net, split_host_port};

pub use errors::{ConfigError, LoadError};
pub use limits::{
    Algorithm, ApiKeyConfig, ApiKeysConfig, ClientIpHeader, CostSpec, KeyPart, KeySpec,
    LimitConfig, Mode, OnRedisError, RateSpec, RedisConfig, Scope, SyncMode, TierConfig,
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
    /// Proxy listeners, `ip:port`; one address or a list.
    #[serde(default = "default_listen", deserialize_with = "one_or_many")]
    pub listen: Vec<String>,
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
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout: default_header_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_uri_bytes: default_max_uri_bytes(),
            max_body_size: None,
        }
    }
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
    /// Requests per client address to the admin listener.
    #[serde(default = "default_admin_rate")]
    pub rate_limit: RateSpec,
    #[serde(default)]
    pub decision_log: DecisionLogConfig,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token: None,
            token_env: default_token_env(),
            rate_limit: default_admin_rate(),
            decision_log: DecisionLogConfig::default(),
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
    /// How long an idle pooled connection to a backend is kept for reuse.
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
}

/// One backend: `host:port`, or `{ address: host:port, weight: 3 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendConfig {
    pub address: String,
    pub weight: usize,
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

/// The config as JSON for the admin API, with secrets out: API keys by public id, the
/// admin token and the Redis password as `***`.
pub fn redacted_json(config: &Config) -> serde_json::Value {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    if config.admin.token.is_some() {
        value["admin"]["token"] = serde_json::json!("***");
    }
    if let Some(redis) = &config.redis {
        value["redis"]["url"] = serde_json::json!(crate::limit::link::redacted(&redis.url));
    }
    let keys: Vec<serde_json::Value> = config
        .api_keys
        .keys
        .iter()
        .map(|(secret, spec)| {
            let record =
                crate::identity::KeyRecord::new(secret, &spec.tenant, spec.tier.as_deref());
            serde_json::json!({"id": record.id, "tenant": spec.tenant, "tier": spec.tier})
        })
        .collect();
    value["api_keys"]["keys"] = serde_json::json!(keys);
    value
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses and validates config text; `file` names it in error messages.
pub fn parse(text: &str, file: &str) -> Result<Loaded, LoadError> {
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
    let report = validate::validate(&config);
    let locations = locate::Locations::index(text);
    let locate_all = |problems: Vec<errors::Problem>| -> Vec<ConfigError> {
        problems
            .into_iter()
            .map(|p| p.locate(file, &locations))
            .collect()
    };
    let errors = locate_all(report.errors);
    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors));
    }
    Ok(Loaded {
        config,
        warnings: locate_all(report.warnings),
    })
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8000".into()]
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
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
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

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> de::Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an address like 0.0.0.0:8000, or a list of them")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))
        }
    }
    d.deserialize_any(V)
}

impl<'de> Deserialize<'de> for BackendConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            address: String,
            #[serde(default = "one")]
            weight: usize,
        }
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = BackendConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a backend as host:port, or { address: host:port, weight: N }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BackendConfig, E> {
                Ok(BackendConfig {
                    address: v.to_string(),
                    weight: 1,
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<BackendConfig, A::Error> {
                let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(BackendConfig {
                    address: full.address,
                    weight: full.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}
