//! Runs every `cargo fuzz` target (fuzz/) for a bounded time: the config parser, client-key
//! and header extraction, and the path and framing checks. Any panic or failed property
//! fails this test with the input that caused it (saved under target/fuzz-artifacts/).
//!
//! Needs cargo-fuzz (`cargo install cargo-fuzz`; .ci/run installs it). Runs on the stable
//! toolchain: cargo-fuzz's instrumentation flags are stable, and without a sanitizer the
//! one nightly-only flag is not used (RUSTC_BOOTSTRAP covers what remains).
//! `TOLLGATE_FUZZ_SECONDS` sets the time per target (default 60).

mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const TARGETS: [&str; 3] = ["config", "client_key", "request_checks"];

fn cargo_fuzz(fuzz_dir: &Path) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(fuzz_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .arg("fuzz");
    command
}

#[test]
fn fuzz_targets_find_nothing_within_their_time_budget() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fuzz_dir = root.join("fuzz");
    let installed = cargo_fuzz(&fuzz_dir)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        installed,
        "cargo-fuzz is not installed; install it with `cargo install cargo-fuzz` (.ci/run does this)"
    );
    let seconds: u64 = std::env::var("TOLLGATE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);

    let build = common::output_within(
        cargo_fuzz(&fuzz_dir).args(["build", "-s", "none", "-O"]),
        Duration::from_secs(30 * 60),
    );
    assert!(
        build.status.success(),
        "building the fuzz targets failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    // All targets at once: each is single-threaded, and the budget is wall time.
    let work = tempfile::tempdir().unwrap();
    let runs: Vec<_> = TARGETS
        .iter()
        .map(|target| {
            let corpus = work.path().join(target);
            let artifacts = root.join("target/fuzz-artifacts").join(target);
            std::fs::create_dir_all(&corpus).unwrap();
            std::fs::create_dir_all(&artifacts).unwrap();
            let child = cargo_fuzz(&fuzz_dir)
                .args(["run", "-s", "none", "-O", target])
                .arg(&corpus)
                .arg(fuzz_dir.join("seeds").join(target))
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg("-timeout=10")
                .arg("-rss_limit_mb=2048")
                .arg(format!("-artifact_prefix={}/", artifacts.display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn cargo fuzz run");
            (target, child)
        })
        .collect();
    let mut failures = Vec::new();
    for (target, child) in runs {
        let out = child.wait_with_output().expect("cargo fuzz run");
        let log = String::from_utf8_lossy(&out.stderr);
        let summary = log
            .lines()
            .filter(|l| l.starts_with("Done ") || l.contains("DONE"))
            .collect::<Vec<_>>()
            .join(" ");
        eprintln!("{target}: {summary}");
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            failures.push(format!("{target}:\n{}", tail.join("\n")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
