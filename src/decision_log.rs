//! Writes each client's recent decisions to Redis capped lists, in batches, off the request
//! path: `{prefix}:log:{client}` (and `{prefix}:log:key:{id}` for API keys) keep the last
//! `max_per_client` entries and expire after `ttl` of quiet.

use crate::decisions::{Decision, DecisionHub};
use crate::gateway::SharedGateway;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

pub fn list_key(prefix: &str, client: &str) -> String {
    format!("{prefix}:log:{client}")
}

pub struct DecisionLogWriter {
    gateway: SharedGateway,
    hub: Arc<DecisionHub>,
}

impl DecisionLogWriter {
    pub fn new(gateway: SharedGateway, hub: Arc<DecisionHub>) -> Self {
        DecisionLogWriter { gateway, hub }
    }
}

/// How often queued decisions are written.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The most decisions written in one round.
const BATCH: usize = 20_000;

fn drain(rx: &Receiver<Arc<Decision>>) -> Vec<Arc<Decision>> {
    let mut batch = Vec::new();
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(d) => batch.push(d),
            Err(_) => break,
        }
    }
    batch
}

#[async_trait]
impl BackgroundService for DecisionLogWriter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(rx) = self.hub.take_log() else {
            return;
        };
        loop {
            let done = tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => false,
                _ = shutdown.changed() => true,
            };
            let batch = drain(&rx);
            if !batch.is_empty() {
                self.write(batch).await;
            }
            if done {
                return;
            }
        }
    }
}

impl DecisionLogWriter {
    async fn write(&self, batch: Vec<Arc<Decision>>) {
        let gateway = self.gateway.load_full();
        let settings = &gateway.config.admin.decision_log;
        let Some(link) = gateway.redis.as_ref() else {
            self.hub.count_dropped(batch.len() as u64);
            return;
        };
        let Some(mut connection) = link.connection().filter(|_| link.is_up()) else {
            self.hub.count_dropped(batch.len() as u64);
            return;
        };
        let prefix = &link.config.key_prefix;
        // Oldest first into LPUSH, so each list reads newest first.
        let mut lists: HashMap<String, Vec<String>> = HashMap::new();
        for d in &batch {
            let Ok(entry) = serde_json::to_string(&**d) else {
                continue;
            };
            if let Some(id) = &d.api_key_id {
                lists
                    .entry(list_key(prefix, &format!("key:{id}")))
                    .or_default()
                    .push(entry.clone());
            }
            lists
                .entry(list_key(prefix, &d.client.to_string()))
                .or_default()
                .push(entry);
        }
        let mut pipe = redis::pipe();
        for (key, entries) in &lists {
            let keep = entries.len().saturating_sub(settings.max_per_client);
            pipe.cmd("LPUSH").arg(key).arg(&entries[keep..]).ignore();
            pipe.cmd("LTRIM")
                .arg(key)
                .arg(0)
                .arg(settings.max_per_client as i64 - 1)
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(key)
                .arg(settings.ttl.as_millis() as u64)
                .ignore();
        }
        let deadline = Duration::from_secs(2);
        match tokio::time::timeout(deadline, pipe.query_async::<()>(&mut connection)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.hub.count_dropped(batch.len() as u64);
                link.metrics()
                    .redis_errors
                    .with_label_values(&["decision_log"])
                    .inc();
                tracing::debug!("decision log write failed: {e}");
            }
            Err(_) => {
                self.hub.count_dropped(batch.len() as u64);
                link.metrics()
                    .redis_errors
                    .with_label_values(&["decision_log"])
                    .inc();
            }
        }
    }
}
