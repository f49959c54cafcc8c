//! Named admin tokens with a role each, so a dashboard or a scraper can read without being
//! able to change anything, and the audit trail can say who made a change.

use serde::{Deserialize, Serialize};

/// What a token may do on the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    /// Every `GET`, and `POST /admin/check` (which changes nothing).
    Read,
    /// Everything.
    Write,
}

impl AdminRole {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Read => "read",
            AdminRole::Write => "write",
        }
    }
}

/// One entry of `admin.tokens`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Shown as the actor in the audit trail; never secret.
    pub name: String,
    pub role: AdminRole,
    /// The token itself. Prefer `token_env`: secrets stay out of files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The environment variable holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// A token with its secret resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedToken {
    pub name: String,
    pub role: AdminRole,
    pub secret: String,
}

/// The name the single `admin.token` / `$TOLLGATE_ADMIN_TOKEN` goes by in the audit trail.
pub const LEGACY_TOKEN_NAME: &str = "admin";

impl AdminToken {
    /// The secret, from the environment when `token_env` is given, or why there is none.
    pub fn secret(&self) -> Result<String, String> {
        match (&self.token, &self.token_env) {
            (Some(_), Some(_)) => Err("give `token` or `token_env`, not both".into()),
            (None, None) => Err("give `token_env` (or `token`)".into()),
            (Some(token), None) if token.is_empty() => Err("`token` is empty".into()),
            (Some(token), None) => Ok(token.clone()),
            (None, Some(var)) => std::env::var(var)
                .ok()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| format!("the environment variable `{var}` is not set")),
        }
    }
}
