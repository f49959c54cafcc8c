//! The domains of `rls.config_dir` as a lookup table, each rate limit a policy of the
//! engine, and the lookup of a request descriptor with envoyproxy/ratelimit's rules: per
//! level `key_value` first, then a wildcard value, then `key` alone; a limit applies only
//! where the descriptor ends.

use crate::config::rls::{composite_key, DescriptorConfig, DomainFile, RateLimitConfig, Unit};
use crate::config::{LimitConfig, RateSpec};
use crate::limit::Policy;
use crate::metrics::Metrics;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Every domain, ready to answer.
pub struct Table {
    domains: HashMap<String, Level>,
    /// Whether global limits have a Redis (else policies are local to this node).
    global: bool,
    /// Policies made for the `limit` a request carries, by (unit, requests per unit).
    overrides: parking_lot::Mutex<HashMap<(Unit, u32), Arc<Rule>>>,
    pub response_headers: bool,
}

#[derive(Default)]
struct Level {
    nodes: HashMap<String, Node>,
    /// Composite keys with a `*`, split on it, in file order.
    wildcards: Vec<(String, Vec<String>)>,
}

struct Node {
    rule: Option<Arc<Rule>>,
    children: Level,
    /// `share_threshold`: the value pattern every matching value counts under.
    share: Option<String>,
    value_to_metric: bool,
}

/// One `rate_limit` block of a file.
#[derive(Debug)]
pub struct Rule {
    /// Their stat key: `domain.key_value.key`.
    pub full_key: String,
    pub kind: Kind,
    pub shadow: bool,
    pub quota_mode: bool,
    pub name: String,
    pub replaces: Vec<String>,
    pub detailed_metric: bool,
}

#[derive(Debug)]
pub enum Kind {
    Unlimited,
    /// `requests_per_unit: 0`: every request is over the limit.
    Refuse {
        requests_per_unit: u32,
        unit: Option<Unit>,
    },
    Limited {
        policy: Arc<Policy>,
        requests_per_unit: u32,
        /// Their unit; `None` for a `rate` their units cannot say.
        unit: Option<Unit>,
    },
}

/// A request descriptor's rule, with the counter it counts against.
pub struct Found<'a> {
    pub rule: RuleRef<'a>,
    /// The bucket within the rule's policy: the descriptor's entries (a shared wildcard's
    /// pattern instead of the value).
    pub bucket: String,
    /// The name in metrics: the rule's, or the request's values where the config asks.
    pub metric: String,
}

pub enum RuleRef<'a> {
    Config(&'a Rule),
    Override(Arc<Rule>),
}

impl std::ops::Deref for RuleRef<'_> {
    type Target = Rule;
    fn deref(&self) -> &Rule {
        match self {
            RuleRef::Config(r) => r,
            RuleRef::Override(r) => r,
        }
    }
}

/// The most request-supplied limits kept as policies; past it an override is answered
/// like any other (its bucket still fleet-wide) by the closest one already made.
const MAX_OVERRIDES: usize = 1_024;

/// The name of the policy behind a rule. Braces would break the Redis Cluster hash tag
/// the name sits in.
fn policy_name(full_key: &str) -> String {
    format!("rls:{}", full_key.replace('{', "%7B").replace('}', "%7D"))
}

/// The policy's definition: fixed windows on the Unix epoch as theirs, or tollgate's
/// rate, algorithm, sync and timezone.
fn limit_config(rl: &RateLimitConfig, spec: RateSpec, global: bool) -> Option<LimitConfig> {
    let mut map = serde_yaml::Mapping::new();
    let mut set = |k: &str, v: serde_yaml::Value| {
        map.insert(serde_yaml::Value::String(k.into()), v);
    };
    set("key", "path".into());
    set(
        "algorithm",
        serde_yaml::to_value(
            rl.algorithm
                .unwrap_or(crate::config::Algorithm::FixedWindow),
        )
        .ok()?,
    );
    set("scope", if global { "global" } else { "local" }.into());
    if let Some(sync) = rl.sync {
        set("sync", serde_yaml::to_value(sync).ok()?);
    }
    if let Some(tz) = rl.timezone {
        set("timezone", serde_yaml::to_value(tz).ok()?);
    }
    set("rate", "1/1s".into());
    let mut config: LimitConfig = serde_yaml::from_value(serde_yaml::Value::Mapping(map)).ok()?;
    config.rate = Some(spec);
    Some(config)
}

