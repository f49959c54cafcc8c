//! A rate limit policy compiled from its config: numbers per tier, the local estimators,
//! the lease table, and pre-resolved metric handles.

use super::algorithm::{Bucket, SlidingLog};
use super::headers::FieldTemplate;
use super::lease::Lease;
use super::sketch::{TatSketch, WindowSketch};
use super::table::KeyTable;
use crate::config::{
    Algorithm, CostSpec, KeyPart, LimitConfig, Mode, OnRedisError, Scope, SyncMode,
};
use crate::metrics::Metrics;
use pingora_limits::inflight::Inflight;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("scope", &self.scope)
            .field("params", &self.base.params)
            .finish()
    }
}

/// Slots per row of the local estimators: 4 rows × 16384 × 8 bytes = 512 KiB per window.
const SKETCH_SLOTS: usize = 16_384;

/// A limit's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Params {
    Window {
        limit: u64,
        window_ms: u64,
        sliding: bool,
    },
    Log {
        limit: u64,
        window_ms: u64,
    },
    Bucket(Bucket),
    Concurrency {
        max: u64,
    },
}

impl Params {
    /// The quota reported in `RateLimit-Policy` (`q`).
    pub fn quota(&self) -> u64 {
        match *self {
            Params::Window { limit, .. } | Params::Log { limit, .. } => limit,
            Params::Bucket(b) => b.burst,
            Params::Concurrency { max } => max,
        }
    }

    /// The policy's window in seconds (`w`): a window's length, or the time a bucket takes
    /// to refill completely. None for concurrency limits.
    pub fn window_seconds(&self) -> Option<u64> {
        match *self {
            Params::Window { window_ms, .. } | Params::Log { window_ms, .. } => {
                Some(window_ms.div_ceil(1000).max(1))
            }
            Params::Bucket(b) => Some(b.tolerance_ns().div_ceil(1_000_000_000).max(1)),
            Params::Concurrency { .. } => None,
        }
    }

    /// This node's share of the numbers when it must decide alone for `nodes` nodes.
    pub fn share(&self, nodes: u64) -> Params {
        let nodes = nodes.max(1);
        let part = |n: u64| n.div_ceil(nodes).max(1);
        match *self {
            Params::Window {
                limit,
                window_ms,
                sliding,
            } => Params::Window {
                limit: part(limit),
                window_ms,
                sliding,
            },
            Params::Log { limit, window_ms } => Params::Log {
                limit: part(limit),
                window_ms,
            },
            Params::Bucket(b) => Params::Bucket(Bucket {
                count: part(b.count),
                per_ns: b.per_ns,
                burst: part(b.burst),
            }),
            p @ Params::Concurrency { .. } => p,
        }
    }
}

/// One set of numbers (the policy's own, or a tier's) with the state that counts against it.
pub struct Limiter {
    pub tier: Option<String>,
    pub params: Params,
    /// Distinguishes this limiter's keys from other limiters' in local hashes.
    pub id: u64,
    pub windows: Option<WindowSketch>,
    pub tats: Option<TatSketch>,
    pub inflight: Option<Inflight>,
    pub logs: Option<KeyTable<SlidingLog>>,
    pub leases: KeyTable<Lease>,
    /// The response fields' fixed parts, built once.
    pub fields: FieldTemplate,
}

impl Limiter {
    fn new(
        policy: &str,
        tier: Option<String>,
        params: Params,
        id: u64,
        max_keys: usize,
        scope: Scope,
        sync: SyncMode,
    ) -> Self {
        let leased = scope == Scope::Global && sync == SyncMode::Async;
        let (windows, tats, inflight, logs) = match params {
            Params::Window { window_ms, .. } => (
                Some(WindowSketch::new(window_ms, SKETCH_SLOTS)),
                None,
                None,
                None,
            ),
            Params::Log { window_ms, .. } => (
                Some(WindowSketch::new(window_ms, SKETCH_SLOTS)),
                None,
                None,
                Some(KeyTable::<SlidingLog>::new(max_keys)),
            ),
            Params::Bucket(_) => (None, Some(TatSketch::new(SKETCH_SLOTS)), None, None),
            Params::Concurrency { .. } => (None, None, Some(Inflight::new()), None),
        };
        Limiter {
            fields: FieldTemplate::new(policy, &params),
            tier,
            params,
            id,
            windows,
            tats,
            inflight,
            logs,
            leases: KeyTable::new(if leased { max_keys } else { 0 }),
        }
    }
}

/// Handles on the decision counters, resolved once per policy.
pub struct Counters {
    pub allowed: IntCounter,
    pub limited: IntCounter,
    pub shadow_limited: IntCounter,
    pub failed_open: IntCounter,
    pub unavailable: IntCounter,
    pub untracked: IntCounter,
    pub active_keys: IntGauge,
}

