#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: figures that a shared, noisy machine
cannot move.

Every target of the load harness that is named runs under `valgrind --tool=callgrind`,
with one worker, in front of the harness's stub backend. After a warm-up, callgrind's
counters are zeroed, h2load sends a fixed number of requests over keep-alive connections
(HTTP/1.1), and the counters are dumped. The thread that executed the most instructions is
the one serving requests; its count per request is the cost of a request in instructions
(Ir). Other threads (timers, the lease sync, the decision log's drain) run by the clock,
not by request, and under valgrind each request takes tens of times longer than natively,
so their share is reported apart and overstates what they cost at full speed.

For tollgate targets it also reports the instructions per request inside each of
tollgate's phases (inclusive, from callgrind_annotate), so the cost of tollgate's own code
reads apart from Pingora's.

    python3 benches/load/instructions.py                # ~3 minutes
    python3 benches/load/instructions.py --requests 5000 --targets pingora-bare,tollgate-none

The binaries are the harness's (`CARGO_TARGET_DIR/release`, built if missing).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the load harness: its targets, configs and process handling)

DEFAULT_TARGETS = ["nginx", "pingora-bare", "tollgate-none", "tollgate-global-async",
                   "tollgate-global-async-noheaders"]

# Inclusive instruction counts of these functions, per request, for tollgate targets.
# Substrings of callgrind_annotate's symbol names; async phases appear as their closures.
PHASES = [
    ("request_filter (framing, path, routing, identity, the decision)",
     ">::request_filter::{{closure}}"),
    ("upstream_peer", ">::upstream_peer::{{closure}}"),
    ("upstream_request_filter (forwarding headers, request id)",
     ">::upstream_request_filter::{{closure}}"),
    ("response_filter (request id, rate limit fields)", ">::response_filter::{{closure}}"),
    ("logging (metrics)", ">::logging::{{closure}}"),
    # Response costs: `response_body_filter` and the settlement are inlined in the release
    # build, the meter's two entry points are not.
    ("reading a cost from the body as it passes (SSE events)", "meter::Meter::on_body"),
    ("reading a cost from a JSON body at its end", "meter::Meter::on_end"),
    ("the header deadline's timer", "fast_timeout::fast_sleep::{{closure}}"),
]

WARMUP_REQUESTS = 500
START_DEADLINE_S = 180.0  # valgrind translates the whole binary before it answers


class CallgrindSupervisor(run.Supervisor):
    """Starts the measured targets under callgrind, with instrumentation off until asked."""

    def __init__(self, tmp: Path, valgrind: str, wrapped: set[str]):
        super().__init__(tmp)
        self.valgrind, self.wrapped = valgrind, wrapped

    def start(self, name, argv, workdir, *args, **kwargs):
        if name in self.wrapped:
            argv = [self.valgrind, "--tool=callgrind", "--instr-atstart=no",
                    "--separate-threads=yes", f"--callgrind-out-file={workdir}/callgrind.%p",
                    *argv]
        return super().start(name, argv, workdir, *args, **kwargs)


def patient_wait_until(what, check, proc=None, deadline_s=START_DEADLINE_S):
    return _wait_until(what, check, proc, max(deadline_s, START_DEADLINE_S))


_wait_until = run.wait_until


def start_nginx_single(lab: run.Lab) -> run.Target:
    """nginx as one process (`master_process off`): the process serving requests is then
    the one started under callgrind, and callgrind_control can reach it (a forked worker
    that changed user cannot be)."""
    port, workdir = run.free_port(), lab.workdir("nginx")
    conf = run.render(run.HERE / "nginx.conf", workdir / "nginx.conf",
                      {"DIR": workdir, "PORT": port, "STUB_PORT": lab.stub_port,
                       "RATE": run.NGINX_RATE, "BURST": run.NGINX_RATE})
    conf.write_text(conf.read_text().replace("master_process on;", "master_process off;"))
    argv = [lab.tools["nginx"], "-p", str(workdir), "-e", str(workdir / "error.log"),
            "-c", str(conf)]
    proc = lab.sup.start("nginx", argv, workdir, extra_logs=(workdir / "error.log",))
    lab._ready_200("nginx", port, proc)
    return run.Target("nginx", "nginx (limit_req)", proc, port, worker_pid=proc.pid)


def h2load(tool: str, url: str, requests: int, headers: list[str] = ()) -> int:
    argv = [tool, "--h1", "-n", str(requests), "-c", "10"]
    for header in headers:
        argv += ["-H", header]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=900)
    match = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded",
                      done.stdout)
    if done.returncode != 0 or not match:
        raise run.HarnessError(f"h2load {url} failed:\n{done.stdout}\n{done.stderr}")
    return int(match.group(1))