fn unit_spec(count: u32, unit: Unit) -> RateSpec {
    RateSpec {
        count: u64::from(count),
        per: Duration::from_secs(unit.seconds()),
        // Their days, weeks, months and years are epoch windows, not calendar periods.
        calendar: None,
    }
}

impl Table {
    /// Builds the table, and the policies of its limits into `policies` (keeping those of
    /// `previous` whose definition did not change, with their counts).
    pub fn build(
        files: &[DomainFile],
        global: bool,
        response_headers: bool,
        previous: &BTreeMap<String, Arc<Policy>>,
        policies: &mut BTreeMap<String, Arc<Policy>>,
        metrics: &Metrics,
    ) -> Table {
        let mut domains = HashMap::new();
        for file in files {
            let mut level = Level::default();
            let mut builder = Builder {
                global,
                previous,
                policies,
                metrics,
            };
            builder.level(
                &mut level,
                &file.root.descriptors,
                &format!("{}.", file.root.domain),
            );
            domains.insert(file.root.domain.clone(), level);
        }
        Table {
            domains,
            global,
            overrides: parking_lot::Mutex::new(HashMap::new()),
            response_headers,
        }
    }

    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The rule for one request descriptor, as envoyproxy/ratelimit finds it.
    pub fn lookup<'a>(&'a self, domain: &str, entries: &[(&str, &str)]) -> Option<Found<'a>> {
        let mut level = self.domains.get(domain)?;
        let mut found: Option<&'a Rule> = None;
        let mut shares: Vec<Option<&'a str>> = Vec::new();
        let mut detailed = String::from(domain);
        let mut by_value = String::from(domain);
        let mut composite = String::new();
        for (i, (key, value)) in entries.iter().enumerate() {
            composite.clear();
            composite.push_str(key);
            composite.push('_');
            composite.push_str(value);
            detailed.push('.');
            detailed.push_str(&composite);
            let mut node = level.nodes.get(&composite);
            let mut wildcard: Option<&str> = None;
            if node.is_none() {
                if let Some((pattern, _)) = level
                    .wildcards
                    .iter()
                    .find(|(_, parts)| wildcard_match(parts, &composite))
                {
                    node = level.nodes.get(pattern);
                    wildcard = Some(pattern);
                }
            }
            let by_exact_value = node.is_some() && wildcard.is_none();
            if node.is_none() {
                node = level.nodes.get(*key);
            }
            let share = node.and_then(|n| n.share.as_deref());
            shares.push(share.filter(|_| wildcard.is_some()));
            by_value.push('.');
            by_value.push_str(key);
            if let Some(n) = node {
                let shown = match wildcard {
                    Some(_) if share.is_some() => share,
                    Some(_) if n.value_to_metric => Some(*value),
                    Some(pattern) => pattern.strip_prefix(&format!("{key}_")),
                    None if by_exact_value => Some(*value),
                    None if n.value_to_metric => Some(*value),
                    None => None,
                };
                if let Some(v) = shown.filter(|v| !v.is_empty()) {
                    by_value.push('_');
                    by_value.push_str(v);
                }
            }
            let Some(n) = node else { break };
            if i + 1 == entries.len() {
                found = n.rule.as_deref();
            }
            if n.children.nodes.is_empty() {
                break;
            }
            level = &n.children;
        }
        let rule = found?;
        let mut bucket = String::new();
        for (i, (key, value)) in entries.iter().enumerate() {
            if i > 0 {
                bucket.push('\n');
            }
            bucket.push_str(key);
            bucket.push('=');
            bucket.push_str(shares.get(i).copied().flatten().unwrap_or(value));
        }
        let metric = if rule.detailed_metric {
            if shares.iter().any(Option::is_some) {
                let mut m = String::from(domain);
                for (i, (key, value)) in entries.iter().enumerate() {
                    m.push('.');
                    m.push_str(key);
                    match shares.get(i).copied().flatten() {
                        Some(p) => {
                            m.push('_');
                            m.push_str(p);
                        }
                        None if !value.is_empty() => {
                            m.push('_');
                            m.push_str(value);
                        }
                        None => {}
                    }
                }
                m
            } else {
                detailed
            }
        } else {
            by_value
        };
        Some(Found {
            rule: RuleRef::Config(rule),
            bucket,
            metric,
        })
    }

    /// The rule for a descriptor that carries its own `limit`: their server applies it
    /// instead of the config's, never in shadow mode, counted per descriptor.
    pub fn override_rule(
        &self,
        domain: &str,
        entries: &[(&str, &str)],
        requests_per_unit: u32,
        unit: Unit,
        metrics: &Metrics,
    ) -> Found<'static> {
        let mut key = String::from(domain);
        key.push('.');
        for (i, (k, v)) in entries.iter().enumerate() {
            if i > 0 {
                key.push('.');
            }
            key.push_str(k);
            if !v.is_empty() {
                key.push('_');
                key.push_str(v);
            }
        }
        let rule = {
            let mut overrides = self.overrides.lock();
            let made = overrides.get(&(unit, requests_per_unit)).cloned();
            match made {
                Some(rule) => rule,
                None if overrides.len() >= MAX_OVERRIDES => overrides
                    .iter()
                    .filter(|((u, _), _)| *u == unit)
                    .min_by_key(|((_, n), _)| n.abs_diff(requests_per_unit))
                    .map(|(_, r)| r.clone())
                    .unwrap_or_else(|| {
                        Arc::new(self.override_policy(requests_per_unit, unit, metrics))
                    }),
                None => {
                    let rule = Arc::new(self.override_policy(requests_per_unit, unit, metrics));
                    overrides.insert((unit, requests_per_unit), rule.clone());
                    rule
                }
            }
        };
        Found {
            rule: RuleRef::Override(rule),
            bucket: key.clone(),
            metric: key,
        }
    }

    fn override_policy(&self, requests_per_unit: u32, unit: Unit, metrics: &Metrics) -> Rule {
        let full_key = format!("override.{requests_per_unit}.{unit:?}").to_ascii_lowercase();
        let kind = if requests_per_unit == 0 {
            Kind::Refuse {
                requests_per_unit,
                unit: Some(unit),
            }
        } else {
            // Atomic: the overrides are made on demand, outside the policies the sync
            // task leases for, and the Lua script keeps them exact fleet-wide.
            let rl = RateLimitConfig {
                unit: None,
                requests_per_unit: None,
                unlimited: false,
                name: String::new(),
                replaces: Vec::new(),
                rate: None,
                algorithm: None,
                sync: Some(crate::config::SyncMode::Atomic),
                timezone: None,
            };
            match limit_config(&rl, unit_spec(requests_per_unit, unit), self.global) {
                Some(config) => Kind::Limited {
                    policy: Arc::new(Policy::build(&policy_name(&full_key), &config, metrics)),
                    requests_per_unit,
                    unit: Some(unit),
                },
                None => Kind::Unlimited,
            }
        };
        Rule {
            full_key,
            kind,
            shadow: false,
            quota_mode: false,
            name: String::new(),
            replaces: Vec::new(),
            detailed_metric: false,
        }
    }
}

