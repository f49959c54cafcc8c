//! Config types for rate limiting: `redis`, `trusted_proxies`, `api_keys` and `limits`.

use super::duration;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One server: `redis://[user:password@]host:port[/db]` or `rediss://...` for TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A Redis Cluster: seed nodes as `host:port`; the rest is discovered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Vec<String>>,
    /// A master watched by Sentinel: its name and the sentinels to ask for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelConfig>,
    /// The ACL user, for shapes whose addresses carry none (or instead of one in `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
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
    /// Certificates for `rediss://` URLs; for `cluster` and `sentinel`, its presence
    /// turns TLS on (`tls: {}` trusts the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTlsConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the master under.
    pub master: String,
    /// Sentinels as `host:port`; any one that answers is enough.
    pub nodes: Vec<String>,
    /// The database on the master.
    #[serde(default)]
    pub db: i64,
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

/// What a policy does with a request over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// Answer at once with the policy's status.
    #[default]
    Refuse,
    /// Hold the request until it fits, if that is within `max_delay`.
    Delay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    #[default]
    Open,
    Closed,
}

/// `N/window`: `100/1m`, `10/s`, `5/10s`, or a calendar period: `10000/1d`, `1000/1w`,
/// `1000000/1mo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub count: u64,
    /// The window's length; for a calendar period its nominal length (a month is 30
    /// days here), which only buckets and `RateLimit-Policy`'s `w` would read.
    pub per: Duration,
    /// Set when the window is a day, a week or a month, whose boundaries follow the
    /// calendar of the policy's `timezone`.
    pub calendar: Option<CalendarUnit>,
}

/// A period whose boundaries are local midnights: every day, every Monday, every 1st.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CalendarUnit {
    Day,
    Week,
    Month,
}

impl CalendarUnit {
    /// How the unit is written in a rate (`1d`, `1w`, `1mo`).
    pub fn spelling(self) -> &'static str {
        match self {
            CalendarUnit::Day => "1d",
            CalendarUnit::Week => "1w",
            CalendarUnit::Month => "1mo",
        }
    }

    /// The length `RateSpec::per` carries for it.
    pub fn nominal(self) -> Duration {
        Duration::from_secs(match self {
            CalendarUnit::Day => 86_400,
            CalendarUnit::Week => 7 * 86_400,
            CalendarUnit::Month => 30 * 86_400,
        })
    }
}

const DAY: Duration = Duration::from_secs(86_400);

impl RateSpec {
    pub fn parse(text: &str) -> Result<RateSpec, String> {
        let bad = || {
            format!("`{text}` is not a rate; write it like 100/1m, 10/s, 5/10s, 10000/1d or 1000000/1mo")
        };
        let (count, per) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let per = per.trim();
        let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
            per.to_string()
        } else {
            format!("1{per}")
        };
        if count == 0 {
            return Err(format!("`{text}`: the count must be at least 1"));
        }
        let calendar = |unit: CalendarUnit, n: &str| match n {
            "1" => Ok(RateSpec {
                count,
                per: unit.nominal(),
                calendar: Some(unit),
            }),
            _ => Err(format!(
                "`{text}`: a calendar period is one {}; write {}",
                if unit == CalendarUnit::Week {
                    "week"
                } else {
                    "month"
                },
                unit.spelling()
            )),
        };
        if let Some(n) = per.strip_suffix("mo") {
            return calendar(CalendarUnit::Month, n);
        }
        if let Some(n) = per.strip_suffix('w') {
            return calendar(CalendarUnit::Week, n);
        }
        let per = duration::parse_duration(&per)?;
        if per > DAY {
            return Err(format!(
                "`{text}`: windows longer than 24h follow the calendar; use 1w (from Monday 00:00) or 1mo (from the 1st, 00:00)"
            ));
        }
        if per < Duration::from_millis(10) {
            return Err(format!("`{text}`: the window must be at least 10ms"));
        }
        Ok(RateSpec {
            count,
            per,
            calendar: (per == DAY).then_some(CalendarUnit::Day),
        })
    }

    /// Requests per second, for token buckets.
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.calendar {
            Some(unit) => write!(f, "{}/{}", self.count, unit.spelling()),
            None => write!(f, "{}/{}", self.count, duration::format_duration(self.per)),
        }
    }
}

impl Serialize for RateSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A policy's `timezone`: an IANA name such as `Europe/Berlin`, or `UTC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone(pub chrono_tz::Tz);

