//! Active health checks for every pool of the current gateway.
//!
//! Pools come and go with config reloads, so instead of one Pingora background service per
//! balancer, one service watches the gateway and gives each pool its own check loop, which
//! ends when the pool is no longer referenced.

use crate::gateway::SharedGateway;
use crate::upstream::UpstreamPool;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

pub struct HealthChecker {
    gateway: SharedGateway,
}

impl HealthChecker {
    pub fn new(gateway: SharedGateway) -> Self {
        HealthChecker { gateway }
    }
}

/// How often the gateway is scanned for pools that appeared in a reload.
const SCAN_INTERVAL: Duration = Duration::from_millis(250);

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut watched: HashSet<usize> = HashSet::new();
        loop {
            let gateway = self.gateway.load_full();
            for pool in gateway.upstreams.values() {
                let Some(interval) = pool.health_check_interval() else {
                    continue;
                };
                let id = Arc::as_ptr(pool) as usize;
                if watched.insert(id) {
                    tokio::spawn(check_loop(Arc::downgrade(pool), interval, shutdown.clone()));
                }
            }
            // Forget pools that are gone so a later pool at the same address is watched.
            watched.retain(|id| {
                gateway
                    .upstreams
                    .values()
                    .any(|p| Arc::as_ptr(p) as usize == *id)
            });
            drop(gateway);
            tokio::select! {
                _ = tokio::time::sleep(SCAN_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

async fn check_loop(pool: Weak<UpstreamPool>, interval: Duration, mut shutdown: ShutdownWatch) {
    loop {
        match pool.upgrade() {
            Some(pool) => pool.run_health_check().await,
            None => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
