//! Config hot reload: the file is watched (by polling, which survives editors that replace
//! the file by rename), SIGHUP and `POST /admin/reload` trigger it too. A new config is
//! validated and built completely before it replaces the running one in a single atomic
//! swap; an invalid file changes nothing and its located errors stay visible until a good
//! file arrives.
//!
//! What runs is the file's config with the store's runtime policies merged in
//! ([`crate::config::runtime`]). A change to those policies (on this node or announced by
//! another) rebuilds it the same way, from the last good file config.

use crate::access_log::now_rfc3339;
use crate::config::{self, Config, Problem};
use crate::decisions::DecisionHub;
use crate::gateway::{Gateway, SharedGateway};
use crate::listener::store::CertStore;
use crate::metrics::Metrics;
use crate::store::Store;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What the last reload attempt did, as the admin API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub time: String,
    /// `ok` or `error`.
    pub result: &'static str,
    /// What started it: `startup`, `file`, `sighup` or `api`.
    pub trigger: &'static str,
    /// Incremented by every successful load, starting at 1.
    pub generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ReloadError>,
    /// Settings that changed in the file but only take effect on restart.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart_required: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadError {
    pub message: String,
    /// Each problem as `file:line:column: path: message`.
    pub errors: Vec<String>,
}

pub struct Reloader {
    path: PathBuf,
    gateway: SharedGateway,
    metrics: Arc<Metrics>,
    decisions: Arc<DecisionHub>,
    status: Mutex<ReloadStatus>,
    /// Held while a reload runs, so two triggers never build at once.
    busy: tokio::sync::Mutex<()>,
    /// The text of the config now running, to ignore touches that change nothing.
    running_text: Mutex<String>,
    /// The TLS listeners' certificates, reloaded with the config and when their files change.
    certs: Arc<CertStore>,
    /// The last good config read from the file, before the runtime policies are merged.
    file_config: Mutex<Arc<Config>>,
    store: Arc<Store>,
}

/// The config to run: `file` with the store's runtime policies, validated as a whole.
pub fn with_runtime_policies(file: &Config, store: &Store) -> Result<Config, Vec<Problem>> {
    config::runtime::resolve(file, &store.runtime_policies(), &store.runtime_overrides())
}

impl Reloader {
    pub fn new(
        path: &Path,
        file_config: Config,
        gateway: SharedGateway,
        metrics: Arc<Metrics>,
        decisions: Arc<DecisionHub>,
        certs: Arc<CertStore>,
        store: Arc<Store>,
    ) -> Self {
        let running_text = with_rls_files(
            std::fs::read_to_string(path).unwrap_or_default(),
            &file_config,
        );
        metrics
            .config_last_reload_success
            .set(unix_seconds() as i64);
        Reloader {
            path: path.to_path_buf(),
            gateway,
            metrics,
            decisions,
            status: Mutex::new(ReloadStatus {
                time: now_rfc3339(),
                result: "ok",
                trigger: "startup",
                generation: 1,
                error: None,
                restart_required: Vec::new(),
                warnings: Vec::new(),
            }),
            busy: tokio::sync::Mutex::new(()),
            running_text: Mutex::new(running_text),
            certs,
            file_config: Mutex::new(Arc::new(file_config)),
            store,
        }
    }

    /// The config as the file gives it, without the runtime policies.
    pub fn file_config(&self) -> Arc<Config> {
        self.file_config.lock().clone()
    }

