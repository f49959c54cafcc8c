//! Checks that need the whole config: references between sections, duplicates, ranges.

use super::errors::Problem;
use super::Config;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Report {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem::at(path, message));
    }
    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem::at(path, message));
    }
}

pub fn validate(config: &Config) -> Report {
    let mut report = Report::default();
    check_listeners(config, &mut report);
    check_log(config, &mut report);
    check_upstreams(config, &mut report);
    check_routes(config, &mut report);
    report
}

fn check_listeners(config: &Config, report: &mut Report) {
    if config.listen.is_empty() {
        report.error("listen", "needs at least one address such as 0.0.0.0:8000");
    }
    let mut seen = HashMap::new();
    for (i, addr) in config.listen.iter().enumerate() {
        let path = if config.listen.len() == 1 {
            "listen".to_string()
        } else {
            format!("listen[{i}]")
        };
        match addr.parse::<SocketAddr>() {
            Err(_) => report.error(
                &path,
                format!("`{addr}` is not an ip:port address (for example 0.0.0.0:8000)"),
            ),
            Ok(sa) => {
                if seen.insert(sa, i).is_some() {
                    report.error(&path, format!("`{addr}` is listed twice"));
                }
            }
        }
    }
    match config.admin.listen.parse::<SocketAddr>() {
        Err(_) => report.error(
            "admin.listen",
            format!(
                "`{}` is not an ip:port address (for example 127.0.0.1:9000)",
                config.admin.listen
            ),
        ),
        Ok(sa) => {
            if seen.contains_key(&sa) {
                report.error(
                    "admin.listen",
                    format!(
                        "`{sa}` is also a proxy listener; the admin listener needs its own port"
                    ),
                );
            }
        }
    }
    if config.threads == 0 || config.threads > 1024 {
        report.error("threads", "must be between 1 and 1024");
    }
    if config.server.grace_period > Duration::from_secs(3600) {
        report.error("server.grace_period", "must be at most 1h");
    }
}

fn check_log(config: &Config, report: &mut Report) {
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        report.error(
            "log.level",
            format!(
                "`{}` is not a log filter ({e}); use error, warn, info, debug or trace",
                config.log.level
            ),
        );
    }
    if let Some(target) = &config.log.access_log {
        if target.trim().is_empty() {
            report.error(
                "log.access_log",
                "is empty; give a file path, stdout or stderr",
            );
        }
    }
}

/// Upstream names become metric labels and Redis key parts, so they stay plain.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn check_upstreams(config: &Config, report: &mut Report) {
    for (name, upstream) in &config.upstreams {
        let base = format!("upstreams.{name}");
        if !valid_name(name) {
            report.error(
                &base,
                format!("upstream name `{name}` may use only letters, digits, `_`, `-` and `.`"),
            );
        }
        if upstream.backends.is_empty() {
            report.error(
                format!("{base}.backends"),
                "is empty; list at least one host:port",
            );
        }
        let mut seen = HashMap::new();
        for (i, backend) in upstream.backends.iter().enumerate() {
            let path = format!("{base}.backends[{i}]");
            if let Err(why) = split_host_port(&backend.address) {
                report.error(&path, why);
            } else if let Some(first) = seen.insert(backend.address.as_str(), i) {
                report.error(
                    &path,
                    format!("`{}` is already backends[{first}]", backend.address),
                );
            }
            if backend.weight == 0 || backend.weight > 1000 {
                report.error(format!("{path}.weight"), "must be between 1 and 1000");
            }
        }
        for (key, value) in [
            ("connect_timeout", upstream.connect_timeout),
            ("read_timeout", upstream.read_timeout),
            ("write_timeout", upstream.write_timeout),
            ("idle_timeout", upstream.idle_timeout),
        ] {
            if value.is_zero() {
                report.error(format!("{base}.{key}"), "must be greater than zero");
            }
        }
        if let Some(hc) = &upstream.health_check {
            let hc_base = format!("{base}.health_check");
            if !hc.path.starts_with('/') {
                report.error(
                    format!("{hc_base}.path"),
                    format!("`{}` must start with /", hc.path),
                );
            }
            if hc.interval.is_zero() {
                report.error(format!("{hc_base}.interval"), "must be greater than zero");
            }
            if hc.timeout.is_zero() {
                report.error(format!("{hc_base}.timeout"), "must be greater than zero");
            } else if hc.timeout > hc.interval {
                report.warn(
                    format!("{hc_base}.timeout"),
                    "is longer than the interval; checks of a slow backend will overlap",
                );
            }
            if hc.healthy_threshold == 0 {
                report.error(format!("{hc_base}.healthy_threshold"), "must be at least 1");
            }
            if hc.unhealthy_threshold == 0 {
                report.error(
                    format!("{hc_base}.unhealthy_threshold"),
                    "must be at least 1",
                );
            }
        }
        if !config.routes.iter().any(|r| &r.upstream == name) {
            report.warn(&base, format!("upstream `{name}` is not used by any route"));
        }
    }
}

