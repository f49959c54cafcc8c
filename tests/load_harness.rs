//! Smoke test of the load harness (benches/load/run.py --quick): every target starts,
//! answers 200 under load, and lands in the report. The figures are not judged here; speed
//! is shown by full runs recorded in BENCHMARKS.md.
//!
//! Builds the release binaries into target/harness (a target directory of its own, so the
//! build does not wait on this test's own cargo), then runs the harness with them.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

#[test]
fn the_load_harness_runs_every_target_and_reports_them() {
    let hint = "install it with `apt-get install -y nginx haproxy wrk python3 nghttp2-client openssl redis-tools`; .ci/run does this";
    for tool in [
        "python3",
        "nginx",
        "haproxy",
        "wrk",
        "redis-server",
        "redis-cli",
        "h2load",
        "openssl",
    ] {
        require_tool(tool, hint);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target_dir = root.join("target/harness");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = output_within(
        Command::new(&cargo)
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target_dir)
            .args(["build", "--release", "--workspace", "--bins", "--examples"]),
        Duration::from_secs(30 * 60),
    );
    assert!(
        build.status.success(),
        "release build failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let report = tempfile::NamedTempFile::new().unwrap();
    let run = output_within(
        Command::new("python3")
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target_dir)
            .args([
                "benches/load/run.py",
                "--quick",
                "--tls",
                "--cluster",
                "--tuning-async",
                "purge=MIMALLOC_PURGE_DELAY=0",
                "--no-install",
                "--out",
            ])
            .arg(report.path()),
        Duration::from_secs(5 * 60),
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "harness failed:\n{stdout}\n{stderr}");
    let table = std::fs::read_to_string(report.path()).unwrap();
    for row in [
        "nginx",
        "HAProxy",
        "Pingora alone",
        "tollgate, no limits",
        "local sliding window",
        "global async",
        "global atomic",
        "decision log off",
        "rate limit headers off",
        "global async, purge (MIMALLOC_PURGE_DELAY=0)",
        "config.yaml as shipped",
        "(refusing)",
    ] {
        assert!(
            table.contains(row),
            "no `{row}` row in the report:\n{table}"
        );
    }
    assert!(table.contains("Redis cmds/req"), "{table}");
    assert!(table.contains("CPU/request (user + kernel)"), "{table}");
    assert!(!table.contains("| n/a |"), "a figure is missing:\n{table}");
    for row in ["| one Redis |", "| cluster, 3 masters |"] {
        assert!(
            table.contains(row),
            "no key-spread row `{row}` in the report:\n{table}"
        );
    }
    for row in [
        "HTTPS keep-alive req/s",
        "HTTP/2 req/s (h2load",
        "new TLS connections/s",
    ] {
        assert!(
            table.contains(row),
            "no `{row}` row in the report:\n{table}"
        );
    }
}
