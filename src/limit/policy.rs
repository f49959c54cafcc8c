//! A rate limit policy compiled from its config: numbers per tier, the local estimators,
//! the lease table, and pre-resolved metric handles.

use super::algorithm::{Bucket, SlidingLog, Span};
use super::calendar::{Calendar, Periods};
use super::headers::FieldTemplate;
use super::lease::Lease;
use super::settle::ExpectedCost;
use super::sketch::{TatSketch, WindowSketch};
use super::slots::SlotLease;
use super::table::KeyTable;
use crate::config::{
    Algorithm, CostSpec, KeyPart, LimitConfig, Mode, OnRedisError, Scope, SyncMode,
};
use crate::metrics::Metrics;
use pingora_limits::inflight::Inflight;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::sync::Arc;

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
        /// The window's length; a calendar period's nominal one (see `RateSpec::per`).
        window_ms: u64,
        sliding: bool,
        /// Days, weeks or months on the calendar instead of epoch windows.
        calendar: Option<Calendar>,
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
    /// Whether state counted under `other` means the same under these numbers: the same
    /// windows, or both buckets, or both concurrency counts.
    pub fn counts_like(&self, other: &Params) -> bool {
        match (self, other) {
            (
                Params::Window {
                    window_ms: a,
                    sliding: s,
                    calendar: c,
                    ..
                },
                Params::Window {
                    window_ms: b,
                    sliding: t,
                    calendar: d,
                    ..
                },
            ) => a == b && s == t && c == d,
            (Params::Log { window_ms: a, .. }, Params::Log { window_ms: b, .. }) => a == b,
            (Params::Bucket(_), Params::Bucket(_))
            | (Params::Concurrency { .. }, Params::Concurrency { .. }) => true,
            _ => false,
        }
    }

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
                calendar,
            } => Params::Window {
                limit: part(limit),
                window_ms,
                sliding,
                calendar,
            },
            Params::Log { limit, window_ms } => Params::Log {
                limit: part(limit),
                window_ms,
            },
            Params::Bucket(b) => Params::Bucket(b.share(nodes)),
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
    // The state that counts, shared so that a rebuilt policy whose numbers changed takes
    // it over (see [`Limiter::adopt`]) while requests in flight still hold the old one.
    pub windows: Option<Arc<WindowSketch>>,
    pub tats: Option<Arc<TatSketch>>,
    pub inflight: Option<Arc<Inflight>>,
    pub logs: Option<Arc<KeyTable<SlidingLog>>>,
    pub leases: Arc<KeyTable<Lease>>,
    /// Global concurrency limits: this node's slots per key.
    pub slots: Option<Arc<KeyTable<SlotLease>>>,
    /// Keys blocked until a time (Unix ms), for policies with `block_for`.
    pub blocks: Option<Arc<KeyTable<u64>>>,
    /// The response fields' fixed parts, built once.
    pub fields: FieldTemplate,
    /// Calendar windows, with their current period cached.
    pub periods: Option<Periods>,
    /// Costs from the response: the typical one, which a lease must hold to admit alone.
    pub expected_cost: Arc<ExpectedCost>,
}

/// Slack on the lifetime of a calendar period's Redis hash, for nodes whose clocks differ.
const CALENDAR_KEEP_SLACK_MS: u64 = 60_000;

