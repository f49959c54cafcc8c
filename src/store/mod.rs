//! The control-plane store: what operators create at runtime and would be angry to lose.
//! Today that is registered API keys; Redis keeps only counters, leases, heartbeats and
//! the decision log, all of which may be lost.
//!
//! SQLite beside the config file by default, PostgreSQL for a fleet (every node points at
//! one). The request path never touches the database: it reads an in-memory copy that the
//! store service refreshes when the set's version moves (checked a few times a second, so
//! a change reaches every node within a second). A node that cannot reach the store keeps
//! serving from the last set it loaded; with PostgreSQL it also keeps that set in a local
//! cache file, so a restart while the database is down still honours every key.

mod cache;
mod db;
pub mod service;

use crate::config::store::{self as config_store, StoreConfig, StoreKind};
use crate::identity::{self, KeyDigest, KeyRecord};
use crate::metrics::Metrics;
use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use sqlx::AnyPool;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use crate::config::runtime::RuntimeOverride;
use crate::config::runtime::RuntimePolicy;
pub use db::{AuditEntry, AuditQuery, Keys, PolicySet, StoredPolicy, Written};

/// Why a write did not happen.
#[derive(Debug)]
pub enum StoreError {
    /// The store is not reachable now; nothing changed.
    Unavailable(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "the store is not reachable: {why}"),
        }
    }
}

/// A loaded version that matches no version in a database.
const NOT_LOADED: i64 = -1;

pub struct Store {
    /// The URL to connect to, password included; never logged (see `shown`).
    url: String,
    /// The URL as logs and the admin API show it.
    pub shown: String,
    kind: StoreKind,
    /// Where a PostgreSQL store's last good key set is kept on this node.
    cache_path: Option<PathBuf>,
    pool: ArcSwapOption<AnyPool>,
    keys: ArcSwap<Keys>,
    version: AtomicI64,
    /// The version this node's own last write produced: a poll that read an older set
    /// (it raced the write) must not replace the copy that already has the change.
    written: AtomicI64,
    up: AtomicBool,
    metrics: Arc<Metrics>,
    /// The last failure logged while down, so each distinct reason is logged once.
    last_failure: Mutex<String>,
    /// Orders a poll's install against this node's own writes.
    installing: Mutex<()>,
    opening: tokio::sync::Mutex<()>,
    /// Runtime policies, by name, and the version of the set they are at (the same
    /// scheme as the keys').
    policies: ArcSwap<PolicySet>,
    policies_version: AtomicI64,
    policies_written: AtomicI64,
    /// Woken whenever the policies change, here or on another node: the config watcher
    /// rebuilds the running config with them.
    pub policies_changed: tokio::sync::Notify,
}

