//! The counter store: every connection tollgate makes to Redis, whatever its shape — one
//! server, a Redis Cluster, or a master watched by Sentinel — behind one small interface:
//! a shared [`Connection`] for commands and single-slot scripts, [`Store::run`] for a
//! batch split per slot owner, [`fleet::heartbeat`], and whether a key's slot can be
//! reached right now. Limits, the decision log and the admin API talk only to this.
//!
//! Topology work is redis-rs's own (`cluster-async`, `sentinel`): it discovers the cluster,
//! routes by slot and follows `MOVED`/`ASK`; the Sentinel client asks for the master. What
//! is here is what a rate limiter needs beyond that: a sync batch must cost one round trip
//! per master, and one master failing must not make the other masters' keys local.

mod batch;
mod connection;
pub mod fleet;
pub mod slots;

pub use batch::Answer;
pub use connection::Connection;

use crate::config::redis::{Endpoints, Shape};
use crate::config::RedisConfig;
use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, RedisResult};
use slots::{SlotHealth, SlotMap};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The most a (re)connection attempt may take; the sync loop must not stall behind it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the cluster's slot map is re-read when nothing suggests it moved.
const SLOT_MAP_EVERY_MS: u64 = 1_000;

pub struct Store {
    endpoints: Endpoints,
    opener: Opener,
    connection: ArcSwapOption<Connection>,
    cluster: Option<ClusterState>,
    /// Sentinel: the master the shared connection is on, and when the sentinels were
    /// last asked (Unix ms).
    sentinel_master: Mutex<Option<String>>,
    sentinel_checked_ms: AtomicU64,
}

enum Opener {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
    // `SentinelClient` asks through `&mut self` and caches its sentinel connections.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

/// What the store knows about a cluster beyond redis-rs's client: who owns which slot,
/// a pipeline connection per master, and which slots are unreachable.
struct ClusterState {
    map: ArcSwap<SlotMap>,
    masters: Mutex<HashMap<String, MultiplexedConnection>>,
    /// Masters whose last call failed: batches leave them out until one answers a probe
    /// (or a replica takes over at another address), so that a master that hangs costs
    /// one round its deadline, not every round.
    failing: Mutex<std::collections::HashSet<String>>,
    health: SlotHealth,
    map_read_ms: AtomicU64,
    map_stale: AtomicBool,
    /// Stands in for a node that reports an empty address.
    fallback_host: String,
}

impl Store {
    pub fn new(config: &RedisConfig) -> Result<Store, String> {
        let endpoints = crate::config::redis::endpoints(config)
            .map_err(|(key, why)| format!("{key}: {why}"))?;
        let opener = open(&endpoints).map_err(|e| format!("redis: {e}"))?;
        let cluster = match &endpoints.shape {
            Shape::Cluster(seeds) => Some(ClusterState {
                map: ArcSwap::from_pointee(SlotMap::default()),
                masters: Mutex::new(HashMap::new()),
                failing: Mutex::new(std::collections::HashSet::new()),
                health: SlotHealth::default(),
                map_read_ms: AtomicU64::new(0),
                map_stale: AtomicBool::new(true),
                fallback_host: seeds
                    .first()
                    .map(|s| host_of(&s.addr))
                    .unwrap_or_else(|| "127.0.0.1".into()),
            }),
            _ => None,
        };
        Ok(Store {
            endpoints,
            opener,
            connection: ArcSwapOption::empty(),
            cluster,
            sentinel_master: Mutex::new(None),
            sentinel_checked_ms: AtomicU64::new(0),
        })
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// A handle on the shared connection, if there is one.
    pub fn connection(&self) -> Option<Connection> {
        self.connection.load_full().map(|c| (*c).clone())
    }

    /// A connection of its own for bulk writes (the decision log), so they never queue
    /// ahead of the sync's round trips. One server gets a second connection; a cluster or
    /// Sentinel setup shares its connection (its batches already go per master).
    pub async fn dedicated(&self) -> RedisResult<Connection> {
        match &self.opener {
            Opener::Single(client) => {
                let config = AsyncConnectionConfig::new().set_connection_timeout(CONNECT_TIMEOUT);
                Ok(Connection::Node(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            _ => self.connection().ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::IoError, "not connected"))
            }),
        }
    }

