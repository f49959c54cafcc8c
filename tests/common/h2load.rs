//! h2load, the HTTP/2 load generator, as a test client: many streams on few connections.

use super::{output_within, require_tool};
use std::process::Command;
use std::time::Duration;

/// Runs h2load against `url` with `args` and returns its `status codes:` line's 2xx and
/// 4xx counts, with its whole output for assertion messages.
pub fn h2load(url: &str, args: &[&str]) -> (u64, u64, String) {
    require_tool(
        "h2load",
        "install it with `apt-get install -y nghttp2-client`",
    );
    let out = output_within(
        Command::new("h2load").args(args).arg(url),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_else(|| panic!("no status line from h2load:\n{text}"));
    let count = |class: &str| -> u64 {
        line.split(',')
            .find(|p| p.contains(class))
            .and_then(|p| p.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap_or(0)
    };
    (count("2xx"), count("4xx"), text)
}