pub struct Policy {
    pub name: std::sync::Arc<str>,
    /// The definition, so a reload can keep this policy (and its counters) when unchanged.
    pub config: LimitConfig,
    pub key: Vec<KeyPart>,
    pub cost: CostSpec,
    pub algorithm: Algorithm,
    pub scope: Scope,
    pub sync: SyncMode,
    pub mode: Mode,
    pub on_redis_error: OnRedisError,
    pub status: u16,
    pub headers: bool,
    pub base: Limiter,
    pub tiers: HashMap<String, Limiter>,
    pub counters: Counters,
}

fn params(
    algorithm: Algorithm,
    rate: Option<crate::config::RateSpec>,
    burst: Option<u64>,
    limit: Option<u64>,
) -> Params {
    // Validation guarantees the numbers each algorithm needs; the fallbacks keep a bad
    // combination from panicking if validation were ever skipped.
    let rate = rate.unwrap_or(crate::config::RateSpec {
        count: 1,
        per: std::time::Duration::from_secs(1),
    });
    let window_ms = rate.per.as_millis() as u64;
    match algorithm {
        Algorithm::FixedWindow => Params::Window {
            limit: rate.count,
            window_ms,
            sliding: false,
        },
        Algorithm::SlidingWindow => Params::Window {
            limit: rate.count,
            window_ms,
            sliding: true,
        },
        Algorithm::SlidingLog => Params::Log {
            limit: rate.count,
            window_ms,
        },
        Algorithm::TokenBucket | Algorithm::Gcra => Params::Bucket(Bucket {
            count: rate.count,
            per_ns: rate.per.as_nanos() as u64,
            burst: burst.unwrap_or(rate.count),
        }),
        Algorithm::Concurrency => Params::Concurrency {
            max: limit.unwrap_or(1),
        },
    }
}

impl Policy {
    pub fn build(name: &str, config: &LimitConfig, metrics: &Metrics) -> Policy {
        let id_of = |tier: &str| super::key::fnv1a(format!("{name}\u{0}{tier}").as_bytes());
        let base = Limiter::new(
            name,
            None,
            params(config.algorithm, config.rate, config.burst, config.limit),
            id_of(""),
            config.max_keys,
            config.scope,
            config.sync,
        );
        let tiers = config
            .tiers
            .iter()
            .map(|(tier, t)| {
                let limiter = Limiter::new(
                    name,
                    Some(tier.clone()),
                    params(
                        config.algorithm,
                        t.rate.or(config.rate),
                        t.burst.or(config.burst),
                        t.limit.or(config.limit),
                    ),
                    id_of(tier),
                    config.max_keys,
                    config.scope,
                    config.sync,
                );
                (tier.clone(), limiter)
            })
            .collect();
        let counter = |result: &str| {
            metrics
                .ratelimit_decisions
                .with_label_values(&[name, result])
        };
        let counters = Counters {
            allowed: counter("allowed"),
            limited: counter("limited"),
            shadow_limited: counter("shadow_limited"),
            failed_open: counter("failed_open"),
            unavailable: counter("unavailable"),
            untracked: metrics.ratelimit_untracked.with_label_values(&[name]),
            active_keys: metrics.ratelimit_active_keys.with_label_values(&[name]),
        };
        Policy {
            name: name.into(),
            config: config.clone(),
            key: config.key.0.clone(),
            cost: config.cost.clone(),
            algorithm: config.algorithm,
            scope: config.scope,
            sync: config.sync,
            mode: config.mode,
            on_redis_error: config.on_redis_error,
            status: config.status,
            headers: config.headers,
            base,
            tiers,
            counters,
        }
    }

    /// The limiter for a request's tier: the tier's numbers when the policy names it.
    pub fn limiter(&self, tier: Option<&str>) -> &Limiter {
        tier.and_then(|t| self.tiers.get(t)).unwrap_or(&self.base)
    }

    pub fn limiters(&self) -> impl Iterator<Item = &Limiter> {
        std::iter::once(&self.base).chain(self.tiers.values())
    }

    /// Whether this policy's state lives in Redis and is synced in the background.
    pub fn is_leased(&self) -> bool {
        self.scope == Scope::Global
            && self.sync == SyncMode::Async
            && self.algorithm != Algorithm::Concurrency
    }

    /// The Redis key of one key's state, with the policy and key in a hash tag so every
    /// key of one limit lands in one Redis Cluster slot.
    pub fn redis_key(&self, prefix: &str, key_text: &str, suffix: &str) -> String {
        format!("{prefix}:rl:{{{}|{key_text}}}:{suffix}", self.name)
    }
}

/// The part of a Redis key after the hash tag, for a window counter.
pub fn window_suffix(window_ms: u64, window: u64) -> String {
    format!("w{window_ms}:{window}")
}

pub fn bucket_suffix(bucket: &Bucket) -> String {
    format!("b{}x{}", bucket.interval_ns(), bucket.burst)
}

pub fn log_suffix(window_ms: u64) -> String {
    format!("l{window_ms}")
}
