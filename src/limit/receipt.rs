//! What an admitted request took from a policy, so that it can be handed back: when a
//! later policy of the same route refuses the request (a refused request consumes nothing
//! from any policy: decide all, then commit all), and when a policy counts only some
//! responses (`count_status`) and this one was not among them.

use super::link::{unix_ms, unix_ns, RedisLink};
use super::policy::{self, Limiter, Params, Policy};
use super::scripts;
use super::settle::{self, Settlement};

/// One admission, as the state that counted it sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// Nothing to hand back (refused, concurrency slots release themselves, no state).
    Nothing,
    /// This node's lease (global async, or a global key decided alone).
    Lease {
        hash: u64,
        /// The window it was counted in; `None` for buckets.
        window: Option<u64>,
        cost: u64,
        /// Spent from quota Redis granted, rather than admitted unbacked.
        backed: bool,
    },
    /// The local window estimator.
    Window { hash: u64, window: u64, cost: u64 },
    /// A local sliding log: its newest `cost` entries.
    Log { hash: u64, cost: u64 },
    /// The local bucket estimator.
    Tat { hash: u64, cost: u64 },
    /// Redis, in atomic mode. Boxed: every decision returns a receipt, and this variant
    /// alone would make each one (and each `Check`) three times the size, paid in copies
    /// on the lease path that never builds it; atomic mode pays a round trip anyway.
    Exact(Box<ExactReceipt>),
}

/// What an atomic-mode admission counted in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactReceipt {
    pub key_text: String,
    /// The window it was counted in (windows only).
    pub window: Option<u64>,
    pub cost: u64,
    /// The sliding log entries it added: `member:1` to `member:cost`.
    pub member: Option<String>,
}

impl Receipt {
    /// Units the admission took (its reserve, for a cost known from the response).
    pub fn cost(&self) -> u64 {
        match self {
            Receipt::Nothing => 0,
            Receipt::Lease { cost, .. }
            | Receipt::Window { cost, .. }
            | Receipt::Log { cost, .. }
            | Receipt::Tat { cost, .. } => *cost,
            Receipt::Exact(exact) => exact.cost,
        }
    }

    /// The same admission, taking `units` instead: what a settlement hands back or adds.
    fn with_cost(mut self, units: u64) -> Receipt {
        match &mut self {
            Receipt::Nothing => {}
            Receipt::Lease { cost, .. }
            | Receipt::Window { cost, .. }
            | Receipt::Log { cost, .. }
            | Receipt::Tat { cost, .. } => *cost = units,
            Receipt::Exact(exact) => exact.cost = units,
        }
        self
    }
}

/// An admission a later refusal must hand back.
pub type Taken<'a> = (&'a Policy, &'a Limiter, Receipt);

/// Hands back every admission in `taken`.
pub async fn hand_back(taken: Vec<Taken<'_>>, link: Option<&RedisLink>) {
    for (policy, limiter, receipt) in taken {
        policy.refund(limiter, receipt, link).await;
    }
}

impl Policy {
    /// Hands back what `receipt` took. Atomic mode takes one Redis call, bounded by
    /// `redis.timeout`; if Redis does not answer, the units stay counted, which can only
    /// make the limit stricter.
    pub async fn refund(&self, limiter: &Limiter, receipt: Receipt, link: Option<&RedisLink>) {
        match receipt {
            Receipt::Nothing => {}
            Receipt::Lease {
                hash,
                window,
                cost,
                backed,
            } => {
                limiter
                    .leases
                    .get(hash, |lease| lease.refund(window, cost, backed));
            }
            Receipt::Window { hash, window, cost } => {
                if let Some(windows) = &limiter.windows {
                    windows.refund(hash, cost, window);
                }
            }
            Receipt::Log { hash, cost } => {
                if let Some(logs) = &limiter.logs {
                    logs.get(hash, |log| log.refund(cost));
                }
            }
            Receipt::Tat { hash, cost } => {
                if let (Some(tats), Params::Bucket(bucket)) = (&limiter.tats, limiter.params) {
                    tats.refund(hash, cost, bucket);
                }
            }
            Receipt::Exact(exact) => {
                let ExactReceipt {
                    key_text,
                    window,
                    cost,
                    member,
                } = *exact;
                if let Some(link) = link {
                    if let Err(e) = self
                        .adjust_exact(limiter, link, &key_text, window, -(cost as i64), member)
                        .await
                    {
                        link.metrics()
                            .redis_errors
                            .with_label_values(&["refund"])
                            .inc();
                        tracing::debug!(policy = %self.name, "a refund did not reach redis: {e}");
                    }
                }
            }
        }
    }

    /// Puts the `actual` cost of a response in place of the reserve `receipt` took, on the
    /// state that counted it (see [`settle`]). Returns what it moved.
    pub async fn settle_cost(
        &self,
        limiter: &Limiter,
        receipt: Receipt,
        actual: u64,
        link: Option<&RedisLink>,
    ) -> Settlement {
        let settlement = settle::settle(receipt.cost(), actual);
        match settlement {
            Settlement::Even => {}
            Settlement::Refund(units) => {
                self.refund(limiter, receipt.with_cost(units), link).await;
            }
            Settlement::Surcharge(units) => {
                self.surcharge(limiter, receipt.with_cost(units), link)
                    .await;
            }
        }
        settlement
    }

