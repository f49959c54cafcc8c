//! Verified JWTs: a provider's keys (a JWKS by URL or file, or a shared secret), the check
//! of one request's token, and the cache of tokens already verified.
//!
//! Signatures and standard claims are checked by the `jsonwebtoken` crate (on ring, the
//! crypto already in the tree through rustls); this module picks the key, bounds what it
//! accepts, and keeps what verification found.

mod cache;
pub mod fetch;
pub mod keys;

use crate::config::auth::{JwtProviderConfig, TokenSource};
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use cache::TokenCache;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keys::KeySet;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use tokio::sync::Notify;

/// The longest token read; a longer one is refused unread (header limits bound it too).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What a verified token says about its bearer.
#[derive(Debug)]
pub struct Verified {
    pub claims: serde_json::Value,
    /// `sub`, the user the decision log and dashboard show.
    pub user: Option<String>,
    pub tier: Option<String>,
    pub tenant: Option<String>,
    /// Headers for the backend (`forward_claims`), made once per token.
    pub forward: Vec<(HeaderName, HeaderValue)>,
    /// Unix seconds from which the token is no longer accepted (`exp` + leeway).
    pub until: u64,
}

/// Why a request's token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token where the provider looks for one.
    Missing,
    /// A token that does not verify; the text says why (for `error_description`).
    Invalid(&'static str, String),
    /// The provider has never loaded a key, so nothing can be verified yet.
    Unavailable,
}

impl Refusal {
    /// The `result` label of `tollgate_auth_total`.
    fn result(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Invalid(result, _) => result,
            Refusal::Unavailable => "unavailable",
        }
    }
}

struct Counters {
    verified: IntCounter,
    cached: IntCounter,
    missing: IntCounter,
    invalid: IntCounter,
    expired: IntCounter,
    unknown_kid: IntCounter,
    unavailable: IntCounter,
}

impl Counters {
    fn of(&self, result: &str) -> &IntCounter {
        match result {
            "missing" => &self.missing,
            "expired" => &self.expired,
            "unknown_kid" => &self.unknown_kid,
            "unavailable" => &self.unavailable,
            _ => &self.invalid,
        }
    }
}

/// Where the keys of a provider come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Url(String),
    File(std::path::PathBuf),
    /// Only a shared secret: nothing to fetch.
    None,
}

pub struct Provider {
    pub name: Arc<str>,
    /// The definition, so a reload keeps this provider (its keys and cache) when unchanged.
    pub config: JwtProviderConfig,
    sources: Vec<TokenSource>,
    /// A validation per accepted algorithm (the crate wants the key's family to match every
    /// algorithm of a validation).
    validations: HashMap<Algorithm, Validation>,
    secret: Option<DecodingKey>,
    /// The last good keys; `None` until the first load.
    keys: ArcSwapOption<KeySet>,
    pub key_source: KeySource,
    cache: TokenCache,
    /// Woken by a token whose `kid` is not published: the fetcher refetches (rate-limited).
    pub refetch: Arc<Notify>,
    /// Headers `forward_claims` writes; clients' own copies are removed.
    pub forward_headers: Vec<HeaderName>,
    counters: Counters,
    pub fetches: IntCounter,
    pub failures: IntCounter,
    pub key_count: IntGauge,
}

fn now_s() -> u64 {
    crate::clock::now_ms() / 1000
}

