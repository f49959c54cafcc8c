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
    check_identity(config, &mut report);
    check_auth(config, &mut report);
    check_redis(config, &mut report);
    check_limits(config, &mut report);
    check_store(config, &mut report);
    report
}

fn check_listeners(config: &Config, report: &mut Report) {
    if config.listen.is_empty() {
        report.error("listen", "needs at least one address such as 0.0.0.0:8000");
    }
    let mut seen = HashMap::new();
    for (i, listener) in config.listen.iter().enumerate() {
        let path = listen_path(config, i);
        let addr = &listener.address;
        // A plain entry is located at its value, a map entry at its `address` key.
        let addr_path = if listener == &super::ListenConfig::plain(addr) {
            path.clone()
        } else {
            format!("{path}.address")
        };
        match addr.parse::<SocketAddr>() {
            Err(_) => report.error(
                &addr_path,
                format!("`{addr}` is not an ip:port address (for example 0.0.0.0:8000)"),
            ),
            Ok(sa) => {
                if seen.insert(sa, i).is_some() {
                    report.error(&addr_path, format!("`{addr}` is listed twice"));
                }
            }
        }
        check_listener_options(listener, &path, report);
    }
    let h2 = &config.http2;
    if !(1..=10_000).contains(&h2.max_concurrent_streams) {
        report.error(
            "http2.max_concurrent_streams",
            "must be between 1 and 10000",
        );
    }
    if !(1..=10_000).contains(&h2.max_pending_resets) {
        report.error("http2.max_pending_resets", "must be between 1 and 10000");
    }
    if !(1..=100_000).contains(&h2.max_error_resets) {
        report.error("http2.max_error_resets", "must be between 1 and 100000");
    }
    if config.admin.decision_log.max_per_client == 0
        || config.admin.decision_log.max_per_client > 100_000
    {
        report.error(
            "admin.decision_log.max_per_client",
            "must be between 1 and 100000",
        );
    }
    if config.admin.resolved_token().is_some_and(|t| t.len() < 16) {
        report.warn(
            "admin.token",
            "an admin token shorter than 16 characters is easy to guess",
        );
    }
    check_admin_tokens(&config.admin, report);
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
            if !sa.ip().is_loopback() && config.admin.resolved_tokens().is_empty() {
                report.error(
                    "admin.listen",
                    format!(
                        "`{sa}` is reachable from other hosts, so the admin API needs a token: set ${} (or admin.token, or admin.tokens), or listen on 127.0.0.1",
                        config.admin.token_env
                    ),
                );
            }
        }
    }
    check_admin_web(config, report);
    if config.threads == 0 || config.threads > 1024 {
        report.error("threads", "must be between 1 and 1024");
    }
    if config.server.grace_period > Duration::from_secs(3600) {
        report.error("server.grace_period", "must be at most 1h");
    }
    let http = &config.http;
    if http.header_timeout < Duration::from_millis(10)
        || http.header_timeout > Duration::from_secs(300)
    {
        report.error("http.header_timeout", "must be between 10ms and 5m");
    }
    if http.keepalive_timeout < Duration::from_secs(1)
        || http.keepalive_timeout > Duration::from_secs(3600)
    {
        report.error("http.keepalive_timeout", "must be between 1s and 1h");
    }
    if !(1024..=1 << 20).contains(&http.max_header_bytes) {
        report.error(
            "http.max_header_bytes",
            "must be between 1KiB and 1MiB (Pingora refuses larger headers itself)",
        );
    }
    if !(256..=1 << 20).contains(&http.max_uri_bytes) {
        report.error("http.max_uri_bytes", "must be between 256 and 1MiB");
    }
    if http.max_uri_bytes > http.max_header_bytes {
        report.error(
            "http.max_uri_bytes",
            "cannot be larger than http.max_header_bytes",
        );
    }
}