    /// Charges what `receipt` says on top of its admission, limit or not: the debt a
    /// response that cost more than its reserve leaves. Atomic mode takes one Redis call;
    /// if Redis does not answer, the debt is lost (counted as a Redis error), which can
    /// only make the limit more lenient by that response's surcharge.
    async fn surcharge(&self, limiter: &Limiter, receipt: Receipt, link: Option<&RedisLink>) {
        match receipt {
            // Sliding logs and concurrency limits refuse costs from the response (config).
            Receipt::Nothing | Receipt::Log { .. } => {}
            Receipt::Lease {
                hash, window, cost, ..
            } => {
                let debt = limiter
                    .leases
                    .get(hash, |lease| lease.surcharge(window, cost));
                if let (Some(true), Some(link)) = (debt, link) {
                    link.mark_urgent(limiter.id, hash);
                }
            }
            Receipt::Window { hash, window, cost } => {
                if let Some(windows) = &limiter.windows {
                    windows.surcharge(hash, cost, window);
                }
            }
            Receipt::Tat { hash, cost } => {
                if let (Some(tats), Params::Bucket(bucket)) = (&limiter.tats, limiter.params) {
                    tats.surcharge(hash, cost, bucket, unix_ns());
                }
            }
            Receipt::Exact(exact) => {
                let ExactReceipt {
                    key_text,
                    window,
                    cost,
                    ..
                } = *exact;
                if let Some(link) = link {
                    if let Err(e) = self
                        .adjust_exact(limiter, link, &key_text, window, cost as i64, None)
                        .await
                    {
                        link.metrics()
                            .redis_errors
                            .with_label_values(&["surcharge"])
                            .inc();
                        tracing::debug!(policy = %self.name, "a surcharge did not reach redis: {e}");
                    }
                }
            }
        }
    }

    /// Moves an atomic-mode count by `delta` with nothing wanted: a negative one takes
    /// units off (a refund), a positive one adds them whatever the limit (a surcharge).
    async fn adjust_exact(
        &self,
        limiter: &Limiter,
        link: &RedisLink,
        key_text: &str,
        window: Option<u64>,
        delta: i64,
        member: Option<String>,
    ) -> Result<(), String> {
        let mut connection = link.connection().ok_or("not connected")?;
        let prefix = &link.config.key_prefix;
        let call = async {
            match (limiter.params, window) {
                (Params::Window { limit, sliding, .. }, Some(window)) => {
                    let now = unix_ms();
                    let span = limiter.window_at(now);
                    // The window script in atomic mode with nothing wanted only moves `used`
                    // by the delta.
                    scripts::WINDOW_SCRIPT
                        .key(self.redis_key(prefix, key_text, &limiter.window_suffix(window)))
                        .key(self.redis_key(
                            prefix,
                            key_text,
                            &limiter.window_suffix(window.wrapping_sub(1)),
                        ))
                        .arg(delta)
                        .arg(0)
                        .arg(0)
                        .arg(limit)
                        .arg(span.elapsed_ms(now))
                        .arg(span.len_ms())
                        .arg(u8::from(sliding))
                        .arg(1)
                        .arg(link.reservation_field())
                        .arg(0)
                        .arg(limiter.window_keep_ms(span, now))
                        .invoke_async::<(u64, u64, u64, u64)>(&mut connection)
                        .await
                        .map(drop)
                }
                (Params::Bucket(b), _) => scripts::BUCKET_SCRIPT
                    .key(self.redis_key(prefix, key_text, policy::BUCKET_SUFFIX))
                    .arg(delta)
                    .arg(0)
                    .arg(0)
                    .arg(b.per_ns as f64 / b.count.max(1) as f64 / 1_000.0)
                    .arg(b.burst)
                    .arg(1)
                    .arg(link.reservation_field())
                    .arg(0)
                    .invoke_async::<(u64, u64, u64)>(&mut connection)
                    .await
                    .map(drop),
                (Params::Log { window_ms, .. }, _) => {
                    let members: Vec<String> = member
                        .map(|m| {
                            (1..=delta.unsigned_abs())
                                .map(|i| format!("{m}:{i}"))
                                .collect()
                        })
                        .unwrap_or_default();
                    if members.is_empty() {
                        return Ok(());
                    }
                    redis::cmd("ZREM")
                        .arg(self.redis_key(prefix, key_text, &policy::log_suffix(window_ms)))
                        .arg(members)
                        .query_async::<i64>(&mut connection)
                        .await
                        .map(drop)
                }
                _ => Ok(()),
            }
        };
        match tokio::time::timeout(link.config.timeout, call).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", link.config.timeout)),
        }
    }
}
