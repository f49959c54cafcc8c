//! Smoke tests of the load harness (benches/load/run.py --quick: every target starts,
//! answers 200 under load, and lands in the report) and of the instruction counter
//! (benches/load/instructions.py). The figures are not judged here; speed is shown by full
//! runs recorded in BENCHMARKS.md.
//!
//! Both run against the debug binaries `cargo test` has already built (`TOLLGATE_BIN_DIR`),
//! so the suite builds no release binaries: what these tests check is that every target
//! starts and reports, not how fast it is.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The directory of the debug binaries: tollgate, stub-service and examples/bare_pingora.
fn debug_bin_dir() -> PathBuf {
    let dir = tollgate_bin()
        .parent()
        .expect("the tollgate binary is in a directory")
        .to_path_buf();
    let bare = dir.join("examples/bare_pingora");
    assert!(
        bare.is_file(),
        "{} is missing; `cargo test --workspace` builds it (or run `cargo build --workspace --examples`)",
        bare.display()
    );
    workspace_bin("stub-service");
    dir
}

/// Runs a script of benches/load with the debug binaries and `args`, then `--out FILE`,
/// and returns the report it wrote.
fn run_report(args: &[&str], timeout: Duration) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let report = tempfile::NamedTempFile::new().unwrap();
    let run = output_within(
        Command::new("python3")
            .current_dir(&root)
            .env("TOLLGATE_BIN_DIR", debug_bin_dir())
            .args(args)
            .arg("--out")
            .arg(report.path()),
        timeout,
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "{} failed:\n{stdout}\n{stderr}",
        args[0]
    );
    std::fs::read_to_string(report.path()).unwrap()
}

/// benches/load/instructions.py counts a request's instructions under callgrind and splits
/// out tollgate's phases; a few hundred requests show it still finds every phase.
#[test]
fn the_instruction_counter_reports_tollgates_phases() {
    let hint = "install it with `apt-get install -y valgrind nghttp2-client redis-server nginx`; .ci/run does this";
    for tool in [
        "python3",
        "valgrind",
        "callgrind_control",
        "callgrind_annotate",
        "h2load",
    ] {
        require_tool(tool, hint);
    }
    let table = run_report(
        &[
            "benches/load/instructions.py",
            "--requests",
            "40",
            "--targets",
            "pingora-bare,tollgate-global-async",
        ],
        Duration::from_secs(10 * 60),
    );
    for row in ["| Pingora alone", "| tollgate, global async"] {
        assert!(table.contains(row), "no `{row}` row:\n{table}");
    }
    for phase in [
        "request_filter",
        "upstream_request_filter",
        "response_filter",
        "logging",
    ] {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {phase} ")))
            .unwrap_or_else(|| panic!("no `{phase}` row:\n{table}"));
        let count: f64 = line
            .rsplit('|')
            .nth(1)
            .map(|c| c.trim().replace(',', ""))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0.0);
        assert!(count > 0.0, "`{phase}` counted nothing:\n{table}");
    }
}

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
    let table = run_report(
        &[
            "benches/load/run.py",
            "--quick",
            "--tls",
            "--cluster",
            "--rls",
            "--tuning-async",
            "purge=MIMALLOC_PURGE_DELAY=0",
            "--no-install",
        ],
        Duration::from_secs(5 * 60),
    );
    for row in [
        "nginx",
        "HAProxy",
        "Pingora alone",
        "tollgate, no limits",
        "verified JWT (warm cache)",
        "local sliding window",
        "global async",
        "global atomic",
        "decision log off",
        "rate limit headers off",
        "the Kong/APISIX design",
        "no limits, http.preserve_header_case",
        "global async, http.preserve_header_case",
        "global async, purge (MIMALLOC_PURGE_DELAY=0)",
        "config.yaml as shipped",
        "(refusing)",
        "usage JSON body, fixed cost 1",
        "usage JSON body, cost from the response",
        "SSE stream of 8 events, fixed cost 1",
        "SSE stream of 8 events, cost from the response",
        "concurrency, global async",
        "| cost from a JSON body (tollgate-cost-json / tollgate-cost-fixed) |",
        "| cost from an SSE stream (tollgate-cost-sse / tollgate-cost-sse-fixed) |",
    ] {
        assert!(
            table.contains(row),
            "no `{row}` row in the report:\n{table}"
        );
    }
    assert!(table.contains("Redis cmds/req"), "{table}");
    assert!(table.contains("CPU/request (user + kernel)"), "{table}");
    assert!(!table.contains("| n/a |"), "a figure is missing:\n{table}");
    for row in [
        "| ShouldRateLimit (gRPC), hot descriptor |",
        "| ShouldRateLimit (gRPC), 100,000 descriptors |",
        "| POST /admin/check (HTTP/1.1, wrk), hot descriptor |",
        "| POST /admin/check (HTTP/1.1, wrk), 100,000 descriptors |",
    ] {
        assert!(
            table.contains(row),
            "no RLS row `{row}` in the report:\n{table}"
        );
    }
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

/// benches/load/fleetwide.py puts tollgate beside the Kong/APISIX design (nginx + Lua + a
/// Redis round trip per request): per core, three proxies on one Redis, Redis one hop away
/// behind the delaying relay, and a Redis stall under load. The smoke checks every part
/// runs and reports, for both designs.
#[test]
fn the_fleetwide_comparison_runs_both_designs() {
    let hint = "install it with `apt-get install -y nginx libnginx-mod-http-lua haproxy wrk python3 redis-server`; .ci/run does this";
    for tool in ["python3", "nginx", "haproxy", "wrk", "redis-server"] {
        require_tool(tool, hint);
    }
    assert!(
        std::path::Path::new("/usr/lib/nginx/modules/ngx_http_lua_module.so").is_file(),
        "nginx's Lua module is missing: {hint}"
    );
    let relay = debug_bin_dir().join("examples/delay_relay");
    assert!(
        relay.is_file(),
        "{} is missing; `cargo test --workspace` builds it",
        relay.display()
    );
    let table = run_report(
        &["benches/load/fleetwide.py", "--quick", "--no-install"],
        Duration::from_secs(6 * 60),
    );
    for row in [
        "| nginx (limit_req)",
        "| nginx + Lua + Redis per request (the Kong/APISIX design) |",
        "| tollgate, global async (every default) |",
        "Relay overhead",
        "one Redis core carries",
        "| Redis commands per request, tollgate / Kong design |",
        "| p99 with Redis one hop away, tollgate / Kong design |",
    ] {
        assert!(table.contains(row), "no `{row}` in the report:\n{table}");
    }
    assert!(!table.contains("Problems"), "{table}");
}
