//! The running configuration: the router, its routes and the upstream pools, built from a
//! validated [`Config`] and swapped as a whole when the config changes.
//!
//! Each request takes one snapshot when it starts and finishes under it, so a reload never
//! changes the rules under a request in flight.

use crate::config::canonical_prefix;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::upstream::{BuildError, UpstreamPool};
use arc_swap::ArcSwap;
use prometheus::Histogram;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct Route {
    /// The canonical prefix; also the `route` label in metrics and logs.
    pub prefix: String,
    pub upstream: Arc<UpstreamPool>,
    pub strip_prefix: bool,
    pub duration: Histogram,
}

pub struct Gateway {
    pub config: Arc<Config>,
    pub router: Router<Arc<Route>>,
    pub upstreams: BTreeMap<String, Arc<UpstreamPool>>,
}

/// The current gateway, shared by the proxy, the admin listener and background tasks.
pub type SharedGateway = Arc<ArcSwap<Gateway>>;

impl Gateway {
    /// Builds the gateway for `config`, keeping pools from `previous` whose definition did
    /// not change so their health state and pooled connections survive a reload.
    pub fn build(
        config: Config,
        previous: Option<&Gateway>,
        metrics: &Metrics,
    ) -> Result<Gateway, BuildError> {
        let mut upstreams = BTreeMap::new();
        for (name, spec) in &config.upstreams {
            let kept = previous
                .and_then(|g| g.upstreams.get(name))
                .filter(|pool| &pool.config == spec)
                .cloned();
            let pool = match kept {
                Some(pool) => pool,
                None => Arc::new(UpstreamPool::build(name, spec)?),
            };
            metrics.register_upstream(name);
            upstreams.insert(name.clone(), pool);
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for spec in &config.routes {
            // Validation guarantees the upstream exists; a missing one is skipped rather
            // than trusted blindly.
            let Some(upstream) = upstreams.get(&spec.upstream) else {
                continue;
            };
            let prefix = canonical_prefix(&spec.prefix);
            let route = Route {
                duration: metrics.route_duration(&prefix),
                prefix: prefix.clone(),
                upstream: upstream.clone(),
                strip_prefix: spec.strip_prefix,
            };
            routes.push((prefix, Arc::new(route)));
        }
        Ok(Gateway {
            config: Arc::new(config),
            router: Router::new(routes),
            upstreams,
        })
    }

    /// Sets `tollgate_backend_up` from the pools' health, dropping series of removed backends.
    pub fn publish_backend_health(&self, metrics: &Metrics) {
        metrics.backend_up.reset();
        for pool in self.upstreams.values() {
            for member in pool.members() {
                metrics
                    .backend_up
                    .with_label_values(&[pool.name.as_str(), member.label.as_str()])
                    .set(i64::from(pool.is_up(&member.backend)));
            }
        }
    }
}
