//! Process logs: `tracing` to stderr, filtered by `RUST_LOG` or the config's `log.level`.
//! Pingora logs through the `log` crate; those records are bridged into the same output.

use tracing_subscriber::EnvFilter;

/// Installs the subscriber once; later calls (a reload) are ignored.
pub fn init(config_level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(quiet_pingora(config_level)).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Pingora logs each retried connection at warn; tollgate counts and logs those itself, so
/// its modules stay at warn unless the filter names them.
fn quiet_pingora(level: &str) -> String {
    if level.contains("pingora") {
        level.to_string()
    } else {
        format!("{level},pingora_proxy=error,pingora_core=warn")
    }
}
