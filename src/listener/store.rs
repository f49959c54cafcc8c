//! The certificates of every TLS listener, kept in step with their files.
//!
//! The config watch calls [`CertStore::refresh`] on every poll: each listener's certificate
//! and key files are read again and, when their bytes changed, parsed into a new table that
//! replaces the old one in one swap. A pair that does not load keeps the certificates
//! already serving; the error, located at the config line naming the file, is logged once
//! and shown by `GET /admin/config` until good files arrive. A config reload that changes a
//! listener's `certs` list loads the new list first and is refused if it does not load.

use super::certs::{parse_pair, CertTable, LoadedCert, Part, SniResolver};
use crate::access_log::now_rfc3339;
use crate::config::{self, CertConfig, Config, ConfigError};
use crate::metrics::Metrics;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a pair's files held when last read; `None` for a file that could not be read.
type Contents = (Option<Vec<u8>>, Option<Vec<u8>>);

pub struct CertStore {
    /// Relative certificate paths start here: the config file's folder.
    base: PathBuf,
    listeners: Vec<ListenerCerts>,
    /// The running config's text and file name, to locate errors found on refresh.
    source: Mutex<(String, String)>,
    metrics: Arc<Metrics>,
}

/// One TLS listener's certificates.
pub struct ListenerCerts {
    /// The listener's position in `listen`.
    pub index: usize,
    pub address: String,
    pub resolver: Arc<SniResolver>,
    state: Mutex<State>,
}

struct State {
    /// `listen[i]`, the YAML path errors are located under.
    yaml_path: String,
    specs: Vec<CertConfig>,
    /// The files' bytes last looked at, loaded or refused, to notice a change.
    seen: Vec<Contents>,
    serving: Vec<Served>,
    loaded_at: String,
    error: Option<Vec<String>>,
}

#[derive(Clone)]
struct Served {
    cert: String,
    names: Vec<String>,
    not_after: i64,
}

/// A listener's new certificates, loaded but not yet serving.
pub struct Staged {
    position: usize,
    specs: Vec<CertConfig>,
    seen: Vec<Contents>,
    certs: Vec<LoadedCert>,
}

/// A problem with one listener's files: `(YAML path, message)`.
type Problem = (String, String);

