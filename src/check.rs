//! `tollgate check`: validate a config like `nginx -t` and summarize what it sets up.

use crate::config::duration::format_duration;
use crate::config::{self, Config};
use crate::gateway::Gateway;
use crate::listener::store::CertStore;
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
                format!(
                    "{}\n{}: {tally}the config is not valid",
                    with_pointers(e.errors()).unwrap_or_else(|| e.to_string()),
                    path.display()
                ),
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
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let certs = match CertStore::load(
        &loaded.config,
        path,
        &text,
        std::sync::Arc::new(Metrics::new()),
    ) {
        Ok(certs) => certs,
        Err(errors) => {
            let mut out = with_pointers(&errors).unwrap_or_default();
            let _ = write!(out, "\n{}: the config is not valid", path.display());
            return (out, false);
        }
    };
    let mut out = summary(path, &loaded.config, &certs);
    if !loaded.warnings.is_empty() {
        out.push_str("warnings:\n");
        for w in &loaded.warnings {
            let _ = writeln!(out, "  {w}");
        }
    }
    (out, true)
}

/// Where each top-level key is documented: `tollgate check` follows an error with the
/// section of the reference that explains the key in error. `tests/reference.rs` checks that
/// every page and heading named here exists.
pub const REFERENCE: &[(&str, &str)] = &[
    ("listen", "docs/configuration.md#listen"),
    ("threads", "docs/configuration.md#top-level"),
    ("trusted_proxies", "docs/configuration.md#top-level"),
    ("client_ip_header", "docs/configuration.md#top-level"),
    ("http", "docs/configuration.md#http"),
    ("http2", "docs/configuration.md#http2"),
    ("upstreams", "docs/configuration.md#upstreams"),
    ("routes", "docs/configuration.md#routes"),
    ("limits", "docs/configuration.md#limits"),
    ("api_keys", "docs/configuration.md#api_keys"),
    ("redis", "docs/configuration.md#redis"),
    ("store", "docs/configuration.md#store"),
    ("admin", "docs/configuration.md#admin"),
    ("log", "docs/configuration.md#log"),
    ("server", "docs/configuration.md#server"),
    ("rls", "docs/envoy.md#reference"),
];

/// The reference section for the key at `path` (`limits.per_ip.rate`, `routes[1]`).
pub fn reference_for(path: &str) -> Option<&'static str> {
    let top = path.split(['.', '[']).next()?;
    REFERENCE
        .iter()
        .find(|(key, _)| *key == top)
        .map(|(_, page)| *page)
}

/// The errors, one a line, each followed by the reference section of its key when there
/// is one; `None` when there are no errors.
fn with_pointers(errors: &[config::ConfigError]) -> Option<String> {
    if errors.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = write!(out, "{e}");
        if let Some(page) = reference_for(&e.path) {
            let _ = write!(out, "\n  see {page}");
        }
    }
    Some(out)
}

