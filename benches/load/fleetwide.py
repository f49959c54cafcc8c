#!/usr/bin/env python3
"""Fleet-wide limits side by side: tollgate (global async, every default) against the
Kong/APISIX design (nginx + Lua, one pipelined INCR+EXPIRE on Redis per request, pooled,
failing open; `nginx-lua-redis.conf`), with the local-only peers and stock Pingora as
references, in one run.

What it measures, each design with a Redis of its own:

1. **Per core, Redis on loopback**: interleaved wrk rounds over every target (run.py's
   rounds): req/s, p50/p99, CPU per request, Redis commands and Redis CPU per 1,000
   proxied requests (`INFO commandstats`; `/proc/<redis>/stat`, user + kernel).
2. **Three proxies on one Redis**: three processes of the design, a wrk each at once;
   Redis commands and CPU per 1,000 proxied requests of the fleet.
3. **Redis a network hop away**: the proxies reach Redis through `examples/delay_relay`, a
   TCP relay of our own that delays each direction by `--hop-ms` (this kernel has no
   `netem`). The relay's own overhead is measured first: PING round trips direct and
   through it. Then p50/p99 (and req/s) of each design.
4. **A Redis stall under load**: while wrk runs, Redis is stopped with SIGSTOP for
   `--stall-s` seconds and resumed with SIGCONT: req/s, p99, max latency and errors
   (non-200 answers and socket errors) over the whole run, for each design.
5. **Proxied requests per second one Redis core carries**, derived from Redis's CPU per
   request in (1): one second of Redis CPU divided by Redis CPU per proxied request.

    python3 benches/load/fleetwide.py                 # ~6 minutes
    python3 benches/load/fleetwide.py --quick         # smoke test (~1 minute)

The binaries are the harness's (`CARGO_TARGET_DIR/release`, or `TOLLGATE_BIN_DIR`), plus
`examples/delay_relay` beside them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the load harness: its targets, configs and process handling)

MAIN_TARGETS = ["nginx", "haproxy", "kong-design", "pingora-bare", "tollgate-none",
                "tollgate-global-async"]
DESIGNS = {"tollgate": "tollgate, global async (every default)",
           "kong": run.KONG_LABEL}
FLEET_SIZE = 3
PINGS = 400


def relay_bin() -> Path:
    return run.release_dir() / "examples" / "delay_relay"


def start_relay(lab: run.Lab, name: str, redis: run.RedisClient, hop_ms: float) -> int:
    port = run.free_port()
    proc = lab.sup.start(name, [str(relay_bin()), f"127.0.0.1:{port}",
                                f"127.0.0.1:{redis.port}", str(int(hop_ms * 1000))],
                         lab.workdir(name))
    run.wait_until(f"{name} on {port}", lambda: run.RedisClient(port).ping(), proc)
    return port


def ping_times_us(port: int, count: int) -> list[float]:
    """Round trips of PING on one connection, timed from here."""
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    raise run.HarnessError(f"PING on {port}: connection closed")
                reply += chunk
            times.append((time.perf_counter() - start) * 1e6)
    return times


def start_design(lab: run.Lab, design: str, name: str, redis: run.RedisClient,
                 redis_port: int | None = None) -> run.Target:
    """One proxy of `design` on `redis` (reached at `redis_port` when a relay is between)."""
    if design == "kong":
        return lab.start_kong_design(name, redis, redis_port, label=f"{DESIGNS[design]}")
    extra = {"REDIS_URL": f"redis://127.0.0.1:{redis_port}"} if redis_port else None
    return lab.start_tollgate(name, DESIGNS[design], "tollgate-global-async.yaml",
                              run.TOLLGATE_HIGH_RATE, redis, extra=extra)


def stop(lab: run.Lab, *targets: run.Target) -> None:
    for t in targets:
        t.proc.stop(timeout=10)
        lab.sup.forget(t.proc)


def redis_snapshot(redis: run.RedisClient) -> tuple[int, int]:
    ticks = run.cpu_ticks(redis.pid) or (0, 0)
    return redis.command_calls()["total"], sum(ticks)


def per_1k(redis: run.RedisClient, before: tuple[int, int], requests: int) -> dict:
    calls, ticks = redis_snapshot(redis)
    if not requests:
        return {"cmds_per_1k": None, "cpu_ms_per_1k": None}
    return {"cmds_per_1k": (calls - before[0]) / requests * 1000,
            "cpu_ms_per_1k": (ticks - before[1]) * 1000 / run.TICKS_PER_S / requests * 1000}


def run_fleet(lab: run.Lab, wrk: str, design: str, args) -> dict:
    """Three proxies of `design` on one Redis, loaded at once."""
    redis = lab.start_redis(f"redis-fleet-{design}")
    nodes = [start_design(lab, design, f"fleet-{design}-{i + 1}", redis)
             for i in range(FLEET_SIZE)]
    try:
        before = redis_snapshot(redis)
        procs = [run.run_wrk(lab.sup, wrk, n.url, 1, args.fleet_connections, args.duration)
                 for n in nodes]
        results = [run.finish_wrk(lab.sup, p, args.duration) for p in procs]
        requests = sum(r["statuses"].get(200, 0) for r in results)
        out = {"requests": requests, "rps": sum(r["rps"] for r in results),
               "errors": sum(run.socket_errors(r) for r in results)
               + sum(n for r in results for c, n in r["statuses"].items() if c != 200),
               **per_1k(redis, before, requests)}
    finally:
        stop(lab, *nodes)
    return out


def run_hop(lab: run.Lab, wrk: str, design: str, args) -> dict:
    """One proxy of `design` with Redis `--hop-ms` away each way."""
    redis = lab.start_redis(f"redis-hop-{design}")
    relay_port = start_relay(lab, f"relay-{design}", redis, args.hop_ms)
    target = start_design(lab, design, f"hop-{design}", redis, relay_port)
    try:
        if args.warmup:
            run.finish_wrk(lab.sup, run.run_wrk(lab.sup, wrk, target.url, 1, args.connections,
                                                args.warmup), args.warmup)
        before = redis_snapshot(redis)
        result = run.finish_wrk(lab.sup, run.run_wrk(lab.sup, wrk, target.url, 1,
                                                     args.connections, args.duration),
                                args.duration)
        ok = result["statuses"].get(200, 0)
        return {"rps": result["rps"], "p50_us": result["latency_us"]["p50"],
                "p99_us": result["latency_us"]["p99"],
                "errors": run.socket_errors(result) + result["requests"] - ok,
                **per_1k(redis, before, ok)}
    finally:
        stop(lab, target)


def run_stall(lab: run.Lab, wrk: str, design: str, args) -> dict:
    """wrk against one proxy of `design` while its Redis is stopped for `--stall-s`."""
    redis = lab.start_redis(f"redis-stall-{design}")
    target = start_design(lab, design, f"stall-{design}", redis)
    seconds = args.stall_run_s
    try:
        if args.warmup:
            run.finish_wrk(lab.sup, run.run_wrk(lab.sup, wrk, target.url, 1, args.connections,
                                                args.warmup), args.warmup)
        proc = run.run_wrk(lab.sup, wrk, target.url, 1, args.connections, seconds,
                           lua_args=("per-second",))
        resumed = threading.Event()

        def stall():
            time.sleep(args.stall_at_s)
            os.kill(redis.pid, signal.SIGSTOP)
            try:
                time.sleep(args.stall_s)
            finally:
                os.kill(redis.pid, signal.SIGCONT)
                resumed.set()

        staller = threading.Thread(target=stall, daemon=True)
        staller.start()
        result = run.finish_wrk(lab.sup, proc, seconds)
        staller.join(timeout=args.stall_s + args.stall_at_s + 5)
        if not resumed.is_set():
            os.kill(redis.pid, signal.SIGCONT)
            raise run.HarnessError(f"stall of {design}: Redis was not resumed in time")
        ok = result["statuses"].get(200, 0)
        failed_open = None
        if target.admin_port is not None:
            text = run.http_text(target.admin_port, "/metrics")
            failed_open = run.metric_sum(text, "tollgate_ratelimit_decisions_total",
                                         result="failed_open")
        return {"rps": result["rps"], "p50_us": result["latency_us"]["p50"],
                "p99_us": result["latency_us"]["p99"], "max_us": result["latency_us"]["max"],
                "non_200": result["requests"] - ok, "socket_errors": run.socket_errors(result),
                "ok_per_second": result["ok_per_second"], "failed_open": failed_open}
    finally:
        stop(lab, target)


def fmt_ms(us: float | None) -> str:
    return "—" if us is None else f"{us / 1000:.2f} ms"


def fmt_num(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def report(context: dict, targets: list[run.Target], relay: dict, fleet: dict, hop: dict,
           stall: dict, args, problems: list[str]) -> str:
    m = context["machine"]
    lines = ["## Fleet-wide limits side by side", "",
             f"- date: {context['date']}",
             f"- machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB memory, "
             f"Linux {m['kernel']}; load average before the run {context['load']}",
             f"- command: `{context['command']}`",
             f"- wrk `-t1 -c{args.connections} -d{args.duration}s` on `/a/x`, "
             f"{args.rounds} interleaved round(s), one worker per proxy, one stub backend; "
             "each design has a Redis of its own",
             f"- the Kong/APISIX design's Redis timeout: {run.PEER_REDIS_TIMEOUT_MS} ms "
             "(Kong's default is 2000 ms, APISIX's 1000 ms); tollgate's `redis.timeout`: "
             "its default, 25 ms",
             "- versions: " + "; ".join(context["versions"].values()), ""]
    summaries = {t.name: run.summarize(t) for t in targets}
    nginx = summaries.get("nginx", {}).get("rps_median")
    kong = summaries.get("kong-design", {})
    lines += ["| target | req/s (median) | × nginx | p50 | p99 | CPU/request (user + kernel) "
              "| Redis cmds per 1,000 requests | Redis CPU per 1,000 requests |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t in targets:
        sm = summaries[t.name]
        cmds = ("—" if sm["redis_cmds_per_request"] is None
                else f"{sm['redis_cmds_per_request'] * 1000:,.1f}")
        ratio = f"{sm['rps_median'] / nginx:.3f}" if nginx else "—"
        lines.append(f"| {t.label} | {sm['rps_median']:,.0f} | {ratio} | "
                     f"{run.fmt_ms(sm['p50_us_median'])} | {run.fmt_ms(sm['p99_us_median'])} | "
                     f"{run.fmt_cpu(sm['cpu_user_us'], sm['cpu_kernel_us'])} | {cmds} | "
                     f"{run.fmt_redis_cpu(sm)} |")
    tg = summaries.get("tollgate-global-async", {})
    ratios = []
    if tg and kong:
        ratios.append(("req/s per core, tollgate / Kong design",
                       f"{tg['rps_median'] / kong['rps_median']:.2f}", "≥ 1.0"))
        if tg["redis_cmds_per_request"] is not None and kong["redis_cmds_per_request"]:
            ratios.append(("Redis commands per request, tollgate / Kong design",
                           f"{tg['redis_cmds_per_request'] / kong['redis_cmds_per_request']:.4f}",
                           "≤ 0.02"))
    bare = summaries.get("pingora-bare", {}).get("rps_median")
    if tg and bare:
        ratios.append(("req/s, tollgate every default / stock Pingora",
                       f"{tg['rps_median'] / bare:.2f}", "≥ 1.0"))
    none = summaries.get("tollgate-none", {}).get("rps_median")
    if none and bare:
        ratios.append(("req/s, tollgate no limits / stock Pingora", f"{none / bare:.2f}",
                       "≥ 1.05"))
    capacity = []
    for name, sm in (("tollgate-global-async", tg), ("kong-design", kong)):
        us = sm.get("redis_cpu_us_per_1k") if sm else None
        if us:
            capacity.append((name, 1e6 / (us / 1000)))
    lines += ["", f"Relay overhead ({PINGS} PINGs on one connection, timed by the harness): "
              f"direct p50 {fmt_ms(relay['direct_p50_us'])}, p99 "
              f"{fmt_ms(relay['direct_p99_us'])}; through the relay ({args.hop_ms} ms each way) "
              f"p50 {fmt_ms(relay['relay_p50_us'])}, p99 {fmt_ms(relay['relay_p99_us'])}: "
              f"{fmt_ms(relay['relay_p50_us'] - relay['direct_p50_us'] - 2000 * args.hop_ms)} "
              "above the configured delay at the median (each direction is a thread that "
              "sleeps until the bytes are due, then writes them).", "",
              f"| design | {FLEET_SIZE} proxies: req/s (fleet) | Redis cmds per 1,000 | "
              "Redis CPU per 1,000 | Redis 1 hop away: req/s | p50 | p99 | "
              f"Redis stopped {args.stall_s:g} s: req/s | p99 | max | errors |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for design, label in DESIGNS.items():
        f, h, s = fleet.get(design), hop.get(design), stall.get(design)
        if not (f and h and s):
            continue
        errors = s["non_200"] + s["socket_errors"]
        lines.append(f"| {label} | {f['rps']:,.0f} | {fmt_num(f['cmds_per_1k'])} | "
                     f"{fmt_num(f['cpu_ms_per_1k'], 2)} ms | {h['rps']:,.0f} | "
                     f"{fmt_ms(h['p50_us'])} | {fmt_ms(h['p99_us'])} | {s['rps']:,.0f} | "
                     f"{fmt_ms(s['p99_us'])} | {fmt_ms(s['max_us'])} | {errors} |")
    if all(hop.get(d) for d in DESIGNS):
        ratios.append(("p99 with Redis one hop away, tollgate / Kong design",
                       f"{hop['tollgate']['p99_us'] / hop['kong']['p99_us']:.2f}", "≤ 0.5"))
    if all(stall.get(d) for d in DESIGNS):
        ratios.append((f"p99 through a {args.stall_s:g} s Redis stall, tollgate / Kong design",
                       f"{stall['tollgate']['p99_us'] / stall['kong']['p99_us']:.2f}",
                       "≤ 0.25"))
    if capacity:
        lines += ["", "Proxied requests per second one Redis core carries, **derived** from "
                  "Redis's CPU time per proxied request in the per-core rounds (one second "
                  "divided by it; Redis's idle housekeeping is included, so the figure for a "
                  "design that rarely calls Redis is a floor):", ""]
        lines += [f"- {name}: {rps:,.0f} req/s" for name, rps in capacity]
    if ratios:
        lines += ["", "| ratio (this run) | measured | target |", "| --- | ---: | --- |"]
        lines += [f"| {what} | {value} | {target} |" for what, value, target in ratios]
    stall_notes = [f"{d}: {s['failed_open']:.0f} decisions failed open"
                   for d, s in stall.items() if s and s.get("failed_open")]
    if stall_notes:
        lines += ["", "During the stall: " + "; ".join(stall_notes) + "."]
    if problems:
        lines += ["", "**Problems (the figures above are not valid):**",
                  *[f"- {p.splitlines()[0]}" for p in problems]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--fleet-connections", type=int, default=20,
                        help="wrk connections per proxy in the three-proxy run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--targets", default=",".join(MAIN_TARGETS),
                        help="targets of the per-core rounds: " + ", ".join(run.TARGET_NAMES))
    parser.add_argument("--hop-ms", type=float, default=1.0,
                        help="the relay's delay each way (default 1 ms)")
    parser.add_argument("--stall-s", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 round of 2 s, a 0.5 s stall, no warm-up")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--keep-tmp", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.connections, args.warmup = 1, 2, 10, 0
        args.fleet_connections, args.stall_s = 5, 0.5
    args.stall_at_s = 1.0
    args.stall_run_s = max(args.duration, int(args.stall_s + 3.5))
    args.wrk_threads = 1
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in run.TARGET_NAMES]
    if unknown:
        parser.error(f"unknown target(s) {unknown}")
    command = shlex.join(["python3", *sys.argv])
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-fleetwide-"))
    sup = run.Supervisor(tmp)
    problems: list[str] = []
    try:
        tools = run.ensure_tools(allow_install=not args.no_install)
        tollgate_bin, stub_bin = run.ensure_binaries()
        if not relay_bin().is_file():
            raise run.HarnessError(f"{relay_bin()} is missing: `cargo build --release "
                                   "--examples` (or the debug build with TOLLGATE_BIN_DIR)")
        context = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S UTC"),
            "command": command, "machine": run.machine_info(),
            "versions": run.versions(tools, tollgate_bin),
            "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        }
        lab = run.Lab(sup, tmp, tools, tollgate_bin, stub_bin)
        lab.start_stub()
        print("per core, Redis on loopback:", flush=True)
        targets = run.start_targets(lab, names)
        problems += run.run_rounds(sup, tools["wrk"], targets, args)
        for t in targets:
            t.proc.stop(timeout=10)
            sup.forget(t.proc)

        print("relay overhead:", flush=True)
        redis = lab.start_redis("redis-relay-check")
        relay_port = start_relay(lab, "relay-check", redis, args.hop_ms)
        direct, relayed = ping_times_us(redis.port, PINGS), ping_times_us(relay_port, PINGS)
        relay = {"direct_p50_us": statistics.median(direct),
                 "direct_p99_us": run.percentile(direct, 0.99),
                 "relay_p50_us": statistics.median(relayed),
                 "relay_p99_us": run.percentile(relayed, 0.99)}
        print(f"  {relay}", flush=True)

        fleet, hop, stall = {}, {}, {}
        for design in DESIGNS:
            print(f"{design}: {FLEET_SIZE} proxies on one Redis", flush=True)
            fleet[design] = run_fleet(lab, tools["wrk"], design, args)
            print(f"  {fleet[design]}", flush=True)
            print(f"{design}: Redis {args.hop_ms} ms away", flush=True)
            hop[design] = run_hop(lab, tools["wrk"], design, args)
            print(f"  {hop[design]}", flush=True)
            print(f"{design}: Redis stopped for {args.stall_s} s under load", flush=True)
            stall[design] = run_stall(lab, tools["wrk"], design, args)
            print(f"  {dict((k, v) for k, v in stall[design].items() if k != 'ok_per_second')}",
                  flush=True)
            if fleet[design]["errors"] or hop[design]["errors"]:
                problems.append(f"{design}: errors in the fleet or hop run")
        text = report(context, targets, relay, fleet, hop, stall, args, problems)
        print()
        print(text, end="")
        if args.out:
            args.out.write_text(text)
        return 1 if problems else 0
    except run.HarnessError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    finally:
        sup.stop_all()
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
