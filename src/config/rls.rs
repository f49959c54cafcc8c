//! `rls`: Envoy's rate limit service, and the envoyproxy/ratelimit YAML files it serves
//! from `config_dir`, read as they are (one domain per file).
//!
//! The files are checked here with the rules their own server applies when it loads them
//! (a duplicate domain or descriptor, a bad unit, `unlimited` beside a unit, ...), so
//! `tollgate check` and a reload refuse what envoyproxy/ratelimit would refuse, with the
//! file, line and column. tollgate's additions (`rate`, `algorithm`, `sync`, `timezone`
//! in a `rate_limit` block) are fields their server does not know.

use super::errors::{ConfigError, Problem};
use super::limits::{Algorithm, RateSpec, SyncMode, TimeZone};
use super::locate::Locations;
use super::TlsConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RlsConfig {
    /// `ip:port` of the gRPC listener (h2c, or TLS with `tls`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The folder of envoyproxy/ratelimit config files (`*.yaml`, `*.yml`); relative to the
    /// config file's folder.
    pub config_dir: String,
    /// Terminate TLS on the listener with these certificates, like a proxy listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Answer with `RateLimit` and `RateLimit-Policy` in `response_headers_to_add`.
    #[serde(default)]
    pub response_headers: bool,
    /// The files of `config_dir`, read and checked when the config loads.
    #[serde(skip)]
    pub domains: Arc<Vec<DomainFile>>,
}

fn default_listen() -> String {
    "127.0.0.1:8081".into()
}

/// One file of `config_dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainFile {
    /// The file's path, for errors and logs.
    pub file: String,
    pub root: DomainConfig,
}

/// A file as envoyproxy/ratelimit reads it.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<DescriptorConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorConfig {
    #[serde(default)]
    pub key: String,
    /// A value to match exactly, or with `*` standing for any run of characters.
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    pub descriptors: Vec<DescriptorConfig>,
    /// Over the limit answers OK, but is counted and reported.
    #[serde(default)]
    pub shadow_mode: bool,
    /// Metrics name the request's value instead of the configured descriptor.
    #[serde(default)]
    pub detailed_metric: bool,
    /// Metrics include the request's value where the config names none.
    #[serde(default)]
    pub value_to_metric: bool,
    /// Every value matching the wildcard counts against one shared limit.
    #[serde(default)]
    pub share_threshold: bool,
    /// Over the limit refuses only when every quota-mode descriptor of the request is.
    #[serde(default)]
    pub quota_mode: bool,
    /// Accepted as their server accepts it (it goes into dynamic metadata there).
    #[serde(default)]
    pub metadata: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub requests_per_unit: Option<u32>,
    #[serde(default)]
    pub unlimited: bool,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub replaces: Vec<ReplaceConfig>,
    // tollgate's additions.
    /// A rate in tollgate's syntax (`10/30s`, `1000/1mo`) instead of `unit` and
    /// `requests_per_unit`.
    #[serde(default)]
    pub rate: Option<RateSpec>,
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    #[serde(default)]
    pub sync: Option<SyncMode>,
    #[serde(default)]
    pub timezone: Option<TimeZone>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceConfig {
    #[serde(default)]
    pub name: String,
}

/// envoyproxy/ratelimit's units, with the length of their windows: fixed windows aligned
/// on the Unix epoch, a month of 30 days and a year of 365, as theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    /// Their spelling, in any case (`minute`, `MINUTE`).
    pub fn parse(text: &str) -> Option<Unit> {
        Some(match text.to_ascii_lowercase().as_str() {
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            "week" => Unit::Week,
            "month" => Unit::Month,
            "year" => Unit::Year,
            _ => return None,
        })
    }

    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    /// The value of `RateLimitResponse.RateLimit.Unit` in Envoy's API.
    pub fn proto(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }

    /// The unit of a proto value; `None` for UNKNOWN or a value this build does not know.
    pub fn from_proto(value: i32) -> Option<Unit> {
        Some(match value {
            1 => Unit::Second,
            2 => Unit::Minute,
            3 => Unit::Hour,
            4 => Unit::Day,
            5 => Unit::Month,
            6 => Unit::Year,
            7 => Unit::Week,
            _ => return None,
        })
    }
}

