//! Rate limit response fields: the IETF `RateLimit-Policy` / `RateLimit` structured fields
//! (draft-ietf-httpapi-ratelimit-headers), the widely used `X-RateLimit-*` trio, and
//! `Retry-After` on refusals.

use super::algorithm::Verdict;
use super::policy::Params;
use http::HeaderValue;

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

/// Response fields, by name: names are written as given (canonical case).
pub type Fields = Vec<(&'static str, HeaderValue)>;

/// What the fields of one limiter share from request to request, built once: the quoted
/// name, `RateLimit-Policy` and `X-RateLimit-Limit`. Only the remaining quota and the reset
/// time are formatted per request, which keeps the headers a small part of an allowed
/// request's cost.
#[derive(Debug, Clone)]
pub struct FieldTemplate {
    name: String,
    policy: HeaderValue,
    limit: HeaderValue,
}

impl FieldTemplate {
    pub fn new(policy: &str, params: &Params) -> Self {
        let name = sf_string(policy);
        let mut policy_field = format!("{name};q={}", params.quota());
        if let Some(w) = params.window_seconds() {
            policy_field.push_str(&format!(";w={w}"));
        }
        FieldTemplate {
            // An sf-string holds printable ASCII only, so both are valid header values.
            policy: HeaderValue::from_str(&policy_field)
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            limit: HeaderValue::from(params.quota()),
            name,
        }
    }

    /// The fields describing `verdict`.
    pub fn fields(&self, verdict: &Verdict) -> Fields {
        let reset = seconds(verdict.reset_ms);
        let mut ratelimit = Vec::with_capacity(self.name.len() + 48);
        ratelimit.extend_from_slice(self.name.as_bytes());
        ratelimit.extend_from_slice(b";r=");
        ratelimit.extend_from_slice(itoa::Buffer::new().format(verdict.remaining).as_bytes());
        ratelimit.extend_from_slice(b";t=");
        ratelimit.extend_from_slice(itoa::Buffer::new().format(reset).as_bytes());
        let mut out = Vec::with_capacity(6);
        out.push(("RateLimit-Policy", self.policy.clone()));
        out.push((
            "RateLimit",
            HeaderValue::from_maybe_shared(bytes::Bytes::from(ratelimit))
                .unwrap_or_else(|_| HeaderValue::from_static("")),
        ));
        out.push(("X-RateLimit-Limit", self.limit.clone()));
        out.push((
            "X-RateLimit-Remaining",
            HeaderValue::from(verdict.remaining),
        ));
        out.push(("X-RateLimit-Reset", HeaderValue::from(reset)));
        if !verdict.allowed {
            out.push((
                "Retry-After",
                HeaderValue::from(retry_after_seconds(verdict)),
            ));
        }
        out
    }
}

/// The body of a refused request.
/// The body of a refusal; `key` is the limit key as text (a client network in CIDR form),
/// so a client sees which bucket it ran out of.
pub fn limited_body(policy: &str, verdict: &Verdict, key: &str) -> serde_json::Value {
    serde_json::json!({
        "error": "rate_limited",
        "policy": policy,
        "key": key,
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
            calendar: None,
        };
        let f = FieldTemplate::new("per_client", &p).fields(&verdict(true, 42, 16_200, 0));
        assert_eq!(f[0].0, "RateLimit-Policy");
        assert_eq!(f[0].1, "\"per_client\";q=100;w=60");
        assert_eq!(f[1].0, "RateLimit");
        assert_eq!(f[1].1, "\"per_client\";r=42;t=17");
        assert_eq!(f[2], ("X-RateLimit-Limit", HeaderValue::from(100u64)));
        assert_eq!(f[3], ("X-RateLimit-Remaining", HeaderValue::from(42u64)));
        assert_eq!(f[4], ("X-RateLimit-Reset", HeaderValue::from(17u64)));
        assert!(f.iter().all(|(k, _)| *k != "Retry-After"));
    }

    #[test]
    fn retry_after_is_whole_seconds_and_never_zero() {
        let p = Params::Concurrency { max: 3 };
        let f = FieldTemplate::new("c", &p).fields(&verdict(false, 0, 0, 1));
        assert!(f.contains(&("Retry-After", HeaderValue::from(1u64))));
        assert_eq!(f[0].1, "\"c\";q=3");
        assert_eq!(retry_after_seconds(&verdict(false, 0, 0, 0)), 1);
        assert_eq!(retry_after_seconds(&verdict(false, 0, 0, 1001)), 2);
    }

    #[test]
    fn names_are_valid_sf_strings() {
        assert_eq!(sf_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
