//! Keeps every provider's keys fresh: a JWKS URL is fetched at start and again when its
//! `Cache-Control: max-age` runs out (within bounds), a JWKS file is read again when it
//! changes, and a token with an unknown `kid` asks for one early refetch, at most one per
//! [`MIN_REFETCH`], so a flood of invented `kid`s costs the identity provider a handful of
//! fetches. A failed read keeps the last good keys.
//!
//! The fetch uses ureq (already used by the tests, sync, rustls on ring) on a blocking
//! thread: one small GET every few minutes does not need an async client in the tree.

use super::keys::KeySet;
use super::{KeySource, Provider};
use crate::gateway::SharedGateway;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

/// The shortest gap between two reads of one provider's keys (unknown-`kid` refetches).
pub const MIN_REFETCH: Duration = Duration::from_secs(2);
/// Refresh bounds for a JWKS URL: `max-age` below the floor is raised to it (an issuer
/// saying `no-cache` would otherwise be asked on every tick), above the ceiling lowered.
const MIN_MAX_AGE: Duration = Duration::from_secs(60);
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// When the response says nothing about caching.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// Retry after a failed fetch: from 1 s, doubling to 60 s.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How often a JWKS file is looked at for changes.
const FILE_POLL: Duration = Duration::from_secs(1);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read.
const MAX_JWKS_BYTES: u64 = 1024 * 1024;
/// How often the gateway is scanned for providers that appeared in a reload.
const SCAN_INTERVAL: Duration = Duration::from_millis(250);

pub struct JwksService {
    gateway: SharedGateway,
}

impl JwksService {
    pub fn new(gateway: SharedGateway) -> Self {
        JwksService { gateway }
    }
}

#[async_trait]
impl BackgroundService for JwksService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut watched: HashSet<usize> = HashSet::new();
        loop {
            let gateway = self.gateway.load_full();
            for provider in gateway.auth.values() {
                if provider.key_source == KeySource::None {
                    continue;
                }
                let id = Arc::as_ptr(provider) as usize;
                if watched.insert(id) {
                    tokio::spawn(keep_fresh(
                        Arc::downgrade(provider),
                        provider.refetch.clone(),
                        shutdown.clone(),
                    ));
                }
            }
            watched.retain(|id| {
                gateway
                    .auth
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

/// What one read of a provider's keys came to.
enum Read {
    /// New keys, valid for this long (URL) or until the file changes.
    Loaded(Option<Duration>),
    /// The file has not changed since the last read.
    Unchanged,
    Failed,
}

/// One provider's loop; it ends when a reload drops the provider.
async fn keep_fresh(
    provider: Weak<Provider>,
    refetch: Arc<tokio::sync::Notify>,
    mut shutdown: ShutdownWatch,
) {
    let mut file_stamp: Option<(SystemTime, u64)> = None;
    let mut retry = RETRY_FIRST;
    loop {
        let Some(p) = provider.upgrade() else { return };
        let read = match p.key_source.clone() {
            KeySource::Url(url) => fetch_url(&p, url).await,
            KeySource::File(path) => read_file(&p, &path, &mut file_stamp).await,
            KeySource::None => return,
        };
        let last_read = Instant::now();
        let wait = match (&read, &p.key_source) {
            (Read::Loaded(Some(max_age)), _) => {
                retry = RETRY_FIRST;
                *max_age
            }
            (Read::Failed, KeySource::Url(_)) => {
                let wait = retry;
                retry = (retry * 2).min(RETRY_MAX);
                wait
            }
            _ => FILE_POLL,
        };
        drop(p);
        let due = last_read + wait;
        // Sleep in short steps so a provider dropped by a reload ends its loop soon.
        loop {
            let step = due
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            if step.is_zero() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = refetch.notified() => {
                    let since = last_read.elapsed();
                    if since < MIN_REFETCH {
                        tokio::time::sleep(MIN_REFETCH - since).await;
                    }
                    // A file is read again even if its stamp did not move.
                    file_stamp = None;
                    break;
                }
                _ = shutdown.changed() => return,
            }
            if provider.strong_count() == 0 {
                return;
            }
        }
    }
}

async fn fetch_url(p: &Provider, url: String) -> Read {
    p.fetches.inc();
    let fetched = tokio::task::spawn_blocking(move || get_jwks(&url)).await;
    let outcome = match fetched {
        Ok(Ok((body, max_age))) => KeySet::parse(&body).map(|keys| (keys, max_age)),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(format!("the fetch did not finish: {e}")),
    };
    match outcome {
        Ok((keys, max_age)) => {
            tracing::info!(provider = &*p.name, keys = keys.len(), "JWKS loaded");
            p.set_keys(Some(Arc::new(keys)));
            let max_age = max_age
                .unwrap_or(DEFAULT_MAX_AGE)
                .clamp(MIN_MAX_AGE, MAX_MAX_AGE);
            Read::Loaded(Some(max_age))
        }
        Err(why) => {
            p.failures.inc();
            tracing::warn!(
                provider = &*p.name,
                "JWKS fetch failed, keeping the last good keys: {why}"
            );
            Read::Failed
        }
    }
}

/// GET the JWKS: the body and the response's `max-age`, if any.
fn get_jwks(url: &str) -> Result<(String, Option<Duration>), String> {
    let agent = agent();
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    let max_age = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_JWKS_BYTES)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((body, max_age))
}

/// One agent per process: ring for the TLS crypto (no aws-lc build) and the system's root
/// certificates, as the Redis client trusts.
fn agent() -> &'static ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        let roots: Vec<ureq::tls::Certificate<'static>> = rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        ureq::Agent::config_builder()
            .timeout_global(Some(FETCH_TIMEOUT))
            .tls_config(tls)
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    })
}

/// `max-age=N` of a `Cache-Control` value (`no-store` and `no-cache` as 0).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|directive| {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        let (name, seconds) = directive.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| seconds.trim().trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

async fn read_file(
    p: &Provider,
    path: &std::path::Path,
    stamp: &mut Option<(SystemTime, u64)>,
) -> Read {
    let now = tokio::fs::metadata(path)
        .await
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
    if now.is_some() && now == *stamp && p.ready() {
        return Read::Unchanged;
    }
    if now.is_none() && stamp.is_none() && p.fetches.get() > 0 {
        // Still missing: said once, not every second.
        return Read::Unchanged;
    }
    p.fetches.inc();
    *stamp = now;
    let outcome = match tokio::fs::read_to_string(path).await {
        Ok(text) => KeySet::parse(&text),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    };
    match outcome {
        Ok(keys) => {
            tracing::info!(provider = &*p.name, keys = keys.len(), "JWKS file loaded");
            p.set_keys(Some(Arc::new(keys)));
            Read::Loaded(None)
        }
        Err(why) => {
            p.failures.inc();
            tracing::warn!(
                provider = &*p.name,
                "JWKS file not loaded, keeping the last good keys: {why}"
            );
            Read::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}