/// Problems with `rls` in the main file (its own paths).
pub fn check_settings(rls: &RlsConfig, problems: &mut Vec<Problem>) {
    if let Err(e) = super::split_host_port(&rls.listen) {
        problems.push(Problem::at("rls.listen", e));
    }
    if rls.config_dir.trim().is_empty() {
        problems.push(Problem::at(
            "rls.config_dir",
            "name the folder of envoyproxy/ratelimit config files",
        ));
    }
    if let Some(tls) = &rls.tls {
        if tls.certs.is_empty() {
            problems.push(Problem::at(
                "rls.tls.certs",
                "list at least one certificate",
            ));
        }
    }
}

/// Reads every `*.yaml` and `*.yml` file of `dir` (in name order) and checks them as
/// envoyproxy/ratelimit does. `Err` carries located errors in those files, or a problem
/// with `rls.config_dir` itself (at that path of the main file).
pub fn load_dir(dir: &Path) -> Result<Vec<DomainFile>, DirError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        DirError::Setting(Problem::at(
            "rls.config_dir",
            format!("cannot read the folder {}: {e}", dir.display()),
        ))
    })?;
    let mut paths: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                )
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    paths.sort();
    let mut texts = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            DirError::Setting(Problem::at(
                "rls.config_dir",
                format!("cannot read {}: {e}", path.display()),
            ))
        })?;
        texts.push((path.display().to_string(), text));
    }
    parse_files(&texts).map_err(DirError::Files)
}

/// Why `config_dir` could not be loaded.
#[derive(Debug)]
pub enum DirError {
    /// The folder or a file in it cannot be read: a problem with `rls.config_dir`.
    Setting(Problem),
    /// Files that their server would refuse, located in those files.
    Files(Vec<ConfigError>),
}