    /// Forgets the shared connection, so the next [`Store::connect`] opens a new one (for
    /// Sentinel: asks the sentinels for the master again).
    pub fn disconnect(&self) {
        self.connection.store(None);
    }

    /// Opens the shared connection: to the server, to the cluster (and reads its slot
    /// map), or to whichever server the sentinels now call the master.
    pub async fn connect(&self) -> RedisResult<()> {
        // No response timeout on the connection: every call has a deadline of its own,
        // sized for what it does (one atomic decision, a heartbeat, a pipeline of 2,000
        // sync scripts), and one connection-wide figure would be wrong for all but one.
        let config = AsyncConnectionConfig::new().set_connection_timeout(CONNECT_TIMEOUT);
        let connection = match &self.opener {
            Opener::Single(client) => Connection::Node(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ),
            Opener::Cluster(client) => {
                let connection = Connection::Cluster(client.get_async_connection().await?);
                if let Some(state) = &self.cluster {
                    state.map_stale.store(true, Ordering::Relaxed);
                }
                self.refresh_slots(&connection).await?;
                connection
            }
            Opener::Sentinel(client) => {
                let ask = async { client.lock().await.async_get_client().await };
                let master = tokio::time::timeout(CONNECT_TIMEOUT * 4, ask)
                    .await
                    .map_err(|_| timeout_error("the sentinels did not name a master in time"))??;
                let connection = master
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                *self.sentinel_master.lock() = Some(master.get_connection_info().addr.to_string());
                self.sentinel_checked_ms
                    .store(crate::clock::now_ms(), Ordering::Relaxed);
                Connection::Node(connection)
            }
        };
        self.connection.store(Some(Arc::new(connection)));
        Ok(())
    }

    /// Whether the slot of `key` can be reached: always, unless the store is a cluster and
    /// the master serving that slot failed its last call.
    #[inline]
    pub fn reachable(&self, key: impl FnOnce() -> String) -> bool {
        match &self.cluster {
            Some(state) if state.health.any_down() => {
                !state.health.is_down(slots::slot_of(key().as_bytes()))
            }
            _ => true,
        }
    }

    /// Slots that cannot be reached right now (always 0 outside a cluster).
    pub fn unreachable_slots(&self) -> u32 {
        self.cluster.as_ref().map_or(0, |s| s.health.down_slots())
    }

    /// Marks the master serving `key`'s slot unreachable, after a call for that key failed,
    /// until it answers again ([`Store::probe`] or a batch). Outside a cluster the whole
    /// store is one server: the caller turns everything local instead.
    pub fn key_failed(&self, key: &str) {
        if let Some(state) = &self.cluster {
            let slot = slots::slot_of(key.as_bytes());
            let map = state.map.load();
            match map.owner(slot) {
                Some(master) => {
                    for (start, end) in map.ranges_of(master) {
                        state.health.set(start, end, true);
                    }
                }
                None => state.health.set(slot, slot, true),
            }
            state.map_stale.store(true, Ordering::Relaxed);
        }
    }

