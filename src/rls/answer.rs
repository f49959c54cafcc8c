//! `ShouldRateLimit`: envoyproxy/ratelimit's answer, decided by tollgate's engine.
//!
//! Each descriptor finds its rule (the most specific match), `replaces` drops the rules it
//! names, and every remaining limit decides in request order. A request over the limit
//! charges none of its descriptors: what the others admitted is handed back (tollgate's
//! all-or-nothing rule, their `STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT`).

use super::metrics::RlsMetrics;
use super::pb::{
    rate_limit_response::{rate_limit::Unit as PbUnit, Code, DescriptorStatus, RateLimit},
    HeaderValue, PbDuration, RateLimitRequest, RateLimitResponse,
};
use super::table::{Found, Kind, Table};
use crate::config::rls::Unit;
use crate::limit::receipt::{hand_back, Taken};
use crate::limit::{RedisLink, RequestFacts};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

/// Why a request cannot be answered: gRPC INVALID_ARGUMENT.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

/// An empty header map for the facts of a descriptor (a descriptor has no headers).
static NO_HEADERS: LazyLock<http::HeaderMap> = LazyLock::new(http::HeaderMap::new);

/// The share of a limit past which a request is "near" it, as their default.
const NEAR_LIMIT_RATIO: f64 = 0.8;

/// One descriptor's decision, before the answer is put together.
struct Decided {
    code: Code,
    current: Option<RateLimit>,
    remaining: u32,
    reset_s: Option<i64>,
    quota_mode: bool,
    /// The limit, for the `RateLimit` fields.
    window_s: u64,
    /// Hits this request took from the limit (handed back if the answer is OVER_LIMIT).
    charged: u64,
}

