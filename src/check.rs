//! `tollgate check`: validate a config like `nginx -t` and summarize what it sets up.

use crate::config::duration::format_duration;
use crate::config::{self, Config};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use std::fmt::Write as _;
use std::path::Path;

/// Exit status for a config that is not valid (clap uses 2 for usage errors too).
pub const INVALID: u8 = 2;

/// Validates the file, including resolving backend names, and returns the report to print
/// and whether the config is valid.
pub fn check(path: &Path) -> (String, bool) {
    let loaded = match config::load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            let count = e.errors().len();
            let tally = match count {
                0 => String::new(),
                1 => "1 error; ".into(),
                n => format!("{n} errors; "),
            };
            return (
                format!("{e}\n{}: {tally}the config is not valid", path.display()),
                false,
            );
        }
    };
    if let Err(e) = Gateway::build(
        loaded.config.clone(),
        None,
        &std::sync::Arc::new(Metrics::new()),
        &crate::decisions::DecisionHub::new(&Metrics::new()),
    ) {
        return (
            format!(
                "{}: {e}\n{}: the config is not valid",
                path.display(),
                path.display()
            ),
            false,
        );
    }
    let mut out = summary(path, &loaded.config);
    if !loaded.warnings.is_empty() {
        out.push_str("warnings:\n");
        for w in &loaded.warnings {
            let _ = writeln!(out, "  {w}");
        }
    }
    (out, true)
}

fn summary(path: &Path, config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: the config is valid", path.display());
    let _ = writeln!(
        out,
        "listeners:\n  proxy  {} ({} worker thread{})\n  admin  {} (/metrics)",
        config.listen.join(", "),
        config.threads,
        if config.threads == 1 { "" } else { "s" },
        config.admin.listen
    );
    let _ = writeln!(out, "routes (longest prefix wins, whole segments):");
    let width = config
        .routes
        .iter()
        .map(|r| r.prefix.len())
        .max()
        .unwrap_or(0);
    for route in &config.routes {
        let mut notes = Vec::new();
        if route.strip_prefix {
            notes.push("prefix stripped".to_string());
        }
        if route.require_api_key {
            notes.push("API key required".to_string());
        }
        if !route.limits.is_empty() {
            notes.push(format!("limits: {}", route.limits.join(", ")));
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!("  ({})", notes.join("; "))
        };
        let _ = writeln!(
            out,
            "  {:width$}  -> {}{notes}",
            route.prefix, route.upstream
        );
    }
    if config.routes.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    let _ = writeln!(out, "upstreams:");
    for (name, upstream) in &config.upstreams {
        let backends: Vec<String> = upstream
            .backends
            .iter()
            .map(|b| {
                if b.weight == 1 {
                    b.address.clone()
                } else {
                    format!("{} (weight {})", b.address, b.weight)
                }
            })
            .collect();
        let _ = writeln!(out, "  {name}: {}", backends.join(", "));
        let health = match &upstream.health_check {
            Some(hc) => format!(
                "GET {} every {}, timeout {}",
                hc.path,
                format_duration(hc.interval),
                format_duration(hc.timeout)
            ),
            None => "none".into(),
        };
        let _ = writeln!(
            out,
            "    health check {health}; connect timeout {}, read timeout {}",
            format_duration(upstream.connect_timeout),
            format_duration(upstream.read_timeout)
        );
    }
    if !config.limits.is_empty() {
        let _ = writeln!(out, "limits:");
        for (name, limit) in &config.limits {
            let _ = writeln!(out, "  {name}: {}", describe_limit(limit));
            for (tier, t) in &limit.tiers {
                let rate = t
                    .rate
                    .or(limit.rate)
                    .map(|r| r.to_string())
                    .unwrap_or_default();
                let burst = t
                    .burst
                    .or(limit.burst)
                    .map(|b| format!(", burst {b}"))
                    .unwrap_or_default();
                let max = t
                    .limit
                    .or(limit.limit)
                    .map(|m| format!("{m} in flight"))
                    .unwrap_or_default();
                let _ = writeln!(out, "    tier {tier}: {rate}{burst}{max}");
            }
        }
    }
    match &config.redis {
        Some(r) => {
            let _ = writeln!(
                out,
                "redis: {} (sync every {}, timeout {})",
                crate::limit::link::redacted(&r.url),
                format_duration(r.sync_interval),
                format_duration(r.timeout)
            );
        }
        None => {
            let _ = writeln!(out, "redis: none (local limits only)");
        }
    }
    if !config.api_keys.keys.is_empty() {
        let _ = writeln!(
            out,
            "api keys: {} in the {} header",
            config.api_keys.keys.len(),
            config.api_keys.header
        );
    }
    out
}

fn describe_limit(limit: &config::LimitConfig) -> String {
    use config::{Algorithm, Mode, OnRedisError, Scope, SyncMode};
    let key: Vec<String> = limit.key.0.iter().map(|p| p.name()).collect();
    let numbers = match limit.algorithm {
        Algorithm::Concurrency => format!("{} in flight", limit.limit.unwrap_or(0)),
        a if a.is_bucket() => format!(
            "{}, burst {}",
            limit.rate.map(|r| r.to_string()).unwrap_or_default(),
            limit.burst.or(limit.rate.map(|r| r.count)).unwrap_or(0)
        ),
        _ => limit.rate.map(|r| r.to_string()).unwrap_or_default(),
    };
    let scope = match (limit.scope, limit.sync) {
        (Scope::Local, _) => "local".to_string(),
        (Scope::Global, SyncMode::Async) => "global async".to_string(),
        (Scope::Global, SyncMode::Atomic) => "global atomic".to_string(),
    };
    let fault = match (limit.scope, limit.on_redis_error) {
        (Scope::Local, _) => "",
        (_, OnRedisError::Open) => ", fails open",
        (_, OnRedisError::Closed) => ", fails closed",
    };
    let shadow = if limit.mode == Mode::Shadow {
        ", shadow"
    } else {
        ""
    };
    format!(
        "{} {numbers} per {}, {scope}{fault}{shadow}",
        limit.algorithm.name(),
        key.join("+")
    )
}