/// Each entry already parsed (a malformed one is a located serde error); what is left are
/// entries that change nothing, which usually mean the operator expected something else.
fn check_admin_tokens(admin: &super::AdminConfig, report: &mut Report) {
    let legacy = admin.resolved_token();
    let mut names = std::collections::BTreeSet::new();
    let mut secrets: Vec<(String, String)> = legacy
        .iter()
        .map(|s| ("admin.token".to_string(), s.clone()))
        .collect();
    for (i, token) in admin.tokens.iter().enumerate() {
        let path = format!("admin.tokens[{i}]");
        let name = token.name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            report.error(
                format!("{path}.name"),
                "must be 1 to 64 printable characters",
            );
        } else if name == super::tokens::LEGACY_TOKEN_NAME && legacy.is_some() {
            report.error(
                format!("{path}.name"),
                "`admin` is the name of admin.token (or $TOLLGATE_ADMIN_TOKEN); choose another",
            );
        } else if !names.insert(name.to_string()) {
            report.error(
                format!("{path}.name"),
                format!("`{name}` is used by another token"),
            );
        }
        match token.secret() {
            Err(why) => report.error(path, why),
            Ok(secret) => {
                if secret.len() < 16 {
                    report.warn(
                        path.clone(),
                        "an admin token shorter than 16 characters is easy to guess",
                    );
                }
                if let Some((other, _)) = secrets.iter().find(|(_, s)| *s == secret) {
                    report.error(
                        path.clone(),
                        format!("the same secret as {other}: each token needs its own, or the audit trail cannot tell them apart"),
                    );
                }
                secrets.push((path, secret));
            }
        }
    }
}

fn check_admin_web(config: &Config, report: &mut Report) {
    let admin = &config.admin;
    for (i, pattern) in admin.allowed_hosts.iter().enumerate() {
        let path = format!("admin.allowed_hosts[{i}]");
        if pattern.is_always_accepted() {
            report.warn(
                &path,
                format!(
                    "`{pattern}` is always accepted (localhost and IP addresses need no entry)"
                ),
            );
        } else if admin.allowed_hosts[..i].contains(pattern) {
            report.warn(&path, format!("`{pattern}` is listed twice"));
        }
    }
    for (i, origin) in admin.allowed_origins.iter().enumerate() {
        if admin.allowed_origins[..i].contains(origin) {
            report.warn(
                format!("admin.allowed_origins[{i}]"),
                format!("`{origin}` is listed twice"),
            );
        }
    }
}

/// The YAML path of `listen[i]` (`listen` alone when it is not a list of several).
pub fn listen_path(config: &Config, i: usize) -> String {
    if config.listen.len() == 1 {
        "listen".to_string()
    } else {
        format!("listen[{i}]")
    }
}