struct Builder<'a> {
    global: bool,
    previous: &'a BTreeMap<String, Arc<Policy>>,
    policies: &'a mut BTreeMap<String, Arc<Policy>>,
    metrics: &'a Metrics,
}

impl Builder<'_> {
    fn level(&mut self, level: &mut Level, descriptors: &[DescriptorConfig], parent: &str) {
        for d in descriptors {
            let composite = composite_key(d);
            let full_key = format!("{parent}{composite}");
            let rule = d
                .rate_limit
                .as_ref()
                .map(|rl| Arc::new(self.rule(d, rl, &full_key)));
            let mut children = Level::default();
            self.level(&mut children, &d.descriptors, &format!("{full_key}."));
            if composite.contains('*') {
                level.wildcards.push((
                    composite.clone(),
                    composite.split('*').map(str::to_string).collect(),
                ));
            }
            let share = (d.share_threshold && composite.contains('*')).then(|| d.value.clone());
            level.nodes.insert(
                composite,
                Node {
                    rule,
                    children,
                    share,
                    value_to_metric: d.value_to_metric,
                },
            );
        }
    }

    fn rule(&mut self, d: &DescriptorConfig, rl: &RateLimitConfig, full_key: &str) -> Rule {
        let unit = rl.unit.as_deref().and_then(Unit::parse);
        let kind = if rl.unlimited {
            Kind::Unlimited
        } else {
            let requests_per_unit = match rl.rate {
                Some(rate) => u32::try_from(rate.count).unwrap_or(u32::MAX),
                None => rl.requests_per_unit.unwrap_or(0),
            };
            let spec = match (rl.rate, unit) {
                (Some(rate), _) => Some(rate),
                (None, Some(unit)) => Some(unit_spec(requests_per_unit, unit)),
                (None, None) => None,
            };
            match spec {
                Some(spec) if spec.count > 0 => match limit_config(rl, spec, self.global) {
                    Some(config) => Kind::Limited {
                        policy: self.policy(full_key, &config),
                        requests_per_unit,
                        unit: if rl.rate.is_some() { None } else { unit },
                    },
                    None => Kind::Refuse {
                        requests_per_unit,
                        unit,
                    },
                },
                _ => Kind::Refuse {
                    requests_per_unit,
                    unit,
                },
            }
        };
        Rule {
            full_key: full_key.to_string(),
            kind,
            shadow: d.shadow_mode,
            quota_mode: d.quota_mode,
            name: rl.name.clone(),
            replaces: rl.replaces.iter().map(|r| r.name.clone()).collect(),
            detailed_metric: d.detailed_metric,
        }
    }

    fn policy(&mut self, full_key: &str, config: &LimitConfig) -> Arc<Policy> {
        let name = policy_name(full_key);
        let kept = self
            .previous
            .get(&name)
            .filter(|p| &p.config == config)
            .cloned();
        let policy = kept.unwrap_or_else(|| {
            let mut policy = Policy::build(&name, config, self.metrics);
            if let Some(old) = self.previous.get(&name) {
                policy.adopt(old);
            }
            Arc::new(policy)
        });
        self.policies.insert(name, policy.clone());
        policy
    }
}

