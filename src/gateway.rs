//! The running configuration: the router, its routes and the upstream pools, built from a
//! validated [`Config`] and swapped as a whole when the config changes.
//!
//! Each request takes one snapshot when it starts and finishes under it, so a reload never
//! changes the rules under a request in flight.

use crate::config::canonical_prefix;
use crate::config::Config;
use crate::decisions::{DecisionHub, PolicyId, RouteId};
use crate::identity::{Identity, Lookup};
use crate::limit::{Policy, RedisLink};
use crate::metrics::Metrics;
use crate::routing::{Methods, RouteKey, Router};
use crate::store::Store;
use crate::upstream::{BuildError, UpstreamPool};
use arc_swap::ArcSwap;
use http::HeaderValue;
use prometheus::Histogram;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug)]
pub struct Route {
    /// The canonical prefix.
    pub prefix: String,
    /// The host the route serves (lower case), if it names one.
    pub host: Option<String>,
    /// The `route` label in metrics, logs and the dashboard: the prefix, preceded by the
    /// host for routes that name one (`api.example.com/v1`).
    pub label: String,
    pub methods: Methods,
    pub upstream: Arc<UpstreamPool>,
    pub strip_prefix: bool,
    pub duration: Histogram,
    /// Policies applied in order; the first that refuses answers.
    pub limits: Vec<Arc<Policy>>,
    pub require_api_key: bool,
    /// The largest request body accepted (the route's own or `http.max_body_size`).
    pub max_body_size: Option<u64>,
    /// The label's interned id in decision records (kept across reloads).
    pub id: RouteId,
    /// The interned id of each of `limits`, in the same order.
    pub policy_ids: Vec<PolicyId>,
}

/// What a listener adds to the requests it takes: a redirect to HTTPS, an HSTS header.
#[derive(Debug)]
pub struct ListenerPolicy {
    pub addr: SocketAddr,
    pub redirect_https: Option<u16>,
    pub hsts: Option<HeaderValue>,
}

pub struct Gateway {
    pub config: Arc<Config>,
    /// One per listener, in `listen` order; empty when no listener redirects or sets HSTS,
    /// so requests skip the lookup.
    pub listener_policies: Vec<ListenerPolicy>,
    pub router: Router<Arc<Route>>,
    /// Every route's label, for the dashboard to tell live routes from removed ones.
    pub labels: std::collections::BTreeSet<String>,
    pub upstreams: BTreeMap<String, Arc<UpstreamPool>>,
    pub policies: BTreeMap<String, Arc<Policy>>,
    pub identity: Identity,
    /// The shared store of global limits, when the config has one.
    pub redis: Option<Arc<RedisLink>>,
    /// Registered API keys; the running process's one store, kept across reloads (absent
    /// only where nothing is served, as in `tollgate check`).
    pub store: Option<Arc<Store>>,
    /// The rate limit service's domains (`rls`), whose limits are among `policies`.
    pub rls: Option<Arc<crate::rls::Table>>,
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
        decisions.set_log_enabled(config.admin.decision_log.enabled && config.redis.is_some());
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
        // Nothing below fails: a policy that takes over the running one's state (and hands
        // back its quota when its numbers shrank) does so only for a gateway that will run.
        let mut policies = BTreeMap::new();
        for (name, spec) in &config.limits {
            let kept = previous
                .and_then(|g| g.policies.get(name))
                .filter(|p| &p.config == spec)
                .cloned();
            let policy = kept.unwrap_or_else(|| {
                let mut policy = Policy::build(name, spec, metrics);
                if let Some(old) = previous.and_then(|g| g.policies.get(name)) {
                    policy.adopt(old);
                }
                Arc::new(policy)
            });
            policies.insert(name.clone(), policy);
        }
        let rls = config.rls.as_ref().map(|rls| {
            let empty = BTreeMap::new();
            Arc::new(crate::rls::Table::build(
                &rls.domains,
                redis.is_some(),
                rls.response_headers,
                previous.map_or(&empty, |g| &g.policies),
                &mut policies,
                metrics,
            ))
        });
        let mut routes = Vec::with_capacity(config.routes.len());
        for spec in &config.routes {
            // Validation guarantees the upstream exists; a missing one is skipped rather
            // than trusted blindly.
            let Some(upstream) = upstreams.get(&spec.upstream) else {
                continue;
            };
            let prefix = canonical_prefix(&spec.prefix);
            let host = spec.host.as_ref().map(|h| h.to_ascii_lowercase());
            let label = match &host {
                Some(h) => format!("{h}{prefix}"),
                None => prefix.clone(),
            };
            let methods: Vec<String> = spec
                .methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect();
            let limits: Vec<Arc<Policy>> = spec
                .limits
                .iter()
                .filter_map(|name| policies.get(name).cloned())
                .collect();
            let route = Route {
                duration: metrics.route_duration(&label),
                id: decisions.route_id(&label).0,
                policy_ids: limits
                    .iter()
                    .map(|p| decisions.policy_id(&p.name))
                    .collect(),
                label,
                host: host.clone(),
                methods: Methods::new(&methods),
                prefix: prefix.clone(),
                upstream: upstream.clone(),
                strip_prefix: spec.strip_prefix,
                limits,
                require_api_key: spec.require_api_key,
                max_body_size: spec.max_body_size.or(config.http.max_body_size),
            };
            routes.push((RouteKey { host, prefix }, Arc::new(route)));
        }
        let listener_policies = if config
            .listen
            .iter()
            .any(|l| l.redirect_https.is_some() || l.hsts.is_some())
        {
            config
                .listen
                .iter()
                .filter_map(|l| {
                    Some(ListenerPolicy {
                        addr: l.address.parse().ok()?,
                        redirect_https: l.redirect_https,
                        hsts: l
                            .hsts
                            .as_ref()
                            .and_then(|h| HeaderValue::from_str(&h.header_value()).ok()),
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Gateway {
            listener_policies,
            identity: Identity::build(&config),
            config: Arc::new(config),
            labels: routes.iter().map(|(_, r)| r.label.clone()).collect(),
            router: Router::new(routes),
            upstreams,
            policies,
            redis,
            store: previous.and_then(|g| g.store.clone()),
            rls,
        })
    }

    /// The policy of the listener a connection arrived at (by its local address).
    pub fn listener_policy(&self, local: SocketAddr) -> Option<&ListenerPolicy> {
        let index =
            crate::listener::endpoint_index(self.listener_policies.iter().map(|l| l.addr), local)?;
        self.listener_policies.get(index)
    }

    /// The request's API key, from the config's keys or those registered in the store.
    pub fn lookup_api_key(&self, headers: &http::HeaderMap) -> Lookup {
        let Some(presented) = self.identity.api_keys.presented(headers) else {
            return Lookup::Missing;
        };
        self.identity
            .api_keys
            .find(&presented)
            .or_else(|| self.store.as_ref().and_then(|s| s.find_key(&presented)))
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
