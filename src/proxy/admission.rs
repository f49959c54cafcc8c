//! Identity checks and rate limits for one request, before it is forwarded: the route's
//! API key requirement, then its policies in order. The first policy that refuses answers,
//! and what the policies before it admitted is handed back: a refused request consumes
//! nothing from any policy (decide all, then commit all). An allowed request carries the
//! headers of the most restrictive policy that applied.

use crate::config::Mode;
use crate::decisions::{Outcome as Logged, Summary};
use crate::gateway::{Gateway, Route, RouteAuth};
use crate::identity::jwt::{Refusal, Verified};
use crate::identity::Lookup;
use crate::limit::headers::{self, Fields};
use crate::limit::meter::Meter;
use crate::limit::receipt::{hand_back, Taken};
use crate::limit::settle::Unusable;
use crate::limit::slots::Held;
use crate::limit::{Check, Outcome, Receipt, RequestFacts};
use http::HeaderValue;
use serde_json::{json, Value};
use std::sync::Arc;

pub enum Admission {
    Pass {
        headers: Fields,
        guards: Vec<Held>,
        summary: Option<Summary>,
        /// Admissions by policies that count only some responses (`count_status`) or
        /// whose cost comes from the response, by index into the route's limits:
        /// [`settle`] hands back those that do not count and settles the others' cost.
        uncounted: Vec<(usize, Receipt)>,
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
            outcome: Logged::Unauthorized,
            remaining: None,
        },
    })
}

/// Checks the request's token on a route that verifies JWTs: the verified token (or none,
/// on an optional route), or the answer to a request without a valid one: 401 with an
/// RFC 6750 challenge, or 503 while the provider has no key to verify with.
pub fn check_token(
    auth: &RouteAuth,
    headers: &http::HeaderMap,
    query: Option<&str>,
) -> Result<Option<Arc<Verified>>, Admission> {
    let provider = &auth.provider;
    let refusal = match provider.authenticate(headers, query) {
        Ok(Some(verified)) => return Ok(Some(verified)),
        Ok(None) if auth.optional => return Ok(None),
        Ok(None) => Refusal::Missing,
        Err(refusal) => refusal,
    };
    let name = &*provider.name;
    let (status, error, code, detail) = match &refusal {
        Refusal::Missing => (
            401,
            "missing_token",
            "invalid_request",
            "this route needs a bearer token".to_string(),
        ),
        Refusal::Invalid(_, why) => (401, "invalid_token", "invalid_token", why.clone()),
        Refusal::Unavailable => {
            return Err(Admission::Refuse {
                status: 503,
                body: json!({"error": "auth_unavailable", "provider": name,
                    "detail": format!("the signing keys of provider `{name}` have not loaded yet; try again shortly")}),
                headers: vec![("Retry-After", HeaderValue::from_static("1"))],
                summary: Summary {
                    policy: None,
                    outcome: Outcome::Unavailable.into(),
                    remaining: None,
                },
            })
        }
    };
    // The description is ours (never the token's text), so it has no quote to escape.
    let challenge = format!(
        "Bearer realm=\"tollgate\", error=\"{code}\", error_description=\"{}\"",
        detail.replace(['"', '\\'], "'")
    );
    Err(Admission::Refuse {
        status,
        body: json!({"error": error, "provider": name, "detail": detail}),
        headers: vec![(
            "WWW-Authenticate",
            HeaderValue::from_str(&challenge)
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"tollgate\"")),
        )],
        summary: Summary {
            policy: None,
            outcome: Logged::Unauthorized,
            remaining: None,
        },
    })
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
    let link = gateway.redis.as_deref();
    // What earlier policies admitted; only a route with several policies can need it.
    let mut taken: Vec<Taken> = Vec::new();
    let mut uncounted = Vec::new();
    for (index, policy) in route.limits.iter().enumerate() {
        let limiter = policy.limiter_for(facts.api_key_id, facts.tenant, facts.tier);
        let name = Some(index);
        let cost = match policy.cost_of(facts.headers, limiter) {
            Ok(cost) => cost,
            Err(e) => {
                hand_back(taken, link).await;
                return Admission::Refuse {
                    status: 400,
                    body: json!({"error": "invalid_cost", "policy": &*policy.name, "detail": e.to_string()}),
                    headers: Vec::new(),
                    summary: Summary {
                        policy: name,
                        outcome: Logged::InvalidCost,
                        remaining: None,
                    },
                };
            }
        };
        let mut check = match policy.decide_now(limiter, facts, cost, link) {
            Some(decided) => decided,
            None => policy.check(limiter, facts, cost, link).await,
        };
        if check.outcome == Outcome::Deferred {
            check = policy
                .wait_for_room(limiter, facts, cost, link, check)
                .await;
        }
        let Check {
            verdict,
            outcome,
            guard,
            receipt,
        } = check;
        guards.extend(guard);
        let v = &verdict;
        if receipt != Receipt::Nothing {
            if policy.count_status.is_some() || policy.counters.settled.is_some() {
                uncounted.push((index, receipt.clone()));
            }
            if route.limits.len() > 1 {
                taken.push((policy, limiter, receipt));
            }
        }
        match outcome {
            Outcome::Limited => {
                hand_back(taken, link).await;
                return Admission::Refuse {
                    status: policy.status,
                    body: headers::limited_body(
                        &policy.name,
                        v,
                        &crate::limit::key::text(&policy.key, facts),
                    ),
                    headers: limiter.fields.fields(v),
                    summary: Summary {
                        policy: name,
                        outcome: Outcome::Limited.into(),
                        remaining: Some(v.remaining),
                    },
                };
            }
            Outcome::Unavailable => {
                hand_back(taken, link).await;
                return Admission::Refuse {
                    status: 503,
                    body: headers::unavailable_body(&policy.name),
                    headers: vec![("Retry-After", HeaderValue::from_static("1"))],
                    summary: Summary {
                        policy: name,
                        outcome: Outcome::Unavailable.into(),
                        remaining: None,
                    },
                };
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
                        outcome: outcome.into(),
                        remaining: Some(v.remaining),
                    };
                    summary = Some((rank, s));
                }
                // Shadow policies and exemptions stay invisible to clients.
                if !matches!(outcome, Outcome::ShadowLimited | Outcome::Exempt)
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
        uncounted,
    }
}

