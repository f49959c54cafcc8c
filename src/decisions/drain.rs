//! Empties the decision queue on a short timer and hands each batch to whoever wants it:
//! the dashboard's series, the live streams and, at a slower pace, the per-client log.

use super::{DecisionHub, Record};
use crate::decision_log::LogWriter;
use crate::gateway::SharedGateway;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the queue is emptied: what the live stream lags by, at most.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// How often the log is written: each write sends, per client, only the decisions that
/// survive its trim, so a client sending thousands of requests a second costs at most
/// `max_per_client` formatted entries (and Redis values) per write.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// Records held for the log before it is written early: the buffer's bound (3 MiB).
const LOG_HOLD: usize = 16_384;

pub struct DecisionDrain {
    hub: Arc<DecisionHub>,
    log: LogWriter,
}

impl DecisionDrain {
    pub fn new(gateway: SharedGateway, hub: Arc<DecisionHub>) -> Self {
        DecisionDrain {
            log: LogWriter::new(gateway, hub.clone()),
            hub,
        }
    }

    /// One round: adds the records the log has to write to `pending`. `batch` is the
    /// round's buffer, kept (with its capacity) from round to round.
    fn round(&self, batch: &mut Vec<Record>, pending: &mut Vec<Record>) {
        self.hub.drain_into(batch);
        self.hub.refresh_wants(crate::clock::now_ms());
        if batch.is_empty() {
            return;
        }
        let names = self.hub.names();
        self.hub.feed_dashboard(batch, &names);
        let logged = self.hub.log_enabled();
        if self.hub.has_subscribers() {
            let shared = Arc::new(std::mem::take(batch));
            self.hub.publish(shared.clone());
            if logged {
                pending.extend(shared.iter().filter(|r| r.limits.is_some()).cloned());
            }
        } else if logged {
            pending.extend(batch.drain(..).filter(|r| r.limits.is_some()));
        } else {
            batch.clear();
        }
    }
}

#[async_trait]
impl BackgroundService for DecisionDrain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Both buffers keep their capacity: no large allocation per round.
        let mut batch = Vec::new();
        let mut pending = Vec::new();
        let mut last_write = Instant::now();
        loop {
            let done = tokio::select! {
                _ = tokio::time::sleep(DRAIN_EVERY) => false,
                _ = shutdown.changed() => true,
            };
            self.round(&mut batch, &mut pending);
            let due = done || pending.len() >= LOG_HOLD || last_write.elapsed() >= LOG_EVERY;
            if !pending.is_empty() && due {
                self.log.write(&pending).await;
                pending.clear();
                last_write = Instant::now();
            }
            if done {
                return;
            }
        }
    }
}
