//! Rate limit response fields: the IETF `RateLimit-Policy` / `RateLimit` structured fields
//! (draft-ietf-httpapi-ratelimit-headers), the widely used `X-RateLimit-*` trio, and
//! `Retry-After` on refusals.

use super::algorithm::Verdict;
use super::policy::Params;

/// Seconds for a header: rounded up, since early retries would only be refused again.
fn seconds(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// `Retry-After` in whole seconds, never 0 (a 0 invites an immediate retry storm).
pub fn retry_after_seconds(verdict: &Verdict) -> u64 {
    seconds(verdict.retry_after_ms).max(1)
}

/// An sf-string: the policy name, quoted and escaped (RFC 8941 §3.3.3).
fn sf_string(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        if (' '..='~').contains(&c) {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// The fields describing `verdict` under `policy`'s numbers.
pub fn fields(policy: &str, params: &Params, verdict: &Verdict) -> Vec<(&'static str, String)> {
    let name = sf_string(policy);
    let mut policy_field = format!("{name};q={}", params.quota());
    if let Some(w) = params.window_seconds() {
        policy_field.push_str(&format!(";w={w}"));
    }
    let reset = seconds(verdict.reset_ms);
    let mut out = vec![
        ("ratelimit-policy", policy_field),
        (
            "ratelimit",
            format!("{name};r={};t={reset}", verdict.remaining),
        ),
        ("x-ratelimit-limit", params.quota().to_string()),
        ("x-ratelimit-remaining", verdict.remaining.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
    ];
    if !verdict.allowed {
        out.push(("retry-after", retry_after_seconds(verdict).to_string()));
    }
    out
}

/// The body of a refused request.
pub fn limited_body(policy: &str, verdict: &Verdict) -> serde_json::Value {
    serde_json::json!({
        "error": "rate_limited",
        "policy": policy,
        "retry_after": retry_after_seconds(verdict),
    })
}

/// The body when a fail-closed policy cannot reach Redis.
pub fn unavailable_body(policy: &str) -> serde_json::Value {
    serde_json::json!({
        "error": "rate_limit_unavailable",
        "policy": policy,
        "retry_after": 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(allowed: bool, remaining: u64, reset_ms: u64, retry_after_ms: u64) -> Verdict {
        Verdict {
            allowed,
            limit: 100,
            remaining,
            reset_ms,
            retry_after_ms,
        }
    }

    #[test]
    fn allowed_fields() {
        let p = Params::Window {
            limit: 100,
            window_ms: 60_000,
            sliding: true,
        };
        let f = fields("per_client", &p, &verdict(true, 42, 16_200, 0));
        assert_eq!(
            f[0],
            ("ratelimit-policy", "\"per_client\";q=100;w=60".to_string())
        );
        assert_eq!(f[1], ("ratelimit", "\"per_client\";r=42;t=17".to_string()));
        assert_eq!(f[4], ("x-ratelimit-reset", "17".to_string()));
        assert!(f.iter().all(|(k, _)| *k != "retry-after"));
    }

    #[test]
    fn retry_after_is_whole_seconds_and_never_zero() {
        let p = Params::Concurrency { max: 3 };
        let f = fields("c", &p, &verdict(false, 0, 0, 1));
        assert!(f.contains(&("retry-after", "1".to_string())));
        assert_eq!(f[0].1, "\"c\";q=3");
        assert_eq!(retry_after_seconds(&verdict(false, 0, 0, 0)), 1);
        assert_eq!(retry_after_seconds(&verdict(false, 0, 0, 1001)), 2);
    }

    #[test]
    fn names_are_valid_sf_strings() {
        assert_eq!(sf_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
