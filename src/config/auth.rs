//! Config types for verified identity: `auth.jwt.<provider>` and a route's `auth`.

use super::duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// JWT providers by name; a route names the one it trusts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jwt: BTreeMap<String, JwtProviderConfig>,
}

impl AuthConfig {
    pub fn is_empty(&self) -> bool {
        self.jwt.is_empty()
    }
}

/// One issuer of tokens and the keys that verify them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderConfig {
    /// `iss` must equal it.
    pub issuer: String,
    /// `aud` must contain one of them; empty accepts any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the signing keys are published (a JWKS over http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// A JWKS file, read again when it changes; relative to the config file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// Accepted `alg` values; the asymmetric ones when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// Clock skew allowed for `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// Where the token is looked for, in order: `header:NAME`, `cookie:NAME`, `query:NAME`.
    #[serde(default = "default_token_from")]
    pub token_from: Vec<String>,
    /// The claim that names the request's tier (as an API key's tier does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_claim: Option<String>,
    /// The claim that names the request's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_claim: Option<String>,
    /// Verified claims sent to the backend, as claim → header.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forward_claims: BTreeMap<String, String>,
    /// An environment variable holding the HMAC secret, for HS256/HS384/HS512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_token_from() -> Vec<String> {
    vec!["header:authorization".into()]
}

/// The algorithms a provider accepts when it lists none: every asymmetric one.
pub const ASYMMETRIC: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
/// The HMAC algorithms, accepted only when listed and with `secret_env`.
pub const SYMMETRIC: [&str; 3] = ["HS256", "HS384", "HS512"];

impl JwtProviderConfig {
    /// The accepted algorithms' names.
    pub fn algorithm_names(&self) -> Vec<String> {
        match &self.algorithms {
            Some(list) => list.clone(),
            None => ASYMMETRIC.iter().map(|a| a.to_string()).collect(),
        }
    }
}

/// Where a token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>` for `header:authorization`; the whole value (less
    /// a `Bearer ` prefix) for other headers.
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
}

impl TokenSource {
    pub fn parse(text: &str) -> Result<TokenSource, String> {
        match text.trim().split_once(':') {
            Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes())
                .map(TokenSource::Header)
                .map_err(|_| format!("`{name}` is not a valid header name")),
            Some(("cookie", name)) if !name.trim().is_empty() => {
                Ok(TokenSource::Cookie(name.trim().into()))
            }
            Some(("query", name)) if !name.trim().is_empty() => {
                Ok(TokenSource::Query(name.trim().into()))
            }
            _ => Err(format!(
                "`{text}` is not a token source; use header:NAME, cookie:NAME or query:NAME"
            )),
        }
    }
}

/// A route's `auth: { jwt: main, optional: true }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthConfig {
    /// The provider whose tokens this route accepts.
    pub jwt: String,
    /// Let requests without a token through (unverified); a bad token is still refused.
    #[serde(default)]
    pub optional: bool,
}