impl Limiter {
    fn new(
        policy: &str,
        tier: Option<String>,
        params: Params,
        id: u64,
        max_keys: usize,
        scope: Scope,
        blocking: bool,
    ) -> Self {
        // Global keys keep what Redis last said about them (leases in async mode, the last
        // answer in atomic mode), so that deciding without Redis continues from it.
        let global = scope == Scope::Global;
        let sketch = || Some(Arc::new(WindowSketch::new(SKETCH_SLOTS)));
        let (windows, tats, inflight, logs) = match params {
            Params::Window { .. } => (sketch(), None, None, None),
            Params::Log { .. } => (
                sketch(),
                None,
                None,
                Some(Arc::new(KeyTable::<SlidingLog>::new(max_keys))),
            ),
            Params::Bucket(_) => (
                None,
                Some(Arc::new(TatSketch::new(SKETCH_SLOTS))),
                None,
                None,
            ),
            Params::Concurrency { .. } => (None, None, Some(Arc::new(Inflight::new())), None),
        };
        let periods = match params {
            Params::Window {
                calendar: Some(c), ..
            } => Some(Periods::new(c)),
            _ => None,
        };
        let slots = (global && matches!(params, Params::Concurrency { .. }))
            .then(|| Arc::new(KeyTable::new(max_keys)));
        Limiter {
            slots,
            periods,
            fields: FieldTemplate::new(policy, &params),
            tier,
            params,
            id,
            windows,
            tats,
            inflight,
            logs,
            leases: Arc::new(KeyTable::new(if global { max_keys } else { 0 })),
            blocks: blocking.then(|| Arc::new(KeyTable::new(max_keys))),
            expected_cost: Arc::default(),
        }
    }

    /// Takes over `old`'s counts, leases and blocks when they count the same way (the
    /// same windows, or both a bucket, or both a concurrency count), so that changing a
    /// policy's numbers keeps what it has counted, as its Redis keys do. Quota this node
    /// holds under numbers that shrank goes back to Redis at the next sync, and the node
    /// asks again under the new ones.
    fn adopt(&mut self, old: &Limiter, max_keys: usize) {
        if !self.params.counts_like(&old.params) {
            return;
        }
        self.windows.clone_from(&old.windows);
        self.tats.clone_from(&old.tats);
        self.inflight.clone_from(&old.inflight);
        self.expected_cost.clone_from(&old.expected_cost);
        if let Some(logs) = &old.logs {
            logs.set_capacity(max_keys);
            self.logs = Some(logs.clone());
        }
        if let (Some(_), Some(blocks)) = (&self.blocks, &old.blocks) {
            blocks.set_capacity(max_keys);
            self.blocks = Some(blocks.clone());
        }
        old.leases.set_capacity(self.leases.capacity());
        self.leases = old.leases.clone();
        if let (Some(_), Some(slots)) = (&self.slots, &old.slots) {
            slots.set_capacity(max_keys);
            self.slots = Some(slots.clone());
        }
        let shrank = self.params.quota() < old.params.quota()
            || matches!((self.params, old.params), (Params::Bucket(new), Params::Bucket(was))
                if new.interval_ns() > was.interval_ns());
        if self.params != old.params {
            let quota = self.params.quota();
            self.leases
                .for_each(|_, lease| lease.renumbered(shrank, quota));
        }
    }
}

impl Limiter {
    /// The window holding `now_ms`: the one path by which epoch and calendar windows are
    /// found, so that decisions, syncs, receipts and the admin API agree on it. Epoch
    /// windows cost a division, as before calendars; calendar ones a cached read.
    #[inline]
    pub fn window_at(&self, now_ms: u64) -> Span {
        if let Some(periods) = &self.periods {
            return periods.at(now_ms);
        }
        match self.params {
            Params::Window { window_ms, .. } | Params::Log { window_ms, .. } => {
                Span::epoch(now_ms, window_ms)
            }
            Params::Bucket(_) | Params::Concurrency { .. } => Span::epoch(now_ms, 1),
        }
    }

    /// The part of a Redis key after the hash tag for window `id`'s counter.
    pub fn window_suffix(&self, id: u64) -> String {
        match (&self.periods, self.params) {
            (Some(p), _) => format!("{}:{id}", p.calendar.label()),
            (None, Params::Window { window_ms, .. }) => window_suffix(window_ms, id),
            (None, _) => window_suffix(0, id),
        }
    }