impl Store {
    /// The store the config names, not yet opened. `config_path` places the default file
    /// and the cache.
    pub fn new(
        config: &StoreConfig,
        config_path: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Store, String> {
        let mut url = config.resolved_url(config_path);
        let kind = config_store::kind_of(&url).map_err(|e| format!("store.url: {e}"))?;
        let shown = crate::config::redis::redact_url(&url);
        if let Some(var) = &config.password_env {
            let password = std::env::var(var)
                .ok()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    format!("store.password_env: the environment variable `{var}` is not set")
                })?;
            let mut parsed = url::Url::parse(&url).map_err(|e| format!("store.url: {e}"))?;
            parsed
                .set_password(Some(&password))
                .map_err(|()| "store.url: this URL cannot carry a password".to_string())?;
            url = parsed.to_string();
        }
        let cache_path = matches!(kind, StoreKind::Postgres).then(|| {
            config_path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join("tollgate-state.cache.json")
        });
        metrics.store_up.set(0);
        Ok(Store {
            url,
            shown,
            kind,
            cache_path,
            pool: ArcSwapOption::empty(),
            keys: ArcSwap::from_pointee(Keys::new()),
            version: AtomicI64::new(NOT_LOADED),
            written: AtomicI64::new(NOT_LOADED),
            up: AtomicBool::new(false),
            metrics,
            last_failure: Mutex::new(String::new()),
            installing: Mutex::new(()),
            opening: tokio::sync::Mutex::new(()),
            policies: ArcSwap::from_pointee(PolicySet::default()),
            policies_version: AtomicI64::new(NOT_LOADED),
            policies_written: AtomicI64::new(NOT_LOADED),
            policies_changed: tokio::sync::Notify::new(),
        })
    }

    /// Loads the key set before the server starts, so the first request already knows
    /// every key; from the local cache when the store is away. Never fails: the store
    /// service keeps trying in the background.
    pub fn load_at_start(&self) {
        let loaded = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(async {
                    let call = async {
                        let pool = db::open(&self.url).await?;
                        let keys = db::load_keys(&pool).await;
                        let policies = db::load_policies(&pool).await;
                        pool.close().await;
                        Ok::<_, String>((
                            keys.map_err(|e| e.to_string())?,
                            policies.map_err(|e| e.to_string())?,
                        ))
                    };
                    tokio::time::timeout(db::CALL_TIMEOUT * 2, call)
                        .await
                        .unwrap_or_else(|_| Err("no answer within 4s".into()))
                })
            });
        match loaded {
            Ok(((version, keys), (policies_version, policies))) => {
                tracing::info!(
                    store = %self.shown,
                    keys = keys.len(),
                    policies = policies.policies.len(),
                    overrides = policies.overrides.len(),
                    "store loaded"
                );
                self.install(version, keys);
                self.install_policies(policies_version, policies);
                self.up.store(true, Ordering::Relaxed);
                self.metrics.store_up.set(1);
            }
            Err(why) => {
                self.failed("open", &why);
                match self.cache_path.as_deref().map(cache::read) {
                    Some(Ok(keys)) => {
                        tracing::warn!(
                            keys = keys.len(),
                            "store: serving the API keys last loaded, from the local cache"
                        );
                        self.keys.store(Arc::new(keys));
                    }
                    Some(Err(e)) => tracing::warn!("store: no usable local cache: {e}"),
                    None => {}
                }
                match self
                    .policies_cache()
                    .map(|p| cache::read_json::<PolicySet>(&p))
                {
                    Some(Ok(policies)) => {
                        tracing::warn!(
                            policies = policies.policies.len(),
                            "store: serving the policies last loaded, from the local cache"
                        );
                        self.policies.store(Arc::new(policies));
                    }
                    Some(Err(e)) => tracing::warn!("store: no usable policy cache: {e}"),
                    None => {}
                }
            }
        }
    }

    /// A registered API key by digest (constant-time confirmed).
    #[inline]
    pub fn find_key(&self, presented: &KeyDigest) -> Option<Arc<KeyRecord>> {
        identity::find(&self.keys.load(), presented)
    }

    pub fn keys(&self) -> Arc<Keys> {
        self.keys.load_full()
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Registers a key on every node, audited as `actor`'s: written to the store, then
    /// applied here at once.
    pub async fn register(&self, record: KeyRecord, actor: &str) -> Result<(), StoreError> {
        let pool = self.pool().await?;
        let records = [&record];
        let write = db::insert_keys(&pool, &records, actor, "register");
        let version = self.call("write", write).await?;
        self.apply_locally(version, |keys| {
            keys.insert(record.digest, Arc::new(record));
        });
        Ok(())
    }

    /// Revokes a key on every node, audited as `actor`'s; false when the store has no key
    /// with that id.
    pub async fn revoke(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
        let pool = self.pool().await?;
        let removed = self.call("write", db::delete_key(&pool, id, actor)).await?;
        if let Some(version) = removed {
            self.apply_locally(version, |keys| keys.retain(|_, r| r.id != id));
        }
        Ok(removed.is_some())
    }

    /// The runtime policies (by name) and overrides this node runs with.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    pub fn runtime_overrides(&self) -> Vec<RuntimeOverride> {
        self.policies.load().overrides.clone()
    }

    pub fn runtime_policies(&self) -> Vec<RuntimePolicy> {
        self.policies
            .load()
            .policies
            .iter()
            .map(|p| p.policy.clone())
            .collect()
    }

    /// Writes a policy fleet-wide (see [`db::put_policy`] for `expected`), and applies it
    /// here at once.
    pub async fn put_policy(
        &self,
        policy: RuntimePolicy,
        expected: Option<Option<i64>>,
        actor: &str,
    ) -> Result<Written, StoreError> {
        let pool = self.pool().await?;
        let written = self
            .call("write", db::put_policy(&pool, &policy, expected, actor))
            .await?;
        if let Written::Done { revision, version } = written {
            self.apply_policies_locally(version, |set| {
                set.policies.retain(|p| p.policy.name != policy.name);
                set.policies.push(StoredPolicy { policy, revision });
                set.policies
                    .sort_by(|a, b| a.policy.name.cmp(&b.policy.name));
            });
        }
        Ok(written)
    }

    /// Deletes a policy fleet-wide (at revision `expected` if given), and here at once.
    pub async fn delete_policy(
        &self,
        name: &str,
        expected: Option<i64>,
        actor: &str,
    ) -> Result<Written, StoreError> {
        let pool = self.pool().await?;
        let written = self
            .call("write", db::delete_policy(&pool, name, expected, actor))
            .await?;
        if let Written::Done { version, .. } = written {
            self.apply_policies_locally(version, |set| {
                set.policies.retain(|p| p.policy.name != name);
                set.overrides.retain(|o| o.policy != name);
            });
        }
        Ok(written)
    }

    /// Sets an override fleet-wide, and here at once.
    pub async fn put_override(&self, o: RuntimeOverride, actor: &str) -> Result<(), StoreError> {
        let pool = self.pool().await?;
        let version = self
            .call("write", db::put_override(&pool, &o, actor))
            .await?;
        self.apply_policies_locally(version, |set| {
            set.overrides
                .retain(|x| !(x.policy == o.policy && x.subject == o.subject));
            set.overrides.push(o);
        });
        Ok(())
    }

    /// Removes an override fleet-wide; false when there was none.
    pub async fn delete_override(
        &self,
        policy: &str,
        subject: &str,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let pool = self.pool().await?;
        let removed = self
            .call("write", db::delete_override(&pool, policy, subject, actor))
            .await?;
        if let Some(version) = removed {
            self.apply_policies_locally(version, |set| {
                set.overrides
                    .retain(|x| !(x.policy == policy && x.subject == subject));
            });
        }
        Ok(removed.is_some())
    }

    fn apply_policies_locally(&self, version: i64, change: impl FnOnce(&mut PolicySet)) {
        {
            let _serialized = self.installing.lock();
            let mut list = (*self.policies.load_full()).clone();
            change(&mut list);
            self.policies.store(Arc::new(list));
            self.policies_written.fetch_max(version, Ordering::Relaxed);
            self.policies_version.store(NOT_LOADED, Ordering::Relaxed);
        }
        // No wake-up: the writer applies the change itself before it answers.
    }

    fn install_policies(&self, version: i64, policies: PolicySet) {
        {
            let _serialized = self.installing.lock();
            if version < self.policies_written.load(Ordering::Relaxed) {
                return;
            }
            self.policies_version.store(version, Ordering::Relaxed);
            if **self.policies.load() == policies {
                return;
            }
            if let Some(path) = self.policies_cache() {
                if let Err(e) = cache::write_json(&path, &policies) {
                    tracing::warn!(path = %path.display(), "store: cannot write the policy cache: {e}");
                }
            }
            self.policies.store(Arc::new(policies));
        }
        self.policies_changed.notify_one();
    }

    /// Where a PostgreSQL store's last good policy set is kept, beside the key cache.
    fn policies_cache(&self) -> Option<PathBuf> {
        self.cache_path
            .as_ref()
            .map(|p| p.with_file_name("tollgate-state.policies.json"))
    }

    /// The audit trail's entries that `query` asks for, oldest first.
    pub async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let pool = self.pool().await?;
        self.call("read", db::audit_entries(&pool, query)).await
    }

    /// The pool, opened now if it is not yet (a write right after start, or while the
    /// store was never reachable). A pool that is open but failing answers for itself.
    async fn pool(&self) -> Result<Arc<AnyPool>, StoreError> {
        if let Some(pool) = self.pool.load_full() {
            return Ok(pool);
        }
        self.open()
            .await
            .ok_or_else(|| StoreError::Unavailable(self.last_failure.lock().clone()))
    }

    /// Opens the pool once, whoever asks first (the store service or a write).
    async fn open(&self) -> Option<Arc<AnyPool>> {
        let _one_at_a_time = self.opening.lock().await;
        if let Some(pool) = self.pool.load_full() {
            return Some(pool);
        }
        match tokio::time::timeout(db::CALL_TIMEOUT * 2, db::open(&self.url)).await {
            Ok(Ok(pool)) => {
                let pool = Arc::new(pool);
                self.pool.store(Some(pool.clone()));
                Some(pool)
            }
            Ok(Err(why)) => {
                self.failed("open", &why);
                None
            }
            Err(_) => {
                self.failed("open", "no answer within 4s");
                None
            }
        }
    }

    async fn call<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(db::CALL_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let why = e.to_string();
                self.failed(op, &why);
                Err(StoreError::Unavailable(why))
            }
            Err(_) => {
                let why = format!("no answer within {:?}", db::CALL_TIMEOUT);
                self.failed(op, &why);
                Err(StoreError::Unavailable(why))
            }
        }
    }

    /// This node's own change (which brought the set to `version`), applied before the
    /// next poll reloads the whole set.
    fn apply_locally(&self, version: i64, change: impl FnOnce(&mut Keys)) {
        let _serialized = self.installing.lock();
        let mut keys = (*self.keys.load_full()).clone();
        change(&mut keys);
        self.keys.store(Arc::new(keys));
        self.written.fetch_max(version, Ordering::Relaxed);
        self.version.store(NOT_LOADED, Ordering::Relaxed);
    }

    fn install(&self, version: i64, keys: Keys) {
        let _serialized = self.installing.lock();
        if version < self.written.load(Ordering::Relaxed) {
            return; // read before this node's own write landed; the next poll has it
        }
        if let Some(path) = &self.cache_path {
            if let Err(e) = cache::write(path, &keys) {
                tracing::warn!(path = %path.display(), "store: cannot write the local cache: {e}");
            }
        }
        self.keys.store(Arc::new(keys));
        self.version.store(version, Ordering::Relaxed);
    }

    fn failed(&self, op: &'static str, why: &str) {
        self.metrics.store_errors.with_label_values(&[op]).inc();
        let was_up = self.up.swap(false, Ordering::Relaxed);
        self.metrics.store_up.set(0);
        let mut last = self.last_failure.lock();
        if was_up || *last != why {
            tracing::error!(store = %self.shown, op, "store unreachable: {why}; serving the last state loaded");
            *last = why.to_string();
        }
    }

    fn recovered(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.metrics.store_up.set(1);
            self.last_failure.lock().clear();
            tracing::info!(store = %self.shown, "store is reachable");
        }
    }

    pub fn kind(&self) -> &StoreKind {
        &self.kind
    }
}