impl CertStore {
    /// Loads every TLS listener's certificates; any that does not load is a located error.
    pub fn load(
        config: &Config,
        config_path: &Path,
        text: &str,
        metrics: Arc<Metrics>,
    ) -> Result<CertStore, Vec<ConfigError>> {
        let base = config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let file = config_path.display().to_string();
        let mut errors = Vec::new();
        let mut listeners = Vec::new();
        for (index, listener) in config.listen.iter().enumerate() {
            let Some(tls) = &listener.tls else {
                continue;
            };
            let yaml_path = config::listen_path(config, index);
            let seen = read_all(&base, &tls.certs);
            match build(&tls.certs, &seen, &yaml_path, &base) {
                Err(problems) => errors.extend(
                    problems
                        .into_iter()
                        .map(|(path, message)| config::locate(text, &file, &path, message)),
                ),
                Ok(certs) => {
                    let Some(table) = CertTable::of(&certs) else {
                        continue; // validation refuses an empty list first
                    };
                    listeners.push(ListenerCerts {
                        index,
                        address: listener.address.clone(),
                        resolver: Arc::new(SniResolver::new(table)),
                        state: Mutex::new(State {
                            yaml_path,
                            specs: tls.certs.clone(),
                            seen,
                            serving: served(&tls.certs, &certs),
                            loaded_at: now_rfc3339(),
                            error: None,
                        }),
                    });
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let store = CertStore {
            base,
            listeners,
            source: Mutex::new((text.to_string(), file)),
            metrics,
        };
        for listener in &store.listeners {
            store.publish_expiry(listener, &listener.state.lock().serving);
        }
        Ok(store)
    }

    pub fn listeners(&self) -> &[ListenerCerts] {
        &self.listeners
    }

    /// The resolver of the TLS listener at `listen[index]`.
    pub fn resolver(&self, index: usize) -> Option<Arc<SniResolver>> {
        self.listeners
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.resolver.clone())
    }

    /// Loads the certificates of every listener whose `certs` list differs in `next`,
    /// without serving them yet. Listeners themselves cannot change on reload (see
    /// `reload::keep_process_settings`), so positions line up.
    pub fn stage(&self, next: &Config, text: &str) -> Result<Vec<Staged>, Vec<ConfigError>> {
        let file = self.source.lock().1.clone();
        let mut staged = Vec::new();
        let mut errors = Vec::new();
        for (position, listener) in self.listeners.iter().enumerate() {
            let Some(tls) = next.listen.get(listener.index).and_then(|l| l.tls.as_ref()) else {
                continue;
            };
            if listener.state.lock().specs == tls.certs {
                continue;
            }
            let yaml_path = config::listen_path(next, listener.index);
            let seen = read_all(&self.base, &tls.certs);
            match build(&tls.certs, &seen, &yaml_path, &self.base) {
                Ok(certs) if !certs.is_empty() => staged.push(Staged {
                    position,
                    specs: tls.certs.clone(),
                    seen,
                    certs,
                }),
                Ok(_) => {}
                Err(problems) => errors.extend(
                    problems
                        .into_iter()
                        .map(|(path, message)| config::locate(text, &file, &path, message)),
                ),
            }
        }
        if errors.is_empty() {
            Ok(staged)
        } else {
            Err(errors)
        }
    }

    /// Serves what [`Self::stage`] loaded, and remembers the new config text for locating.
    pub fn commit(&self, staged: Vec<Staged>, text: &str) {
        self.source.lock().0 = text.to_string();
        for s in staged {
            let listener = &self.listeners[s.position];
            let Some(table) = CertTable::of(&s.certs) else {
                continue;
            };
            listener.resolver.replace(table);
            let mut state = listener.state.lock();
            state.serving = served(&s.specs, &s.certs);
            state.specs = s.specs;
            state.seen = s.seen;
            state.loaded_at = now_rfc3339();
            state.error = None;
            self.publish_expiry(listener, &state.serving);
            tracing::info!(
                listener = listener.address.as_str(),
                "certificates loaded from the new config"
            );
        }
    }

    /// Re-reads every listener's files and serves the ones that changed and load.
    pub fn refresh(&self) {
        for listener in &self.listeners {
            let mut state = listener.state.lock();
            let seen = read_all(&self.base, &state.specs);
            if seen == state.seen {
                continue;
            }
            let outcome = build(&state.specs, &seen, &state.yaml_path, &self.base);
            state.seen = seen;
            match outcome {
                Ok(certs) => {
                    let Some(table) = CertTable::of(&certs) else {
                        continue;
                    };
                    listener.resolver.replace(table);
                    state.serving = served(&state.specs, &certs);
                    state.loaded_at = now_rfc3339();
                    state.error = None;
                    self.metrics
                        .tls_certificate_reloads
                        .with_label_values(&["success"])
                        .inc();
                    self.publish_expiry(listener, &state.serving);
                    let names: Vec<&str> = state
                        .serving
                        .iter()
                        .flat_map(|s| s.names.iter().map(String::as_str))
                        .collect();
                    tracing::info!(
                        listener = listener.address.as_str(),
                        names = ?names,
                        "certificates reloaded after their files changed"
                    );
                }
                Err(problems) => {
                    let (text, file) = self.source.lock().clone();
                    let located: Vec<String> = problems
                        .into_iter()
                        .map(|(path, message)| {
                            config::locate(&text, &file, &path, message).to_string()
                        })
                        .collect();
                    self.metrics
                        .tls_certificate_reloads
                        .with_label_values(&["failure"])
                        .inc();
                    tracing::error!(
                        listener = listener.address.as_str(),
                        "new certificate files refused, the previous certificates keep serving"
                    );
                    for e in &located {
                        tracing::error!("  {e}");
                    }
                    state.error = Some(located);
                }
            }
        }
    }

    /// Each TLS listener's certificates for `GET /admin/config`.
    pub fn status(&self) -> Value {
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|l| {
                let state = l.state.lock();
                let certs: Vec<Value> = state
                    .serving
                    .iter()
                    .map(|s| {
                        json!({
                            "cert": s.cert,
                            "names": s.names,
                            "not_after": chrono::DateTime::from_timestamp(s.not_after, 0)
                                .map(|t| t.to_rfc3339())
                                .unwrap_or_default(),
                        })
                    })
                    .collect();
                let mut entry = json!({
                    "listener": l.address,
                    "loaded_at": state.loaded_at,
                    "result": if state.error.is_some() { "error" } else { "ok" },
                    "certs": certs,
                });
                if let Some(errors) = &state.error {
                    entry["errors"] = json!(errors);
                }
                entry
            })
            .collect();
        json!(listeners)
    }

    fn publish_expiry(&self, listener: &ListenerCerts, serving: &[Served]) {
        for s in serving {
            self.metrics
                .tls_certificate_expiry
                .with_label_values(&[listener.address.as_str(), s.cert.as_str()])
                .set(s.not_after);
        }
    }
}

/// Resolves a configured path against the config file's folder.
pub fn resolve(base: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn read_all(base: &Path, specs: &[CertConfig]) -> Vec<Contents> {
    specs
        .iter()
        .map(|s| {
            (
                std::fs::read(resolve(base, &s.cert)).ok(),
                std::fs::read(resolve(base, &s.key)).ok(),
            )
        })
        .collect()
}

/// Parses every pair; all problems at once, each with the YAML path of the file's setting.
fn build(
    specs: &[CertConfig],
    contents: &[Contents],
    yaml_path: &str,
    base: &Path,
) -> Result<Vec<LoadedCert>, Vec<Problem>> {
    let mut certs = Vec::new();
    let mut problems = Vec::new();
    for (i, (spec, (cert, key))) in specs.iter().zip(contents).enumerate() {
        let at = |part: Part| {
            let key = match part {
                Part::Cert => "cert",
                Part::Key => "key",
            };
            format!("{yaml_path}.tls.certs[{i}].{key}")
        };
        let shown = |part: Part| {
            let path = match part {
                Part::Cert => &spec.cert,
                Part::Key => &spec.key,
            };
            resolve(base, path).display().to_string()
        };
        let unreadable = |part: Part| {
            let path = shown(part);
            let why = std::fs::read(&path)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "it changed while being read".into());
            (at(part), format!("cannot read {path}: {why}"))
        };
        match (cert, key) {
            (None, _) => problems.push(unreadable(Part::Cert)),
            (_, None) => problems.push(unreadable(Part::Key)),
            (Some(cert), Some(key)) => match parse_pair(cert, key) {
                Ok(loaded) => certs.push(loaded),
                Err((part, why)) => problems.push((at(part), format!("{}: {why}", shown(part)))),
            },
        }
    }
    if problems.is_empty() {
        Ok(certs)
    } else {
        Err(problems)
    }
}

fn served(specs: &[CertConfig], certs: &[LoadedCert]) -> Vec<Served> {
    specs
        .iter()
        .zip(certs)
        .map(|(spec, c)| Served {
            cert: spec.cert.clone(),
            names: c.names.clone(),
            not_after: c.not_after,
        })
        .collect()
}