impl TimeZone {
    pub fn parse(text: &str) -> Result<TimeZone, String> {
        let text = text.trim();
        if let Ok(tz) = text.parse::<chrono_tz::Tz>() {
            return Ok(TimeZone(tz));
        }
        // A name with the wrong case is the common slip; say which one was meant.
        let hint = chrono_tz::TZ_VARIANTS
            .iter()
            .find(|tz| tz.name().eq_ignore_ascii_case(text))
            .map(|tz| format!("; did you mean {}?", tz.name()))
            .unwrap_or_else(|| {
                "; use an IANA name like Europe/Berlin, America/New_York or UTC".into()
            });
        Err(format!("`{text}` is not a time zone{hint}"))
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    pub fn is_utc(&self) -> bool {
        matches!(self.0, chrono_tz::Tz::UTC | chrono_tz::Tz::Etc__UTC)
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = TimeZone;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an IANA time zone like Europe/Berlin, or UTC")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TimeZone, E> {
                TimeZone::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for TimeZone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
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
            CostSpec::ResponseHeader(h) => s.serialize_str(&format!("response_header:{h}")),
            CostSpec::ResponseJson(path) => {
                s.serialize_str(&format!("response_json:{}", path.join(".")))
            }
        }
    }
}

impl<'de> Deserialize<'de> for RateSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than a String first: an error raised while the scalar is read
        // carries its line and column.
        struct V;
        impl de::Visitor<'_> for V {
            type Value = RateSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate like 100/1m, 10/s or 1000000/1mo")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RateSpec, E> {
                RateSpec::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// How much of a client's address is its key: the network of `v4` bits for IPv4, `v6`
/// bits for IPv6 (a policy's `ipv4_prefix` and `ipv6_prefix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientNet {
    pub v4: u8,
    pub v6: u8,
}

/// One address per IPv4 client, one `/64` per IPv6 client: an IPv6 subscriber or VM is
/// handed at least a `/64` and can use any address in it.
pub const DEFAULT_IPV4_PREFIX: u8 = 32;
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

impl Default for ClientNet {
    fn default() -> Self {
        ClientNet {
            v4: DEFAULT_IPV4_PREFIX,
            v6: DEFAULT_IPV6_PREFIX,
        }
    }
}

impl ClientNet {
    /// The network `ip` belongs to under this policy, as (masked address, prefix length).
    pub fn network(self, ip: std::net::IpAddr) -> (std::net::IpAddr, u8) {
        use std::net::IpAddr;
        match ip {
            IpAddr::V4(v4) => {
                let bits = self.v4.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                (IpAddr::V4((u32::from(v4) & mask).into()), bits)
            }
            IpAddr::V6(v6) => {
                let bits = self.v6.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                (IpAddr::V6((u128::from(v6) & mask).into()), bits)
            }
        }
    }
}

/// One part of a limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's network (see [`ClientNet`]); `parse` gives the default, the policy
    /// sets its own prefixes when it is built.
    ClientIp(ClientNet),
    ApiKey,
    Tenant,
    Path,
    Method,
    Route,
    /// The request's host, lower case and without a port.
    Host,
    /// A request header, lower-cased.
    Header(String),
    /// A cookie, by its exact name.
    Cookie(String),
    /// A query parameter, by its exact name; its value percent-decoded.
    Query(String),
    /// A claim of the request's verified JWT: a dotted path for nested claims.
    Jwt(String),
}

impl KeyPart {
    pub fn parse(text: &str) -> Result<KeyPart, String> {
        let text = text.trim();
        Ok(match text {
            "client_ip" => KeyPart::ClientIp(ClientNet::default()),
            "api_key" => KeyPart::ApiKey,
            "tenant" => KeyPart::Tenant,
            "path" => KeyPart::Path,
            "method" => KeyPart::Method,
            "route" => KeyPart::Route,
            "host" => KeyPart::Host,
            _ => match text.split_once(':') {
                Some(("header", name))
                    if http::HeaderName::from_bytes(name.trim().as_bytes()).is_ok() =>
                {
                    KeyPart::Header(name.trim().to_ascii_lowercase())
                }
                Some(("header", name)) => {
                    return Err(format!("`{name}` is not a valid header name"))
                }
                Some(("cookie", name)) if valid_token(name) => KeyPart::Cookie(name.into()),
                Some(("cookie", name)) => {
                    return Err(format!("`{name}` is not a valid cookie name"))
                }
                Some(("query", name)) if !name.is_empty() && !name.contains(['&', '=', '#']) => {
                    KeyPart::Query(name.into())
                }
                Some(("query", name)) => {
                    return Err(format!("`{name}` is not a valid query parameter name"))
                }
                Some(("jwt", path)) if valid_claim_path(path) => KeyPart::Jwt(path.into()),
                Some(("jwt", path)) => {
                    return Err(format!(
                        "`{path}` is not a claim path; use a claim name, with dots for nested claims (org.id)"
                    ))
                }
                _ => {
                    return Err(format!(
                        "unknown key `{text}`; use client_ip, api_key, tenant, path, method, route, host, header:NAME, cookie:NAME, query:NAME or jwt:CLAIM"
                    ))
                }
            },
        })
    }