/// Whether `value` matches a pattern split on `*`: each `*` any run of characters, the
/// parts in order, the first at the start and the last at the end.
fn wildcard_match(parts: &[String], value: &str) -> bool {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if parts.len() == 1 {
        return first == value;
    }
    let fixed: usize = parts.iter().map(String::len).sum();
    if value.len() < fixed || !value.starts_with(first.as_str()) || !value.ends_with(last.as_str())
    {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part.as_str()) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> (Table, BTreeMap<String, Arc<Policy>>) {
        let files =
            crate::config::rls::parse_files(&[("t.yaml".to_string(), text.to_string())]).unwrap();
        let mut policies = BTreeMap::new();
        let t = Table::build(
            &files,
            false,
            false,
            &BTreeMap::new(),
            &mut policies,
            &Metrics::new(),
        );
        (t, policies)
    }

    fn key(t: &Table, entries: &[(&str, &str)]) -> Option<(String, String, String)> {
        t.lookup("d", entries)
            .map(|f| (f.rule.full_key.clone(), f.bucket, f.metric))
    }

    const CONFIG: &str = "\
domain: d
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: key
    value: value
    rate_limit: {unit: second, requests_per_unit: 300}
  - key: path
    value: /api/*/action
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: route
    value_to_metric: true
    descriptors:
      - key: method
        rate_limit: {unit: minute, requests_per_unit: 60}
";

    #[test]
    fn the_most_specific_match_wins() {
        let (t, policies) = table(CONFIG);
        assert_eq!(
            key(&t, &[("remote_address", "50.0.0.1")]).unwrap().0,
            "d.remote_address"
        );
        assert_eq!(
            key(&t, &[("remote_address", "50.0.0.5")]).unwrap().0,
            "d.remote_address_50.0.0.5"
        );
        assert!(matches!(
            t.lookup("d", &[("remote_address", "50.0.0.5")])
                .unwrap()
                .rule
                .kind,
            Kind::Refuse { .. }
        ));
        // A limit of 0 needs no policy; the others have one each.
        assert_eq!(policies.len(), 6);
    }

    #[test]
    fn a_limit_applies_only_where_the_descriptor_ends() {
        let (t, _) = table(CONFIG);
        let (full, bucket, _) = key(
            &t,
            &[("message_type", "marketing"), ("to_number", "2061111111")],
        )
        .unwrap();
        assert_eq!(full, "d.message_type_marketing.to_number");
        assert_eq!(bucket, "message_type=marketing\nto_number=2061111111");
        // Their example 4: one level in the config, two in the request.
        assert!(key(&t, &[("key", "value"), ("subkey", "x")]).is_none());
        assert!(key(&t, &[("message_type", "marketing")]).is_none());
        assert!(key(&t, &[("nothing", "here")]).is_none());
        assert!(t.lookup("other", &[("key", "value")]).is_none());
    }

    #[test]
    fn wildcards_in_the_middle_and_shared_thresholds() {
        let (t, _) = table(CONFIG);
        assert_eq!(
            key(&t, &[("path", "/api/123/action")]).unwrap().0,
            "d.path_/api/*/action"
        );
        assert!(key(&t, &[("path", "/api/123/other")]).is_none());
        let a = key(&t, &[("files", "files/a.pdf")]).unwrap();
        let b = key(&t, &[("files", "files/b.csv")]).unwrap();
        assert_eq!(a.1, b.1, "share_threshold: one bucket for every match");
        let x = key(&t, &[("path", "/api/1/action")]).unwrap();
        let y = key(&t, &[("path", "/api/2/action")]).unwrap();
        assert_ne!(
            x.1, y.1,
            "without share_threshold each value is its own bucket"
        );
    }

    #[test]
    fn value_to_metric_names_the_request_value() {
        let (t, _) = table(CONFIG);
        let (_, _, metric) = key(&t, &[("route", "api"), ("method", "GET")]).unwrap();
        assert_eq!(metric, "d.route_api.method");
    }

    #[test]
    fn wildcard_matching() {
        let split = |p: &str| p.split('*').map(str::to_string).collect::<Vec<_>>();
        assert!(wildcard_match(&split("k_value*"), "k_value1"));
        assert!(wildcard_match(&split("k_value*"), "k_value"));
        assert!(!wildcard_match(&split("k_value*"), "k_valu"));
        assert!(wildcard_match(
            &split("r_/api/*/resource/*/action"),
            "r_/api/v1/resource/123/action"
        ));
        assert!(!wildcard_match(
            &split("r_/api/*/resource/*/action"),
            "r_/api/v1/resource/123/other"
        ));
        assert!(!wildcard_match(&split("k_ab*ba"), "k_aba"));
    }
}