pub async fn should_rate_limit(
    table: &Table,
    link: Option<&RedisLink>,
    metrics: &RlsMetrics,
    engine_metrics: &crate::metrics::Metrics,
    request: &RateLimitRequest,
) -> Result<RateLimitResponse, Invalid> {
    if request.domain.is_empty() {
        return Err(Invalid("rate limit domain must not be empty"));
    }
    if request.descriptors.is_empty() {
        return Err(Invalid("rate limit descriptor list must not be empty"));
    }
    let domain = request.domain.as_str();
    let mut founds: Vec<Option<Found>> = Vec::with_capacity(request.descriptors.len());
    for d in &request.descriptors {
        let entries: Vec<(&str, &str)> = d
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        let found = match &d.limit {
            // Their server applies a request's own limit without looking at the config, for
            // a domain it knows.
            Some(o) if table.has_domain(domain) => match Unit::from_proto(o.unit) {
                Some(unit) => Some(table.override_rule(
                    domain,
                    &entries,
                    o.requests_per_unit,
                    unit,
                    engine_metrics,
                )),
                None => table.lookup(domain, &entries),
            },
            _ => table.lookup(domain, &entries),
        };
        founds.push(found);
    }
    // `replaces`: a rule named by another matched rule is not evaluated.
    let replaced: Vec<String> = founds
        .iter()
        .flatten()
        .flat_map(|f| f.rule.replaces.iter().cloned())
        .collect();
    if !replaced.is_empty() {
        for slot in founds.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|f| !f.rule.name.is_empty() && replaced.contains(&f.rule.name))
            {
                *slot = None;
            }
        }
    }

    let now_s = crate::limit::link::unix_ms() / 1000;
    let mut decided: Vec<Option<Decided>> = Vec::with_capacity(founds.len());
    let mut taken: Vec<Taken> = Vec::new();
    for (d, found) in request.descriptors.iter().zip(&founds) {
        let Some(found) = found else {
            decided.push(None);
            continue;
        };
        let hits = match &d.hits_addend {
            Some(h) => h.value,
            None => u64::from(request.hits_addend.max(1)),
        };
        let hits = if d.is_negative_hits { 0 } else { hits };
        let rule = &*found.rule;
        let counters = metrics.of(domain, &found.metric);
        counters.hits.inc_by(hits);
        let one = match &rule.kind {
            Kind::Unlimited => Decided {
                code: Code::Ok,
                current: None,
                remaining: u32::MAX,
                reset_s: None,
                quota_mode: false,
                window_s: 0,
                charged: 0,
            },
            Kind::Refuse {
                requests_per_unit,
                unit,
            } => {
                counters.over_limit.inc_by(hits);
                Decided {
                    code: Code::OverLimit,
                    current: Some(current(*requests_per_unit, *unit, &rule.name)),
                    remaining: 0,
                    reset_s: unit.map(|u| their_reset(u, now_s)),
                    quota_mode: rule.quota_mode,
                    window_s: unit.map_or(1, Unit::seconds),
                    charged: 0,
                }
            }
            Kind::Limited {
                policy,
                requests_per_unit,
                unit,
            } => {
                let limiter = &policy.base;
                let facts = RequestFacts {
                    client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    api_key_id: None,
                    tenant: None,
                    tier: None,
                    // The descriptor's entries stand for the request path: the bucket key.
                    path: &found.bucket,
                    method: "",
                    route: "",
                    host: None,
                    headers: &NO_HEADERS,
                    query: None,
                    claims: None,
                };
                let quota = limiter.params.quota();
                let (allowed, remaining, reset_ms) = if hits > quota {
                    // More than the whole limit can never fit: refused without counting.
                    (false, 0, None)
                } else {
                    let check = match policy.decide_now(limiter, &facts, hits, link) {
                        Some(c) => c,
                        None => policy.check(limiter, &facts, hits, link).await,
                    };
                    let check = policy.refuse_deferred(check);
                    // Failing open (Redis away) passes; failing closed does not.
                    let allowed = check.outcome.passes();
                    if check.receipt != crate::limit::Receipt::Nothing {
                        taken.push((&**policy, limiter, check.receipt));
                    }
                    (
                        allowed,
                        check.verdict.remaining,
                        Some(check.verdict.reset_ms),
                    )
                };
                let limit = u64::from(*requests_per_unit);
                let used = limit.saturating_sub(remaining);
                if allowed {
                    let near = (limit as f64 * NEAR_LIMIT_RATIO).floor() as u64;
                    if used > near {
                        counters.near_limit.inc_by((used - near).min(hits));
                    }
                } else {
                    counters.over_limit.inc_by(hits);
                }
                let shadowed = !allowed && rule.shadow;
                if shadowed {
                    counters.shadow.inc_by(hits);
                }
                let reset_s = match (unit, reset_ms) {
                    (Some(u), _) => Some(their_reset(*u, now_s)),
                    (None, Some(ms)) => Some(ms.div_ceil(1000).max(1) as i64),
                    (None, None) => None,
                };
                Decided {
                    code: if allowed || shadowed {
                        Code::Ok
                    } else {
                        Code::OverLimit
                    },
                    current: Some(current(*requests_per_unit, *unit, &rule.name)),
                    remaining: if allowed {
                        u32::try_from(remaining).unwrap_or(u32::MAX)
                    } else {
                        0
                    },
                    reset_s,
                    quota_mode: rule.quota_mode,
                    window_s: limiter.params.window_seconds().unwrap_or(1),
                    charged: if allowed { hits } else { 0 },
                }
            }
        };
        decided.push(Some(one));
    }

    // OVER_LIMIT when a descriptor outside quota mode is over, or every quota-mode one is.
    let mut failed = 0;
    let (mut quota_total, mut quota_failed) = (0, 0);
    for one in decided.iter().flatten() {
        if one.quota_mode {
            quota_total += 1;
        }
        if one.code == Code::OverLimit {
            if one.quota_mode {
                quota_failed += 1;
            } else {
                failed += 1;
            }
        }
    }
    let over = failed > 0 || (quota_total > 0 && quota_total == quota_failed);
    if over {
        hand_back(taken, link).await;
        // What was handed back is left again, as their answer shows when it stops counting.
        for d in decided.iter_mut().flatten() {
            if d.charged > 0 {
                let limit = d.current.as_ref().map_or(u32::MAX, |c| c.requests_per_unit);
                d.remaining = d
                    .remaining
                    .saturating_add(d.charged.min(u64::from(u32::MAX)) as u32)
                    .min(limit);
            }
        }
    }

    let mut response = RateLimitResponse {
        overall_code: (if over { Code::OverLimit } else { Code::Ok }) as i32,
        ..Default::default()
    };
    if table.response_headers {
        // The tightest limit of the answer, as the IETF fields (their custom headers).
        let tightest = decided
            .iter()
            .flatten()
            .filter(|d| d.current.is_some())
            .min_by_key(|d| {
                if d.code == Code::OverLimit {
                    0
                } else {
                    u64::from(d.remaining) + 1
                }
            });
        if let Some(t) = tightest {
            let limit = t.current.as_ref().map_or(0, |c| c.requests_per_unit);
            let reset = t.reset_s.unwrap_or(0);
            response.response_headers_to_add = vec![
                header(
                    "RateLimit-Policy",
                    format!("\"rls\";q={limit};w={}", t.window_s),
                ),
                header("RateLimit", format!("\"rls\";r={};t={reset}", t.remaining)),
            ];
        }
    }
    response.statuses = decided
        .into_iter()
        .map(|d| match d {
            None => DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            },
            Some(d) => DescriptorStatus {
                code: d.code as i32,
                current_limit: d.current,
                limit_remaining: d.remaining,
                duration_until_reset: d.reset_s.map(|seconds| PbDuration { seconds, nanos: 0 }),
                quota: None,
            },
        })
        .collect();
    Ok(response)
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.to_string(),
        value,
        ..Default::default()
    }
}

fn current(requests_per_unit: u32, unit: Option<Unit>, name: &str) -> RateLimit {
    RateLimit {
        name: name.to_string(),
        requests_per_unit,
        unit: unit.map_or(PbUnit::Unknown as i32, Unit::proto),
    }
}

/// Their `duration_until_reset`: the rest of the epoch window, in whole seconds (1 to the
/// unit's length).
fn their_reset(unit: Unit, now_s: u64) -> i64 {
    let length = unit.seconds();
    (length - now_s % length) as i64
}
