//! Config types for rate limiting: `redis`, `trusted_proxies`, `api_keys` and `limits`.

use super::duration;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` for TLS.
    pub url: String,
    /// How often each node flushes its counts and refreshes its quota.
    #[serde(default = "default_sync_interval", with = "duration")]
    pub sync_interval: Duration,
    /// Longest wait for one Redis answer on the request path (atomic mode).
    #[serde(default = "default_redis_timeout", with = "duration")]
    pub timeout: Duration,
    /// First part of every Redis key tollgate writes.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// An environment variable holding the password; it wins over one in `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Certificates for `rediss://` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// PEM file of the CA that signed the server's certificate, instead of the system's
    /// trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// PEM certificate presented to a server that requires client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

fn default_sync_interval() -> Duration {
    Duration::from_millis(50)
}
fn default_redis_timeout() -> Duration {
    Duration::from_millis(25)
}
fn default_key_prefix() -> String {
    "tollgate".into()
}

/// Which header carries the client chain from trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIpHeader {
    #[default]
    #[serde(alias = "X-Forwarded-For")]
    XForwardedFor,
    #[serde(alias = "Forwarded")]
    Forwarded,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    #[serde(default = "default_api_key_header")]
    pub header: String,
    #[serde(default)]
    pub keys: BTreeMap<String, ApiKeyConfig>,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        ApiKeysConfig {
            header: default_api_key_header(),
            keys: BTreeMap::new(),
        }
    }
}

fn default_api_key_header() -> String {
    "x-api-key".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub tenant: String,
    #[serde(default)]
    pub tier: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    FixedWindow,
    SlidingWindow,
    SlidingLog,
    TokenBucket,
    Gcra,
    Concurrency,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::Gcra => "gcra",
            Algorithm::Concurrency => "concurrency",
        }
    }

    pub fn is_window(self) -> bool {
        matches!(
            self,
            Algorithm::FixedWindow | Algorithm::SlidingWindow | Algorithm::SlidingLog
        )
    }

    pub fn is_bucket(self) -> bool {
        matches!(self, Algorithm::TokenBucket | Algorithm::Gcra)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Global,
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    #[default]
    Async,
    Atomic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    #[default]
    Open,
    Closed,
}

/// `N/window`: `100/1m`, `10/s`, `5/10s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub count: u64,
    pub per: Duration,
}

impl RateSpec {
    pub fn parse(text: &str) -> Result<RateSpec, String> {
        let bad = || format!("`{text}` is not a rate; write it like 100/1m, 10/s or 5/10s");
        let (count, per) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let per = per.trim();
        let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
            duration::parse_duration(per)?
        } else {
            duration::parse_duration(&format!("1{per}"))?
        };
        if count == 0 {
            return Err(format!("`{text}`: the count must be at least 1"));
        }
        if per < Duration::from_millis(10) || per > Duration::from_secs(86_400) {
            return Err(format!("`{text}`: the window must be between 10ms and 24h"));
        }
        Ok(RateSpec { count, per })
    }

    /// Requests per second, for token buckets.
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, duration::format_duration(self.per))
    }
}

impl Serialize for RateSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Serialize for KeySpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(KeyPart::name))
    }
}

impl Serialize for CostSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CostSpec::Fixed(n) => s.serialize_u64(*n),
            CostSpec::Header(h) => s.serialize_str(&format!("header:{h}")),
        }
    }
}

impl<'de> Deserialize<'de> for RateSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        RateSpec::parse(&text).map_err(de::Error::custom)
    }
}

/// One part of a limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    ClientIp,
    ApiKey,
    Tenant,
    Path,
    Method,
    Route,
    /// A request header, lower-cased.
    Header(String),
}

impl KeyPart {
    pub fn parse(text: &str) -> Result<KeyPart, String> {
        let text = text.trim();
        Ok(match text {
            "client_ip" => KeyPart::ClientIp,
            "api_key" => KeyPart::ApiKey,
            "tenant" => KeyPart::Tenant,
            "path" => KeyPart::Path,
            "method" => KeyPart::Method,
            "route" => KeyPart::Route,
            _ => match text.strip_prefix("header:") {
                Some(name) if http::HeaderName::from_bytes(name.trim().as_bytes()).is_ok() => {
                    KeyPart::Header(name.trim().to_ascii_lowercase())
                }
                Some(name) => return Err(format!("`{name}` is not a valid header name")),
                None => {
                    return Err(format!(
                        "unknown key `{text}`; use client_ip, api_key, tenant, path, method, route or header:NAME"
                    ))
                }
            },
        })
    }

