//! Process lifecycle: counting requests in flight, and leaving as soon as a graceful
//! shutdown has drained them.
//!
//! Pingora's graceful terminate stops the listeners and then sleeps the whole grace period
//! even when nothing is left to finish. tollgate watches the shutdown phase instead and
//! exits the moment the last in-flight request completes, so the grace period is an upper
//! bound rather than a fixed delay.

use pingora_core::server::ExecutionPhase;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Requests being processed, shared by every request context.
#[derive(Clone)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
    gauge: IntGauge,
}

impl InFlight {
    pub fn new(gauge: IntGauge) -> Self {
        InFlight {
            count: Arc::new(AtomicUsize::new(0)),
            gauge,
        }
    }

    /// Counts a request until the returned guard drops.
    pub fn enter(&self) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.gauge.inc();
        InFlightGuard {
            count: self.count.clone(),
            gauge: self.gauge.clone(),
        }
    }

    pub fn current(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

pub struct InFlightGuard {
    count: Arc<AtomicUsize>,
    gauge: IntGauge,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// How long the proxy must stay idle before a draining process exits: long enough that a
/// request racing the listener's close is counted, short enough not to be noticed.
const QUIET_PERIOD: Duration = Duration::from_millis(100);

/// Watches Pingora's execution phase; once the grace period starts, waits for the requests
/// in flight to finish, runs `before_exit`, and exits the process.
pub fn exit_when_drained(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    in_flight: InFlight,
    before_exit: impl FnOnce() + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name("drain-watch".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            let mut idle_since: Option<Instant> = None;
            loop {
                if in_flight.current() == 0 {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= QUIET_PERIOD {
                        break;
                    }
                } else {
                    idle_since = None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            tracing::info!("all in-flight requests finished; exiting");
            before_exit();
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        tracing::warn!(
            "cannot start the drain watcher ({e}); shutdown will wait the full grace period"
        );
    }
}