    pub fn name(&self) -> String {
        match self {
            KeyPart::ClientIp(_) => "client_ip".into(),
            KeyPart::ApiKey => "api_key".into(),
            KeyPart::Tenant => "tenant".into(),
            KeyPart::Path => "path".into(),
            KeyPart::Method => "method".into(),
            KeyPart::Route => "route".into(),
            KeyPart::Host => "host".into(),
            KeyPart::Header(h) => format!("header:{h}"),
            KeyPart::Cookie(c) => format!("cookie:{c}"),
            KeyPart::Query(q) => format!("query:{q}"),
            KeyPart::Jwt(c) => format!("jwt:{c}"),
        }
    }
}

/// An RFC 6265 cookie name (an RFC 7230 token).
fn valid_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `sub`, `org.id`: names without empty segments.
pub fn valid_claim_path(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('.')
            .all(|seg| !seg.is_empty() && !seg.contains(char::is_whitespace))
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

/// What one request costs: a fixed number, a request header's integer value, or a number
/// the response reports (a header, or a dotted path in its JSON body or SSE events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CostSpec {
    Fixed(u64),
    Header(String),
    /// `response_header:NAME`, lower-cased.
    ResponseHeader(String),
    /// `response_json:usage.total_tokens`, split at the dots.
    ResponseJson(Vec<String>),
}

