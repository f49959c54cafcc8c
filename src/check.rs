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
        let strip = if route.strip_prefix {
            "  (prefix stripped)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {:width$}  -> {}{strip}",
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
    out
}
