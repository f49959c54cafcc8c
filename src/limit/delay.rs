//! `on_limit: delay`: a request over the limit waits until it fits, if that is within
//! `max_delay`, instead of being refused (nginx's `limit_req` delay, Kong's throttling).
//!
//! A waiting request is a sleeping future: it holds no worker thread. At most
//! `max_waiting` wait at once per policy; past that, or when the wait it would need is
//! longer than what is left of `max_delay`, the request is refused as usual. Its refusal
//! is counted only then, so a request that waited and passed counts as allowed once (and
//! in `tollgate_ratelimit_delayed_total`).

use super::decide::{Check, Outcome};
use super::key::RequestFacts;
use super::link::RedisLink;
use super::policy::{Limiter, Policy};
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Delay {
    pub max: Duration,
    max_waiting: usize,
    waiting: AtomicUsize,
    delayed: IntCounter,
    waiting_gauge: IntGauge,
}

impl std::fmt::Debug for Delay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delay")
            .field("max", &self.max)
            .field("max_waiting", &self.max_waiting)
            .finish()
    }
}

/// A place among the requests waiting under one policy; given back when dropped.
struct Slot<'a>(&'a Delay);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.waiting_gauge.dec();
    }
}

impl Delay {
    pub fn new(max: Duration, max_waiting: usize, delayed: IntCounter, waiting: IntGauge) -> Self {
        Delay {
            max,
            max_waiting,
            waiting: AtomicUsize::new(0),
            delayed,
            waiting_gauge: waiting,
        }
    }

    /// Whether a request refused with this `Retry-After` may wait instead.
    #[inline]
    pub fn may_wait(&self, retry_after_ms: u64) -> bool {
        Duration::from_millis(retry_after_ms) <= self.max
    }

    fn take_slot(&self) -> Option<Slot<'_>> {
        let taken = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_waiting).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| {
            self.waiting_gauge.inc();
            Slot(self)
        })
    }
}

impl Policy {
    /// Waits for room for a request whose decision was [`Outcome::Deferred`], deciding again
    /// each time its `Retry-After` has passed, until it is admitted or `max_delay` runs out.
    pub async fn wait_for_room(
        &self,
        limiter: &Limiter,
        facts: &RequestFacts<'_>,
        cost: u64,
        link: Option<&RedisLink>,
        deferred: Check,
    ) -> Check {
        let Some(delay) = &self.delay else {
            return self.refuse_deferred(deferred);
        };
        let Some(_slot) = delay.take_slot() else {
            return self.refuse_deferred(deferred);
        };
        let deadline = Instant::now() + delay.max;
        let mut last = deferred;
        loop {
            let wait = Duration::from_millis(last.verdict.retry_after_ms.max(1));
            if Instant::now() + wait > deadline {
                return self.refuse_deferred(last);
            }
            tokio::time::sleep(wait).await;
            let check = match self.decide_now(limiter, facts, cost, link) {
                Some(decided) => decided,
                None => self.check(limiter, facts, cost, link).await,
            };
            match check.outcome {
                Outcome::Deferred => last = check,
                outcome => {
                    if outcome.passes() {
                        delay.delayed.inc();
                    }
                    return check;
                }
            }
        }
    }

    /// A deferred request that may not wait (any more): refused, and counted so.
    pub fn refuse_deferred(&self, mut check: Check) -> Check {
        if check.outcome == Outcome::Deferred {
            check.outcome = Outcome::Limited;
            self.counters.limited.inc();
        }
        check
    }
}