    /// Rebuilds the running config from the last good file config and the store's runtime
    /// policies, after they changed. On failure nothing changes, and the reasons are
    /// logged and returned (a policy that fits the other nodes' files but not this one's).
    pub async fn apply_runtime_policies(&self) -> Result<(), Vec<String>> {
        let _busy = self.busy.lock().await;
        let file = self.file_config();
        let next = with_runtime_policies(&file, &self.store).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect::<Vec<_>>()
        });
        let result = next.and_then(|next| {
            let current = self.gateway.load_full();
            Gateway::build(next, Some(&current), &self.metrics, &self.decisions)
                .map(|gateway| self.gateway.store(Arc::new(gateway)))
                .map_err(|e| vec![e.to_string()])
        });
        match &result {
            Ok(()) => tracing::info!(
                policies = self.store.policies().policies.len(),
                "runtime policies applied"
            ),
            Err(errors) => {
                tracing::error!("runtime policies not applied, keeping the running config:");
                for e in errors {
                    tracing::error!("  {e}");
                }
            }
        }
        result
    }

    pub fn certs(&self) -> &CertStore {
        &self.certs
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().clone()
    }

    /// Whether the file's text differs from what is running.
    fn changed_on_disk(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let text = with_rls_files(text, &self.gateway.load().config);
        (text != *self.running_text.lock()).then_some(text)
    }

    /// Loads, validates and builds the file; swaps it in only if all of that succeeds.
    pub async fn reload(&self, trigger: &'static str) -> ReloadStatus {
        let _busy = self.busy.lock().await;
        // An explicit reload also looks at the certificate files at once.
        self.certs.refresh();
        let text = std::fs::read_to_string(&self.path);
        let file = self.path.display().to_string();
        let outcome = match text {
            Err(e) => Err(ReloadError {
                message: format!("cannot read config {file}: {e}"),
                errors: Vec::new(),
            }),
            Ok(text) => self
                .apply(&text, &file)
                .map(|(restart_required, warnings)| (text, restart_required, warnings)),
        };
        let mut status = self.status.lock();
        let generation = status.generation;
        *status = match outcome {
            Ok((text, restart_required, warnings)) => {
                *self.running_text.lock() = with_rls_files(text, &self.gateway.load().config);
                self.metrics
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                self.metrics
                    .config_last_reload_success
                    .set(unix_seconds() as i64);
                tracing::info!(
                    trigger,
                    generation = generation + 1,
                    "config reloaded from {file}"
                );
                for setting in &restart_required {
                    tracing::warn!("config reload: `{setting}` changed but only takes effect on restart (graceful upgrade)");
                }
                ReloadStatus {
                    time: now_rfc3339(),
                    result: "ok",
                    trigger,
                    generation: generation + 1,
                    error: None,
                    restart_required,
                    warnings,
                }
            }
            Err(error) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(
                    trigger,
                    "config reload refused, keeping the running config: {}",
                    error.message
                );
                for e in &error.errors {
                    tracing::error!("  {e}");
                }
                ReloadStatus {
                    time: now_rfc3339(),
                    result: "error",
                    trigger,
                    generation,
                    error: Some(error),
                    restart_required: Vec::new(),
                    warnings: Vec::new(),
                }
            }
        };
        status.clone()
    }

    fn apply(
        &self,
        text: &str,
        file: &str,
    ) -> Result<(Vec<&'static str>, Vec<String>), ReloadError> {
        let loaded = config::parse(text, file).map_err(|e| ReloadError {
            message: format!("{file} is not valid"),
            errors: e.errors().iter().map(|e| e.to_string()).collect(),
        })?;
        let current = self.gateway.load_full();
        let mut next = loaded.config;
        let restart_required = keep_process_settings(&current.config, &mut next);
        let file_config = next.clone();
        let next = with_runtime_policies(&next, &self.store).map_err(|problems| ReloadError {
            message: format!("{file} does not fit the runtime policies in the store"),
            errors: config::locate_problems(problems, file, text)
                .iter()
                .map(|e| e.to_string())
                .collect(),
        })?;
        let certs = self
            .certs
            .stage(&next, text)
            .map_err(|errors| ReloadError {
                message: format!("{file}: a certificate does not load"),
                errors: errors.iter().map(|e| e.to_string()).collect(),
            })?;
        let gateway = Gateway::build(next, Some(&current), &self.metrics, &self.decisions)
            .map_err(|e| ReloadError {
                message: format!("{file}: {e}"),
                errors: vec![format!("{file}: {e}")],
            })?;
        self.gateway.store(Arc::new(gateway));
        *self.file_config.lock() = Arc::new(file_config);
        self.certs.commit(certs, text);
        Ok((
            restart_required,
            loaded.warnings.iter().map(|w| w.to_string()).collect(),
        ))
    }
}