    /// Cluster: re-reads the slot map when due, then pings every master on its pipeline
    /// connection, marking its slots up or down, and returns (masters answering, masters).
    /// Sentinel: asks the sentinels whether the master moved. `None` outside a cluster.
    pub async fn probe(
        &self,
        connection: &Connection,
        deadline: Duration,
    ) -> Option<(usize, usize)> {
        if let Opener::Sentinel(_) = &self.opener {
            self.recheck_sentinels(deadline).await;
            return None;
        }
        let state = self.cluster.as_ref()?;
        let due = state.map_stale.load(Ordering::Relaxed)
            || crate::clock::now_ms().saturating_sub(state.map_read_ms.load(Ordering::Relaxed))
                >= SLOT_MAP_EVERY_MS;
        if due {
            if let Err(e) = tokio::time::timeout(deadline, self.refresh_slots(connection)).await {
                tracing::debug!("cluster slot map not refreshed: {e}");
            }
        }
        let map = state.map.load_full();
        let masters = map.masters();
        let pings = masters.iter().map(|master| async move {
            let ping = async {
                let mut c = self.master(master).await?;
                redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .map_err(|e| e.to_string())
            };
            let ok = matches!(tokio::time::timeout(deadline, ping).await, Ok(Ok(_)));
            if ok {
                state.failing.lock().remove(master.as_str());
            } else {
                self.master_failed(master);
            }
            (master, ok)
        });
        let answers = futures_util::future::join_all(pings).await;
        // Slots no master serves stay down; the rest follow their master's answer.
        let covered_down: Vec<(u16, u16, bool)> = answers
            .iter()
            .flat_map(|(master, ok)| map.ranges_of(master).map(move |(s, e)| (s, e, !ok)))
            .collect();
        let mut covered = vec![false; slots::SLOTS];
        for (start, end, down) in covered_down {
            state.health.set(start, end, down);
            for c in &mut covered[start as usize..=end as usize] {
                *c = true;
            }
        }
        if !map.is_empty() {
            for (slot, c) in covered.iter().enumerate() {
                if !c {
                    state.health.set(slot as u16, slot as u16, true);
                }
            }
        }
        let up = answers.iter().filter(|(_, ok)| *ok).count();
        Some((up, answers.len()))
    }

    /// Sentinel: asks again, at most once a second, which server is the master, and moves
    /// the shared connection when it changed. A switchover leaves the old master up and
    /// writable until the sentinels demote it, so waiting for an error is not enough.
    async fn recheck_sentinels(&self, deadline: Duration) {
        let Opener::Sentinel(client) = &self.opener else {
            return;
        };
        let now = crate::clock::now_ms();
        if now.saturating_sub(self.sentinel_checked_ms.load(Ordering::Relaxed)) < SLOT_MAP_EVERY_MS
        {
            return;
        }
        self.sentinel_checked_ms.store(now, Ordering::Relaxed);
        let ask = async { client.lock().await.async_get_client().await };
        let Ok(Ok(master)) = tokio::time::timeout(deadline, ask).await else {
            return;
        };
        let named = master.get_connection_info().addr.to_string();
        let current = self.sentinel_master.lock().clone();
        if current.as_deref() != Some(named.as_str()) {
            tracing::info!(
                master = %named,
                "the sentinels name a new master: moving the connection there"
            );
            if let Err(e) = self.connect().await {
                tracing::warn!("cannot reach the new master {named} yet: {e}");
                self.disconnect();
            }
        }
    }

