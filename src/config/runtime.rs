//! Policies created through the admin API: the YAML policy schema plus the routes (by
//! prefix) that apply them, merged into the file's config so that one validator and one
//! builder serve both.

use super::errors::Problem;
use super::{Config, LimitConfig, TierConfig};
use serde::{Deserialize, Serialize};

/// A policy kept in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimePolicy {
    pub name: String,
    pub spec: LimitConfig,
    /// Prefixes of the routes that apply it, after their own policies.
    pub routes: Vec<String>,
}

/// Other numbers for one tenant or one API key, for one policy (file or runtime).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeOverride {
    pub policy: String,
    /// `tenant:NAME` or `key:ID`.
    pub subject: String,
    pub numbers: TierConfig,
}

/// Whom an override is for: `tenant:NAME` or `key:ID` (an API key's 16-digit public id).
pub fn check_subject(subject: &str) -> Result<(), String> {
    match subject.split_once(':') {
        Some(("tenant", name)) if !name.is_empty() && name.len() <= 128 => Ok(()),
        Some(("key", id)) if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        _ => Err(format!(
            "`{subject}` names no one: use tenant:NAME or key:ID (the key's 16-digit id)"
        )),
    }
}

/// A policy name: what `limits.<name>` accepts in the file, and safe in a URL path.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err("must be 1 to 64 letters, digits, `_`, `-` or `.`".into())
    }
}

/// Reads an API body: the policy's fields as in `limits.<name>` of the file, plus
/// `routes`. `name` is left to the caller (it comes from the URL or is checked there).
/// Problems carry the field's path within the body.
pub fn parse_body(body: &serde_json::Value) -> Result<(LimitConfig, Vec<String>), Vec<Problem>> {
    let Some(fields) = body.as_object() else {
        return Err(vec![Problem::at("", "the body must be a JSON object")]);
    };
    let mut fields = fields.clone();
    fields.remove("name");
    let routes = match fields.remove("routes") {
        None => Vec::new(),
        Some(serde_json::Value::Array(items)) => {
            let mut routes = Vec::new();
            let mut problems = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(prefix) => routes.push(prefix.to_string()),
                    None => problems.push(Problem::at(
                        format!("routes[{i}]"),
                        "must be a route's prefix, such as \"/api\"",
                    )),
                }
            }
            if !problems.is_empty() {
                return Err(problems);
            }
            routes
        }
        Some(_) => {
            return Err(vec![Problem::at(
                "routes",
                "must be a list of route prefixes",
            )])
        }
    };
    // serde reports a missing field of a custom type with that type's own message, which
    // does not name the field.
    let missing: Vec<Problem> = ["key", "algorithm"]
        .iter()
        .filter(|f| !fields.contains_key(**f))
        .map(|f| Problem::at(*f, "missing: every policy needs `key` and `algorithm`"))
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let spec: LimitConfig = from_fields(&serde_json::Value::Object(fields))?;
    Ok((spec, routes))
}

/// Reads an API body's fields as the file's schema type `T`: through YAML, so that the
/// messages and paths are the ones the file gets.
pub fn from_fields<T: serde::de::DeserializeOwned>(
    fields: &serde_json::Value,
) -> Result<T, Vec<Problem>> {
    let yaml = serde_yaml::to_string(fields).map_err(|e| vec![Problem::at("", e.to_string())])?;
    serde_yaml::from_str(&yaml).map_err(|e| vec![yaml_problem(&e)])
}

/// A serde error of an API body, with the path of the field it is about.
fn yaml_problem(e: &serde_yaml::Error) -> Problem {
    let located = super::errors::from_serde("body", e);
    field_problem(located.path, located.message)
}

/// serde names an unknown or missing top-level field only in its message; the path is
/// that field.
fn field_problem(path: String, message: String) -> Problem {
    if !path.is_empty() {
        return Problem::at(path, message);
    }
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|lead| message.strip_prefix(lead))
        .and_then(|rest| rest.split('`').next())
        .map(str::to_string);
    Problem::at(named.unwrap_or_default(), message)
}