    /// How long Redis keeps a window's hash after a write in `span`: through the next
    /// window, where a sliding window still weighs it. Epoch windows keep their old
    /// `2 × window + 1 s`; calendar ones reach past the longest next period.
    pub fn window_keep_ms(&self, span: Span, now_ms: u64) -> u64 {
        match (&self.periods, self.params) {
            (Some(p), _) => span.left_ms(now_ms) + p.calendar.max_len_ms() + CALENDAR_KEEP_SLACK_MS,
            (None, Params::Window { window_ms, .. }) => 2 * window_ms + 1000,
            (None, _) => 2 * span.len_ms() + 1000,
        }
    }
}

/// Handles on the decision counters, resolved once per policy.
pub struct Counters {
    pub allowed: IntCounter,
    pub exempt: IntCounter,
    pub limited: IntCounter,
    pub shadow_limited: IntCounter,
    pub failed_open: IntCounter,
    pub unavailable: IntCounter,
    pub untracked: IntCounter,
    pub active_keys: IntGauge,
    /// Only for a cost from the response.
    pub settled: Option<Box<SettleCounters>>,
}

/// What settling the costs responses report came to.
pub struct SettleCounters {
    /// Units charged once settled.
    pub units: IntCounter,
    /// Unusable values, by [`super::settle::Unusable`] in declaration order.
    pub unusable: [IntCounter; 4],
}

impl SettleCounters {
    pub fn unusable(&self, why: super::settle::Unusable) -> &IntCounter {
        use super::settle::Unusable;
        &self.unusable[match why {
            Unusable::Missing => 0,
            Unusable::NotANumber => 1,
            Unusable::Negative => 2,
            Unusable::TooLarge => 3,
        }]
    }
}

pub struct Policy {
    pub name: std::sync::Arc<str>,
    /// The definition, so a reload can keep this policy (and its counters) when unchanged.
    pub config: LimitConfig,
    pub key: Vec<KeyPart>,
    pub cost: CostSpec,
    /// With a cost from the response: what admission holds until the response settles.
    pub reserve: u64,
    /// With a cost from the response: the largest reported cost believed.
    pub max_cost: u64,
    pub algorithm: Algorithm,
    pub scope: Scope,
    pub sync: SyncMode,
    pub mode: Mode,
    pub on_redis_error: OnRedisError,
    pub status: u16,
    pub headers: bool,
    /// Count only responses with these statuses (the rest are handed back).
    pub count_status: Option<crate::config::limits::StatusSet>,
    /// Clients never limited by this policy.
    pub exempt: crate::config::limits::Exemptions,
    /// How long a refused key stays refused.
    pub block_for_ms: Option<u64>,
    /// `on_limit: delay`: how requests over the limit wait.
    pub delay: Option<super::delay::Delay>,
    /// Blocks of global keys this node has not published yet: (key text, until).
    pub block_outbox: parking_lot::Mutex<Vec<(String, u64)>>,
    pub base: Limiter,
    pub tiers: HashMap<String, Limiter>,
    /// Overrides for one API key (by public id) and for one tenant; they beat the tier.
    pub key_overrides: HashMap<String, Limiter>,
    pub tenant_overrides: HashMap<String, Limiter>,
    pub counters: Counters,
}