fn check_listener_options(listener: &super::ListenConfig, path: &str, report: &mut Report) {
    match &listener.tls {
        Some(tls) => {
            if tls.certs.is_empty() {
                report.error(
                    format!("{path}.tls.certs"),
                    "is empty; list at least one { cert: file.pem, key: file.key }",
                );
            }
            for (j, cert) in tls.certs.iter().enumerate() {
                for (key, value) in [("cert", &cert.cert), ("key", &cert.key)] {
                    if value.trim().is_empty() {
                        report.error(format!("{path}.tls.certs[{j}].{key}"), "is empty");
                    }
                }
            }
            if listener.redirect_https.is_some() {
                report.error(
                    format!("{path}.redirect_https"),
                    "only a plaintext listener redirects to HTTPS; this one is TLS already",
                );
            }
        }
        None => {
            if listener.hsts.is_some() {
                report.error(
                    format!("{path}.hsts"),
                    "HSTS is only honoured over HTTPS; set it on a TLS listener",
                );
            }
            if listener.redirect_https == Some(0) {
                report.error(
                    format!("{path}.redirect_https"),
                    "must be a port from 1 to 65535",
                );
            }
        }
    }
    if let Some(hsts) = &listener.hsts {
        if hsts.preload && (!hsts.include_subdomains || hsts.max_age.as_secs() < 31_536_000) {
            report.warn(
                format!("{path}.hsts.preload"),
                "browsers' preload lists require include_subdomains and a max_age of at least 365d",
            );
        }
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
            if !backend.tls {
                for (key, set) in [
                    ("sni", backend.sni.is_some()),
                    ("ca_file", backend.ca_file.is_some()),
                    ("verify", !backend.verify),
                ] {
                    if set {
                        report.error(
                            format!("{path}.{key}"),
                            "only applies to a TLS backend; add `tls: true`",
                        );
                    }
                }
            } else if !backend.verify {
                report.warn(
                    format!("{path}.verify"),
                    "the backend's certificate is not checked: anyone on the path can pose as it",
                );
            }
            if let Some(sni) = &backend.sni {
                if sni.is_empty()
                    || sni.contains(|c: char| c.is_whitespace() || c == ':' || c == '/')
                {
                    report.error(format!("{path}.sni"), format!("`{sni}` is not a host name"));
                }
            }
            if backend
                .ca_file
                .as_deref()
                .is_some_and(|f| f.trim().is_empty())
            {
                report.error(format!("{path}.ca_file"), "is empty");
            }
        }
        for (key, value) in [
            ("connect_timeout", upstream.connect_timeout),
            ("read_timeout", upstream.read_timeout),
            ("write_timeout", upstream.write_timeout),
            (
                "idle_timeout",
                upstream.idle_timeout.unwrap_or(Duration::MAX),
            ),
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
    let mut seen: HashMap<(Option<String>, String), usize> = HashMap::new();
    for (i, route) in config.routes.iter().enumerate() {
        let base = format!("routes[{i}]");
        let host = match &route.host {
            None => Some(None),
            Some(host) => match check_route_host(host) {
                Ok(()) => Some(Some(host.to_ascii_lowercase())),
                Err(why) => {
                    report.error(format!("{base}.host"), why);
                    None
                }
            },
        };
        match check_prefix(&route.prefix) {
            Err(why) => report.error(format!("{base}.prefix"), why),
            Ok(()) => {
                let canonical = canonical_prefix(&route.prefix);
                if let Some(host) = host {
                    if let Some(first) = seen.insert((host.clone(), canonical.clone()), i) {
                        let on = match &host {
                            Some(h) => format!(" on host `{h}`"),
                            None => String::new(),
                        };
                        report.error(
                            format!("{base}.prefix"),
                            format!("duplicate prefix `{canonical}`{on}: routes[{first}] already uses it"),
                        );
                    }
                }
            }
        }
        for (j, method) in route.methods.iter().enumerate() {
            let path = format!("{base}.methods[{j}]");
            if method.is_empty() || http::Method::from_bytes(method.as_bytes()).is_err() {
                report.error(&path, format!("`{method}` is not an HTTP method"));
            } else if route.methods[..j]
                .iter()
                .any(|m| m.eq_ignore_ascii_case(method))
            {
                report.error(&path, format!("`{method}` is listed twice"));
            }
        }
        for (j, name) in route.limits.iter().enumerate() {
            if !config.limits.contains_key(name) {
                let known: Vec<&str> = config.limits.keys().map(String::as_str).collect();
                let hint = if known.is_empty() {
                    "no limits are defined".to_string()
                } else {
                    format!("defined limits: {}", known.join(", "))
                };
                report.error(
                    format!("{base}.limits[{j}]"),
                    format!("unknown limit `{name}` ({hint})"),
                );
            } else if route.limits[..j].contains(name) {
                report.error(
                    format!("{base}.limits[{j}]"),
                    format!("limit `{name}` is listed twice"),
                );
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

fn check_identity(config: &Config, report: &mut Report) {
    for (i, entry) in config.trusted_proxies.iter().enumerate() {
        if parse_net(entry).is_none() {
            report.error(
                format!("trusted_proxies[{i}]"),
                format!("`{entry}` is not an IP address or CIDR range (like 10.0.0.0/8)"),
            );
        }
    }
    let header = &config.api_keys.header;
    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
        report.error(
            "api_keys.header",
            format!("`{header}` is not a valid header name"),
        );
    }
    let tiers: Vec<&String> = config
        .limits
        .values()
        .flat_map(|l| l.tiers.keys())
        .collect();
    for (key, spec) in &config.api_keys.keys {
        let path = format!("api_keys.keys.{key}");
        if key.len() < 8 {
            report.warn(
                &path,
                "an API key shorter than 8 characters is easy to guess",
            );
        }
        if spec.tenant.is_empty() {
            report.error(format!("{path}.tenant"), "is empty");
        }
        if let Some(tier) = &spec.tier {
            if !tiers.contains(&tier) {
                report.warn(
                    format!("{path}.tier"),
                    format!("no limit defines tier `{tier}`; the policies' own numbers apply"),
                );
            }
        }
    }
}

fn check_auth(config: &Config, report: &mut Report) {
    use super::auth::{TokenSource, ASYMMETRIC, SYMMETRIC};
    for (name, p) in &config.auth.jwt {
        let base = format!("auth.jwt.{name}");
        if !valid_name(name) {
            report.error(
                &base,
                format!("provider name `{name}` may use only letters, digits, `_`, `-` and `.`"),
            );
        }
        if p.issuer.trim().is_empty() {
            report.error(format!("{base}.issuer"), "is empty");
        }
        for (i, aud) in p.audiences.iter().enumerate() {
            if aud.is_empty() {
                report.error(format!("{base}.audiences[{i}]"), "is empty");
            }
        }
        let names = p.algorithm_names();
        if p.algorithms.as_ref().is_some_and(|a| a.is_empty()) {
            report.error(format!("{base}.algorithms"), "lists no algorithm");
        }
        let mut symmetric = false;
        for (i, alg) in names.iter().enumerate() {
            if SYMMETRIC.contains(&alg.as_str()) {
                symmetric = true;
                if p.secret_env.is_none() {
                    report.error(
                        format!("{base}.algorithms[{i}]"),
                        format!("{alg} needs `secret_env` (the shared secret); a JWKS verifies asymmetric algorithms only"),
                    );
                }
            } else if !ASYMMETRIC.contains(&alg.as_str()) {
                let why = if alg.eq_ignore_ascii_case("none") {
                    "unsigned tokens are never accepted".to_string()
                } else {
                    format!("unknown algorithm `{alg}`; use {}", ASYMMETRIC.join(", "))
                };
                report.error(format!("{base}.algorithms[{i}]"), why);
            }
        }
        let asymmetric = names.iter().any(|a| ASYMMETRIC.contains(&a.as_str()));
        match (&p.jwks_url, &p.jwks_file) {
            (Some(_), Some(_)) => report.error(
                format!("{base}.jwks_file"),
                "give jwks_url or jwks_file, not both",
            ),
            (None, None) if asymmetric => report.error(
                &base,
                "needs jwks_url or jwks_file (where the signing keys are published)",
            ),
            (Some(url), None) => match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    if u.scheme() == "http" {
                        report.warn(
                            format!("{base}.jwks_url"),
                            "keys fetched over plain http can be replaced in transit; use https",
                        );
                    }
                }
                _ => report.error(
                    format!("{base}.jwks_url"),
                    format!("`{url}` is not an http or https URL"),
                ),
            },
            (None, Some(file)) if std::fs::metadata(file).is_err() => {
                report.warn(
                    format!("{base}.jwks_file"),
                    format!("`{file}` cannot be read yet; routes of this provider answer 503 until it can"),
                );
            }
            _ => {}
        }
        if let Some(env) = &p.secret_env {
            if !symmetric {
                report.warn(
                    format!("{base}.secret_env"),
                    "no HS256/HS384/HS512 in `algorithms`, so the secret is never used",
                );
            } else if !std::env::var(env).is_ok_and(|v| !v.is_empty()) {
                report.error(
                    format!("{base}.secret_env"),
                    format!("the environment variable `{env}` is not set"),
                );
            }
        }
        if p.leeway > std::time::Duration::from_secs(600) {
            report.error(format!("{base}.leeway"), "must be at most 10m");
        }
        if p.token_from.is_empty() {
            report.error(
                format!("{base}.token_from"),
                "lists no place to read the token from",
            );
        }
        for (i, source) in p.token_from.iter().enumerate() {
            if let Err(why) = TokenSource::parse(source) {
                report.error(format!("{base}.token_from[{i}]"), why);
            }
        }
        for (field, claim) in [
            ("tier_claim", &p.tier_claim),
            ("tenant_claim", &p.tenant_claim),
        ] {
            if let Some(claim) = claim {
                if !super::limits::valid_claim_path(claim) {
                    report.error(
                        format!("{base}.{field}"),
                        format!("`{claim}` is not a claim name (dots for nested claims)"),
                    );
                }
            }
        }
        for (claim, header) in &p.forward_claims {
            let path = format!("{base}.forward_claims.{claim}");
            if !super::limits::valid_claim_path(claim) {
                report.error(&path, format!("`{claim}` is not a claim name"));
            }
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                report.error(&path, format!("`{header}` is not a valid header name"));
            }
        }
    }
    let jwt_limits: Vec<&String> = config
        .limits
        .iter()
        .filter(|(_, l)| l.key.0.iter().any(|p| matches!(p, super::KeyPart::Jwt(_))))
        .map(|(n, _)| n)
        .collect();
    for (i, route) in config.routes.iter().enumerate() {
        match &route.auth {
            Some(auth) if !config.auth.jwt.contains_key(&auth.jwt) => {
                let defined: Vec<&str> = config.auth.jwt.keys().map(String::as_str).collect();
                report.error(
                    format!("routes[{i}].auth.jwt"),
                    format!(
                        "unknown provider `{}` (defined under auth.jwt: {})",
                        auth.jwt,
                        if defined.is_empty() {
                            "none".into()
                        } else {
                            defined.join(", ")
                        }
                    ),
                );
            }
            Some(_) => {}
            None => {
                for (j, limit) in route.limits.iter().enumerate() {
                    if jwt_limits.contains(&limit) {
                        report.warn(
                            format!("routes[{i}].limits[{j}]"),
                            format!("`{limit}` keys by a jwt: claim but this route verifies no token (add `auth`); every request shares the missing-claim bucket"),
                        );
                    }
                }
            }
        }
    }
}

/// An IP address or a CIDR range.
pub fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

fn check_redis(config: &Config, report: &mut Report) {
    let Some(redis) = &config.redis else {
        return;
    };
    if let Err((key, why)) = super::redis::endpoints(redis) {
        report.error(key, why);
    }
    if redis.sync_interval < Duration::from_millis(5)
        || redis.sync_interval > Duration::from_secs(10)
    {
        report.error("redis.sync_interval", "must be between 5ms and 10s");
    }
    if redis.timeout.is_zero() || redis.timeout > Duration::from_secs(10) {
        report.error("redis.timeout", "must be between 1ms and 10s");
    }
    if !valid_name(&redis.key_prefix) {
        report.error(
            "redis.key_prefix",
            "may use only letters, digits, `_`, `-` and `.`",
        );
    }
}

fn check_limits(config: &Config, report: &mut Report) {
    use super::limits::{Algorithm, CalendarUnit, Scope, SyncMode};
    for (name, limit) in &config.limits {
        let base = format!("limits.{name}");
        if !valid_name(name) {
            report.error(
                &base,
                format!("limit name `{name}` may use only letters, digits, `_`, `-` and `.`"),
            );
        }
        let algorithm = limit.algorithm;
        let tiers = limit
            .tiers
            .iter()
            .map(|(t, c)| (format!("{base}.tiers.{t}"), c));
        let overrides = limit
            .overrides
            .iter()
            .map(|(s, c)| (format!("{base}.overrides.{s}"), c));
        let numbers = std::iter::once((base.clone(), limit.rate, limit.burst, limit.limit)).chain(
            tiers.chain(overrides).map(|(path, c)| {
                (
                    path,
                    c.rate.or(limit.rate),
                    c.burst.or(limit.burst),
                    c.limit.or(limit.limit),
                )
            }),
        );
        for (path, rate, burst, max) in numbers {
            if algorithm == Algorithm::Concurrency {
                match max {
                    None => report.error(
                        format!("{path}.limit"),
                        "a concurrency limit needs `limit: N` (requests in flight)",
                    ),
                    Some(0) => report.error(format!("{path}.limit"), "must be at least 1"),
                    _ => {}
                }
                if rate.is_some() && path == base {
                    report.error(
                        format!("{path}.rate"),
                        "a concurrency limit has no rate; use `limit: N`",
                    );
                }
            } else {
                if rate.is_none() {
                    report.error(
                        format!("{path}.rate"),
                        format!("{} needs `rate: N/window`, like 100/1m", algorithm.name()),
                    );
                }
                if max.is_some() && path == base {
                    report.error(
                        format!("{path}.limit"),
                        "only concurrency limits take `limit`; use `rate`",
                    );
                }
            }
            if let Some(b) = burst {
                if !algorithm.is_bucket() && path == base {
                    report.error(
                        format!("{path}.burst"),
                        "only token_bucket and gcra take `burst`",
                    );
                } else if b == 0 {
                    report.error(format!("{path}.burst"), "must be at least 1");
                }
            }
            let window_algorithm =
                matches!(algorithm, Algorithm::FixedWindow | Algorithm::SlidingWindow);
            if let Some(r) = rate.filter(|r| r.calendar.is_some_and(|u| u != CalendarUnit::Day)) {
                if !window_algorithm && algorithm != Algorithm::Concurrency {
                    report.error(
                        format!("{path}.rate"),
                        format!("`{r}`: calendar periods need a window algorithm (fixed_window or sliding_window)"),
                    );
                }
            }
            if algorithm == Algorithm::SlidingLog {
                if let Some(r) = rate {
                    if r.count > 10_000 {
                        report.error(format!("{path}.rate"), "sliding_log keeps one entry per request; use at most 10000 per window, or sliding_window");
                    }
                }
            }
        }
        check_timezone(limit, &base, report);
        check_response_cost(limit, &base, report);
        if limit.scope == Scope::Global {
            if config.redis.is_none() {
                report.error(
                    format!("{base}.scope"),
                    "a global limit needs a `redis` section; add one or use scope: local",
                );
            }
            if algorithm == Algorithm::SlidingLog && limit.sync == SyncMode::Async {
                report.error(format!("{base}.sync"), "sliding_log is exact and is kept in Redis; use sync: atomic (or sliding_window)");
            }
        }
        if !(400..=599).contains(&limit.status) {
            report.error(format!("{base}.status"), "must be a 4xx or 5xx status");
        }
        if limit.on_limit == super::limits::OnLimit::Delay {
            if algorithm == Algorithm::Concurrency {
                report.error(
                    format!("{base}.on_limit"),
                    "a concurrency limit cannot tell when a slot frees up; use on_limit: refuse",
                );
            }
            if limit.block_for.is_some() {
                report.error(
                    format!("{base}.block_for"),
                    "a delayed request is never refused, so nothing would start the block; choose on_limit: delay or block_for",
                );
            }
            if limit.max_delay < Duration::from_millis(1)
                || limit.max_delay > Duration::from_secs(60)
            {
                report.error(format!("{base}.max_delay"), "must be between 1ms and 60s");
            }
            if limit.max_waiting == 0 {
                report.error(format!("{base}.max_waiting"), "must be at least 1");
            }
        }
        if let Some(block) = limit.block_for {
            if algorithm == Algorithm::Concurrency {
                report.error(
                    format!("{base}.block_for"),
                    "a concurrency slot comes back when a request ends; block_for applies to rates",
                );
            } else if block < Duration::from_secs(1) || block > Duration::from_secs(86_400) {
                report.error(format!("{base}.block_for"), "must be between 1s and 24h");
            }
        }
        if limit.count_status.is_some() && algorithm == Algorithm::Concurrency {
            report.error(
                format!("{base}.count_status"),
                "a concurrency limit counts requests in flight, not responses; leave count_status out",
            );
        }
        if limit.max_keys == 0 {
            report.error(format!("{base}.max_keys"), "must be at least 1");
        }
        let keys_by_ip = limit
            .key
            .0
            .iter()
            .any(|p| matches!(p, super::KeyPart::ClientIp(_)));
        for (field, value, default, range) in [
            (
                "ipv6_prefix",
                limit.ipv6_prefix,
                super::limits::DEFAULT_IPV6_PREFIX,
                32..=128u32,
            ),
            (
                "ipv4_prefix",
                limit.ipv4_prefix,
                super::limits::DEFAULT_IPV4_PREFIX,
                8..=32u32,
            ),
        ] {
            if !range.contains(&value) {
                report.error(
                    format!("{base}.{field}"),
                    format!(
                        "must be between {} and {} (bits of the address that make the key)",
                        range.start(),
                        range.end()
                    ),
                );
            } else if !keys_by_ip && value != u32::from(default) {
                report.warn(
                    format!("{base}.{field}"),
                    "applies only to a key with client_ip in it",
                );
            }
        }
        if let super::limits::CostSpec::Fixed(0) = limit.cost {
            report.warn(
                format!("{base}.cost"),
                "a cost of 0 makes this limit count nothing",
            );
        }
        for tier in limit.tiers.keys() {
            if !valid_name(tier) {
                report.error(
                    format!("{base}.tiers.{tier}"),
                    "tier names may use only letters, digits, `_`, `-` and `.`",
                );
            }
        }
        for subject in limit.overrides.keys() {
            if let Err(why) = super::runtime::check_subject(subject) {
                report.error(format!("{base}.overrides.{subject}"), why);
            }
        }
        if !config.routes.iter().any(|r| r.limits.contains(name)) {
            report.warn(&base, format!("limit `{name}` is not used by any route"));
        }
    }
}

/// A cost from the response needs an algorithm that counts units and can carry a debt,
/// and a reserve that fits in the quota; `reserve` and `max_cost` mean nothing without it.
fn check_response_cost(limit: &super::LimitConfig, base: &str, report: &mut Report) {
    use super::limits::{Algorithm, DEFAULT_MAX_COST, DEFAULT_RESERVE};
    if !limit.cost.from_response() {
        for (key, set) in [
            ("reserve", limit.reserve.is_some()),
            ("max_cost", limit.max_cost.is_some()),
        ] {
            if set {
                report.error(
                    format!("{base}.{key}"),
                    "only a cost from the response (response_header:NAME or response_json:PATH) takes a reserve and max_cost",
                );
            }
        }
        return;
    }
    match limit.algorithm {
        Algorithm::SlidingLog => report.error(
            format!("{base}.cost"),
            "sliding_log keeps one entry per unit admitted and cannot charge units after the response; use sliding_window with a cost from the response",
        ),
        Algorithm::Concurrency => report.error(
            format!("{base}.cost"),
            "a concurrency limit counts requests in flight, and a response's cost does not change how many are; use a rate algorithm",
        ),
        _ => {}
    }
    let reserve = limit.reserve.unwrap_or(DEFAULT_RESERVE);
    let max_cost = limit.max_cost.unwrap_or(DEFAULT_MAX_COST);
    if reserve == 0 {
        report.error(
            format!("{base}.reserve"),
            "must be at least 1: a request is admitted when at least the reserve is left",
        );
    }
    if max_cost < reserve {
        report.error(
            format!("{base}.max_cost"),
            format!("must be at least the reserve ({reserve})"),
        );
    }
    let quotas = std::iter::once(("", limit.rate, limit.burst)).chain(limit.tiers.iter().map(
        |(name, t)| {
            (
                name.as_str(),
                t.rate.or(limit.rate),
                t.burst.or(limit.burst),
            )
        },
    ));
    for (tier, rate, burst) in quotas {
        let quota = match (limit.algorithm.is_bucket(), rate, burst) {
            (true, _, Some(b)) => b,
            (_, Some(r), _) => r.count,
            _ => continue,
        };
        if reserve > quota {
            let whose = if tier.is_empty() {
                String::new()
            } else {
                format!(" of tier `{tier}`")
            };
            report.error(
                format!("{base}.reserve"),
                format!("the reserve {reserve} is more than the whole quota{whose} ({quota}): no request could be admitted"),
            );
        }
    }
}

/// A `timezone` only moves where days, weeks and months begin. Like a misspelt key, one
/// that moves nothing is an error rather than a silent no-op: an operator who wrote
/// `timezone: Asia/Tokyo` beside `10/1s` expects something of it.
fn check_timezone(limit: &super::LimitConfig, base: &str, report: &mut Report) {
    use super::limits::Algorithm;
    let Some(tz) = limit.timezone else {
        return;
    };
    if !matches!(
        limit.algorithm,
        Algorithm::FixedWindow | Algorithm::SlidingWindow
    ) {
        report.error(
            format!("{base}.timezone"),
            format!(
                "{} has no calendar periods; a timezone needs fixed_window or sliding_window with a rate per 1d, 1w or 1mo",
                limit.algorithm.name()
            ),
        );
        return;
    }
    let rates = limit
        .rate
        .into_iter()
        .chain(limit.tiers.values().filter_map(|t| t.rate))
        .chain(limit.overrides.values().filter_map(|t| t.rate));
    let calendar = rates.clone().any(|r| r.calendar.is_some());
    if !calendar {
        let written: Vec<String> = rates.map(|r| r.to_string()).collect();
        report.error(
            format!("{base}.timezone"),
            format!(
                "{} has no effect on {}: a timezone sets where days, weeks and months begin (rates per 1d, 1w or 1mo); shorter windows are the same in every time zone",
                tz.name(),
                written.join(", ")
            ),
        );
    }
}

/// A route's host: a name (`api.example.com`), a wildcard over the names under a domain
/// (`*.example.com`), an IPv4 address or a bracketed IPv6 address. No port: matching
/// ignores the port a client sends.
fn check_route_host(host: &str) -> Result<(), String> {
    if host.starts_with('[') {
        return match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(ip) if ip.parse::<std::net::Ipv6Addr>().is_ok() => Ok(()),
            _ => Err(format!("`{host}` is not a bracketed IPv6 address such as [::1] (ports are not part of a host)")),
        };
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Err(format!(
            "`{host}`: a wildcard is only allowed as the whole first label, like *.example.com"
        ));
    }
    if let Some((_, port)) = name.rsplit_once(':') {
        return Err(format!(
            "`{host}` has a port (`:{port}`); hosts match without their port, so leave it out"
        ));
    }
    if name.is_empty() || name.len() > 253 {
        return Err(format!("`{host}` is not a host name"));
    }
    for label in name.split('.') {
        if label.is_empty()
            || label.len() > 63
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Err(format!(
                "`{host}` is not a host name (labels of letters, digits, `-` and `_`, separated by dots)"
            ));
        }
    }
    if host.starts_with("*.") && !name.contains('.') {
        return Err(format!(
            "`{host}` would cover a whole top-level domain; name a domain such as *.example.com"
        ));
    }
    Ok(())
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

fn check_store(config: &Config, report: &mut Report) {
    let store = &config.store;
    let kind = match &store.url {
        Some(url) => match super::store::kind_of(url) {
            Ok(kind) => Some(kind),
            Err(why) => {
                report.error("store.url", why);
                None
            }
        },
        None => None,
    };
    if let Some(var) = &store.password_env {
        if !matches!(kind, Some(super::store::StoreKind::Postgres)) {
            report.error(
                "store.password_env",
                "only a postgres:// store takes a password",
            );
        } else if std::env::var(var).map_or(true, |v| v.is_empty()) {
            report.error(
                "store.password_env",
                format!("the environment variable `{var}` is not set"),
            );
        }
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
    fn route_hosts() {
        for good in [
            "api.example.com",
            "*.example.com",
            "localhost",
            "127.0.0.1",
            "[::1]",
            "API.Example.com",
        ] {
            assert!(check_route_host(good).is_ok(), "{good}");
        }
        for bad in [
            "api.example.com:8080",
            "*.com",
            "a.*.com",
            "*",
            "",
            "a..b",
            "bad host",
            "[::1]:80",
            "x*.example.com",
        ] {
            assert!(check_route_host(bad).is_err(), "{bad}");
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