/// The tenant and tier a request is limited as: its API key's first, its verified token's
/// next. Admission and settling both use it, so a refund or a settled cost reaches the
/// limiter that admitted the request.
pub fn tenant_and_tier<'a>(
    key: Option<&'a crate::identity::KeyRecord>,
    verified: Option<&'a Verified>,
) -> (Option<&'a str>, Option<&'a str>) {
    (
        key.map(|k| k.tenant.as_str())
            .or_else(|| verified.and_then(|v| v.tenant.as_deref())),
        key.and_then(|k| k.tier.as_deref())
            .or_else(|| verified.and_then(|v| v.tier.as_deref())),
    )
}

/// Once the response is known: hands back the admissions of `count_status` policies whose
/// statuses it does not have, so only the responses they count use up their limit, and puts
/// the cost the response reported (`meter`) in place of the reserve of the others. A cost
/// that cannot be used costs the reserve. Returns the settled cost of the route's first
/// policy with a cost from the response, for the decision log.
pub async fn settle(
    route: &Route,
    gateway: &Gateway,
    key: Option<&crate::identity::KeyRecord>,
    verified: Option<&Verified>,
    uncounted: Vec<(usize, Receipt)>,
    status: u16,
    meter: Option<&Meter>,
) -> Option<u64> {
    let mut settled_cost = None;
    for (index, receipt) in uncounted {
        let Some(policy) = route.limits.get(index) else {
            continue;
        };
        // The limiter the request was admitted by.
        let (tenant, tier) = tenant_and_tier(key, verified);
        let limiter = policy.limiter_for(key.map(|k| k.id.as_str()), tenant, tier);
        let link = gateway.redis.as_deref();
        if policy
            .count_status
            .as_ref()
            .is_some_and(|s| !s.contains(status))
        {
            policy.refund(limiter, receipt, link).await;
            continue;
        }
        let Some(counters) = &policy.counters.settled else {
            continue;
        };
        let reported = meter
            .map(|m| m.cost(&policy.cost, policy.max_cost))
            .unwrap_or(Err(Unusable::Missing));
        let actual = match reported {
            Ok(cost) => {
                limiter.expected_cost.observe(cost);
                cost
            }
            Err(why) => {
                counters.unusable(why).inc();
                unusable_noted(&policy.name, why, status);
                receipt.cost()
            }
        };
        settled_cost.get_or_insert(actual);
        policy.settle_cost(limiter, receipt, actual, link).await;
        // Counted once it is settled (in Redis, in atomic mode), so that whoever watches
        // the metric knows the limit has it.
        counters.units.inc_by(actual);
    }
    settled_cost
}

/// Logs an unusable cost, at most once every ten seconds: a backend that stopped reporting
/// usage would otherwise log every request. The metric counts them all.
fn unusable_noted(policy: &str, why: Unusable, status: u16) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now = crate::clock::now_ms();
    let last = LAST_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 10_000
        && LAST_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            policy,
            reason = why.label(),
            status,
            "a response's cost could not be used; it costs the policy's reserve (logged at most every 10s, counted in tollgate_ratelimit_unusable_cost_total)"
        );
    }
}