    pub fn name(&self) -> String {
        match self {
            KeyPart::ClientIp => "client_ip".into(),
            KeyPart::ApiKey => "api_key".into(),
            KeyPart::Tenant => "tenant".into(),
            KeyPart::Path => "path".into(),
            KeyPart::Method => "method".into(),
            KeyPart::Route => "route".into(),
            KeyPart::Header(h) => format!("header:{h}"),
        }
    }
}

/// `key: client_ip` or `key: [tenant, path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec(pub Vec<KeyPart>);

impl<'de> Deserialize<'de> for KeySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let parts = match Raw::deserialize(d)
            .map_err(|_| de::Error::custom("expected a key like client_ip, or a list of them"))?
        {
            Raw::One(s) => vec![s],
            Raw::Many(v) => v,
        };
        if parts.is_empty() {
            return Err(de::Error::custom("the key list is empty"));
        }
        parts
            .iter()
            .map(|p| KeyPart::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map(KeySpec)
            .map_err(de::Error::custom)
    }
}

/// What one request costs: a fixed number, or a header's integer value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CostSpec {
    Fixed(u64),
    Header(String),
}

impl Default for CostSpec {
    fn default() -> Self {
        CostSpec::Fixed(1)
    }
}

impl<'de> Deserialize<'de> for CostSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = CostSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a whole number, or header:NAME")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CostSpec, E> {
                Ok(CostSpec::Fixed(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CostSpec, E> {
                u64::try_from(v)
                    .map(CostSpec::Fixed)
                    .map_err(|_| E::custom("a cost cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CostSpec, E> {
                match v.trim().strip_prefix("header:") {
                    Some(name) if http::HeaderName::from_bytes(name.trim().as_bytes()).is_ok() => {
                        Ok(CostSpec::Header(name.trim().to_ascii_lowercase()))
                    }
                    _ => Err(E::custom(format!(
                        "`{v}` is not a cost; write a whole number or header:NAME"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Per-tier overrides of a policy's numbers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    #[serde(default)]
    pub rate: Option<RateSpec>,
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    pub key: KeySpec,
    pub algorithm: Algorithm,
    /// Requests per window (windows) or the refill rate (buckets).
    #[serde(default)]
    pub rate: Option<RateSpec>,
    /// Bucket capacity (token_bucket, gcra); defaults to the rate's count.
    #[serde(default)]
    pub burst: Option<u64>,
    /// Requests in flight at once (concurrency).
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub sync: SyncMode,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub on_redis_error: OnRedisError,
    #[serde(default)]
    pub cost: CostSpec,
    /// The status of a refused request.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Whether allowed responses carry the rate limit headers.
    #[serde(default = "default_true")]
    pub headers: bool,
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    /// Most distinct keys this node tracks exactly per policy; beyond that, new keys are
    /// decided by the fixed-size local estimator.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_status() -> u16 {
    429
}
fn default_true() -> bool {
    true
}
fn default_max_keys() -> usize {
    50_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let r = RateSpec::parse("100/1m").unwrap();
        assert_eq!((r.count, r.per), (100, Duration::from_secs(60)));
        let r = RateSpec::parse("10/s").unwrap();
        assert_eq!((r.count, r.per), (10, Duration::from_secs(1)));
        let r = RateSpec::parse("5/10s").unwrap();
        assert_eq!((r.count, r.per), (5, Duration::from_secs(10)));
        assert_eq!(r.to_string(), "5/10s");
        assert!((RateSpec::parse("10/s").unwrap().per_second() - 10.0).abs() < 1e-9);
        for bad in ["100", "0/s", "x/s", "10/", "10/1ms", "10/2d", "10/1.5s"] {
            assert!(RateSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_parts() {
        assert_eq!(KeyPart::parse("client_ip"), Ok(KeyPart::ClientIp));
        assert_eq!(
            KeyPart::parse("header:X-User"),
            Ok(KeyPart::Header("x-user".into()))
        );
        assert!(KeyPart::parse("header:bad name").is_err());
        assert!(KeyPart::parse("ip").unwrap_err().contains("unknown key"));
    }
}