/// Listeners, threads and process settings belong to the running process: a reload keeps
/// them (and their sockets) and reports which ones need a restart to change.
fn keep_process_settings(current: &Config, next: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    // A listener's address, TLS and HTTP/2 belong to its socket; its certificates,
    // `redirect_https` and `hsts` reload.
    let sockets = |c: &Config| -> Vec<(String, bool, bool)> {
        c.listen
            .iter()
            .map(|l| {
                let (address, tls, http2) = l.socket_identity();
                (address.to_string(), tls, http2)
            })
            .collect()
    };
    if sockets(next) != sockets(current) {
        changed.push("listen");
        next.listen = current.listen.clone();
    }
    if next.threads != current.threads {
        changed.push("threads");
        next.threads = current.threads;
    }
    if next.admin.listen != current.admin.listen {
        changed.push("admin.listen");
        next.admin.listen = current.admin.listen.clone();
    }
    if next.server != current.server {
        changed.push("server");
        next.server = current.server.clone();
    }
    if next.store != current.store {
        changed.push("store");
        next.store = current.store.clone();
    }
    // The RLS listener is bound once, at start; its domains and limits reload.
    let rls_socket = |c: &Config| c.rls.as_ref().map(|r| (r.listen.clone(), r.tls.clone()));
    if rls_socket(next) != rls_socket(current) {
        changed.push("rls.listen");
        match (&mut next.rls, &current.rls) {
            (Some(n), Some(c)) => {
                n.listen = c.listen.clone();
                n.tls = c.tls.clone();
            }
            (n, c) => *n = c.clone(),
        }
    }
    if next.log.access_log != current.log.access_log {
        changed.push("log.access_log");
        next.log.access_log = current.log.access_log.clone();
    }
    changed
}

/// The config file's text followed by the RLS files' (`rls.config_dir`), so an edit of
/// either reloads, as envoyproxy/ratelimit reloads on a change in its folder.
fn with_rls_files(mut text: String, config: &Config) -> String {
    let Some(rls) = &config.rls else {
        return text;
    };
    let Ok(entries) = std::fs::read_dir(&rls.config_dir) else {
        return text;
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for file in files {
        text.push('\0');
        text.push_str(&file.display().to_string());
        text.push('\0');
        text.push_str(&std::fs::read_to_string(&file).unwrap_or_default());
    }
    text
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How often the config file is looked at.
const POLL: Duration = Duration::from_millis(250);

/// Watches the config file and SIGHUP.
pub struct ConfigWatcher {
    reloader: Arc<Reloader>,
}

impl ConfigWatcher {
    pub fn new(reloader: Arc<Reloader>) -> Self {
        ConfigWatcher { reloader }
    }
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "cannot listen for SIGHUP ({e}); reload through the file or the admin API"
                );
                None
            }
        };
        // A file that stays broken is reported once, not every poll.
        let mut refused_text: Option<String> = None;
        loop {
            let sighup = async {
                match hangup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {
                    self.reloader.certs().refresh();
                    if let Some(text) = self.reloader.changed_on_disk() {
                        if refused_text.as_deref() != Some(text.as_str()) {
                            let status = self.reloader.reload("file").await;
                            refused_text = (status.result == "error").then_some(text);
                        }
                    }
                }
                _ = sighup => {
                    tracing::info!("SIGHUP received: reloading the config");
                    self.reloader.reload("sighup").await;
                }
                _ = self.reloader.store.policies_changed.notified() => {
                    let _ = self.reloader.apply_runtime_policies().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