impl Provider {
    /// Builds a provider from a validated definition; `secret` is the value of
    /// `secret_env`, read by the caller.
    pub fn build(name: &str, config: &JwtProviderConfig, metrics: &Metrics) -> Provider {
        let sources = config
            .token_from
            .iter()
            .filter_map(|s| TokenSource::parse(s).ok())
            .collect();
        let secret = config
            .secret_env
            .as_ref()
            .and_then(|env| std::env::var(env).ok())
            .filter(|s| !s.is_empty())
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let mut validations = HashMap::new();
        for alg in config.algorithm_names() {
            let Ok(alg) = Algorithm::from_str(&alg) else {
                continue;
            };
            let mut v = Validation::new(alg);
            v.leeway = config.leeway.as_secs();
            v.validate_nbf = true;
            v.set_issuer(&[&config.issuer]);
            let mut required = vec!["exp", "iss"];
            if config.audiences.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&config.audiences);
                required.push("aud");
            }
            v.set_required_spec_claims(&required);
            validations.insert(alg, v);
        }
        let key_source = match (&config.jwks_url, &config.jwks_file) {
            (Some(url), _) => KeySource::Url(url.clone()),
            (None, Some(file)) => KeySource::File(file.into()),
            (None, None) => KeySource::None,
        };
        let auth = |result: &str| metrics.auth.with_label_values(&[name, result]);
        Provider {
            name: name.into(),
            config: config.clone(),
            sources,
            validations,
            secret,
            keys: ArcSwapOption::empty(),
            key_source,
            cache: TokenCache::new(cache::CAPACITY),
            refetch: Arc::new(Notify::new()),
            forward_headers: config
                .forward_claims
                .values()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            counters: Counters {
                verified: auth("verified"),
                cached: auth("cached"),
                missing: auth("missing"),
                invalid: auth("invalid"),
                expired: auth("expired"),
                unknown_kid: auth("unknown_kid"),
                unavailable: auth("unavailable"),
            },
            fetches: metrics.jwks_fetches.with_label_values(&[name]),
            failures: metrics.jwks_failures.with_label_values(&[name]),
            key_count: metrics.jwks_keys.with_label_values(&[name]),
        }
    }

    /// Takes over the keys of the provider this one replaces in a reload when both read
    /// them from the same place, so a changed claim mapping does not mean a window of 503s.
    pub fn adopt_keys(&self, old: &Provider) {
        if self.key_source == old.key_source && self.key_source != KeySource::None {
            self.set_keys(old.keys.load_full());
        }
    }

    pub fn set_keys(&self, keys: Option<Arc<KeySet>>) {
        self.key_count
            .set(keys.as_ref().map_or(0, |k| k.len()) as i64);
        self.keys.store(keys);
    }

    /// Whether tokens can be verified: a secret, or keys loaded at least once.
    pub fn ready(&self) -> bool {
        self.secret.is_some() || self.keys.load().is_some()
    }

    /// The request's token, from the first source that has one.
    pub fn token<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
        self.sources.iter().find_map(|source| match source {
            TokenSource::Header(name) => {
                // Bytes until the scheme is cut off, then one UTF-8 check of the token: this
                // runs on every request, and `to_str` would check every byte once more.
                let value = headers.get(name)?.as_bytes().trim_ascii();
                let token = match value.iter().position(|&b| b == b' ') {
                    Some(at) if value[..at].eq_ignore_ascii_case(b"bearer") => {
                        value[at + 1..].trim_ascii()
                    }
                    // `Authorization` carries a scheme; other headers may carry the token bare.
                    _ if name == http::header::AUTHORIZATION => return None,
                    _ => value,
                };
                std::str::from_utf8(token).ok().filter(|t| !t.is_empty())
            }
            TokenSource::Cookie(name) => crate::limit::key::cookie(headers, name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .filter(|v| !v.is_empty()),
            TokenSource::Query(name) => query
                .and_then(|q| crate::limit::key::query_param(q, name))
                .and_then(|v| std::str::from_utf8(v).ok())
                .filter(|v| !v.is_empty()),
        })
    }

    /// Checks the request's token: `Ok(None)` when it carries none (the route decides
    /// whether that is allowed), the verified token, or why it is refused.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Arc<Verified>>, Refusal> {
        let Some(token) = self.token(headers, query) else {
            self.counters.missing.inc();
            return Ok(None);
        };
        match self.verify(token) {
            Ok((verified, fresh)) => {
                if fresh {
                    self.counters.verified.inc();
                } else {
                    self.counters.cached.inc();
                }
                Ok(Some(verified))
            }
            Err(refusal) => {
                self.counters.of(refusal.result()).inc();
                Err(refusal)
            }
        }
    }

    /// A token's verified claims, from the cache or by checking it (`true` when checked).
    pub fn verify(&self, token: &str) -> Result<(Arc<Verified>, bool), Refusal> {
        let invalid = |why: &str| Refusal::Invalid("invalid", why.to_string());
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("the token is longer than 8192 bytes"));
        }
        let now = now_s();
        let digest = self.cache.digest(token);
        if let Some(hit) = self.cache.get(digest, now) {
            return Ok((hit, false));
        }
        let verified = Arc::new(self.check(token)?);
        self.cache.insert(digest, verified.clone(), now);
        Ok((verified, true))
    }

    /// Verifies a token without the cache: a signature check every time.
    pub fn check(&self, token: &str) -> Result<Verified, Refusal> {
        let invalid = |why: &str| Refusal::Invalid("invalid", why.to_string());
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("the token is longer than 8192 bytes"));
        }
        let now = now_s();
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token is not a signed JWT with a supported alg"))?;
        let alg = header.alg;
        let Some(validation) = self.validations.get(&alg) else {
            return Err(Refusal::Invalid(
                "invalid",
                format!("the algorithm {alg:?} is not accepted"),
            ));
        };
        let keys = self.keys.load();
        let key = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self
                .secret
                .as_ref()
                .ok_or_else(|| invalid("no secret for HMAC tokens"))?,
            _ => {
                let Some(keys) = keys.as_deref() else {
                    return Err(Refusal::Unavailable);
                };
                match keys.find(header.kid.as_deref(), alg) {
                    Some(k) if k.kind.fits(alg) && k.alg.is_none_or(|a| a == alg) => &k.decoding,
                    Some(_) => {
                        return Err(invalid("the key named by kid is not for this algorithm"))
                    }
                    None => {
                        if header.kid.is_some() {
                            self.refetch.notify_one();
                            return Err(Refusal::Invalid(
                                "unknown_kid",
                                "the key id (kid) is not published by the issuer".into(),
                            ));
                        }
                        return Err(invalid("the token names no key id (kid)"));
                    }
                }
            }
        };
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, validation)
            .map_err(|e| refusal_of(e.kind()))?;
        let claims = data.claims;
        let exp = claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(now);
        let text_of = |path: &Option<String>| {
            path.as_deref()
                .and_then(|p| crate::limit::key::claim(&claims, p))
                .and_then(claim_text)
        };
        let forward = self
            .config
            .forward_claims
            .iter()
            .filter_map(|(claim, header)| {
                let value = crate::limit::key::claim(&claims, claim).and_then(claim_text)?;
                Some((
                    HeaderName::from_bytes(header.as_bytes()).ok()?,
                    HeaderValue::from_str(&value).ok()?,
                ))
            })
            .collect();
        Ok(Verified {
            user: claims.get("sub").and_then(claim_text),
            tier: text_of(&self.config.tier_claim),
            tenant: text_of(&self.config.tenant_claim),
            forward,
            until: exp.saturating_add(self.config.leeway.as_secs()),
            claims,
        })
    }
}

/// A claim as header or key text: strings as they are, other values as JSON.
fn claim_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn refusal_of(kind: &ErrorKind) -> Refusal {
    let (result, why) = match kind {
        ErrorKind::ExpiredSignature => ("expired", "the token has expired"),
        ErrorKind::ImmatureSignature => ("invalid", "the token is not valid yet (nbf)"),
        ErrorKind::InvalidSignature => ("invalid", "the signature does not verify"),
        ErrorKind::InvalidIssuer => ("invalid", "the issuer (iss) is not accepted"),
        ErrorKind::InvalidAudience => ("invalid", "the audience (aud) is not accepted"),
        ErrorKind::MissingRequiredClaim(c) => {
            return Refusal::Invalid("invalid", format!("the token has no `{c}` claim"))
        }
        ErrorKind::InvalidAlgorithm => ("invalid", "the algorithm does not fit the key"),
        _ => ("invalid", "the token is malformed"),
    };
    Refusal::Invalid(result, why.into())
}