fn check_routes(config: &Config, report: &mut Report) {
    if config.routes.is_empty() {
        report.warn(
            "routes",
            "no routes: every request except /health will get 404",
        );
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, route) in config.routes.iter().enumerate() {
        let base = format!("routes[{i}]");
        match check_prefix(&route.prefix) {
            Err(why) => report.error(format!("{base}.prefix"), why),
            Ok(()) => {
                let canonical = canonical_prefix(&route.prefix);
                if let Some(first) = seen.insert(canonical.clone(), i) {
                    report.error(
                        format!("{base}.prefix"),
                        format!("duplicate prefix `{canonical}`: routes[{first}] already uses it"),
                    );
                }
            }
        }
        if !config.upstreams.contains_key(&route.upstream) {
            let known: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "no upstreams are defined".to_string()
            } else {
                format!("defined upstreams: {}", known.join(", "))
            };
            report.error(
                format!("{base}.upstream"),
                format!("unknown upstream `{}` ({hint})", route.upstream),
            );
        }
    }
}

/// A prefix must be a plain, already-normalized path: routing compares it with normalized
/// request paths, so anything a normalizer would rewrite could never match.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("`{prefix}` must start with /"));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '%' | '\\'))
    {
        return Err(format!(
            "`{prefix}` contains `{c}`, which a path prefix cannot hold"
        ));
    }
    if prefix.contains("//") {
        return Err(format!("`{prefix}` contains an empty segment (//)"));
    }
    if prefix.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("`{prefix}` contains a . or .. segment"));
    }
    Ok(())
}

/// Prefixes match whole segments, so a trailing slash adds nothing: `/a/` is `/a`.
pub fn canonical_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Splits `host:port` (host may be a name, an IPv4 address or a bracketed IPv6 address).
pub fn split_host_port(address: &str) -> Result<(&str, u16), String> {
    let bad = |why: &str| {
        format!("`{address}` is not a valid backend address: {why} (expected host:port)")
    };
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad("missing :port"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("bad IPv6 address"));
        }
        (host, port)
    } else {
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| bad("missing :port"))?;
        if host.contains(':') {
            return Err(bad("an IPv6 address needs brackets, like [::1]:8080"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(bad("the host has characters a host name cannot have"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("the port must be a number from 1 to 65535")),
        Ok(p) => Ok((host, p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("127.0.0.1:8001"), Ok(("127.0.0.1", 8001)));
        assert_eq!(split_host_port("service-a:80"), Ok(("service-a", 80)));
        assert_eq!(split_host_port("[::1]:8080"), Ok(("::1", 8080)));
        for bad in [
            "127.0.0.1",
            "host:0",
            "host:99999",
            ":80",
            "::1:80",
            "[::1]80",
            "a b:80",
            "x:port",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(canonical_prefix("/a/"), "/a");
        assert_eq!(canonical_prefix("/"), "/");
        assert!(check_prefix("/a/b").is_ok());
        for bad in ["a", "/a?x", "/a//b", "/a/../b", "/a b", "/%2e"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
