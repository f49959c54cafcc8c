//! The `store` section: where what operators create at runtime (registered API keys) is
//! kept. Counters stay in Redis, which may lose them; this store must not.

use super::redis::redact_url as redact;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file name of the embedded store used when the config has no `store` section.
pub const DEFAULT_FILE: &str = "tollgate-state.db";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:///path/state.db` (embedded) or `postgres://user@host:5432/db` (a fleet).
    /// Without it, an SQLite file beside the config file.
    pub url: Option<String>,
    /// The environment variable holding the PostgreSQL password, kept out of the file.
    pub password_env: Option<String>,
}

/// Which database a store URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite(PathBuf),
    Postgres,
}

impl StoreConfig {
    /// The URL to open: the configured one, or the default file beside `config_path`.
    pub fn resolved_url(&self, config_path: &Path) -> String {
        match &self.url {
            Some(url) => url.clone(),
            None => {
                let dir = config_path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                format!("sqlite://{}", dir.join(DEFAULT_FILE).display())
            }
        }
    }
}

/// What kind of store `url` names, or why it names none.
pub fn kind_of(url: &str) -> Result<StoreKind, String> {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//");
        let path = path.split('?').next().unwrap_or("");
        if path.is_empty() || path == ":memory:" {
            return Err(format!(
                "`{url}` names no file: the store must outlive the process (for example sqlite:///var/lib/tollgate/state.db)"
            ));
        }
        return Ok(StoreKind::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return match url::Url::parse(url) {
            Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(StoreKind::Postgres),
            Ok(_) => Err(format!("`{}` names no host", redact(url))),
            Err(e) => Err(format!("`{}` is not a URL: {e}", redact(url))),
        };
    }
    Err(format!(
        "`{}` must start with sqlite:// or postgres://",
        redact(url)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_sits_beside_the_config() {
        let c = StoreConfig::default();
        assert_eq!(
            c.resolved_url(Path::new("/etc/tollgate/config.yaml")),
            "sqlite:///etc/tollgate/tollgate-state.db"
        );
        assert_eq!(
            c.resolved_url(Path::new("config.yaml")),
            "sqlite://./tollgate-state.db"
        );
    }

    #[test]
    fn urls_name_their_kind_or_say_why_not() {
        assert_eq!(
            kind_of("sqlite:///var/lib/t.db"),
            Ok(StoreKind::Sqlite("/var/lib/t.db".into()))
        );
        assert_eq!(
            kind_of("sqlite://state.db?mode=rwc"),
            Ok(StoreKind::Sqlite("state.db".into()))
        );
        assert_eq!(kind_of("postgres://u@db:5432/t"), Ok(StoreKind::Postgres));
        assert!(kind_of("sqlite::memory:").unwrap_err().contains("outlive"));
        assert!(kind_of("mysql://x").unwrap_err().contains("sqlite://"));
        assert!(kind_of("postgres://u:pw@/x").unwrap_err().contains("***"));
    }
}
