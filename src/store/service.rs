//! Keeps the store's in-memory copy current: (re)opens the database with backoff, reloads
//! the key set when its version moves, and imports once the keys an older tollgate kept in
//! Redis. With PostgreSQL it also listens for the changes other nodes announce (`LISTEN`),
//! and checks the version at once when one arrives; the periodic check stays as the
//! fallback for a notification lost while the listener was reconnecting.

use super::{db, Store, NOT_LOADED};
use crate::config::store::StoreKind;
use crate::gateway::SharedGateway;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often the version is checked: a change reaches every node within this, plus a
/// load.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// The same while PostgreSQL's notifications arrive: they bring changes at once, and a
/// fleet of nodes polling four times a second is load on the database for nothing.
const POLL_LISTENING: Duration = Duration::from_secs(1);
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// The `meta` row that records the one import from Redis.
const IMPORTED: &str = "redis_api_keys_imported";

pub struct StoreService {
    store: Arc<Store>,
    gateway: SharedGateway,
    /// Woken by a notification: check the version now.
    changed: Arc<Notify>,
    /// The listener is connected and subscribed.
    listening: Arc<AtomicBool>,
}

/// The audit trail's actor for keys imported from an older tollgate's Redis.
const IMPORT_ACTOR: &str = "tollgate (import from redis)";

impl StoreService {
    pub fn new(store: Arc<Store>, gateway: SharedGateway) -> Self {
        StoreService {
            store,
            gateway,
            changed: Arc::new(Notify::new()),
            listening: Arc::new(AtomicBool::new(false)),
        }
    }
}

#[async_trait]
impl BackgroundService for StoreService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let store = &self.store;
        let mut retry = RETRY_FIRST;
        let mut next_open = Instant::now();
        let mut import_done = false;
        let listener = matches!(store.kind(), StoreKind::Postgres).then(|| {
            tokio::spawn(listen(
                store.clone(),
                self.changed.clone(),
                self.listening.clone(),
            ))
        });
        loop {
            if store.pool.load().is_none() && Instant::now() >= next_open {
                if store.open().await.is_some() {
                    retry = RETRY_FIRST;
                } else {
                    next_open = Instant::now() + retry;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
            if let Some(pool) = store.pool.load_full() {
                if self.refresh(&pool).await && !import_done {
                    import_done = self.import_from_redis(&pool).await;
                }
            }
            let every = if self.listening.load(Ordering::Relaxed) {
                POLL_LISTENING
            } else {
                POLL_EVERY
            };
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.changed.notified() => {}
                _ = shutdown.changed() => break,
            }
        }
        if let Some(task) = listener {
            task.abort();
        }
    }
}

impl StoreService {
    /// Reloads the key set if its version moved; true when the store answered.
    async fn refresh(&self, pool: &sqlx::AnyPool) -> bool {
        let store = &self.store;
        let Ok(version) = store.call("poll", db::keys_version(pool)).await else {
            return false;
        };
        store.recovered();
        if version != store.version.load(Ordering::Relaxed) {
            match store.call("load", db::load_keys(pool)).await {
                Ok((version, keys)) => store.install(version, keys),
                Err(_) => return false,
            }
        }
        let Ok(version) = store.call("poll", db::policies_version(pool)).await else {
            return false;
        };
        if version != store.policies_version.load(Ordering::Relaxed) {
            match store.call("load", db::load_policies(pool)).await {
                Ok((version, policies)) => store.install_policies(version, policies),
                Err(_) => return false,
            }
        }
        true
    }

    /// Imports the keys an older tollgate left in Redis, once, into a store that has
    /// none. True when there is nothing left to do.
    async fn import_from_redis(&self, pool: &sqlx::AnyPool) -> bool {
        let store = &self.store;
        match store.call("load", db::meta(pool, IMPORTED)).await {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(_) => return false,
        }
        if !store.keys().is_empty() && store.version.load(Ordering::Relaxed) != NOT_LOADED {
            // Keys were registered here already: an old Redis set is not this fleet's.
            return store
                .call(
                    "write",
                    db::set_meta(pool, IMPORTED, "skipped: store in use"),
                )
                .await
                .is_ok();
        }
        let gateway = self.gateway.load_full();
        let Some(link) = gateway.redis.as_ref() else {
            return false; // nothing to import from (yet)
        };
        let Some(mut connection) = link.connection() else {
            return false;
        };
        let read = crate::identity::registry::load(&mut connection, &link.config.key_prefix);
        let old = match tokio::time::timeout(db::CALL_TIMEOUT, read).await {
            Ok(Ok(keys)) => keys,
            _ => return false,
        };
        let records: Vec<_> = old.values().map(|r| r.as_ref()).collect();
        if !records.is_empty()
            && store
                .call(
                    "write",
                    db::insert_keys(pool, &records, IMPORT_ACTOR, "import"),
                )
                .await
                .is_err()
        {
            return false;
        }
        let note = format!(
            "{} keys at {}",
            records.len(),
            crate::access_log::now_rfc3339()
        );
        if store
            .call("write", db::set_meta(pool, IMPORTED, &note))
            .await
            .is_err()
        {
            return false;
        }
        if !records.is_empty() {
            tracing::info!(
                keys = records.len(),
                "imported the API keys an older tollgate kept in Redis into the store, once"
            );
        }
        true
    }
}

/// Subscribes to the store's channel and wakes the service for every change another node
/// announces, reconnecting with backoff. A reconnection may have missed notifications, so
/// it wakes the service too, which then compares versions.
async fn listen(store: Arc<Store>, changed: Arc<Notify>, listening: Arc<AtomicBool>) {
    let mut retry = RETRY_FIRST;
    loop {
        let subscribed = async {
            let mut listener = sqlx::postgres::PgListener::connect(&store.url).await?;
            listener.listen(db::CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(db::CALL_TIMEOUT * 2, subscribed).await {
            Ok(Ok(mut listener)) => {
                retry = RETRY_FIRST;
                listening.store(true, Ordering::Relaxed);
                store.metrics.store_listening.set(1);
                changed.notify_one();
                // `None`: the connection dropped and was re-established (sqlx's
                // eager reconnect); whatever was announced meanwhile is lost.
                while let Ok(notification) = listener.try_recv().await {
                    if notification.is_some() {
                        store.metrics.store_notifications.inc();
                    }
                    changed.notify_one();
                }
                listening.store(false, Ordering::Relaxed);
                store.metrics.store_listening.set(0);
            }
            Ok(Err(e)) => tracing::debug!("store: cannot listen for changes: {e}"),
            Err(_) => tracing::debug!("store: cannot listen for changes: no answer"),
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}