/// The config to run: the file's with the runtime policies and overrides merged in
/// ([`merge`]), checked as a whole by the file's own validator.
pub fn resolve(
    file: &Config,
    runtime: &[RuntimePolicy],
    overrides: &[RuntimeOverride],
) -> Result<Config, Vec<Problem>> {
    let (merged, mut problems) = merge(file, runtime, overrides);
    problems.extend(super::problems(&merged));
    if problems.is_empty() {
        Ok(merged)
    } else {
        Err(problems)
    }
}

/// Problems about the object at `object` (such as `limits.per_ip`) with paths as its API
/// body has them (`rate`, not `limits.per_ip.rate`); others keep their full path.
pub fn relative_to(object: &str, problems: Vec<Problem>) -> Vec<Problem> {
    problems
        .into_iter()
        .map(|p| {
            let rest = p.path.strip_prefix(object).map(str::to_string);
            match rest.as_deref() {
                Some("") => Problem::at("", p.message),
                Some(r) if r.starts_with('.') => Problem::at(&r[1..], p.message),
                _ => p,
            }
        })
        .collect()
}

/// The file's config with the runtime policies added: each under `limits`, and appended
/// to the policies of every route with one of its prefixes. A name the file already uses,
/// or a prefix no route has, is a problem at `limits.<name>`.
fn merge(
    file: &Config,
    runtime: &[RuntimePolicy],
    overrides: &[RuntimeOverride],
) -> (Config, Vec<Problem>) {
    let mut config = file.clone();
    let mut problems = Vec::new();
    for policy in runtime {
        let at = format!("limits.{}", policy.name);
        if file.limits.contains_key(&policy.name) {
            problems.push(Problem::at(
                at,
                format!(
                    "`{}` is defined both in the config file and through the admin API; rename or delete one",
                    policy.name
                ),
            ));
            continue;
        }
        config
            .limits
            .insert(policy.name.clone(), policy.spec.clone());
        for (i, prefix) in policy.routes.iter().enumerate() {
            let mut found = false;
            for route in config.routes.iter_mut().filter(|r| &r.prefix == prefix) {
                found = true;
                if !route.limits.contains(&policy.name) {
                    route.limits.push(policy.name.clone());
                }
            }
            if !found {
                problems.push(Problem::at(
                    format!("{at}.routes[{i}]"),
                    format!("no route in the config file has the prefix `{prefix}`"),
                ));
            }
        }
    }
    for o in overrides {
        match config.limits.get_mut(&o.policy) {
            Some(limit) => {
                limit.overrides.insert(o.subject.clone(), o.numbers.clone());
            }
            None => problems.push(Problem::at(
                format!("overrides.{}.{}", o.policy, o.subject),
                format!("there is no policy `{}`", o.policy),
            )),
        }
    }
    (config, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(body: serde_json::Value) -> Vec<(String, String)> {
        parse_body(&body)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.path, p.message))
            .collect()
    }

    #[test]
    fn a_body_reads_like_a_policy_of_the_file() {
        let (spec, routes) = parse_body(&json!({
            "name": "ignored", "key": "client_ip", "algorithm": "fixed_window",
            "rate": "5/1m", "routes": ["/a"]
        }))
        .unwrap();
        assert_eq!(routes, ["/a"]);
        assert_eq!(spec.rate.map(|r| r.count), Some(5));
    }

    #[test]
    fn problems_name_the_field() {
        let unknown =
            problems(json!({"key": "client_ip", "algorithm": "fixed_window", "rat": "5/1m"}));
        assert_eq!(unknown[0].0, "rat", "{unknown:?}");
        let missing = problems(json!({"algorithm": "fixed_window", "rate": "5/1m"}));
        assert_eq!(missing[0].0, "key", "{missing:?}");
        let rate =
            problems(json!({"key": "client_ip", "algorithm": "fixed_window", "rate": "often"}));
        assert_eq!(rate[0].0, "rate", "{rate:?}");
        let routes =
            problems(json!({"key": "client_ip", "algorithm": "fixed_window", "routes": "/a"}));
        assert_eq!(routes[0].0, "routes", "{routes:?}");
        let route =
            problems(json!({"key": "client_ip", "algorithm": "fixed_window", "routes": [1]}));
        assert_eq!(route[0].0, "routes[0]", "{route:?}");
        assert!(parse_body(&json!([])).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("per_tenant-v2.1").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