fn summary(path: &Path, config: &Config, certs: &CertStore) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: the config is valid", path.display());
    let _ = writeln!(
        out,
        "listeners ({} worker thread{}):",
        config.threads,
        if config.threads == 1 { "" } else { "s" },
    );
    let tls = certs.status();
    for listen in &config.listen {
        let mut notes = Vec::new();
        match &listen.tls {
            Some(_) if listen.http2_enabled() => {
                notes.push("TLS 1.2/1.3, ALPN h2 and http/1.1".to_string())
            }
            Some(_) => notes.push("TLS 1.2/1.3, ALPN http/1.1".to_string()),
            None if listen.http2_enabled() => notes.push("HTTP/1.1 and h2c".to_string()),
            None => notes.push("HTTP/1.1".to_string()),
        }
        if let Some(port) = listen.redirect_https {
            notes.push(format!("redirects to https port {port}"));
        }
        if let Some(hsts) = &listen.hsts {
            notes.push(format!("HSTS {}", hsts.header_value()));
        }
        let _ = writeln!(out, "  proxy  {} ({})", listen.address, notes.join("; "));
        let served = tls.as_array().and_then(|all| {
            all.iter()
                .find(|l| l["listener"] == listen.address.as_str())
        });
        if let Some(certs) = served.and_then(|l| l["certs"].as_array()) {
            for (i, cert) in certs.iter().enumerate() {
                let names: Vec<&str> = cert["names"]
                    .as_array()
                    .map(|n| n.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                let until = cert["not_after"].as_str().unwrap_or("?");
                let default = if i == 0 { ", the default" } else { "" };
                let _ = writeln!(
                    out,
                    "         cert {}: {} (until {until}{default})",
                    cert["cert"].as_str().unwrap_or("?"),
                    names.join(", ")
                );
            }
        }
    }
    if config.listen.iter().any(|l| l.http2_enabled()) {
        let h2 = &config.http2;
        let _ = writeln!(
            out,
            "  HTTP/2: up to {} streams per connection, closed after {} streams reset before they were taken up",
            h2.max_concurrent_streams, h2.max_pending_resets
        );
    }
    let _ = writeln!(out, "  admin  {} (/metrics)", config.admin.listen);
    let admin = &config.admin;
    if !admin.allowed_hosts.is_empty() {
        let names: Vec<String> = admin.allowed_hosts.iter().map(|h| h.to_string()).collect();
        let _ = writeln!(out, "         also answers to {}", names.join(", "));
    }
    if !admin.allowed_origins.is_empty() {
        let origins: Vec<String> = admin
            .allowed_origins
            .iter()
            .map(|o| o.to_string())
            .collect();
        let _ = writeln!(out, "         pages of {} may call it", origins.join(", "));
    }
    let _ = writeln!(
        out,
        "routes (the most specific host, then the longest prefix on whole segments):"
    );
    let label = |r: &config::RouteConfig| match &r.host {
        Some(host) => format!("{}{}", host.to_ascii_lowercase(), r.prefix),
        None => r.prefix.clone(),
    };
    let width = config
        .routes
        .iter()
        .map(|r| label(r).len())
        .max()
        .unwrap_or(0);
    for route in &config.routes {
        let mut notes = Vec::new();
        if !route.methods.is_empty() {
            let methods: Vec<String> = route
                .methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect();
            notes.push(methods.join(" "));
        }
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
            label(route),
            route.upstream
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
                let mut notes = Vec::new();
                if b.weight != 1 {
                    notes.push(format!("weight {}", b.weight));
                }
                if b.tls {
                    let mut tls = "TLS".to_string();
                    if let Some(sni) = &b.sni {
                        tls.push_str(&format!(" to {sni}"));
                    }
                    match (&b.ca_file, b.verify) {
                        (_, false) => tls.push_str(", not verified"),
                        (Some(ca), true) => tls.push_str(&format!(", verified against {ca}")),
                        (None, true) => tls.push_str(", verified against the system's CAs"),
                    }
                    notes.push(tls);
                }
                if b.http2 {
                    notes.push(if b.tls { "HTTP/2" } else { "h2c" }.to_string());
                }
                if notes.is_empty() {
                    b.address.clone()
                } else {
                    format!("{} ({})", b.address, notes.join("; "))
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
                    .map(|r| describe_rate(r, limit))
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
                r.describe(),
                format_duration(r.sync_interval),
                format_duration(r.timeout)
            );
        }
        None => {
            let _ = writeln!(out, "redis: none (local limits only)");
        }
    }
    let store_url = crate::config::redis::redact_url(&config.store.resolved_url(path));
    let origin = if config.store.url.is_some() {
        ""
    } else {
        " (the default, beside the config file)"
    };
    let _ = writeln!(out, "store: {store_url}{origin}: registered API keys");
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

/// A rate, with where a calendar period begins: `1000000/1mo from the 1st 00:00 Asia/Tokyo`.
fn describe_rate(rate: config::RateSpec, limit: &config::LimitConfig) -> String {
    use config::CalendarUnit;
    let window = matches!(
        limit.algorithm,
        config::Algorithm::FixedWindow | config::Algorithm::SlidingWindow
    );
    match rate.calendar.filter(|_| window) {
        Some(unit) => {
            let from = match unit {
                CalendarUnit::Day => "midnight",
                CalendarUnit::Week => "Monday 00:00",
                CalendarUnit::Month => "the 1st 00:00",
            };
            let tz = limit.timezone.map_or("UTC", |tz| tz.name());
            format!("{rate} from {from} {tz}")
        }
        None => rate.to_string(),
    }
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
        _ => limit
            .rate
            .map(|r| describe_rate(r, limit))
            .unwrap_or_default(),
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