/// Parses and checks files given as (name, text).
pub fn parse_files(files: &[(String, String)]) -> Result<Vec<DomainFile>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut loaded: Vec<DomainFile> = Vec::new();
    for (file, text) in files {
        let root: DomainConfig = if text.trim().is_empty() {
            DomainConfig::default()
        } else {
            match serde_yaml::from_str(text) {
                Ok(root) => root,
                Err(e) => {
                    errors.push(super::errors::from_serde(file, &e));
                    continue;
                }
            }
        };
        let mut problems = Vec::new();
        if root.domain.is_empty() {
            problems.push(Problem::at("domain", "a config file needs a `domain`"));
        } else if let Some(first) = loaded.iter().find(|d| d.root.domain == root.domain) {
            problems.push(Problem::at(
                "domain",
                format!(
                    "duplicate domain `{}`: {} has it already",
                    root.domain, first.file
                ),
            ));
        }
        check_level(&root.descriptors, "descriptors", &mut problems);
        if problems.is_empty() {
            loaded.push(DomainFile {
                file: file.clone(),
                root,
            });
        } else {
            let locations = Locations::index(text);
            errors.extend(problems.into_iter().map(|p| p.locate(file, &locations)));
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

/// The key a descriptor is found under at its level: `key` or `key_value`, as theirs.
pub fn composite_key(d: &DescriptorConfig) -> String {
    if d.value.is_empty() {
        d.key.clone()
    } else {
        format!("{}_{}", d.key, d.value)
    }
}

fn check_level(level: &[DescriptorConfig], base: &str, problems: &mut Vec<Problem>) {
    let mut seen: Vec<String> = Vec::with_capacity(level.len());
    for (i, d) in level.iter().enumerate() {
        let path = format!("{base}[{i}]");
        if d.key.is_empty() {
            problems.push(Problem::at(
                format!("{path}.key"),
                "a descriptor needs a `key`",
            ));
        }
        let composite = composite_key(d);
        if seen.contains(&composite) {
            problems.push(Problem::at(
                &path,
                format!("duplicate descriptor composite key `{composite}` at this level"),
            ));
        }
        seen.push(composite.clone());
        if d.share_threshold && !composite.contains('*') {
            problems.push(Problem::at(
                format!("{path}.share_threshold"),
                format!("share_threshold needs a wildcard value (with `*`), but the descriptor is `{composite}`"),
            ));
        }
        if let Some(rl) = &d.rate_limit {
            check_rate_limit(rl, &format!("{path}.rate_limit"), problems);
        }
        check_level(&d.descriptors, &format!("{path}.descriptors"), problems);
    }
}

fn check_rate_limit(rl: &RateLimitConfig, path: &str, problems: &mut Vec<Problem>) {
    let unit = rl.unit.as_deref().map(|u| (u, Unit::parse(u)));
    if rl.unlimited {
        if matches!(unit, Some((_, Some(_)))) || rl.rate.is_some() {
            problems.push(Problem::at(
                format!("{path}.unit"),
                "an unlimited rate limit takes no unit (nor rate)",
            ));
        }
        return;
    }
    match (unit, rl.rate) {
        (Some(_), Some(_)) => problems.push(Problem::at(
            format!("{path}.rate"),
            "give either `unit` with `requests_per_unit` or a `rate`, not both",
        )),
        (None, Some(_)) => {
            if rl.requests_per_unit.is_some() {
                problems.push(Problem::at(
                    format!("{path}.requests_per_unit"),
                    "a `rate` carries its own count; leave requests_per_unit out",
                ));
            }
        }
        (Some((text, None)), None) => problems.push(Problem::at(
            format!("{path}.unit"),
            format!("invalid rate limit unit `{text}`: use second, minute, hour, day, week, month or year (or tollgate's `rate`)"),
        )),
        (None, None) => problems.push(Problem::at(
            format!("{path}.unit"),
            "a rate limit needs a `unit` (second, minute, hour, day, week, month, year), `unlimited: true` or a `rate`",
        )),
        (Some((_, Some(_))), None) => {}
    }
    for (i, r) in rl.replaces.iter().enumerate() {
        if r.name.is_empty() {
            problems.push(Problem::at(
                format!("{path}.replaces[{i}].name"),
                "a replaces entry needs a name",
            ));
        } else if r.name == rl.name {
            problems.push(Problem::at(
                format!("{path}.replaces[{i}].name"),
                "a rate limit cannot replace itself",
            ));
        }
    }
    let algorithm = rl.algorithm.unwrap_or(Algorithm::FixedWindow);
    match algorithm {
        Algorithm::Concurrency => problems.push(Problem::at(
            format!("{path}.algorithm"),
            "concurrency limits count requests in flight, which the rate limit service never sees end",
        )),
        Algorithm::SlidingLog if rl.sync != Some(SyncMode::Atomic) => problems.push(Problem::at(
            format!("{path}.sync"),
            "sliding_log is exact and is kept in Redis; use sync: atomic (or sliding_window)",
        )),
        _ => {}
    }
    if let Some(rate) = rl.rate {
        if rate.calendar.is_some()
            && !matches!(algorithm, Algorithm::FixedWindow | Algorithm::SlidingWindow)
        {
            problems.push(Problem::at(
                format!("{path}.rate"),
                format!("`{rate}`: calendar periods need fixed_window or sliding_window"),
            ));
        }
        if algorithm == Algorithm::SlidingLog && rate.count > 10_000 {
            problems.push(Problem::at(
                format!("{path}.rate"),
                "sliding_log keeps one entry per request; use at most 10000 per window",
            ));
        }
    }
    if rl.timezone.is_some() && rl.rate.is_none_or(|r| r.calendar.is_none()) {
        problems.push(Problem::at(
            format!("{path}.timezone"),
            "a timezone sets where days, weeks and months begin: it needs a `rate` per 1d, 1w or 1mo",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(files: &[(&str, &str)]) -> Result<Vec<DomainFile>, Vec<String>> {
        let owned: Vec<(String, String)> = files
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        parse_files(&owned).map_err(|e| e.iter().map(|e| e.to_string()).collect())
    }

    const EXAMPLE: &str = "\
domain: rl
descriptors:
  - key: category
    value: account
    rate_limit:
      replaces:
        - name: bkthomps
      unit: minute
      requests_per_unit: 4
  - key: foo
    rate_limit:
      unit: MINUTE
      requests_per_unit: 2
    descriptors:
      - key: bar
        value: banned
        rate_limit:
          name: banned_limit
          unit: minute
          requests_per_unit: 0
      - key: baz
        value: shady
        rate_limit:
          unit: minute
          requests_per_unit: 3
        shadow_mode: true
      - key: bay
        rate_limit:
          unlimited: true
  - key: files
    value: files/*
    share_threshold: true
    value_to_metric: true
    detailed_metric: true
    rate_limit:
      unit: hour
      requests_per_unit: 10
  - key: service
    value: service_1
    quota_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 1
    metadata:
      service_with_quota:
        name: service_1
  - key: tg
    rate_limit:
      rate: 10/30s
      algorithm: sliding_window
      sync: atomic
  - key: monthly
    rate_limit:
      rate: 1000/1mo
      timezone: Europe/Paris
";

    #[test]
    fn reads_their_example_and_tollgates_additions() {
        let files = parse(&[("rl.yaml", EXAMPLE)]).unwrap();
        let root = &files[0].root;
        assert_eq!(root.domain, "rl");
        assert_eq!(root.descriptors.len(), 6);
        let foo = &root.descriptors[1];
        assert!(foo.descriptors[1].shadow_mode);
        assert!(foo.descriptors[2].rate_limit.as_ref().unwrap().unlimited);
        let tg = root.descriptors[4].rate_limit.as_ref().unwrap();
        assert_eq!(tg.rate.unwrap().count, 10);
        assert_eq!(tg.sync, Some(SyncMode::Atomic));
        assert_eq!(tg.algorithm, Some(Algorithm::SlidingWindow));
        assert!(root.descriptors[5]
            .rate_limit
            .as_ref()
            .unwrap()
            .timezone
            .is_some());
    }

    #[test]
    fn refuses_a_duplicate_domain_in_another_file() {
        let e = parse(&[
            ("a.yaml", "domain: d\n"),
            ("b.yaml", "# other\ndomain: d\n"),
        ])
        .unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("b.yaml:2:9: domain: duplicate domain `d`: a.yaml"),
            "{e:?}"
        );
    }

    #[test]
    fn refuses_a_duplicate_key_with_its_place() {
        let text = "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n";
        let e = parse(&[("d.yaml", text)]).unwrap_err();
        assert!(
            e[0].starts_with("d.yaml:5:")
                && e[0].contains("descriptors[1]: duplicate descriptor composite key `k_v`"),
            "{e:?}"
        );
        // The same key with another value, or without one, is another descriptor.
        let ok = "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n";
        parse(&[("d.yaml", ok)]).unwrap();
    }

    #[test]
    fn refuses_what_their_server_refuses() {
        let cases = [
            ("descriptors:\n  - key: k\n", "needs a `domain`"),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 1\n",
                "d.yaml:5:13: descriptors[0].rate_limit.unit: invalid rate limit unit `fortnight`",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: true\n      unit: second\n",
                "descriptors[0].rate_limit.unit: an unlimited rate limit takes no unit",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      requests_per_unit: 5\n",
                "needs a `unit`",
            ),
            (
                "domain: d\ndescriptors:\n  - value: v\n",
                "descriptors[0].key: a descriptor needs a `key`",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    share_threshold: true\n",
                "share_threshold needs a wildcard value",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      name: a\n      replaces: [{name: a}]\n      unit: second\n      requests_per_unit: 1\n",
                "cannot replace itself",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    colour: blue\n",
                "d.yaml:4:5: descriptors[0]: unknown field `colour`",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      rate: 5/10s\n",
                "not both",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    descriptors:\n      - key: j\n        rate_limit:\n          rate: 5/10s\n          timezone: Europe/Paris\n",
                "descriptors[0].descriptors[0].rate_limit.timezone",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(&[("d.yaml", text)]).unwrap_err();
            assert!(
                e.iter().any(|e| e.contains(expected)),
                "{text}\nexpected `{expected}` in {e:?}"
            );
        }
    }

    #[test]
    fn units_are_theirs() {
        assert_eq!(Unit::parse("Month").map(Unit::seconds), Some(30 * 86_400));
        assert_eq!(Unit::parse("unknown"), None);
        for u in [Unit::Second, Unit::Week, Unit::Year] {
            assert_eq!(Unit::from_proto(u.proto()), Some(u));
        }
    }
}