fn params(
    algorithm: Algorithm,
    rate: Option<crate::config::RateSpec>,
    burst: Option<u64>,
    limit: Option<u64>,
    timezone: Option<crate::config::limits::TimeZone>,
) -> Params {
    // Validation guarantees the numbers each algorithm needs; the fallbacks keep a bad
    // combination from panicking if validation were ever skipped.
    let rate = rate.unwrap_or(crate::config::RateSpec {
        count: 1,
        per: std::time::Duration::from_secs(1),
        calendar: None,
    });
    let window_ms = rate.per.as_millis() as u64;
    // UTC days are epoch days: they keep the epoch path and its Redis keys.
    let calendar = rate
        .calendar
        .map(|unit| Calendar {
            unit,
            tz: timezone.map_or(chrono_tz::Tz::UTC, |tz| tz.0),
        })
        .filter(|c| {
            c.unit != crate::config::CalendarUnit::Day || !timezone.is_none_or(|tz| tz.is_utc())
        });
    match algorithm {
        Algorithm::FixedWindow => Params::Window {
            limit: rate.count,
            window_ms,
            sliding: false,
            calendar,
        },
        Algorithm::SlidingWindow => Params::Window {
            limit: rate.count,
            window_ms,
            sliding: true,
            calendar,
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
            params(
                config.algorithm,
                config.rate,
                config.burst,
                config.limit,
                config.timezone,
            ),
            id_of(""),
            config.max_keys,
            config.scope,
            config.block_for.is_some(),
        );
        // A tier's or an override's numbers over the policy's own.
        let numbers = |label: &str, t: &crate::config::TierConfig| {
            Limiter::new(
                name,
                Some(label.to_string()),
                params(
                    config.algorithm,
                    t.rate.or(config.rate),
                    t.burst.or(config.burst),
                    t.limit.or(config.limit),
                    config.timezone,
                ),
                id_of(label),
                config.max_keys,
                config.scope,
                config.block_for.is_some(),
            )
        };
        let tiers = config
            .tiers
            .iter()
            .map(|(tier, t)| (tier.clone(), numbers(tier, t)))
            .collect();
        let mut key_overrides = HashMap::new();
        let mut tenant_overrides = HashMap::new();
        for (subject, t) in &config.overrides {
            // Labelled apart from tiers, whose names cannot hold `@` or `:`.
            let limiter = numbers(&format!("@{subject}"), t);
            match subject.split_once(':') {
                Some(("key", id)) => key_overrides.insert(id.to_string(), limiter),
                Some((_, tenant)) => tenant_overrides.insert(tenant.to_string(), limiter),
                None => None,
            };
        }
        let counter = |result: &str| {
            metrics
                .ratelimit_decisions
                .with_label_values(&[name, result])
        };
        let counters = Counters {
            allowed: counter("allowed"),
            exempt: counter("exempt"),
            limited: counter("limited"),
            shadow_limited: counter("shadow_limited"),
            failed_open: counter("failed_open"),
            unavailable: counter("unavailable"),
            untracked: metrics.ratelimit_untracked.with_label_values(&[name]),
            active_keys: metrics.ratelimit_active_keys.with_label_values(&[name]),
            settled: config.cost.from_response().then(|| {
                use super::settle::Unusable;
                let unusable = |why: Unusable| {
                    metrics
                        .ratelimit_unusable_cost
                        .with_label_values(&[name, why.label()])
                };
                Box::new(SettleCounters {
                    units: metrics.ratelimit_settled_cost.with_label_values(&[name]),
                    unusable: [
                        unusable(Unusable::Missing),
                        unusable(Unusable::NotANumber),
                        unusable(Unusable::Negative),
                        unusable(Unusable::TooLarge),
                    ],
                })
            }),
        };
        Policy {
            name: name.into(),
            config: config.clone(),
            key: config.key_parts(),
            cost: config.cost.clone(),
            reserve: config
                .reserve
                .unwrap_or(crate::config::limits::DEFAULT_RESERVE),
            max_cost: config
                .max_cost
                .unwrap_or(crate::config::limits::DEFAULT_MAX_COST),
            algorithm: config.algorithm,
            scope: config.scope,
            sync: config.sync,
            mode: config.mode,
            on_redis_error: config.on_redis_error,
            status: config.status,
            headers: config.headers,
            count_status: config.count_status.clone(),
            exempt: config.exempt.clone(),
            block_for_ms: config.block_for.map(|d| d.as_millis() as u64),
            delay: (config.on_limit == crate::config::OnLimit::Delay).then(|| {
                super::delay::Delay::new(
                    config.max_delay,
                    config.max_waiting,
                    metrics.ratelimit_delayed.with_label_values(&[name]),
                    metrics.ratelimit_waiting.with_label_values(&[name]),
                )
            }),
            block_outbox: parking_lot::Mutex::new(Vec::new()),
            base,
            tiers,
            key_overrides,
            tenant_overrides,
            counters,
        }
    }

    /// Takes over the counts of `old`, the policy of the same name before a reload or a
    /// runtime change, when they count the same keys the same way: only the numbers (or
    /// the response, tiers and overrides) changed. Each limiter takes over the one of the
    /// same tier or override; a new tier or override starts from nothing here, while its
    /// Redis counters, keyed without the numbers, carry on.
    pub fn adopt(&mut self, old: &Policy) {
        if self.algorithm != old.algorithm
            || self.scope != old.scope
            || self.sync != old.sync
            || self.key != old.key
        {
            return;
        }
        let max_keys = self.config.max_keys;
        self.base.adopt(&old.base, max_keys);
        let by_name = |new: &mut HashMap<String, Limiter>, was: &HashMap<String, Limiter>| {
            for (name, limiter) in new {
                if let Some(was) = was.get(name) {
                    limiter.adopt(was, max_keys);
                }
            }
        };
        by_name(&mut self.tiers, &old.tiers);
        by_name(&mut self.key_overrides, &old.key_overrides);
        by_name(&mut self.tenant_overrides, &old.tenant_overrides);
    }

    /// The limiter for a request: an override for its API key, then one for its tenant,
    /// then its tier's, then the policy's own.
    #[inline]
    pub fn limiter_for(
        &self,
        key_id: Option<&str>,
        tenant: Option<&str>,
        tier: Option<&str>,
    ) -> &Limiter {
        if !self.key_overrides.is_empty() {
            if let Some(l) = key_id.and_then(|id| self.key_overrides.get(id)) {
                return l;
            }
        }
        if !self.tenant_overrides.is_empty() {
            if let Some(l) = tenant.and_then(|t| self.tenant_overrides.get(t)) {
                return l;
            }
        }
        self.limiter(tier)
    }

    /// The limiter for a request's tier: the tier's numbers when the policy names it.
    pub fn limiter(&self, tier: Option<&str>) -> &Limiter {
        tier.and_then(|t| self.tiers.get(t)).unwrap_or(&self.base)
    }

    pub fn limiters(&self) -> impl Iterator<Item = &Limiter> {
        std::iter::once(&self.base)
            .chain(self.tiers.values())
            .chain(self.key_overrides.values())
            .chain(self.tenant_overrides.values())
    }

    /// How this policy keys clients by address, if its key has `client_ip` in it.
    pub fn client_net(&self) -> Option<crate::config::ClientNet> {
        self.key.iter().find_map(|p| match p {
            KeyPart::ClientIp(net) => Some(*net),
            _ => None,
        })
    }

    /// Whether this policy's state lives in Redis and is synced in the background.
    pub fn is_leased(&self) -> bool {
        self.scope == Scope::Global
            && self.sync == SyncMode::Async
            && self.algorithm != Algorithm::Concurrency
    }

    /// Whether this policy holds concurrency slots fleet-wide (kept in Redis, renewed by
    /// the sync task).
    pub fn holds_fleet_slots(&self) -> bool {
        self.scope == Scope::Global && self.algorithm == Algorithm::Concurrency
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

/// The part of a Redis key after the hash tag, for a bucket: a hash of its arrival time
/// and the nodes' reservations (`v2`: the first layout was the arrival time alone, as a
/// string, under a name that held the rate and burst). Named without the numbers, so that
/// changing a bucket's rate or burst keeps its state, as a window's count is kept.
pub const BUCKET_SUFFIX: &str = "b:v2";

pub fn log_suffix(window_ms: u64) -> String {
    format!("l{window_ms}")
}
