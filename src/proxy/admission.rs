//! Identity checks and rate limits for one request, before it is forwarded: the route's
//! API key requirement, then its policies in order. The first policy that refuses answers;
//! an allowed request carries the headers of the most restrictive policy that applied.

use crate::config::Mode;
use crate::decisions::Summary;
use crate::gateway::{Gateway, Route};
use crate::identity::Lookup;
use crate::limit::headers::{self, Fields};
use crate::limit::{Outcome, RequestFacts};
use http::HeaderValue;
use pingora_limits::inflight::Guard;
use serde_json::{json, Value};

pub enum Admission {
    Pass {
        headers: Fields,
        guards: Vec<Guard>,
        summary: Option<Summary>,
    },
    Refuse {
        status: u16,
        body: Value,
        headers: Fields,
        summary: Summary,
    },
}

/// Refuses a request without a known key on a route that requires one.
pub fn require_key(route: &Route, lookup: &Lookup, header: &str) -> Option<Admission> {
    if !route.require_api_key {
        return None;
    }
    let detail = match lookup {
        Lookup::Known(_) => return None,
        Lookup::Missing => format!("this route needs an API key in the {header} header"),
        Lookup::Unknown => "the API key is not valid".to_string(),
    };
    let error = if matches!(lookup, Lookup::Missing) {
        "missing_api_key"
    } else {
        "invalid_api_key"
    };
    Some(Admission::Refuse {
        status: 401,
        body: json!({"error": error, "detail": detail}),
        headers: vec![(
            "WWW-Authenticate",
            HeaderValue::from_str(&format!("ApiKey header=\"{header}\""))
                .unwrap_or_else(|_| HeaderValue::from_static("ApiKey")),
        )],
        summary: Summary {
            policy: None,
            outcome: "unauthorized",
            remaining: None,
        },
    })
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allowed => "allowed",
        Outcome::Limited => "limited",
        Outcome::ShadowLimited => "shadow_limited",
        Outcome::FailedOpen => "failed_open",
        Outcome::Unavailable => "unavailable",
    }
}

pub async fn evaluate(route: &Route, gateway: &Gateway, facts: &RequestFacts<'_>) -> Admission {
    // The tightest policy's fields are built once, after every policy has decided.
    let mut best: Option<(
        f64,
        &headers::FieldTemplate,
        crate::limit::algorithm::Verdict,
    )> = None;
    let mut summary: Option<(f64, Summary)> = None;
    let mut guards = Vec::new();
    for policy in &route.limits {
        let limiter = policy.limiter(facts.tier);
        let name = Some(policy.name.clone());
        let cost = match policy.cost_of(facts.headers, limiter) {
            Ok(cost) => cost,
            Err(e) => {
                return Admission::Refuse {
                    status: 400,
                    body: json!({"error": "invalid_cost", "policy": &*policy.name, "detail": e.to_string()}),
                    headers: Vec::new(),
                    summary: Summary {
                        policy: name,
                        outcome: "invalid_cost",
                        remaining: None,
                    },
                }
            }
        };
        let link = gateway.redis.as_deref();
        let check = match policy.decide_now(limiter, facts, cost, link) {
            Some(decided) => decided,
            None => policy.check(limiter, facts, cost, link).await,
        };
        guards.extend(check.guard);
        let v = &check.verdict;
        match check.outcome {
            Outcome::Limited => {
                return Admission::Refuse {
                    status: policy.status,
                    body: headers::limited_body(&policy.name, v),
                    headers: limiter.fields.fields(v),
                    summary: Summary {
                        policy: name,
                        outcome: "limited",
                        remaining: Some(v.remaining),
                    },
                }
            }
            Outcome::Unavailable => {
                return Admission::Refuse {
                    status: 503,
                    body: headers::unavailable_body(&policy.name),
                    headers: vec![("Retry-After", HeaderValue::from_static("1"))],
                    summary: Summary {
                        policy: name,
                        outcome: "unavailable",
                        remaining: None,
                    },
                }
            }
            outcome => {
                let left = v.remaining as f64 / v.limit.max(1) as f64;
                // The summary follows the tightest policy, shadow refusals first.
                let rank = if outcome == Outcome::ShadowLimited {
                    -1.0
                } else {
                    left
                };
                if summary.as_ref().is_none_or(|(b, _)| rank < *b) {
                    let s = Summary {
                        policy: name,
                        outcome: outcome_name(outcome),
                        remaining: Some(v.remaining),
                    };
                    summary = Some((rank, s));
                }
                // Shadow policies stay invisible to clients.
                if outcome != Outcome::ShadowLimited
                    && policy.headers
                    && policy.mode == Mode::Enforce
                    && best.as_ref().is_none_or(|(b, _, _)| left < *b)
                {
                    best = Some((left, &limiter.fields, *v));
                }
            }
        }
    }
    Admission::Pass {
        headers: best.map(|(_, t, v)| t.fields(&v)).unwrap_or_default(),
        guards,
        summary: summary.map(|(_, s)| s),
    }
}