impl CostSpec {
    /// Whether the cost is known only once the response is: admission holds `reserve`.
    pub fn from_response(&self) -> bool {
        matches!(
            self,
            CostSpec::ResponseHeader(_) | CostSpec::ResponseJson(_)
        )
    }
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
                f.write_str(
                    "a whole number, header:NAME, response_header:NAME or response_json:PATH",
                )
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
                let header = |name: &str| {
                    let name = name.trim();
                    http::HeaderName::from_bytes(name.as_bytes())
                        .is_ok()
                        .then(|| name.to_ascii_lowercase())
                };
                let text = v.trim();
                let spec = if let Some(name) = text.strip_prefix("response_header:") {
                    header(name).map(CostSpec::ResponseHeader)
                } else if let Some(path) = text.strip_prefix("response_json:") {
                    let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
                    if path.iter().any(|p| p.is_empty()) {
                        return Err(E::custom(format!(
                            "`{v}` has an empty step in its path; write a dotted path such as response_json:usage.total_tokens"
                        )));
                    }
                    Some(CostSpec::ResponseJson(path))
                } else {
                    text.strip_prefix("header:")
                        .and_then(header)
                        .map(CostSpec::Header)
                };
                spec.ok_or_else(|| {
                    E::custom(format!(
                        "`{v}` is not a cost; write a whole number, header:NAME, response_header:NAME or response_json:PATH"
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Response statuses a policy counts (`count_status`): numbers (`401`) or classes (`5xx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(Vec<StatusMatch>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Exact(u16),
    /// `4xx` is `Class(4)`.
    Class(u16),
}

impl StatusSet {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|m| match *m {
            StatusMatch::Exact(s) => s == status,
            StatusMatch::Class(c) => status / 100 == c,
        })
    }

    fn parse_one(text: &str) -> Result<StatusMatch, String> {
        let t = text.trim().to_ascii_lowercase();
        if let Some(class) = t.strip_suffix("xx") {
            return match class.parse::<u16>() {
                Ok(c @ 1..=5) => Ok(StatusMatch::Class(c)),
                _ => Err(format!("`{text}` is not a status class; write 1xx to 5xx")),
            };
        }
        match t.parse::<u16>() {
            Ok(s @ 100..=599) => Ok(StatusMatch::Exact(s)),
            _ => Err(format!(
                "`{text}` is not an HTTP status; write a number from 100 to 599 or a class like 5xx"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for StatusSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Number(u64),
            Text(String),
        }
        let items = Vec::<Item>::deserialize(d)?;
        if items.is_empty() {
            return Err(de::Error::custom(
                "the list is empty; name the statuses that count, like [401, 403] or [5xx]",
            ));
        }
        items
            .into_iter()
            .map(|item| match item {
                Item::Number(n) => StatusSet::parse_one(&n.to_string()),
                Item::Text(t) => StatusSet::parse_one(&t),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(StatusSet)
            .map_err(de::Error::custom)
    }
}

impl Serialize for StatusSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for m in &self.0 {
            match *m {
                StatusMatch::Exact(status) => seq.serialize_element(&status)?,
                StatusMatch::Class(c) => seq.serialize_element(&format!("{c}xx"))?,
            }
        }
        seq.end()
    }
}

/// Clients a policy never limits (`exempt`): addresses or CIDR ranges, `key:ID` (an API
/// key's public id, as `GET /admin/keys` shows it) and `tenant:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exemptions {
    pub nets: Vec<ipnet::IpNet>,
    pub keys: Vec<String>,
    pub tenants: Vec<String>,
    written: Vec<String>,
}

impl Exemptions {
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    pub fn covers(&self, ip: std::net::IpAddr, key_id: Option<&str>, tenant: Option<&str>) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
            || key_id.is_some_and(|k| self.keys.iter().any(|e| e == k))
            || tenant.is_some_and(|t| self.tenants.iter().any(|e| e == t))
    }

    fn add(&mut self, entry: &str) -> Result<(), String> {
        let entry = entry.trim();
        if let Some(id) = entry.strip_prefix("key:") {
            if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "`{entry}`: a key id is the 16 hex digits GET /admin/keys shows (never the key itself)"
                ));
            }
            self.keys.push(id.to_ascii_lowercase());
        } else if let Some(name) = entry.strip_prefix("tenant:") {
            if name.is_empty() {
                return Err("`tenant:` needs a tenant name".into());
            }
            self.tenants.push(name.to_string());
        } else {
            let net = super::validate::parse_net(entry).ok_or_else(|| {
                format!("`{entry}` is not an address, a CIDR range, key:ID or tenant:NAME")
            })?;
            self.nets.push(net);
        }
        self.written.push(entry.to_string());
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Exemptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut exemptions = Exemptions::default();
        for entry in Vec::<String>::deserialize(d)? {
            exemptions.add(&entry).map_err(de::Error::custom)?;
        }
        Ok(exemptions)
    }
}

impl Serialize for Exemptions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.written.serialize(s)
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
    /// With a cost from the response: what admission needs left and holds until the
    /// response settles the actual cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<u64>,
    /// With a cost from the response: larger reported costs are not believed, and cost the
    /// reserve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<u64>,
    /// The status of a refused request.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Whether allowed responses carry the rate limit headers.
    #[serde(default = "default_true")]
    pub headers: bool,
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    /// Other numbers for one tenant (`tenant:NAME`) or one API key (`key:ID`); they beat
    /// the tier. Usually set through `/admin/overrides`, merged in from the store.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, TierConfig>,
    /// Where the days, weeks and months of calendar rates (`1d`, `1w`, `1mo`) begin; UTC
    /// when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<TimeZone>,
    /// Count a request only when its response has one of these statuses: the limit then
    /// refuses clients whose responses keep failing (logins, errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_status: Option<StatusSet>,
    /// Clients this policy never limits; they are still counted in its metrics.
    #[serde(default, skip_serializing_if = "Exemptions::is_empty")]
    pub exempt: Exemptions,
    /// `delay`: hold a request over the limit until it fits, instead of refusing it.
    #[serde(default)]
    pub on_limit: OnLimit,
    /// With `on_limit: delay`, the longest a request waits; longer waits are refused.
    #[serde(default = "default_max_delay", with = "super::duration")]
    pub max_delay: Duration,
    /// With `on_limit: delay`, requests waiting at once at most; the rest are refused.
    #[serde(default = "default_max_waiting")]
    pub max_waiting: usize,
    /// A key this policy refused stays refused this long (fleet-wide for global policies).
    #[serde(
        default,
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub block_for: Option<Duration>,
    /// Most distinct keys this node tracks exactly per policy; beyond that, new keys are
    /// decided by the fixed-size local estimator.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Bits of an IPv6 client's address that make its `client_ip` key (32-128).
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u32,
    /// Bits of an IPv4 client's address that make its `client_ip` key (8-32).
    #[serde(default = "default_ipv4_prefix")]
    pub ipv4_prefix: u32,
}

impl LimitConfig {
    /// The policy's key with its client networks applied to `client_ip`.
    pub fn key_parts(&self) -> Vec<KeyPart> {
        // Validation keeps the numbers in range; `min` keeps a skipped check harmless.
        let net = ClientNet {
            v4: self.ipv4_prefix.min(32) as u8,
            v6: self.ipv6_prefix.min(128) as u8,
        };
        self.key
            .0
            .iter()
            .map(|p| match p {
                KeyPart::ClientIp(_) => KeyPart::ClientIp(net),
                other => other.clone(),
            })
            .collect()
    }
}

fn default_status() -> u16 {
    429
}

/// What a request with a cost from the response holds until it is settled.
pub const DEFAULT_RESERVE: u64 = 1;
/// The largest cost a response may report unless `max_cost` says otherwise.
pub const DEFAULT_MAX_COST: u64 = 1_000_000_000;
fn default_true() -> bool {
    true
}
fn default_max_delay() -> Duration {
    Duration::from_millis(500)
}
fn default_max_waiting() -> usize {
    1_000
}
fn default_ipv6_prefix() -> u32 {
    u32::from(DEFAULT_IPV6_PREFIX)
}
fn default_ipv4_prefix() -> u32 {
    u32::from(DEFAULT_IPV4_PREFIX)
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
    fn calendar_rates() {
        let day = RateSpec::parse("10000/1d").unwrap();
        assert_eq!(day.calendar, Some(CalendarUnit::Day));
        assert_eq!(day.per, Duration::from_secs(86_400));
        assert_eq!(day.to_string(), "10000/1d");
        assert_eq!(
            RateSpec::parse("5/24h").unwrap().calendar,
            Some(CalendarUnit::Day)
        );
        assert_eq!(RateSpec::parse("5/d").unwrap().to_string(), "5/1d");
        let week = RateSpec::parse("1000/1w").unwrap();
        assert_eq!(
            (week.calendar, week.to_string().as_str()),
            (Some(CalendarUnit::Week), "1000/1w")
        );
        let month = RateSpec::parse("1000000/mo").unwrap();
        assert_eq!(month.calendar, Some(CalendarUnit::Month));
        assert_eq!(month.to_string(), "1000000/1mo");
        assert_eq!(RateSpec::parse("10/1h").unwrap().calendar, None);
        for (bad, says) in [
            ("10/36h", "use 1w (from Monday 00:00) or 1mo"),
            ("10/2d", "use 1w"),
            ("10/2w", "write 1w"),
            ("10/3mo", "write 1mo"),
            ("10/0mo", "write 1mo"),
        ] {
            let err = RateSpec::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn time_zones() {
        assert_eq!(
            TimeZone::parse("Europe/Berlin").unwrap().name(),
            "Europe/Berlin"
        );
        assert!(TimeZone::parse("UTC").unwrap().is_utc());
        let err = TimeZone::parse("europe/berlin").unwrap_err();
        assert!(err.contains("did you mean Europe/Berlin?"), "{err}");
        let err = TimeZone::parse("Mars/Olympus").unwrap_err();
        assert!(err.contains("IANA name"), "{err}");
    }

    #[test]
    fn key_parts() {
        assert_eq!(
            KeyPart::parse("client_ip"),
            Ok(KeyPart::ClientIp(ClientNet::default()))
        );
        assert_eq!(
            KeyPart::parse("header:X-User"),
            Ok(KeyPart::Header("x-user".into()))
        );
        assert!(KeyPart::parse("header:bad name").is_err());
        assert_eq!(
            KeyPart::parse("cookie:session_id"),
            Ok(KeyPart::Cookie("session_id".into()))
        );
        assert_eq!(
            KeyPart::parse("query:user"),
            Ok(KeyPart::Query("user".into()))
        );
        assert_eq!(
            KeyPart::parse("jwt:org.id"),
            Ok(KeyPart::Jwt("org.id".into()))
        );
        assert!(KeyPart::parse("cookie:a b").is_err());
        assert!(KeyPart::parse("query:").is_err());
        assert!(KeyPart::parse("jwt:org..id").is_err());
        assert!(KeyPart::parse("ip").unwrap_err().contains("unknown key"));
    }
}