    /// Reads `CLUSTER SLOTS` from a master known to answer (the cluster client would pick
    /// any node, a dead one included, and wait on it), else through the cluster client.
    async fn refresh_slots(&self, connection: &Connection) -> RedisResult<()> {
        let Some(state) = &self.cluster else {
            return Ok(());
        };
        let mut reply = None;
        let known = state.map.load_full();
        for master in known.masters() {
            let answers = known
                .ranges_of(&master)
                .next()
                .is_some_and(|(start, _)| !state.health.is_down(start));
            if !answers {
                continue;
            }
            if let Ok(mut c) = self.master(&master).await {
                let mut slots = redis::cmd("CLUSTER");
                slots.arg("SLOTS");
                let ask = slots.query_async(&mut c);
                if let Ok(Ok(value)) = tokio::time::timeout(CONNECT_TIMEOUT / 5, ask).await {
                    reply = Some(value);
                    break;
                }
            }
        }
        let reply: redis::Value = match reply {
            Some(value) => value,
            None => {
                let mut c = connection.clone();
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut c)
                    .await?
            }
        };
        let map = SlotMap::parse(&reply, &state.fallback_host)
            .ok_or_else(|| timeout_error("CLUSTER SLOTS answered something unexpected"))?;
        if **state.map.load() != map {
            tracing::info!(masters = ?map.masters(), "redis cluster slot map changed");
            state.map.store(Arc::new(map));
        }
        state
            .map_read_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        state.map_stale.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// The pipeline connection to one master, opened on first use.
    async fn master(&self, addr: &str) -> Result<MultiplexedConnection, String> {
        let state = self.cluster.as_ref().ok_or("not a cluster")?;
        if let Some(c) = state.masters.lock().get(addr) {
            return Ok(c.clone());
        }
        let info = self
            .node_info(addr)
            .ok_or_else(|| format!("bad address {addr}"))?;
        let client = match &self.endpoints.certificates {
            Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
            None => redis::Client::open(info),
        }
        .map_err(|e| e.to_string())?;
        let config = AsyncConnectionConfig::new().set_connection_timeout(CONNECT_TIMEOUT);
        let c = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        state.masters.lock().insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// After a failed call to `addr`: its slots are down, its connection is dropped, and
    /// the slot map is re-read soon (a replica may be taking over).
    fn master_failed(&self, addr: &str) {
        if let Some(state) = &self.cluster {
            state.masters.lock().remove(addr);
            state.failing.lock().insert(addr.to_string());
            let map = state.map.load();
            for (start, end) in map.ranges_of(addr) {
                state.health.set(start, end, true);
            }
            state.map_stale.store(true, Ordering::Relaxed);
        }
    }

    /// Whether `addr` failed its last call and has not answered since.
    fn master_failing(&self, addr: &str) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|s| s.failing.lock().contains(addr))
    }

    fn master_answered(&self, addr: &str) {
        if let Some(state) = &self.cluster {
            state.failing.lock().remove(addr);
            let map = state.map.load();
            for (start, end) in map.ranges_of(addr) {
                state.health.set(start, end, false);
            }
        }
    }

    fn node_info(&self, addr: &str) -> Option<ConnectionInfo> {
        Some(ConnectionInfo {
            addr: crate::config::redis::node_addr(addr, self.endpoints.tls)?,
            redis: self.endpoints.redis.clone(),
        })
    }
}

fn open(endpoints: &Endpoints) -> RedisResult<Opener> {
    let certs = endpoints.certificates.clone();
    Ok(match &endpoints.shape {
        Shape::Single(info) => Opener::Single(match certs {
            Some(certs) => redis::Client::build_with_tls(info.clone(), certs)?,
            None => redis::Client::open(info.clone())?,
        }),
        Shape::Cluster(seeds) => {
            let mut builder = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                .connection_timeout(CONNECT_TIMEOUT);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            Opener::Cluster(builder.build()?)
        }
        Shape::Sentinel { master, sentinels } => {
            use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
            let mut builder = SentinelClientBuilder::new(
                sentinels.clone(),
                master.clone(),
                SentinelServerType::Master,
            )?
            .set_client_to_redis_db(endpoints.redis.db);
            if let Some(user) = &endpoints.redis.username {
                builder = builder.set_client_to_redis_username(user.clone());
            }
            if let Some(password) = &endpoints.redis.password {
                builder = builder.set_client_to_redis_password(password.clone());
            }
            if endpoints.tls {
                builder = builder
                    .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                    .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            }
            if let Some(certs) = certs {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
            Opener::Sentinel(tokio::sync::Mutex::new(builder.build()?))
        }
    })
}

fn host_of(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
        ConnectionAddr::Unix(_) => "127.0.0.1".into(),
    }
}

fn timeout_error(why: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::IoError, why))
}
