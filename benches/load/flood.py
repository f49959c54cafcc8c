#!/usr/bin/env python3
"""A flood of distinct client keys: resident memory and the heavy hitter.

    python3 benches/load/flood.py [--keys 1000000]

One tollgate (one worker, global async sliding window 100/1m per client address on a
Redis of its own) behind a trusted local peer, so wrk can send every request from a new
address in X-Forwarded-For; every 20th request comes from one heavy hitter. Reports the
process's resident memory before and after, the key table's size (bounded by `max_keys`),
the decisions made by the fixed-size estimator once the table is full, how fast the keys
arrived, and what the heavy hitter got through. Uses benches/load/run.py's process
handling; standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the harness next to this file)

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="distinct client addresses to send")
    parser.add_argument("--rate", default="100/1m", help="the per-client limit")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--max-keys", type=int, default=50_000, help="the policy's max_keys")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tollgate-flood-"))
    sup = run.Supervisor(tmp)
    try:
        tools = run.ensure_tools(allow_install=True)
        tollgate_bin, stub_bin = run.ensure_binaries()
        lab = run.Lab(sup, tmp, tools, tollgate_bin, stub_bin)
        lab.start_stub()
        redis = lab.start_redis("redis-flood")
        target = lab.start_tollgate("tollgate-flood", "tollgate, key flood", "tollgate-flood.yaml",
                                    args.rate, redis, extra={"MAX_KEYS": args.max_keys})
        # Warm the allocator and the connection pools with one client before the baseline.
        warm = run.run_wrk(sup, tools["wrk"], target.url, 1, args.connections, 3)
        run.finish_wrk(sup, warm, 3)
        before = run.proc_status_kb(target.worker_pid, "VmRSS")

        # Estimate the duration from the warm-up rate, then send about --keys requests
        # (19 of 20 are new addresses).
        probe_argv = [tools["wrk"], "-t1", f"-c{args.connections}", "-d3s", "-s",
                      str(HERE / "flood.lua"), target.url.replace("/a/x", "/a/probe")]
        probe = sup.start("wrk-probe", probe_argv, Path(tempfile.mkdtemp(prefix="wrk-", dir=tmp)))
        probe.popen.wait(timeout=30)
        rate = next(json.loads(l[len("WRK_JSON "):]) for l in probe.stdout_path.read_text().splitlines()
                    if l.startswith("WRK_JSON "))["requests"] / 3
        seconds = max(5, int(args.keys * 20 / 19 / max(rate * 0.85, 1)) + 1)
        print(f"baseline RSS {before / 1024:.1f} MiB; ~{rate:,.0f} req/s, so about {seconds} s "
              f"for {args.keys:,} distinct keys", flush=True)
        argv = [tools["wrk"], "-t1", f"-c{args.connections}", f"-d{seconds}s", "-s",
                str(HERE / "flood.lua"), target.url]
        started = time.monotonic()
        proc = sup.start("wrk-flood", argv, Path(tempfile.mkdtemp(prefix="wrk-", dir=tmp)))
        peak = before
        while proc.exited() is None:
            peak = max(peak, run.proc_status_kb(target.worker_pid, "VmRSS") or 0)
            time.sleep(1)
        elapsed = time.monotonic() - started
        result = None
        for line in proc.stdout_path.read_text(errors="replace").splitlines():
            if line.startswith("WRK_JSON "):
                result = json.loads(line[len("WRK_JSON "):])
        if result is None:
            raise run.HarnessError(f"wrk printed no result\n{proc.tail()}")
        after = run.proc_status_kb(target.worker_pid, "VmRSS")
        hwm = run.proc_status_kb(target.worker_pid, "VmHWM")
        metrics = run.http_text(target.admin_port, "/metrics")
        active = run.metric_sum(metrics, "tollgate_ratelimit_active_keys", policy="per_client")
        untracked = run.metric_sum(metrics, "tollgate_ratelimit_untracked_total", policy="per_client")
        limited = run.metric_sum(metrics, "tollgate_ratelimit_decisions_total", policy="per_client", result="limited")
        heavy = json.loads(run.http_text(target.admin_port, "/admin/limits/per_client/192.0.2.1"))
        requests = result["requests"]
        distinct = requests - requests // 20
        statuses = {int(k): v for k, v in result["statuses"].items()}
        print()
        print("| measure | value |")
        print("| --- | ---: |")
        print(f"| requests sent | {requests:,} in {elapsed:.0f} s ({requests / elapsed:,.0f}/s) |")
        print(f"| distinct client keys | {distinct:,} ({distinct / elapsed * 60:,.0f} per minute) |")
        print(f"| statuses | {', '.join(f'{k}: {v:,}' for k, v in sorted(statuses.items()))} |")
        print(f"| resident memory before | {before / 1024:.1f} MiB |")
        print(f"| resident memory after / peak during | {after / 1024:.1f} / {max(peak, after) / 1024:.1f} MiB (VmHWM {hwm / 1024:.1f} MiB) |")
        print(f"| growth | {(max(peak, after) - before) / 1024:.1f} MiB |")
        print(f"| keys tracked exactly (max_keys {args.max_keys}) | {active:,.0f} |")
        print(f"| decisions by the fixed-size estimator | {untracked:,.0f} |")
        print(f"| refusals (all clients) | {limited:,.0f} |")
        print(f"| heavy hitter 192.0.2.1: requests sent / fleet count now | {requests // 20:,} / {heavy.get('used')} of {heavy.get('limit')} |")
        return 0
    except run.HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        sup.stop_all()


if __name__ == "__main__":
    sys.exit(main())
