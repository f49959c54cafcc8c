//! The running configuration: the router, its routes and the upstream pools, built from a
//! validated [`Config`] and swapped as a whole when the config changes.
//!
//! Each request takes one snapshot when it starts and finishes under it, so a reload never
//! changes the rules under a request in flight.

use crate::config::canonical_prefix;
use crate::config::Config;
use crate::decisions::{DecisionHub, RouteSeries};
use crate::identity::{Identity, Lookup};
use crate::limit::{Policy, RedisLink};
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
    /// Policies applied in order; the first that refuses answers.
    pub limits: Vec<Arc<Policy>>,
    pub require_api_key: bool,
    /// The largest request body accepted (the route's own or `http.max_body_size`).
    pub max_body_size: Option<u64>,
    /// Per-second counts for the dashboard, kept across reloads.
    pub series: Arc<RouteSeries>,
}

pub struct Gateway {
    pub config: Arc<Config>,
    pub router: Router<Arc<Route>>,
    pub upstreams: BTreeMap<String, Arc<UpstreamPool>>,
    pub policies: BTreeMap<String, Arc<Policy>>,
    pub identity: Identity,
    /// The shared store of global limits, when the config has one.
    pub redis: Option<Arc<RedisLink>>,
}

#[derive(Debug)]
pub enum BuildFailure {
    Upstream(BuildError),
    Redis(String),
}

impl std::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildFailure::Upstream(e) => write!(f, "{e}"),
            BuildFailure::Redis(e) => write!(f, "{e}"),
        }
    }
}

impl From<BuildError> for BuildFailure {
    fn from(e: BuildError) -> Self {
        BuildFailure::Upstream(e)
    }
}

/// The current gateway, shared by the proxy, the admin listener and background tasks.
pub type SharedGateway = Arc<ArcSwap<Gateway>>;

impl Gateway {
    /// Builds the gateway for `config`, keeping from `previous` the pools, policies and
    /// Redis link whose definition did not change, so health state, pooled connections and
    /// limit counters survive a reload.
    pub fn build(
        config: Config,
        previous: Option<&Gateway>,
        metrics: &Arc<Metrics>,
        decisions: &DecisionHub,
    ) -> Result<Gateway, BuildFailure> {
        decisions.set_log_enabled(config.admin.decision_log.enabled);
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
        let mut policies = BTreeMap::new();
        for (name, spec) in &config.limits {
            let kept = previous
                .and_then(|g| g.policies.get(name))
                .filter(|p| &p.config == spec)
                .cloned();
            let policy = kept.unwrap_or_else(|| Arc::new(Policy::build(name, spec, metrics)));
            policies.insert(name.clone(), policy);
        }
        let redis = match &config.redis {
            None => None,
            Some(spec) => match previous
                .and_then(|g| g.redis.clone())
                .filter(|l| &l.config == spec)
            {
                Some(link) => Some(link),
                None => Some(Arc::new(
                    RedisLink::new(spec, metrics.clone()).map_err(BuildFailure::Redis)?,
                )),
            },
        };
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
                limits: spec
                    .limits
                    .iter()
                    .filter_map(|name| policies.get(name).cloned())
                    .collect(),
                require_api_key: spec.require_api_key,
                max_body_size: spec.max_body_size.or(config.http.max_body_size),
                series: decisions.series(&prefix),
            };
            routes.push((prefix, Arc::new(route)));
        }
        Ok(Gateway {
            identity: Identity::build(&config),
            config: Arc::new(config),
            router: Router::new(routes),
            upstreams,
            policies,
            redis,
        })
    }

    /// The request's API key, from the config's keys or those registered in Redis.
    pub fn lookup_api_key(&self, headers: &http::HeaderMap) -> Lookup {
        let Some(presented) = self.identity.api_keys.presented(headers) else {
            return Lookup::Missing;
        };
        self.identity
            .api_keys
            .find(&presented)
            .or_else(|| {
                self.redis
                    .as_ref()
                    .and_then(|l| l.find_registered(&presented))
            })
            .map_or(Lookup::Unknown, Lookup::Known)
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