def control(tool: str, pid: int, *flags: str) -> None:
    run.run_quiet([tool, *flags, str(pid)], f"callgrind_control {' '.join(flags)} {pid}")


def thread_totals(workdir: Path) -> dict[Path, int]:
    totals = {}
    for path in sorted(workdir.glob("callgrind.*")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                totals[path] = int(line.split()[1])
                break
    return totals


def phase_costs(annotate: str, path: Path) -> dict[str, int]:
    listing = subprocess.run([annotate, "--inclusive=yes", "--threshold=100", str(path)],
                             capture_output=True, text=True, timeout=300).stdout
    costs = {}
    for label, needle in PHASES:
        best = 0
        for line in listing.splitlines():
            if needle in line:
                number = line.strip().split(" ", 1)[0].replace(",", "")
                if number.isdigit():
                    best = max(best, int(number))
        costs[label] = best
    return costs


def measure(target: run.Target, tools: dict, requests: int) -> dict:
    pid = target.worker_pid
    workdir = Path(target.proc.workdir)
    control(tools["callgrind_control"], pid, "-i", "on")
    h2load(tools["h2load"], target.url, WARMUP_REQUESTS, target.headers)
    control(tools["callgrind_control"], pid, "-z")
    answered = h2load(tools["h2load"], target.url, requests, target.headers)
    for old in workdir.glob("callgrind.*"):
        old.unlink()
    control(tools["callgrind_control"], pid, "-d")
    control(tools["callgrind_control"], pid, "-i", "off")
    totals = thread_totals(workdir)
    if not totals:
        raise run.HarnessError(f"{target.name}: callgrind wrote no dump in {workdir}")
    request_thread = max(totals, key=totals.get)
    phases = None
    if target.name.startswith("tollgate") or target.name.startswith("tuning"):
        # The busiest thread is the request thread in a long run, but in a short one on a
        # busy machine the sync task's clock-driven work can outweigh it: the request
        # thread is the one that ran `request_filter`.
        by_thread = {path: phase_costs(tools["callgrind_annotate"], path) for path in totals}
        first_phase = PHASES[0][0]
        request_thread = max(by_thread, key=lambda p: (by_thread[p][first_phase], totals[p]))
        phases = by_thread[request_thread]
    result = {"requests": answered, "request_thread": totals[request_thread] / answered,
              "other_threads": (sum(totals.values()) - totals[request_thread]) / answered}
    if phases is not None:
        result["phases"] = {k: v / answered for k, v in phases.items()}
    return result


def report(results: dict[str, dict], labels: dict[str, str], requests: int) -> str:
    lines = [f"Instructions per request (callgrind, {requests:,} requests after "
             f"{WARMUP_REQUESTS} of warm-up, h2load --h1 -c 10):", "",
             "| target | request thread | × Pingora alone | other threads (clock-driven) |",
             "| --- | ---: | ---: | ---: |"]
    bare = results.get("pingora-bare", {}).get("request_thread")
    for name, r in results.items():
        ratio = f"{r['request_thread'] / bare:.2f}" if bare else "—"
        lines.append(f"| {labels[name]} | {r['request_thread']:,.0f} | {ratio} | "
                     f"{r['other_threads']:,.0f} |")
    phased = {n: r for n, r in results.items() if "phases" in r}
    if phased:
        lines += ["", "tollgate's phases, inclusive instructions per request:", "",
                  "| phase | " + " | ".join(labels[n] for n in phased) + " |",
                  "| --- |" + " ---: |" * len(phased)]
        for label, _ in PHASES:
            cells = " | ".join(f"{r['phases'][label]:,.0f}" for r in phased.values())
            lines.append(f"| {label} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help="comma-separated load-harness targets: " + ", ".join(run.TARGET_NAMES))
    parser.add_argument("--tuning", action="append", default=[], metavar="NAME=SPEC",
                        help="also measure tollgate with no limits and TOLLGATE_TUNING=SPEC, "
                             "as in run.py; repeatable")
    parser.add_argument("--tuning-async", action="append", default=[], metavar="NAME=SPEC",
                        help="the same for tollgate with global async and every default; "
                             "repeatable")
    parser.add_argument("--baseline-bin", type=Path,
                        help="also measure another tollgate binary (an earlier build) as a "
                             "global async target, for a before/after in instructions")
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="also send this header with every measured request, to every "
                             "target (h2load -H); repeatable")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--keep-tmp", action="store_true",
                        help="keep the configs, logs and callgrind dumps")
    args = parser.parse_args()
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in run.TARGET_NAMES]
    tunings = [tuple(t.split("=", 1)) for t in args.tuning if "=" in t]
    async_tunings = [tuple(t.split("=", 1)) for t in args.tuning_async if "=" in t]
    names += [f"tuning:{label}" for label, _ in tunings]
    names += [f"tuning-async:{label}" for label, _ in async_tunings]
    if args.baseline_bin is not None:
        if not args.baseline_bin.is_file():
            parser.error(f"--baseline-bin {args.baseline_bin}: no such file")
        names.append("baseline")
    if unknown or args.requests < 1:
        parser.error(f"unknown target(s) {unknown}" if unknown else "--requests must be ≥ 1")
    tools = {}
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "h2load",
                 "redis-server", "nginx"):
        found = run.which(tool)
        if found is None:
            sys.exit(f"{tool} not found: install it with `apt-get install -y valgrind "
                     "nghttp2-client redis-server nginx`")
        tools[tool] = found
    run.wait_until = patient_wait_until
    tollgate_bin, stub_bin = run.ensure_binaries()
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-instructions-"))
    wrapped = {"nginx", "pingora-bare", "tollgate-global-async-baseline", *names,
               *(f"tollgate-tuning-{label}" for label, _ in tunings),
               *(f"tollgate-tuning-async-{label}" for label, _ in async_tunings)}
    sup = CallgrindSupervisor(tmp, tools["valgrind"], wrapped)
    try:
        lab = run.Lab(sup, tmp, tools, tollgate_bin, stub_bin)
        lab.start_stub()
        results, labels = {}, {}
        for name in names:
            # One at a time, so only the measured target competes with the load.
            if name == "nginx":
                target = start_nginx_single(lab)
            elif name == "baseline":
                target = lab.start_tollgate(
                    "tollgate-global-async-baseline",
                    f"baseline {args.baseline_bin.name}, global async",
                    "tollgate-global-async.yaml", run.TOLLGATE_HIGH_RATE,
                    lab.start_redis("redis-baseline"), binary=args.baseline_bin)
            elif name.startswith("tuning:"):
                label = name.split(":", 1)[1]
                [target] = run.start_targets(lab, [], tunings=[(label, dict(tunings)[label])])
            elif name.startswith("tuning-async:"):
                label = name.split(":", 1)[1]
                [target] = run.start_targets(
                    lab, [], async_tunings=[(label, dict(async_tunings)[label])])
            else:
                [target] = run.start_targets(lab, [name])
            labels[name] = target.label
            target.headers = [*target.headers, *args.header]
            results[name] = measure(target, tools, args.requests)
            print(f"{target.label}: {results[name]['request_thread']:,.0f} Ir per request",
                  flush=True)
            target.proc.stop(timeout=30)
            sup.forget(target.proc)
        text = report(results, labels, args.requests)
        print()
        print(text, end="")
        if args.out:
            args.out.write_text(text)
    except run.HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        sup.stop_all()
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
