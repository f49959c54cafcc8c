#!/usr/bin/env python3
"""Side-by-side load harness: tollgate next to nginx and HAProxy, on one machine.

    python3 benches/load/run.py                 # 3 interleaved rounds of 10 s per target
    python3 benches/load/run.py --rounds 5 --out results.md --json results.json
    python3 benches/load/run.py --fleet         # also the three-node fleet accuracy run
    python3 benches/load/run.py --tls           # also TLS and HTTP/2 beside nginx
    python3 benches/load/run.py --cluster       # also 100,000 keys on one Redis and a cluster
    python3 benches/load/run.py --rls           # also Envoy's rate limit service (gRPC)
    python3 benches/load/run.py --quick         # ~30 s smoke test of the harness (CI)
    python3 benches/load/run.py --baseline-bin /path/to/old/tollgate   # before/after

What it measures
----------------
Every target is the same prefix proxy, `/a/*` to one `stub-service` backend, with a
rate limit per client address that is set high enough never to refuse (so the figures are
the cost of proxying *and* of counting):

  nginx                   limit_req (a shared-memory leaky bucket), one worker process
  HAProxy                 a stick table tracking http_req_rate(10s), one thread
  tollgate, no limits     the bare proxy
  tollgate, local         a sliding window counted on this node only
  tollgate, global async  a fleet-wide sliding window in Redis, decided from this node's
                          lease (no Redis round trip per request), every other setting at
                          its default: the decision log on
  tollgate, ... log off   the same with `admin.decision_log.enabled: false`
  tollgate, config.yaml   the repository's config.yaml as shipped (its limits, the decision
                          log, health checks), pointed at the stub and a Redis of its own
                          and run with one thread: what a user who load-tests the demo gets
                          (its 100/1m per client refuses nearly every request)
  tollgate, global atomic the same limit decided by a Redis script on every request
  tollgate, refusing      global async with a 10/1s limit: nearly every request is refused
                          with 429, which shows what refusing costs next to proxying

Response costs and fleet concurrency (issue 22), each beside its twin in one run:

  tollgate, cost ...      global async as above, the stub answering a small JSON body with
                          `{"usage":{"total_tokens":150}}` (asked for by the request header
                          `x-stub-usage`): `cost-fixed` charges the fixed default (1),
                          `cost-json` charges `response_json:usage.total_tokens`, read from the
                          body as it passes and settled in place of the reserve
  tollgate, SSE ...       the same pair on a `text/event-stream` of 8 `data:` events sent as
                          chunks (`x-stub-sse: 8`), the usage in the last: `cost-sse-fixed`
                          and `cost-sse`
  tollgate, concurrency   `algorithm: concurrency`, `scope: global`, `sync: async`, a limit of
                          1000 in flight (far above wrk's connections): slots leased from
                          Redis, the fleet-wide in-flight row beside global async

The report's "Response costs and fleet concurrency" table gives each pair's req/s ratio and
the p99 the response cost adds.

"Pingora alone" is Pingora's own example shape with stock settings (`ServerConf::default()`
but one thread), so tollgate's tuning of Pingora shows as a ratio to it. `--tuning
NAME=SPEC` adds a tollgate target (no limits) started with `TOLLGATE_TUNING=SPEC`
(src/tuning.rs), for A/B runs of one Pingora setting against the shipped ones.

For each target: the median requests/s over the rounds, the CPU time per request of the
process doing the work (user and kernel, from `/proc/<pid>/stat` before and after each
run, all its threads), the median p50 and p99 latency
(`wrk --latency`), the peak resident memory of the process doing the work (`VmHWM` of the
nginx worker, the HAProxy process, the tollgate process), and for the targets that use
Redis the Redis commands per request (`INFO commandstats`, all commands except the
harness's own INFO, taken just before and after each of the target's wrk runs).
`--fleet` adds three tollgate nodes sharing one Redis under a 300/1s limit, each driven by
its own wrk, and reports how many requests per second the fleet admitted against the
limit. A new-key probe then times what a key's first request costs when the limit is
small (it waits for the key's first grant from Redis) against the key's second request.
`--cluster` adds the key-spread run: three tollgate nodes under a global async sliding
window that never refuses, each driven by its own wrk whose requests come from 100,000
client addresses at random (`keys.lua`), so each node tracks tens of thousands of keys.
It runs once on one Redis and once on a Redis Cluster of three masters (no replicas, so
every command a master runs is tollgate's), after a warm-up that makes the keys active.
For each it reports the fleet's requests/s, the Redis commands per request on each server
(`INFO commandstats`), and the worst node's sync latency p99 (`/admin/stats`, the last 256
sync rounds). The goal is each master's commands per request about a third of the one
server's.
`--baseline-bin` runs an earlier tollgate build as a second global async target,
interleaved with this one, so a change shows as a ratio within one run.

`--tls` adds TLS termination, tollgate (no limits) beside nginx, both with one worker and
the same ECDSA P-256 certificate made with openssl for the run, both speaking TLS 1.2/1.3
and HTTP/2 by ALPN, in interleaved rounds of three measurements:

  HTTPS keep-alive        wrk over TLS (HTTP/1.1), connections reused
  HTTP/2                  h2load -c10 -m10: ten connections, ten streams each in flight
  new TLS connections     wrk with `Connection: close`: a full handshake per request
                          (wrk does not resume sessions), so req/s is handshakes/s

Why it is run this way
----------------------
* One worker each (nginx `worker_processes 1`, HAProxy `nbthread 1`, tollgate
  `threads: 1`): per-core throughput is what compares fairly, and the load generator, the
  backend and Redis need the other cores.
* Keep-alive everywhere: wrk reuses its connections, and every proxy pools its
  connections to the backend (nginx `keepalive 64`, HAProxy `http-reuse always`,
  tollgate's pool), so the figures are request handling, not TCP handshakes.
* Interleaved rounds (A B C ..., A B C ..., ...): every target is started once, on a port
  of its own, and stays up; the rounds take turns so that a slow minute of the machine
  (another process, thermal throttling, a noisy neighbour) spreads over all targets
  instead of penalising one. Only one wrk runs at a time. Medians over the rounds.
* The stub backend runs two threads (`--threads 2`) so that it is never the bottleneck.
* Each Redis-backed target has a `redis-server` of its own (`--save "" --appendonly no`):
  the targets use the same policy name and key, so on a shared Redis they would share
  counters, count each other as live nodes, and mix their command counts.
* Nothing is pinned to a core: the machine may have only two, so the harness interleaves
  rather than isolates. Figures from a busy or virtualised machine are only comparable
  with each other, within one run.

The harness installs nginx, HAProxy, wrk and redis-server with apt-get when they are
missing, builds the release binaries when they are missing, and stops every process it
started on exit, on failure and on Ctrl-C. Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LUA_SCRIPT = HERE / "count.lua"
KEYS_SCRIPT = HERE / "keys.lua"

# tool -> Debian package
TOOLS = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "redis-server": "redis-server",
         "nginx-lua": "libnginx-mod-http-lua"}
# Not a command: the Lua module the Kong/APISIX design's nginx loads.
LUA_MODULE = Path("/usr/lib/nginx/modules/ngx_http_lua_module.so")
# tools only the TLS comparison needs
TLS_TOOLS = {"h2load": "nghttp2-client", "openssl": "openssl"}
# tools only the cluster run needs
CLUSTER_TOOLS = {"redis-cli": "redis-tools"}
SBIN_PATH = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin:/usr/local/sbin"

# Limits high enough that nothing is refused in the normal runs.
TOLLGATE_HIGH_RATE = "100000000/1m"
NGINX_RATE = 1_000_000  # requests/s of limit_req, and its burst
HAPROXY_LIMIT = 100_000_000  # requests per 10 s of the stick table
KONG_LIMIT = 100_000_000  # requests per minute of the Kong/APISIX design's Redis counter
KONG_LABEL = "nginx + Lua + Redis per request (the Kong/APISIX design)"
# The Kong/APISIX design's Redis connect/send/read timeout. Kong's `redis_timeout` defaults
# to 2000 ms and APISIX's to 1000 ms; a shorter one favours the peer when Redis stalls.
PEER_REDIS_TIMEOUT_MS = 100
REFUSAL_RATE = "10/1s"
# The response-cost targets: what the stub reports per request, the events of its stream,
# and a rate that 150 units per request never reaches (1e8/1m would refuse past ~11k req/s).
USAGE_TOKENS = 150
SSE_EVENTS = 8
COST_HIGH_RATE = "1000000000000/1m"
COST_FROM_RESPONSE = "response_json:usage.total_tokens"
CONCURRENCY_LIMIT = 1000
FLEET_LIMIT_PER_S = 300
FLEET_NODES = 3
FLEET_SECONDS = 5
FLEET_CONNECTIONS = 10
SPREAD_KEYS = 100_000
SPREAD_SECONDS = 10
SPREAD_WARMUP_S = 5
SPREAD_CONNECTIONS = 10
CLUSTER_MASTERS = 3
STUB_THREADS = 2
START_DEADLINE_S = 20.0
SCRIPT_COMMANDS = {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"}


class HarnessError(Exception):
    """A failure the harness reports and exits non-zero on."""


# --------------------------------------------------------------------------- processes


class Proc:
    """A child process in a process group of its own, logging into its own directory."""

    def __init__(self, name: str, argv: list[str], workdir: Path, stop_signal=signal.SIGTERM,
                 env: dict | None = None, extra_logs: tuple[Path, ...] = ()):
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.stop_signal = stop_signal
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.extra_logs = extra_logs
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=err, env=env,
                                          start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> int | None:
        return self.popen.poll()

    def tail(self, lines: int = 25) -> str:
        parts = []
        for path in (self.stderr_path, self.stdout_path, *self.extra_logs):
            try:
                text = path.read_text(errors="replace").rstrip()
            except OSError:
                continue
            if text:
                body = "\n".join(text.splitlines()[-lines:])
                parts.append(f"--- {path.name} (last {lines} lines) ---\n{body}")
        return "\n".join(parts) or "(no output)"

    def stop(self, timeout: float = 3.0) -> None:
        if self.popen.poll() is not None:
            return
        for sig, wait in ((self.stop_signal, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # A group may outlive its leader (nginx workers): make sure none is left.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Supervisor:
    """Starts processes and stops all of them, newest first, whatever happens."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    def start(self, *args, **kwargs) -> Proc:
        proc = Proc(*args, **kwargs)
        self.procs.append(proc)
        return proc

    def forget(self, proc: Proc) -> None:
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop()


def wait_until(what: str, check, proc: Proc | None = None,
               deadline_s: float = START_DEADLINE_S) -> None:
    """Polls `check()` until it is true; fails if `proc` exits or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        if proc is not None and proc.exited() is not None:
            raise HarnessError(f"{what}: the process exited with status {proc.exited()}\n"
                               f"{proc.tail()}")
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            tail = f"\n{proc.tail()}" if proc else ""
            raise HarnessError(f"{what}: not ready after {deadline_s:.0f} s{tail}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- small clients

_handed_out: set[int] = set()


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def http_status(port: int, path: str, timeout: float = 1.0,
                headers: list[str] = ()) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=dict(h.split(": ", 1) for h in headers))
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def http_text(port: int, path: str, timeout: float = 2.0) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode(errors="replace")
    finally:
        conn.close()


def metric_sum(exposition: str, name: str, **labels: str) -> float:
    """Sums every sample of `name` whose labels include `labels` (Prometheus text)."""
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        series_name, _, label_text = series.partition("{")
        if series_name != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


class RedisClient:
    """Just enough RESP for PING and INFO."""

    def __init__(self, port: int, pid: int | None = None):
        self.port = port
        self.pid = pid  # the redis-server process, for its CPU time

    def command(self, *args: str) -> str:
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(payload.encode())
            reader = sock.makefile("rb")
            line = reader.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:].decode()
            if kind in (b"+", b":"):
                return rest
            if kind == b"-":
                raise HarnessError(f"redis on {self.port}: {rest}")
            if kind == b"$":
                length = int(rest)
                return "" if length < 0 else reader.read(length + 2)[:length].decode()
            raise HarnessError(f"redis on {self.port}: unexpected reply {line!r}")

    def ping(self) -> bool:
        return self.command("PING") == "PONG"

    def command_calls(self) -> dict[str, int]:
        """Calls since start, from INFO commandstats, leaving out the harness's own INFO.

        `total` is every command Redis executed, including the ones Lua scripts run (Redis
        counts those too); `scripts` is the EVAL/EVALSHA/FCALL calls among them, i.e.
        scripts run, each one a single command sent by a client.
        """
        calls = {"total": 0, "scripts": 0}
        for line in self.command("INFO", "commandstats").splitlines():
            if not line.startswith("cmdstat_") or line.startswith("cmdstat_info:"):
                continue
            name, _, stats = line[len("cmdstat_"):].partition(":")
            for part in stats.split(","):
                if part.startswith("calls="):
                    n = int(part[len("calls="):])
                    calls["total"] += n
                    if name in SCRIPT_COMMANDS:
                        calls["scripts"] += n
        return calls


def proc_status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces, so split after the last ')'
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


# --------------------------------------------------------------------------- setup


def which(tool: str) -> str | None:
    if tool == "nginx-lua":
        return str(LUA_MODULE) if LUA_MODULE.is_file() else None
    return shutil.which(tool, path=SBIN_PATH)


def ensure_tools(allow_install: bool, tls: bool = False,
                 cluster: bool = False) -> dict[str, str]:
    wanted = dict(TOOLS, **(TLS_TOOLS if tls else {}), **(CLUSTER_TOOLS if cluster else {}))
    missing = [tool for tool in wanted if which(tool) is None]
    if missing:
        packages = sorted({wanted[t] for t in missing})
        command = f"apt-get update && apt-get install -y {' '.join(packages)}"
        if not allow_install:
            raise HarnessError(f"missing {', '.join(missing)}; install them with: {command}")
        if shutil.which("apt-get") is None:
            raise HarnessError(f"missing {', '.join(missing)}, and there is no apt-get to "
                               f"install them with; install {', '.join(packages)} yourself")
        prefix: list[str] = []
        if os.geteuid() != 0:
            if shutil.which("sudo") is None:
                raise HarnessError(f"missing {', '.join(missing)}; installing needs root: "
                                   f"run `sudo sh -c '{command}'` or run this as root")
            prefix = ["sudo", "-n"]
        print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (prefix + ["apt-get", "update"],
                     prefix + ["apt-get", "install", "-y", *packages]):
            if subprocess.run(argv, env=env).returncode != 0:
                raise HarnessError(f"`{shlex.join(argv)}` failed; install {', '.join(packages)} "
                                   "by hand and run the harness again")
        still = [tool for tool in wanted if which(tool) is None]
        if still:
            raise HarnessError(f"apt-get ran but {', '.join(still)} is still missing")
    return {tool: which(tool) for tool in wanted}


def release_dir() -> Path:
    """Where tollgate, stub-service and examples/bare_pingora are: `TOLLGATE_BIN_DIR` when
    set (the smoke test points it at the debug build it already has), else the release
    build of `CARGO_TARGET_DIR`."""
    if os.environ.get("TOLLGATE_BIN_DIR"):
        return Path(os.environ["TOLLGATE_BIN_DIR"]).resolve()
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")).resolve() / "release"


def bare_pingora_bin() -> Path:
    return release_dir() / "examples" / "bare_pingora"


def ensure_binaries() -> tuple[Path, Path]:
    tollgate, stub = release_dir() / "tollgate", release_dir() / "stub-service"
    if not (tollgate.is_file() and stub.is_file() and bare_pingora_bin().is_file()):
        if os.environ.get("TOLLGATE_BIN_DIR"):
            raise HarnessError(f"TOLLGATE_BIN_DIR={release_dir()} lacks tollgate, stub-service "
                               "or examples/bare_pingora")
        if shutil.which("cargo") is None:
            raise HarnessError(f"{tollgate} or {stub} is missing and cargo is not installed")
        print("release binaries missing: running `cargo build --release --workspace "
              "--bins --examples` (this may take ~6 minutes) ...", flush=True)
        build = ["cargo", "build", "--release", "--workspace", "--bins", "--examples"]
        if subprocess.run(build, cwd=ROOT).returncode:
            raise HarnessError("cargo build --release failed")
    for path in (tollgate, stub, bare_pingora_bin()):
        if not path.is_file():
            raise HarnessError(f"{path} is still missing after the build")
    return tollgate, stub


def render(template: Path, dest: Path, values: dict[str, object]) -> Path:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", str(value))
    for line in text.splitlines():
        if "@@" in line and not line.lstrip().startswith("#"):
            raise HarnessError(f"{template.name}: placeholder left unfilled: {line.strip()}")
    dest.write_text(text)
    return dest


def run_quiet(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise HarnessError(f"{what} failed (exit {done.returncode}): {shlex.join(argv)}\n"
                           f"{(done.stdout + done.stderr).strip()}")


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    label: str
    proc: Proc
    port: int
    refusing: bool = False  # expected to answer 429 (the refusal run)
    headers: list[str] = field(default_factory=list)  # sent with every request (wrk -H)
    admin_port: int | None = None  # tollgate's admin listener
    redis: RedisClient | None = None
    worker_pid: int | None = None  # the process doing the work (nginx: the worker)
    peak_rss_kb: int | None = None
    rounds: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/a/x"


class Lab:
    """Everything the harness starts, under one temporary directory."""

    def __init__(self, sup: Supervisor, tmp: Path, tools: dict[str, str],
                 tollgate_bin: Path, stub_bin: Path):
        self.sup, self.tmp, self.tools = sup, tmp, tools
        self.tollgate_bin, self.stub_bin = tollgate_bin, stub_bin
        self.stub_port = 0

    def workdir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=False)
        return path

    def start_stub(self) -> Proc:
        self.stub_port = free_port()
        proc = self.sup.start("stub", [str(self.stub_bin), "--name", "a", "--listen",
                                       f"127.0.0.1:{self.stub_port}", "--threads",
                                       str(STUB_THREADS)], self.workdir("stub"))
        wait_until("stub-service", lambda: http_status(self.stub_port, "/health") == 200, proc)
        return proc

    def start_redis(self, name: str) -> RedisClient:
        port = free_port()
        workdir = self.workdir(name)
        proc = self.sup.start(name, [self.tools["redis-server"], "--port", str(port),
                                     "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                     "--protected-mode", "no", "--dir", str(workdir)], workdir)
        client = RedisClient(port, proc.pid)
        wait_until(f"redis-server ({name})", client.ping, proc)
        return client

    def start_cluster(self, name: str, masters: int) -> list[RedisClient]:
        """A Redis Cluster of `masters` masters and no replicas, every slot covered."""
        clients = []
        for i in range(masters):
            port, bus = free_port(), free_port()
            workdir = self.workdir(f"{name}-{i + 1}")
            proc = self.sup.start(f"{name}-{i + 1}", [
                self.tools["redis-server"], "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--protected-mode", "no",
                "--dir", str(workdir), "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
                # Otherwise the bus is the port + 10000, which may be taken or > 65535.
                "--cluster-port", str(bus)], workdir)
            client = RedisClient(port)
            wait_until(f"redis-server ({name}-{i + 1})", client.ping, proc)
            clients.append(client)
        run_quiet([self.tools["redis-cli"], "--cluster", "create",
                   *[f"127.0.0.1:{c.port}" for c in clients], "--cluster-replicas", "0",
                   "--cluster-yes"], f"redis-cli --cluster create ({name})")
        wait_until(f"{name}: cluster_state:ok on every master",
                   lambda: all("cluster_state:ok" in c.command("CLUSTER", "INFO")
                               for c in clients), deadline_s=30)
        return clients

    def _ready_200(self, name: str, port: int, proc: Proc) -> None:
        wait_until(f"{name} on port {port}", lambda: http_status(port, "/a/x") == 200, proc)

    def start_nginx(self) -> Target:
        port, workdir = free_port(), self.workdir("nginx")
        workdir.chmod(0o755)  # the worker may run as an unprivileged user
        conf = render(HERE / "nginx.conf", workdir / "nginx.conf",
                      {"DIR": workdir, "PORT": port, "STUB_PORT": self.stub_port,
                       "RATE": NGINX_RATE, "BURST": NGINX_RATE})
        base = [self.tools["nginx"], "-p", str(workdir), "-e", str(workdir / "error.log"),
                "-c", str(conf)]
        run_quiet(base + ["-t", "-q"], "nginx -t")
        proc = self.sup.start("nginx", base, workdir, stop_signal=signal.SIGTERM,
                              extra_logs=(workdir / "error.log",))
        self._ready_200("nginx", port, proc)
        workers = children_of(proc.pid)
        if len(workers) != 1:
            raise HarnessError(f"nginx: expected one worker process, found {workers}")
        return Target("nginx", "nginx (limit_req)", proc, port, worker_pid=workers[0])

    def start_kong_design(self, name: str, redis: RedisClient, redis_port: int | None = None,
                          timeout_ms: int = PEER_REDIS_TIMEOUT_MS,
                          label: str = KONG_LABEL) -> Target:
        """nginx + Lua, one pipelined INCR+EXPIRE on Redis per request (nginx-lua-redis.conf).
        `redis_port` points it elsewhere than `redis` itself (a delaying relay in front)."""
        port, workdir = free_port(), self.workdir(name)
        workdir.chmod(0o755)  # the worker may run as an unprivileged user
        conf = render(HERE / "nginx-lua-redis.conf", workdir / "nginx.conf",
                      {"DIR": workdir, "PORT": port, "STUB_PORT": self.stub_port,
                       "LIMIT": KONG_LIMIT, "WINDOW_S": 60, "TIMEOUT_MS": timeout_ms,
                       "REDIS_HOST": "127.0.0.1", "REDIS_PORT": redis_port or redis.port})
        base = [self.tools["nginx"], "-p", str(workdir), "-e", str(workdir / "error.log"),
                "-c", str(conf)]
        run_quiet(base + ["-t", "-q"], f"nginx -t ({name})")
        proc = self.sup.start(name, base, workdir, stop_signal=signal.SIGTERM,
                              extra_logs=(workdir / "error.log",))
        self._ready_200(name, port, proc)
        workers = children_of(proc.pid)
        if len(workers) != 1:
            raise HarnessError(f"{name}: expected one worker process, found {workers}")
        return Target(name, label, proc, port, redis=redis, worker_pid=workers[0])

    def start_haproxy(self) -> Target:
        port, workdir = free_port(), self.workdir("haproxy")
        cfg = render(HERE / "haproxy.cfg", workdir / "haproxy.cfg",
                     {"DIR": workdir, "PORT": port, "STUB_PORT": self.stub_port,
                      "LIMIT": HAPROXY_LIMIT})
        run_quiet([self.tools["haproxy"], "-c", "-q", "-f", str(cfg)], "haproxy -c")
        proc = self.sup.start("haproxy", [self.tools["haproxy"], "-db", "-f", str(cfg)], workdir)
        self._ready_200("haproxy", port, proc)
        return Target("haproxy", "HAProxy (stick table)", proc, port, worker_pid=proc.pid)

    def start_bare_pingora(self) -> Target:
        # Pingora with a ProxyHttp that only picks the backend: what Pingora itself costs
        # per request on this machine, to tell tollgate's share from the framework's.
        port, workdir = free_port(), self.workdir("pingora-bare")
        argv = [str(bare_pingora_bin()), f"127.0.0.1:{port}", f"127.0.0.1:{self.stub_port}"]
        proc = self.sup.start("pingora-bare", argv, workdir, stop_signal=signal.SIGINT)
        self._ready_200("pingora-bare", port, proc)
        return Target("pingora-bare", "Pingora alone (no tollgate code)", proc, port,
                      worker_pid=proc.pid)

    def start_tollgate(self, name: str, label: str, template: str | None, rate: str | None = None,
                       redis: RedisClient | None = None, refusing: bool = False,
                       extra: dict | None = None, binary: Path | None = None,
                       tuning: str | None = None, preserve_header_case: bool = False,
                       headers: list[str] = ()) -> Target:
        binary = binary or self.tollgate_bin
        port, admin_port, workdir = free_port(), free_port(), self.workdir(name)
        values = {"DIR": workdir, "PORT": port, "ADMIN_PORT": admin_port,
                  "STUB_PORT": self.stub_port, "DECISION_LOG": "true", "HEADERS": "true"}
        if rate is not None:
            values["RATE"] = rate
        if redis is not None:
            values["REDIS_URL"] = f"redis://127.0.0.1:{redis.port}"
        values.update(extra or {})  # last: a relay's port may stand in for Redis's
        if template is None:  # the repository's own config.yaml
            assert redis is not None
            config = shipped_config(workdir, port, admin_port, self.stub_port, redis)
        else:
            config = render(HERE / template, workdir / "config.yaml", values)
            if preserve_header_case:  # absent otherwise, so older builds read the config
                with config.open("a") as f:
                    f.write("\nhttp:\n  preserve_header_case: true\n")
        run_quiet([str(binary), "check", "-c", str(config)], f"tollgate check ({name})")
        env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "TOLLGATE_TUNING")}
        if tuning is not None:
            settings, variables = split_tuning(tuning)
            env["TOLLGATE_TUNING"] = settings
            env.update(variables)
        proc = self.sup.start(name, [str(binary), "run", "-c", str(config)], workdir,
                              stop_signal=signal.SIGINT, env=env)
        wait_until(f"{name} on port {port}",
                   lambda: http_status(port, "/health") == 200
                   and http_status(admin_port, "/health") == 200, proc)
        if headers:
            wait_until(f"{name} to answer 200 with {headers}",
                       lambda: http_status(port, "/a/x", headers=headers) == 200, proc)
        else:
            self._ready_200(name, port, proc)
        return Target(name, label, proc, port, refusing=refusing, admin_port=admin_port,
                      redis=redis, worker_pid=proc.pid, headers=list(headers))


TARGET_NAMES = ["nginx", "haproxy", "kong-design", "pingora-bare", "tollgate-none", "tollgate-jwt",
                "tollgate-local",
                "tollgate-global-async", "tollgate-global-async-nolog",
                "tollgate-global-async-noheaders", "tollgate-none-preserve-case",
                "tollgate-global-async-preserve-case", "tollgate-global-atomic",
                "tollgate-config-yaml", "tollgate-refusing",
                "tollgate-cost-fixed", "tollgate-cost-json", "tollgate-cost-sse-fixed",
                "tollgate-cost-sse", "tollgate-concurrency-global"]

# Issue 22's pairs: (target, its twin, what the report calls the pair).
COST_PAIRS = [("tollgate-cost-json", "tollgate-cost-fixed", "cost from a JSON body"),
              ("tollgate-cost-sse", "tollgate-cost-sse-fixed", "cost from an SSE stream"),
              ("tollgate-concurrency-global", "tollgate-global-async",
               "fleet concurrency beside a global async window")]


def make_jwt(workdir: Path) -> tuple[Path, str]:
    """An Ed25519 key made by openssl, its JWKS file, and one token it signed (EdDSA)."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    key = workdir / "jwt-ed25519.pem"
    run_quiet(["openssl", "genpkey", "-algorithm", "ED25519", "-out", str(key)],
              "openssl genpkey (JWT key)")
    public = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
                            capture_output=True, check=True).stdout
    jwks = workdir / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "bench",
                                          "x": b64(public[-32:])}]}))
    header = b64(json.dumps({"alg": "EdDSA", "typ": "JWT", "kid": "bench"}).encode())
    claims = {"iss": "https://id.example.com/", "aud": "bench", "sub": "bench-user",
              "exp": int(time.time()) + 7 * 86400}
    signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
    message = workdir / "jwt-signing-input"
    message.write_text(signing_input)
    signature = subprocess.run(["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", str(key),
                                "-in", str(message)], capture_output=True, check=True).stdout
    return jwks, f"{signing_input}.{b64(signature)}"


def split_tuning(spec: str) -> tuple[str, dict[str, str]]:
    """A tuning spec's items for TOLLGATE_TUNING, and its upper-case items (an allocator's
    `MIMALLOC_PURGE_DELAY=0`, say) as environment variables of the process."""
    settings, variables = [], {}
    for item in (i.strip() for i in spec.split(",")):
        name, _, value = item.partition("=")
        if name.isupper():
            variables[name] = value
        elif item:
            settings.append(item)
    return ",".join(settings), variables


def shipped_config(workdir: Path, port: int, admin_port: int, stub_port: int,
                   redis: RedisClient) -> Path:
    """The repository's config.yaml, pointed at the harness's ports, with one thread."""
    text = (ROOT / "config.yaml").read_text()
    swaps = {"0.0.0.0:8000": f"127.0.0.1:{port}", "127.0.0.1:9000": f"127.0.0.1:{admin_port}",
             "127.0.0.1:8001": f"127.0.0.1:{stub_port}", "127.0.0.1:8002": f"127.0.0.1:{stub_port}",
             "redis://127.0.0.1:6379": f"redis://127.0.0.1:{redis.port}",
             "\nthreads: 2\n": "\nthreads: 1\n", "level: info": "level: warn"}
    for old, new in swaps.items():
        if old not in text:
            raise HarnessError(f"config.yaml no longer has `{old.strip()}`; update shipped_config")
        text = text.replace(old, new)
    text += (f"\nserver:\n  pid_file: {workdir}/tollgate.pid\n"
             f"  upgrade_sock: {workdir}/upgrade.sock\n")
    dest = workdir / "config.yaml"
    dest.write_text(text)
    return dest


def start_targets(lab: Lab, names: list[str], baseline_bin: Path | None = None,
                  tunings: list[tuple[str, str]] = (),
                  async_tunings: list[tuple[str, str]] = ()) -> list[Target]:
    if tunings:
        at = names.index("tollgate-none") + 1 if "tollgate-none" in names else len(names)
        names = names[:at] + [f"tuning:{label}" for label, _ in tunings] + names[at:]
    if async_tunings:
        at = (names.index("tollgate-global-async") + 1 if "tollgate-global-async" in names
              else len(names))
        names = names[:at] + [f"tuning-async:{label}" for label, _ in async_tunings] + names[at:]
    if baseline_bin is not None and "tollgate-global-async" in names:
        at = names.index("tollgate-global-async") + 1
        names = names[:at] + ["tollgate-global-async-baseline"] + names[at:]
    targets = []
    for name in names:
        if name == "nginx":
            target = lab.start_nginx()
        elif name == "haproxy":
            target = lab.start_haproxy()
        elif name == "kong-design":
            target = lab.start_kong_design(name, lab.start_redis("redis-kong-design"))
        elif name == "pingora-bare":
            target = lab.start_bare_pingora()
        elif name == "tollgate-none":
            target = lab.start_tollgate(name, "tollgate, no limits", "tollgate-none.yaml")
        elif name == "tollgate-jwt":
            jwks, token = make_jwt(lab.workdir(f"{name}-keys"))
            target = lab.start_tollgate(name, "tollgate, no limits, verified JWT (warm cache)",
                                        "tollgate-jwt.yaml", extra={"JWKS_FILE": jwks},
                                        headers=[f"Authorization: Bearer {token}"])
        elif name == "tollgate-local":
            target = lab.start_tollgate(name, "tollgate, local sliding window",
                                        "tollgate-local.yaml", TOLLGATE_HIGH_RATE)
        elif name == "tollgate-global-async":
            target = lab.start_tollgate(name, "tollgate, global async (Redis leases)",
                                        "tollgate-global-async.yaml", TOLLGATE_HIGH_RATE,
                                        lab.start_redis("redis-async"))
        elif name == "tollgate-global-async-nolog":
            target = lab.start_tollgate(name, "tollgate, global async, decision log off",
                                        "tollgate-global-async.yaml", TOLLGATE_HIGH_RATE,
                                        lab.start_redis("redis-async-nolog"),
                                        extra={"DECISION_LOG": "false"})
        elif name == "tollgate-global-async-noheaders":
            target = lab.start_tollgate(name, "tollgate, global async, rate limit headers off",
                                        "tollgate-global-async.yaml", TOLLGATE_HIGH_RATE,
                                        lab.start_redis("redis-async-noheaders"),
                                        extra={"HEADERS": "false"})
        elif name == "tollgate-none-preserve-case":
            target = lab.start_tollgate(name, "tollgate, no limits, http.preserve_header_case",
                                        "tollgate-none.yaml",
                                        preserve_header_case=True)
        elif name == "tollgate-global-async-preserve-case":
            target = lab.start_tollgate(name, "tollgate, global async, "
                                        "http.preserve_header_case",
                                        "tollgate-global-async.yaml", TOLLGATE_HIGH_RATE,
                                        lab.start_redis("redis-async-preserve-case"),
                                        preserve_header_case=True)
        elif name.startswith("tuning-async:"):
            label = name.split(":", 1)[1]
            spec = dict(async_tunings)[label]
            target = lab.start_tollgate(f"tollgate-tuning-async-{label}",
                                        f"tollgate, global async, {label} ({spec})",
                                        "tollgate-global-async.yaml", TOLLGATE_HIGH_RATE,
                                        lab.start_redis(f"redis-tuning-async-{label}"),
                                        tuning=spec)
        elif name == "tollgate-config-yaml":
            target = lab.start_tollgate(name, "tollgate, config.yaml as shipped (refusing)", None,
                                        redis=lab.start_redis("redis-config-yaml"),
                                        refusing=True)
        elif name.startswith("tuning:"):
            label = name.split(":", 1)[1]
            spec = dict(tunings)[label]
            target = lab.start_tollgate(f"tollgate-tuning-{label}",
                                        f"tollgate, no limits, {label} ({spec})",
                                        "tollgate-none.yaml", tuning=spec)
        elif name == "tollgate-global-async-baseline":
            target = lab.start_tollgate(name, f"baseline {baseline_bin.name}, global async",
                                        "tollgate-global-async.yaml", TOLLGATE_HIGH_RATE,
                                        lab.start_redis("redis-async-baseline"),
                                        binary=baseline_bin)
        elif name == "tollgate-global-atomic":
            target = lab.start_tollgate(name, "tollgate, global atomic (Redis per request)",
                                        "tollgate-global-atomic.yaml", TOLLGATE_HIGH_RATE,
                                        lab.start_redis("redis-atomic"))
        elif name.startswith("tollgate-cost-"):
            from_response = not name.endswith("-fixed")
            sse = name.startswith("tollgate-cost-sse")
            headers = [f"x-stub-usage: {USAGE_TOKENS}"]
            if sse:
                headers.append(f"x-stub-sse: {SSE_EVENTS}")
            body = f"SSE stream of {SSE_EVENTS} events" if sse else "usage JSON body"
            cost = (f"cost from the response ({COST_FROM_RESPONSE})" if from_response
                    else "fixed cost 1")
            target = lab.start_tollgate(name, f"tollgate, global async, {body}, {cost}",
                                        "tollgate-cost.yaml", COST_HIGH_RATE,
                                        lab.start_redis(f"redis-{name}"),
                                        extra={"COST": COST_FROM_RESPONSE if from_response
                                               else "1"},
                                        headers=headers)
        elif name == "tollgate-concurrency-global":
            target = lab.start_tollgate(name, "tollgate, concurrency, global async (limit "
                                        f"{CONCURRENCY_LIMIT} in flight)",
                                        "tollgate-concurrency.yaml",
                                        redis=lab.start_redis("redis-concurrency"),
                                        extra={"LIMIT": CONCURRENCY_LIMIT})
        elif name == "tollgate-refusing":
            target = lab.start_tollgate(name, f"tollgate, global async at {REFUSAL_RATE} "
                                        "(refusing)", "tollgate-global-async.yaml",
                                        REFUSAL_RATE, lab.start_redis("redis-refusing"),
                                        refusing=True)
        else:
            raise HarnessError(f"unknown target {name}")
        print(f"  started {target.label:<45} port {target.port}, pid {target.worker_pid}",
              flush=True)
        targets.append(target)
    return targets


# --------------------------------------------------------------------------- load


def run_wrk(sup: Supervisor, wrk: str, url: str, threads: int, connections: int,
            seconds: int, lua_args: tuple[str, ...] = (), script: Path = LUA_SCRIPT,
            headers: list[str] = ()) -> Proc:
    """Starts one wrk; `finish_wrk` collects it."""
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "-s", str(script)]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    if lua_args:
        argv += ["--", *lua_args]
    workdir = Path(tempfile.mkdtemp(prefix="wrk-", dir=sup.tmp))
    return sup.start("wrk", argv, workdir)


def finish_wrk(sup: Supervisor, proc: Proc, seconds: int) -> dict:
    try:
        proc.popen.wait(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"wrk did not finish: {shlex.join(proc.argv)}")
    finally:
        proc.stop()  # nothing to do unless interrupted
        sup.forget(proc)
    output = proc.stdout_path.read_text(errors="replace")
    for line in output.splitlines():
        if line.startswith("WRK_JSON "):
            result = json.loads(line[len("WRK_JSON "):])
            result["statuses"] = {int(k): v for k, v in result["statuses"].items()}
            result["ok_per_second"] = {int(k): v for k, v in result["ok_per_second"].items()}
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise HarnessError(f"wrk printed no result (exit {proc.exited()}): {shlex.join(proc.argv)}\n"
                       f"{proc.tail()}")


def cpu_ticks(pid: int | None) -> tuple[int, int] | None:
    """User and kernel clock ticks of a process, all its threads (`/proc/<pid>/stat`)."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]), int(fields[12])  # utime, stime (fields 14 and 15)


TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def measure(sup: Supervisor, wrk: str, target: Target, args, seconds: int) -> dict:
    before = target.redis.command_calls() if target.redis else None
    redis_cpu_before = cpu_ticks(target.redis.pid) if target.redis else None
    cpu_before = cpu_ticks(target.worker_pid)
    proc = run_wrk(sup, wrk, target.url, args.wrk_threads, args.connections, seconds,
                   headers=target.headers)
    result = finish_wrk(sup, proc, seconds)
    cpu_after = cpu_ticks(target.worker_pid)
    if cpu_before and cpu_after and result["requests"]:
        per_request_us = 1e6 / TICKS_PER_S / result["requests"]
        result["cpu_user_us"] = (cpu_after[0] - cpu_before[0]) * per_request_us
        result["cpu_kernel_us"] = (cpu_after[1] - cpu_before[1]) * per_request_us
    if target.redis:
        after = target.redis.command_calls()
        result["redis_calls"] = after["total"] - before["total"]
        result["redis_script_calls"] = after["scripts"] - before["scripts"]
        redis_cpu_after = cpu_ticks(target.redis.pid)
        if redis_cpu_before and redis_cpu_after:
            result["redis_cpu_us"] = (sum(redis_cpu_after) - sum(redis_cpu_before)) \
                * 1e6 / TICKS_PER_S
    return result


def check_run(target: Target, result: dict) -> list[str]:
    """What was wrong with one run: refusals, errors, a dead target."""
    problems = []
    allowed = {200, 429} if target.refusing else {200}
    bad = {code: n for code, n in result["statuses"].items() if code not in allowed}
    if bad:
        problems.append(f"{target.name}: unexpected statuses {bad}")
    if not result["statuses"].get(200):
        problems.append(f"{target.name}: no 200 answers")
    if target.proc.exited() is not None:
        problems.append(f"{target.name}: exited with status {target.proc.exited()}\n"
                        f"{target.proc.tail()}")
    return problems


def socket_errors(result: dict) -> int:
    e = result["errors"]
    return e["connect"] + e["read"] + e["write"] + e["timeout"]


def run_rounds(sup: Supervisor, wrk: str, targets: list[Target], args) -> list[str]:
    problems: list[str] = []
    if args.warmup:
        print(f"warm-up: {args.warmup} s per target", flush=True)
        for target in targets:
            finish_wrk(sup, run_wrk(sup, wrk, target.url, args.wrk_threads, args.connections,
                                    args.warmup, headers=target.headers), args.warmup)
    for number in range(1, args.rounds + 1):
        print(f"round {number}/{args.rounds}", flush=True)
        for target in targets:
            result = measure(sup, wrk, target, args, args.duration)
            target.rounds.append(result)
            problems += check_run(target, result)
            line = (f"  {target.label:<45} {result['rps']:>10,.0f} req/s  "
                    f"p50 {fmt_ms(result['latency_us']['p50'])}  "
                    f"p99 {fmt_ms(result['latency_us']['p99'])}  "
                    f"CPU {fmt_cpu(result.get('cpu_user_us'), result.get('cpu_kernel_us'))}")
            others = {c: n for c, n in result["statuses"].items() if c != 200}
            if others:
                line += f"  non-200: {others}"
            if socket_errors(result):
                line += f"  socket errors: {result['errors']}"
            print(line, flush=True)
    return problems


def collect_after(targets: list[Target]) -> None:
    """Peak memory, and tollgate's own account of failed-open decisions and Redis errors."""
    for target in targets:
        target.peak_rss_kb = proc_status_kb(target.worker_pid, "VmHWM")
        if target.admin_port is None:
            continue
        try:
            text = http_text(target.admin_port, "/metrics")
        except OSError:
            continue
        failed_open = metric_sum(text, "tollgate_ratelimit_decisions_total", result="failed_open")
        redis_errors = {op: metric_sum(text, "tollgate_redis_errors_total", op=op)
                        for op in ("connect", "heartbeat", "sync", "atomic", "decision_log",
                                   "admin")}
        redis_errors = {op: int(n) for op, n in redis_errors.items() if n}
        if failed_open:
            target.notes.append(f"{target.name}: {failed_open:.0f} decisions failed open "
                                "(Redis slower than redis.timeout or down): its Redis "
                                "figures undercount")
        if redis_errors:
            target.notes.append(f"{target.name}: Redis errors by operation {redis_errors} "
                                "(tollgate_redis_errors_total; timeouts count here)")


# --------------------------------------------------------------------------- fleet


FLEET_WINDOW_KEY = "tollgate:rl:{{per_ip|127.0.0.1}}:w1000:{window}"


def sample_windows(redis: RedisClient, seen: dict[int, int]) -> None:
    """Records the fleet's count (`u`) of the last few 1 s windows, keeping the highest."""
    now = int(time.time())
    for window in range(now - 2, now + 1):
        text = redis.command("HGET", FLEET_WINDOW_KEY.format(window=window), "u")
        if text:
            seen[window] = max(seen.get(window, 0), int(text))


def run_fleet(sup: Supervisor, lab: Lab, wrk: str) -> tuple[dict, list[str]]:
    """Three nodes, one Redis, a low limit, three concurrent wrk: admitted vs the limit."""
    rate = f"{FLEET_LIMIT_PER_S}/1s"
    print(f"fleet: {FLEET_NODES} tollgate nodes, global async {rate} per client address, "
          f"one Redis; {FLEET_NODES} concurrent wrk -t1 -c{FLEET_CONNECTIONS} "
          f"-d{FLEET_SECONDS}s", flush=True)
    redis = lab.start_redis("redis-fleet")
    nodes = [lab.start_tollgate(f"fleet-{i + 1}", f"fleet node {i + 1}",
                                "tollgate-global-async.yaml", rate, redis, refusing=True)
             for i in range(FLEET_NODES)]

    def all_see_fleet() -> bool:
        return all(metric_sum(http_text(n.admin_port, "/metrics"), "tollgate_redis_nodes")
                   == FLEET_NODES for n in nodes)

    wait_until(f"every fleet node seeing {FLEET_NODES} live nodes", all_see_fleet)
    procs = [run_wrk(sup, wrk, n.url, 1, FLEET_CONNECTIONS, FLEET_SECONDS, ("per-second",))
             for n in nodes]
    # What the fleet admitted per window, as Redis counts it (`u` of each window's hash).
    # wrk's own per-second counts go by when a response was read, which on a loaded
    # machine can lag the decision by tens of milliseconds and move admissions into the
    # next second; Redis keeps the count of the window each request was decided in.
    redis_per_window: dict[int, int] = {}
    deadline = time.monotonic() + FLEET_SECONDS + 30
    while any(p.exited() is None for p in procs) and time.monotonic() < deadline:
        sample_windows(redis, redis_per_window)
        time.sleep(0.2)
    time.sleep(0.3)  # the last reports reach Redis within a sync
    sample_windows(redis, redis_per_window)
    results = [finish_wrk(sup, p, FLEET_SECONDS) for p in procs]
    problems = []
    for node, result in zip(nodes, results):
        problems += check_run(node, result)
    statuses: dict[int, int] = {}
    per_second: dict[int, int] = {}
    for result in results:
        for code, n in result["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
        for second, n in result["ok_per_second"].items():
            per_second[second] = per_second.get(second, 0) + n
    duration_s = max(r["duration_us"] for r in results) / 1e6
    requests = sum(r["requests"] for r in results)
    admitted = statuses.get(200, 0)
    # Whole epoch seconds only: the first and last second of the run are partial.
    seconds = sorted(per_second)
    full_wrk = [per_second[s] for s in seconds[1:-1]]
    full = [redis_per_window.get(s, 0) for s in seconds[1:-1]]
    fleet = {
        "nodes": FLEET_NODES, "limit_per_s": FLEET_LIMIT_PER_S, "duration_s": duration_s,
        "requests": requests, "requests_per_s": requests / duration_s, "statuses": statuses,
        "admitted": admitted, "admitted_per_s": admitted / duration_s,
        "ratio": admitted / duration_s / FLEET_LIMIT_PER_S,
        "admitted_per_full_second": full,
        "wrk_ok_per_full_second": full_wrk,
        "ratio_full_seconds": (statistics.mean(full) / FLEET_LIMIT_PER_S) if full else None,
        "per_node": results,
    }
    for node in nodes:
        node.proc.stop()
        sup.forget(node.proc)
    return fleet, problems


# --------------------------------------------------------------------------- key spread


def run_spread(sup: Supervisor, lab: Lab, wrk: str, keys: int, seconds: int,
               warmup: int) -> tuple[list[dict], list[str]]:
    """Three nodes, `keys` client keys, on one Redis and then on a cluster: Redis commands
    per request on each server, and sync latency."""
    rows, problems = [], []
    for shape in ("one Redis", f"cluster, {CLUSTER_MASTERS} masters"):
        print(f"key spread on {shape}: {FLEET_NODES} tollgate nodes, {keys:,} client keys, "
              f"{FLEET_NODES} concurrent wrk -t1 -c{SPREAD_CONNECTIONS} -d{seconds}s", flush=True)
        tag = "cluster" if shape.startswith("cluster") else "single"
        if tag == "cluster":
            servers = lab.start_cluster("redis-spread-cluster", CLUSTER_MASTERS)
            section = "cluster: [" + ", ".join(f"127.0.0.1:{c.port}" for c in servers) + "]"
        else:
            servers = [lab.start_redis("redis-spread")]
            section = f"url: redis://127.0.0.1:{servers[0].port}"
        nodes = [lab.start_tollgate(f"spread-{tag}-{i + 1}", f"{shape}, node {i + 1}",
                                    "tollgate-spread.yaml", TOLLGATE_HIGH_RATE,
                                    extra={"REDIS": section}) for i in range(FLEET_NODES)]
        wait_until(f"every node seeing {FLEET_NODES} live nodes ({shape})",
                   lambda: all(metric_sum(http_text(n.admin_port, "/metrics"),
                                          "tollgate_redis_nodes") == FLEET_NODES
                               for n in nodes))
        if warmup:
            warm = [run_wrk(sup, wrk, n.url, 1, SPREAD_CONNECTIONS, warmup, (str(keys),),
                            script=KEYS_SCRIPT) for n in nodes]
            for proc in warm:
                finish_wrk(sup, proc, warmup)
        before = [c.command_calls() for c in servers]
        failed_before = sum(metric_sum(http_text(n.admin_port, "/metrics"),
                                       "tollgate_ratelimit_decisions_total",
                                       result="failed_open") for n in nodes)
        procs = [run_wrk(sup, wrk, n.url, 1, SPREAD_CONNECTIONS, seconds, (str(keys),),
                         script=KEYS_SCRIPT) for n in nodes]
        results = [finish_wrk(sup, p, seconds) for p in procs]
        after = [c.command_calls() for c in servers]
        for node, result in zip(nodes, results):
            problems += check_run(node, result)
        requests = sum(r["requests"] for r in results)
        stats = [json.loads(http_text(n.admin_port, "/admin/stats")) for n in nodes]
        sync_p99 = [s["redis"]["sync_ms"]["p99"] for s in stats if s["redis"].get("sync_ms")]
        active = [metric_sum(http_text(n.admin_port, "/metrics"),
                             "tollgate_ratelimit_active_keys") for n in nodes]
        failed_open = sum(metric_sum(http_text(n.admin_port, "/metrics"),
                                     "tollgate_ratelimit_decisions_total",
                                     result="failed_open") for n in nodes) - failed_before
        duration_s = max(r["duration_us"] for r in results) / 1e6
        per_server = [(a["total"] - b["total"]) / requests for a, b in zip(after, before)]
        per_second = [(a["total"] - b["total"]) / duration_s for a, b in zip(after, before)]
        scripts = [(a["scripts"] - b["scripts"]) / requests for a, b in zip(after, before)]
        row = {"shape": shape, "servers": len(servers), "keys": keys,
               "requests": requests,
               "requests_per_s": requests / duration_s,
               "cmds_per_request": per_server, "scripts_per_request": scripts,
               "cmds_per_s": per_second,
               "sync_p99_ms": max(sync_p99) if sync_p99 else None,
               "active_keys_per_node": active, "failed_open": failed_open}
        print(f"  {row['requests_per_s']:,.0f} req/s; Redis cmds/req per server "
              + ", ".join(f"{x:.4f}" for x in per_server)
              + f"; sync p99 {row['sync_p99_ms']} ms; active keys per node "
              + ", ".join(f"{a:,.0f}" for a in active) + f"; failed open {failed_open:.0f}",
              flush=True)
        if row["sync_p99_ms"] is None:
            problems.append(f"key spread on {shape}: no sync latency in /admin/stats")
        rows.append(row)
        for node in nodes:
            node.proc.stop()
            sup.forget(node.proc)
    return rows, problems


def spread_report(rows: list[dict]) -> list[str]:
    single = next((r for r in rows if r["servers"] == 1), None)
    lines = ["", f"Key spread: {FLEET_NODES} tollgate nodes (1 thread each), a global async "
             f"sliding window per client address that never refuses, {rows[0]['keys']:,} "
             f"client addresses at random, {FLEET_NODES} concurrent wrk (one per node, -t1 "
             f"-c{SPREAD_CONNECTIONS}); the cluster has {CLUSTER_MASTERS} masters and no "
             "replicas.", "",
             "| Redis | fleet req/s | active keys per node | Redis cmds/req on each server "
             "(scripts/req) | Redis cmds/s on each server | busiest server / one Redis, "
             "per request | per second | sync p99 (worst node) | failed open |",
             "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        each = ", ".join(f"{c:.4f} ({s:.4f})" for c, s in
                         zip(row["cmds_per_request"], row["scripts_per_request"]))
        share = (f"{max(row['cmds_per_request']) / single['cmds_per_request'][0]:.2f}"
                 if single and single["cmds_per_request"][0] else "n/a")
        share_s = (f"{max(row['cmds_per_s']) / single['cmds_per_s'][0]:.2f}"
                   if single and single["cmds_per_s"][0] else "n/a")
        per_s = ", ".join(f"{c:,.0f}" for c in row["cmds_per_s"])
        sync = "n/a" if row["sync_p99_ms"] is None else f"{row['sync_p99_ms']:.2f} ms"
        active = ", ".join(f"{a:,.0f}" for a in row["active_keys_per_node"])
        lines.append(f"| {row['shape']} | {row['requests_per_s']:,.0f} | {active} | {each} | "
                     f"{per_s} | {share} | {share_s} | {sync} | {row['failed_open']:.0f} |")
    lines += ["", "Per request, a Redis that answers slowly looks cheaper: its sync rounds take "
              "longer, so each reports more admissions. Per second is the load each server "
              "carries. Each node tracks at most a policy's `max_keys` (50,000 by default) keys."]
    return lines


# --------------------------------------------------------------------------- new keys


NEW_KEY_RATE = "99/1m"  # below 100 per node: nothing is admitted before Redis grants it


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * q))]


def run_new_keys(sup: Supervisor, lab: Lab, count: int) -> dict:
    """What the first request of a key costs: it waits for the key's first grant, one round
    trip of the sync task. Each of `count` new clients (a new X-Forwarded-For address)
    sends two requests in a row on one keep-alive connection; the second is decided from
    the lease the first brought."""
    print(f"new keys: {count} new clients at {NEW_KEY_RATE}, two requests each", flush=True)
    redis = lab.start_redis("redis-new-keys")
    target = lab.start_tollgate("tollgate-new-keys", "new keys", "tollgate-new-keys.yaml",
                                NEW_KEY_RATE, redis)
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
    first: list[float] = []
    second: list[float] = []
    try:
        for i in range(count):
            client = f"10.{100 + (i >> 16) % 100}.{(i >> 8) & 255}.{i & 255}"
            for latencies in (first, second):
                started = time.perf_counter()
                conn.request("GET", "/a/x", headers={"X-Forwarded-For": client})
                response = conn.getresponse()
                response.read()
                latencies.append((time.perf_counter() - started) * 1e6)
                if response.status != 200:
                    raise HarnessError(f"new-key probe: client {client} got {response.status}")
    finally:
        conn.close()
        target.proc.stop()
        sup.forget(target.proc)
    result = {"count": count, "rate": NEW_KEY_RATE}
    for name, latencies in (("first", first), ("second", second)):
        result[f"{name}_p50_us"] = percentile(latencies, 0.5)
        result[f"{name}_p99_us"] = percentile(latencies, 0.99)
    print(f"  first request p50 {fmt_ms(result['first_p50_us'])} p99 "
          f"{fmt_ms(result['first_p99_us'])}; second p50 {fmt_ms(result['second_p50_us'])} "
          f"p99 {fmt_ms(result['second_p99_us'])}", flush=True)
    return result


# --------------------------------------------------------------------------- TLS


TLS_MODES = ["https", "h2", "handshakes"]
TLS_MODE_LABELS = {"https": "HTTPS keep-alive req/s (wrk)",
                   "h2": "HTTP/2 req/s (h2load -c10 -m10)",
                   "handshakes": "new TLS connections/s (wrk, Connection: close)"}
H2LOAD_CLIENTS = 10
H2LOAD_STREAMS = 10


def make_certificate(workdir: Path, openssl: str) -> tuple[Path, Path]:
    """One ECDSA P-256 certificate for 127.0.0.1, shared by every TLS target."""
    cert, key = workdir / "bench.crt", workdir / "bench.key"
    run_quiet([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
               "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=bench",
               "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
               "-keyout", str(key), "-out", str(cert)], "openssl req")
    key.chmod(0o644)  # nginx's worker may run as an unprivileged user
    return cert, key


def https_ready(port: int) -> bool:
    import ssl
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=1.0, context=context)
    try:
        conn.request("GET", "/a/x")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@dataclass
class TlsTarget:
    name: str
    label: str
    proc: Proc
    port: int  # the TLS port
    worker_pid: int
    runs: dict = field(default_factory=lambda: {mode: [] for mode in TLS_MODES})
    peak_rss_kb: int | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/a/x"


def start_tls_targets(lab: Lab, cert: Path, key: Path) -> list[TlsTarget]:
    # nginx
    port, workdir = free_port(), lab.workdir("nginx-tls")
    workdir.chmod(0o755)
    conf = render(HERE / "nginx-tls.conf", workdir / "nginx.conf",
                  {"DIR": workdir, "PORT": port, "STUB_PORT": lab.stub_port,
                   "CERT": cert, "KEY": key})
    base = [lab.tools["nginx"], "-p", str(workdir), "-e", str(workdir / "error.log"),
            "-c", str(conf)]
    run_quiet(base + ["-t", "-q"], "nginx -t (TLS)")
    proc = lab.sup.start("nginx-tls", base, workdir, extra_logs=(workdir / "error.log",))
    wait_until(f"nginx (TLS) on port {port}", lambda: https_ready(port), proc)
    workers = children_of(proc.pid)
    if len(workers) != 1:
        raise HarnessError(f"nginx (TLS): expected one worker process, found {workers}")
    nginx = TlsTarget("nginx-tls", "nginx", proc, port, workers[0])
    # tollgate
    tls_port = free_port()
    target = lab.start_tollgate("tollgate-tls", "tollgate", "tollgate-tls.yaml",
                                extra={"TLS_PORT": tls_port, "CERT": cert, "KEY": key})
    wait_until(f"tollgate (TLS) on port {tls_port}", lambda: https_ready(tls_port), target.proc)
    tollgate = TlsTarget("tollgate-tls", "tollgate", target.proc, tls_port, target.worker_pid)
    for t in (nginx, tollgate):
        print(f"  started {t.label + ' (TLS)':<45} port {t.port}, pid {t.worker_pid}", flush=True)
    return [nginx, tollgate]


def run_h2load(sup: Supervisor, h2load: str, url: str, seconds: int) -> dict:
    argv = [h2load, "-t1", f"-c{H2LOAD_CLIENTS}", f"-m{H2LOAD_STREAMS}", "-D", str(seconds),
            url]
    workdir = Path(tempfile.mkdtemp(prefix="h2load-", dir=sup.tmp))
    proc = sup.start("h2load", argv, workdir)
    try:
        proc.popen.wait(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"h2load did not finish: {shlex.join(argv)}")
    finally:
        proc.stop()
        sup.forget(proc)
    text = proc.stdout_path.read_text(errors="replace")
    result = {"rps": None, "statuses": {}, "protocol": None}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("finished in"):
            # finished in 10.00s, 12345.67 req/s, 1.23MB/s
            result["rps"] = float(line.split(",")[1].split()[0])
        elif line.startswith("status codes:"):
            for part in line[len("status codes:"):].split(","):
                count, cls = part.split()
                result["statuses"][cls] = int(count)
        elif line.startswith("Application protocol:"):
            result["protocol"] = line.split(":", 1)[1].strip()
    if result["rps"] is None:
        raise HarnessError(f"h2load printed no result: {shlex.join(argv)}\n{proc.tail()}")
    return result


def measure_tls(sup: Supervisor, tools: dict, target: TlsTarget, mode: str, args,
                seconds: int) -> tuple[dict, list[str]]:
    problems = []
    if mode == "h2":
        result = run_h2load(sup, tools["h2load"], target.url, seconds)
        if result["protocol"] != "h2":
            problems.append(f"{target.name}: h2load negotiated {result['protocol']}, not h2")
        bad = {cls: n for cls, n in result["statuses"].items() if cls != "2xx" and n}
        if bad or not result["statuses"].get("2xx"):
            problems.append(f"{target.name} (h2): statuses {result['statuses']}")
        return result, problems
    argv = [tools["wrk"], f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{seconds}s",
            "--latency", "-s", str(LUA_SCRIPT)]
    if mode == "handshakes":
        argv += ["-H", "Connection: close"]
    workdir = Path(tempfile.mkdtemp(prefix="wrk-", dir=sup.tmp))
    result = finish_wrk(sup, sup.start("wrk", argv + [target.url], workdir), seconds)
    bad = {code: n for code, n in result["statuses"].items() if code != 200}
    if bad or not result["statuses"].get(200):
        problems.append(f"{target.name} ({mode}): statuses {result['statuses']}")
    if mode == "https" and socket_errors(result):
        problems.append(f"{target.name} ({mode}): socket errors {result['errors']}")
    return result, problems


def run_tls(sup: Supervisor, lab: Lab, tools: dict, args) -> tuple[list[TlsTarget], list[str]]:
    print("TLS: nginx and tollgate with the same certificate (ECDSA P-256), one worker each",
          flush=True)
    cert, key = make_certificate(lab.workdir("tls-cert"), tools["openssl"])
    targets = start_tls_targets(lab, cert, key)
    problems: list[str] = []
    if args.warmup:
        for target in targets:
            measure_tls(sup, tools, target, "https", args, args.warmup)
    for number in range(1, args.rounds + 1):
        print(f"TLS round {number}/{args.rounds}", flush=True)
        for mode in TLS_MODES:
            for target in targets:
                result, found = measure_tls(sup, tools, target, mode, args, args.duration)
                problems += found
                target.runs[mode].append(result)
                print(f"  {TLS_MODE_LABELS[mode]:<48} {target.label:<9} "
                      f"{result['rps']:>10,.0f}", flush=True)
    for target in targets:
        target.peak_rss_kb = proc_status_kb(target.worker_pid, "VmHWM")
        if target.proc.exited() is not None:
            problems.append(f"{target.name}: exited with status {target.proc.exited()}")
    return targets, problems


def tls_report(targets: list[TlsTarget], args) -> list[str]:
    by_name = {t.name: t for t in targets}
    nginx, tollgate = by_name["nginx-tls"], by_name["tollgate-tls"]
    lines = ["", f"TLS: nginx and tollgate, one worker each, the same ECDSA P-256 certificate, "
             f"TLS 1.2/1.3 with HTTP/2 by ALPN, proxying `/a/x` to the stub; medians of "
             f"{args.rounds} interleaved round(s) of {args.duration} s. HTTPS and new "
             f"connections: `wrk -t{args.wrk_threads} -c{args.connections}` (new connections "
             f"with `Connection: close`: one full handshake per request); HTTP/2: `h2load -t1 "
             f"-c{H2LOAD_CLIENTS} -m{H2LOAD_STREAMS}`.", "",
             "| measurement | nginx | tollgate | tollgate / nginx |",
             "| --- | ---: | ---: | ---: |"]
    for mode in TLS_MODES:
        a = statistics.median(r["rps"] for r in nginx.runs[mode])
        b = statistics.median(r["rps"] for r in tollgate.runs[mode])
        lines.append(f"| {TLS_MODE_LABELS[mode]} | {a:,.0f} | {b:,.0f} | "
                     f"{b / a:.2f} |" if a else f"| {TLS_MODE_LABELS[mode]} | 0 | {b:,.0f} | n/a |")
    lines.append(f"| peak RSS | {fmt_mib(nginx.peak_rss_kb)} | {fmt_mib(tollgate.peak_rss_kb)} "
                 "| |")
    return lines


# --------------------------------------------------------------------------- report


def fmt_ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def fmt_cmds(summary: dict) -> str:
    if summary["redis_cmds_per_request"] is None:
        return "—"
    return (f"{summary['redis_cmds_per_request']:.4f} "
            f"({summary['redis_scripts_per_request']:.4f})")


def fmt_redis_cpu(summary: dict) -> str:
    """Redis's CPU time (user + kernel, `/proc`) per 1,000 requests answered."""
    us = summary.get("redis_cpu_us_per_1k")
    return "—" if us is None else f"{us / 1000:.2f} ms"


def fmt_cpu(user: float | None, kernel: float | None) -> str:
    if user is None or kernel is None:
        return "n/a"
    return f"{user + kernel:.1f} µs ({user:.1f} + {kernel:.1f})"


def fmt_mib(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f} MiB"


def summarize(target: Target) -> dict:
    rounds = target.rounds
    requests = sum(r["requests"] for r in rounds)
    summary = {
        "rps_median": statistics.median(r["rps"] for r in rounds),
        "p50_us_median": statistics.median(r["latency_us"]["p50"] for r in rounds),
        "p99_us_median": statistics.median(r["latency_us"]["p99"] for r in rounds),
        "peak_rss_kb": target.peak_rss_kb,
        "requests": requests,
        "share_429": sum(r["statuses"].get(429, 0) for r in rounds) / requests if requests else 0,
        "redis_cmds_per_request": None,
        "redis_scripts_per_request": None,
        "cpu_user_us": None,
        "cpu_kernel_us": None,
        "redis_cpu_us_per_1k": None,
    }
    cpu = [r for r in rounds if "cpu_user_us" in r]
    if cpu:
        summary["cpu_user_us"] = statistics.median(r["cpu_user_us"] for r in cpu)
        summary["cpu_kernel_us"] = statistics.median(r["cpu_kernel_us"] for r in cpu)
    if target.redis and requests:
        summary["redis_cmds_per_request"] = sum(r["redis_calls"] for r in rounds) / requests
        summary["redis_scripts_per_request"] = (sum(r["redis_script_calls"] for r in rounds)
                                                / requests)
        if all("redis_cpu_us" in r for r in rounds):
            summary["redis_cpu_us_per_1k"] = (sum(r["redis_cpu_us"] for r in rounds)
                                              / requests * 1000)
    return summary


def machine_info() -> dict:
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = int(next(l for l in meminfo.splitlines() if l.startswith("MemTotal:")).split()[1])
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cores": int(subprocess.run(["nproc"], capture_output=True, text=True).stdout),
            "memory_gib": round(mem_kb / 1024 / 1024, 1), "cpu": cpu,
            "kernel": os.uname().release}


def versions(tools: dict[str, str], tollgate_bin: Path) -> dict:
    def first_line(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True)
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0] if lines else "?"
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip() or "?"
    return {"tollgate": f"{first_line([str(tollgate_bin), '--version'])} ({commit})",
            "nginx": first_line([tools["nginx"], "-v"]),
            "haproxy": first_line([tools["haproxy"], "-v"]),
            "wrk": first_line([tools["wrk"], "-v"]),
            "redis": first_line([tools["redis-server"], "--version"])}


def report(targets: list[Target], fleet: dict | None, context: dict, problems: list[str],
           notes: list[str], new_keys: dict | None = None,
           tls: list[TlsTarget] | None = None, args=None,
           spread: list[dict] | None = None) -> str:
    s = context["settings"]
    m = context["machine"]
    lines = [
        "## tollgate load comparison",
        "",
        f"- date: {context['date']}",
        f"- machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB memory, "
        f"Linux {m['kernel']}",
        f"- command: `{context['command']}`",
        f"- load: `wrk -t{s['wrk_threads']} -c{s['connections']} -d{s['duration_s']}s --latency` "
        f"on `/a/x` over keep-alive connections, {s['rounds']} interleaved round(s), "
        f"one wrk at a time, warm-up {s['warmup_s']} s per target",
        f"- every target runs one worker (nginx `worker_processes 1`, HAProxy `nbthread 1`, "
        f"tollgate `threads: 1`) and proxies to one `stub-service --threads {STUB_THREADS}` "
        "(two threads, so the backend is never the bottleneck)",
        "- versions: " + "; ".join(f"{v}" for v in context["versions"].values()),
        "",
    ]
    summaries = {t.name: summarize(t) for t in targets}
    baselines = [summaries[n]["rps_median"] for n in ("nginx", "haproxy") if n in summaries]
    baseline = max(baselines) if baselines else None
    none = summaries.get("tollgate-none", {}).get("rps_median")
    lines += ["| target | req/s (median) | p50 | p99 | CPU/request (user + kernel) | "
              "peak RSS | Redis cmds/req | Redis CPU per 1,000 requests | "
              "ratio to faster of nginx/HAProxy | ratio to tollgate, no limits |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for target in targets:
        if target.refusing:
            continue
        sm = summaries[target.name]
        cmds = fmt_cmds(sm)
        ratio = f"{sm['rps_median'] / baseline:.2f}" if baseline else "n/a"
        to_none = f"{sm['rps_median'] / none:.2f}" if none else "n/a"
        lines.append(f"| {target.label} | {sm['rps_median']:,.0f} | {fmt_ms(sm['p50_us_median'])} "
                     f"| {fmt_ms(sm['p99_us_median'])} "
                     f"| {fmt_cpu(sm['cpu_user_us'], sm['cpu_kernel_us'])} "
                     f"| {fmt_mib(sm['peak_rss_kb'])} | {cmds} | {fmt_redis_cpu(sm)} "
                     f"| {ratio} | {to_none} |")
    if any(t.redis for t in targets):
        lines += ["", "Redis cmds/req: every command the target's own Redis executed during "
                  "its runs, divided by the requests answered; `INFO commandstats` counts the "
                  "commands a Lua script runs too. In parentheses: scripts run (EVALSHA) per "
                  "request, each one command sent by tollgate (atomic mode: one per request)."]
    refusing = [t for t in targets if t.refusing]
    if refusing:
        proxying = summaries.get("tollgate-global-async", {}).get("rps_median")
        lines += ["", "Refusal run: the same global async policy at a low limit, so nearly "
                  "every request is answered 429 by tollgate without reaching the backend.", "",
                  "| target | req/s (median) | p50 | p99 | CPU/request (user + kernel) | "
                  "429 share | Redis cmds/req | ratio to global async proxying |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for target in refusing:
            sm = summaries[target.name]
            cmds = fmt_cmds(sm)
            ratio = f"{sm['rps_median'] / proxying:.2f}" if proxying else "n/a"
            lines.append(f"| {target.label} | {sm['rps_median']:,.0f} | "
                         f"{fmt_ms(sm['p50_us_median'])} | {fmt_ms(sm['p99_us_median'])} | "
                         f"{fmt_cpu(sm['cpu_user_us'], sm['cpu_kernel_us'])} | "
                         f"{sm['share_429'] * 100:.2f}% | {cmds} | {ratio} |")
    lines += cost_pairs_report(targets, summaries)
    if fleet:
        full = fleet["admitted_per_full_second"]
        full_text = ", ".join(str(n) for n in full) or "none"
        wrk_text = ", ".join(str(n) for n in fleet["wrk_ok_per_full_second"]) or "none"
        ratio_full = ("n/a" if fleet["ratio_full_seconds"] is None
                      else f"{fleet['ratio_full_seconds']:.3f}")
        worst = (f"{max(full) / fleet['limit_per_s']:.3f}" if full else "n/a")
        lines += ["", f"Fleet: {fleet['nodes']} tollgate nodes (1 thread each), global async "
                  f"{fleet['limit_per_s']}/1s per client address on one Redis, "
                  f"{fleet['nodes']} concurrent wrk (one per node, -t1 -c{FLEET_CONNECTIONS}, "
                  f"{fleet['duration_s']:.2f} s).", "",
                  "| requests/s (fleet) | admitted/s | limit/s | admitted/limit ratio | "
                  "admitted per whole window (Redis) | mean ratio | worst window ratio | "
                  "200s per second as wrk read them |",
                  "| ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
                  f"| {fleet['requests_per_s']:,.0f} | {fleet['admitted_per_s']:.1f} | "
                  f"{fleet['limit_per_s']} | {fleet['ratio']:.3f} | {full_text} | {ratio_full} | "
                  f"{worst} | {wrk_text} |",
                  "", "The whole-run ratio counts the first and last partial seconds: a fresh "
                  "window admits its quota at once, so a run that starts or ends just inside "
                  "a window reads high. The per-window counts are the fleet's own (`u` of each "
                  "window in Redis): the accuracy. wrk files a response under the second it "
                  "read it in, which on a loaded machine can be tens of milliseconds after "
                  "the decision, so its per-second figures blur across window boundaries."]
    if new_keys:
        lines += ["", f"New keys: {new_keys['count']} new client addresses, global async "
                  f"{new_keys['rate']} (below 100 per node, so every key's first request "
                  "waits for its grant), two requests each in a row on one keep-alive "
                  "connection, timed by the harness (Python's own overhead included).", "",
                  "| request | p50 | p99 |", "| --- | ---: | ---: |",
                  f"| first of a new key (waits for its grant) | "
                  f"{fmt_ms(new_keys['first_p50_us'])} | {fmt_ms(new_keys['first_p99_us'])} |",
                  f"| second (decided from the lease) | {fmt_ms(new_keys['second_p50_us'])} | "
                  f"{fmt_ms(new_keys['second_p99_us'])} |"]
    if spread:
        lines += spread_report(spread)
    if tls:
        lines += tls_report(tls, args)
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    if problems:
        lines += ["", "**Problems (the figures above are not valid):**",
                  *[f"- {p.splitlines()[0]}" for p in problems]]
    return "\n".join(lines) + "\n"


def cost_pairs_report(targets: list[Target], summaries: dict[str, dict]) -> list[str]:
    """Issue 22's pairs run in this report: each target's req/s as a share of its twin's,
    and the p99 it adds: from the medians of the rounds, and round by round (a pair's two
    runs follow each other in a round, so a busy minute of the machine weighs on both)."""
    by_name = {t.name: t for t in targets}
    pairs = [(a, b, what) for a, b, what in COST_PAIRS if a in summaries and b in summaries]
    if not pairs:
        return []
    lines = ["", "Response costs and fleet concurrency: each target beside its twin, the same "
             "backend and body, in the same interleaved rounds.", "",
             "| pair | req/s | twin's req/s | req/s ratio | per round | p99 | twin's p99 "
             "| p99 added | per round |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]

    def signed(us: float) -> str:
        return f"{'+' if us >= 0 else '−'}{abs(us) / 1000:.2f}"

    for a, b, what in pairs:
        sa, sb = summaries[a], summaries[b]
        rounds = list(zip(by_name[a].rounds, by_name[b].rounds))
        ratios = ", ".join(f"{ra['rps'] / rb['rps']:.3f}" for ra, rb in rounds)
        added = ", ".join(signed(ra["latency_us"]["p99"] - rb["latency_us"]["p99"])
                          for ra, rb in rounds)
        lines.append(f"| {what} ({a} / {b}) | {sa['rps_median']:,.0f} | "
                     f"{sb['rps_median']:,.0f} | {sa['rps_median'] / sb['rps_median']:.3f} | "
                     f"{ratios} | {fmt_ms(sa['p99_us_median'])} | "
                     f"{fmt_ms(sb['p99_us_median'])} | "
                     f"{signed(sa['p99_us_median'] - sb['p99_us_median'])} ms | {added} ms |")
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Side-by-side load comparison of tollgate, nginx and HAProxy "
                    "(see the docstring of this file for what is measured and why).")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds of each wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=50,
                        help="wrk keep-alive connections (default 50)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of unmeasured load per target before the rounds "
                             "(default 2; 0 for none)")
    parser.add_argument("--targets", default=",".join(TARGET_NAMES),
                        help="comma-separated subset of: " + ", ".join(TARGET_NAMES))
    parser.add_argument("--quick", action="store_true",
                        help="smoke test of the harness (~30 s): 1 round of 2 s, 10 "
                             "connections, no warm-up; fails unless every target answers 200")
    parser.add_argument("--fleet", action="store_true",
                        help=f"also run {FLEET_NODES} tollgate nodes on one Redis at "
                             f"{FLEET_LIMIT_PER_S}/1s and report admitted/limit")
    parser.add_argument("--cluster", action="store_true",
                        help=f"also run {FLEET_NODES} nodes with {SPREAD_KEYS:,} client keys on "
                             f"one Redis and on a {CLUSTER_MASTERS}-master Redis Cluster, and "
                             "report Redis commands per request on each server")
    parser.add_argument("--spread-keys", type=int, default=SPREAD_KEYS,
                        help=f"client keys of the --cluster run (default {SPREAD_KEYS:,})")
    parser.add_argument("--new-keys", type=int, default=300,
                        help="new clients for the probe of what a key's first request costs "
                             "(default 300; 0 for none)")
    parser.add_argument("--baseline-bin", type=Path,
                        help="another tollgate binary (an earlier build) to run as a global "
                             "async target beside this one, interleaved, for a before/after "
                             "ratio within one run")
    parser.add_argument("--tuning", action="append", default=[], metavar="NAME=SPEC",
                        help="add a tollgate target (no limits) run with TOLLGATE_TUNING=SPEC "
                             "(src/tuning.rs), e.g. 'stock=work_stealing=1,downstream_modules=1'; "
                             "upper-case items are set in its environment instead "
                             "('purge=MIMALLOC_PURGE_DELAY=0'); repeatable")
    parser.add_argument("--tuning-async", action="append", default=[], metavar="NAME=SPEC",
                        help="the same for a global async target with every default, the "
                             "decision log included; repeatable")
    parser.add_argument("--tls", action="store_true",
                        help="also compare TLS termination with nginx: HTTPS keep-alive, "
                             "HTTP/2 (h2load) and new TLS connections per second")
    parser.add_argument("--rls", action="store_true",
                        help="also Envoy's rate limit service: ShouldRateLimit calls/s "
                             "(hot and 100,000 descriptors) next to POST /admin/check")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--json", type=Path, help="write every raw per-round figure here")
    parser.add_argument("--no-install", action="store_true",
                        help="fail instead of installing missing tools with apt-get")
    parser.add_argument("--keep-tmp", action="store_true",
                        help="keep the temporary directory (configs and logs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.connections, args.warmup = 1, 2, 10, 0
        args.new_keys = min(args.new_keys, 20)
        args.spread_keys = min(args.spread_keys, 2_000)
    args.spread_seconds = args.duration if args.quick else SPREAD_SECONDS
    args.spread_warmup = args.warmup if args.quick else SPREAD_WARMUP_S
    if args.baseline_bin is not None and not args.baseline_bin.is_file():
        parser.error(f"--baseline-bin {args.baseline_bin}: no such file")
    args.target_names = [n.strip() for n in args.targets.split(",") if n.strip()]
    args.tunings, args.async_tunings = [], []
    for option, items, into in (("--tuning", args.tuning, args.tunings),
                                ("--tuning-async", args.tuning_async, args.async_tunings)):
        for item in items:
            label, sep, spec = item.partition("=")
            if not sep or not label or not spec:
                parser.error(f"{option} {item}: expected NAME=SPEC")
            into.append((label, spec))
    unknown = [n for n in args.target_names if n not in TARGET_NAMES]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; "
                     f"choose from {', '.join(TARGET_NAMES)}")
    if args.rounds < 1 or args.duration < 1 or args.connections < 1:
        parser.error("--rounds, --duration and --connections must be at least 1")
    return args


RLS_DOMAIN = """domain: bench
descriptors:
  - key: user
    rate_limit:
      unit: second
      requests_per_unit: 1000000000
"""

ADMIN_CHECK_LUA = """
local keys = @@KEYS@@
local counter = 0
function request()
  counter = counter + 1
  local user = "hot"
  if keys > 1 then user = tostring(counter % keys) end
  local body = '{"path":"/a/x","headers":{"x-user":"' .. user .. '"}}'
  return wrk.format("POST", "/admin/check", {["Content-Type"] = "application/json"}, body)
end
"""


def run_rls(sup: Supervisor, lab: "Lab", wrk: str, args) -> tuple[list[dict], list[str]]:
    """Envoy's rate limit service: ShouldRateLimit calls per second on one worker with a
    hot descriptor and with 100,000 descriptors (examples/rls_bench keeps many calls in
    flight over HTTP/2), next to POST /admin/check on the same kind of limit (wrk)."""
    bench = release_dir() / "examples" / "rls_bench"
    if not bench.is_file():
        return [], [f"{bench} is missing (cargo build --workspace --examples)"]
    redis = lab.start_redis("rls-redis")
    port, admin_port, rls_port = free_port(), free_port(), free_port()
    workdir = lab.workdir("tollgate-rls")
    (workdir / "ratelimit").mkdir()
    (workdir / "ratelimit" / "bench.yaml").write_text(RLS_DOMAIN)
    config = render(HERE / "tollgate-rls.yaml", workdir / "config.yaml",
                    {"DIR": workdir, "PORT": port, "ADMIN_PORT": admin_port,
                     "RLS_PORT": rls_port, "STUB_PORT": lab.stub_port,
                     "REDIS_URL": f"redis://127.0.0.1:{redis.port}"})
    run_quiet([str(lab.tollgate_bin), "check", "-c", str(config)], "tollgate check (rls)")
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "TOLLGATE_TUNING")}
    proc = sup.start("tollgate-rls", [str(lab.tollgate_bin), "run", "-c", str(config)],
                     workdir, stop_signal=signal.SIGINT, env=env)
    wait_until("tollgate-rls", lambda: http_status(admin_port, "/health") == 200, proc)
    # The gRPC listener is a service of its own: ready when it accepts, not with the admin.
    wait_until("tollgate-rls (gRPC)", lambda: accepts(rls_port), proc)
    rows, problems = [], []
    seconds = args.duration
    for keys in (1, 100_000):
        label = "hot descriptor" if keys == 1 else f"{keys:,} descriptors"
        cpu_before = cpu_ticks(proc.pid)
        out = subprocess.run([str(bench), "--addr", f"127.0.0.1:{rls_port}", "--domain", "bench",
                              "--key", "user", "--keys", str(keys), "--seconds", str(seconds),
                              "--concurrency", str(args.connections), "--connections", "4"],
                             capture_output=True, text=True, timeout=seconds + 60)
        cpu_after = cpu_ticks(proc.pid)
        try:
            result = json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            problems.append(f"rls_bench printed no result: {out.stderr.strip()[-300:]}")
            continue
        if result["errors"] or result["over_limit"] or not result["ok"]:
            problems.append(f"ShouldRateLimit, {label}: {result}")
        cpu = None
        if cpu_before and cpu_after and result["calls"]:
            cpu = sum(cpu_after) - sum(cpu_before)
            cpu = cpu * 1e6 / TICKS_PER_S / result["calls"]
        rows.append({"what": f"ShouldRateLimit (gRPC), {label}",
                     "rate": result["calls_per_second"], "cpu_us": cpu})
        script = workdir / f"admin-check-{keys}.lua"
        script.write_text(LUA_SCRIPT.read_text() + ADMIN_CHECK_LUA.replace("@@KEYS@@", str(keys)))
        cpu_before = cpu_ticks(proc.pid)
        wrk_proc = run_wrk(sup, wrk, f"http://127.0.0.1:{admin_port}/admin/check",
                           args.wrk_threads, args.connections, seconds, script=script)
        result = finish_wrk(sup, wrk_proc, seconds)
        cpu_after = cpu_ticks(proc.pid)
        if set(result["statuses"]) != {200}:
            problems.append(f"POST /admin/check, {label}: statuses {result['statuses']}")
        cpu = None
        if cpu_before and cpu_after and result["requests"]:
            cpu = (sum(cpu_after) - sum(cpu_before)) * 1e6 / TICKS_PER_S / result["requests"]
        rows.append({"what": f"POST /admin/check (HTTP/1.1, wrk), {label}",
                     "rate": result["rps"], "cpu_us": cpu})
    proc.stop()
    sup.forget(proc)
    return rows, problems


def rls_report(rows: list[dict]) -> list[str]:
    lines = ["", "## Envoy's rate limit service", "",
             "One tollgate worker answering `ShouldRateLimit` (examples/rls_bench, "
             "many calls in flight on 4 HTTP/2 connections) and `POST /admin/check` "
             "(wrk) on the same kind of limit: a global async fixed window in Redis that "
             "never refuses.", "",
             "| Calls | calls/s | CPU/call (user + kernel) |", "| --- | ---: | ---: |"]
    for r in rows:
        cpu = f"{r['cpu_us']:.1f} µs" if r["cpu_us"] is not None else "n/a"
        lines.append(f"| {r['what']} | {r['rate']:,.0f} | {cpu} |")
    return lines


def raise_on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_on_signal)
    command = shlex.join(["python3", *sys.argv]) if argv is None else shlex.join(argv)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-load-"))
    sup = Supervisor(tmp)
    try:
        tools = ensure_tools(allow_install=not args.no_install, tls=args.tls,
                             cluster=args.cluster)
        tollgate_bin, stub_bin = ensure_binaries()
        context = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": command,
            "machine": machine_info(),
            "versions": versions(tools, tollgate_bin),
            "settings": {"rounds": args.rounds, "duration_s": args.duration,
                         "connections": args.connections, "wrk_threads": args.wrk_threads,
                         "warmup_s": args.warmup, "quick": args.quick,
                         "stub_threads": STUB_THREADS},
        }
        lab = Lab(sup, tmp, tools, tollgate_bin, stub_bin)
        print(f"starting targets under {tmp} (stub-service with --threads {STUB_THREADS}, so "
              "the backend is never the bottleneck)", flush=True)
        lab.start_stub()
        targets = start_targets(lab, args.target_names, args.baseline_bin, args.tunings,
                                args.async_tunings)
        problems = run_rounds(sup, tools["wrk"], targets, args)
        collect_after(targets)
        fleet = None
        if args.fleet:
            fleet, fleet_problems = run_fleet(sup, lab, tools["wrk"])
            problems += fleet_problems
        spread = None
        if args.cluster:
            spread, spread_problems = run_spread(sup, lab, tools["wrk"], args.spread_keys,
                                                 args.spread_seconds, args.spread_warmup)
            problems += spread_problems
        new_keys = run_new_keys(sup, lab, args.new_keys) if args.new_keys > 0 else None
        tls_targets = None
        if args.tls:
            tls_targets, tls_problems = run_tls(sup, lab, tools, args)
            problems += tls_problems
        rls_rows = None
        if args.rls:
            rls_rows, rls_problems = run_rls(sup, lab, tools["wrk"], args)
            problems += rls_problems
        notes = [n for t in targets for n in t.notes]
        for target in targets:
            if any(socket_errors(r) for r in target.rounds):
                notes.append(f"{target.name}: wrk saw socket errors "
                             f"{[r['errors'] for r in target.rounds]}")
        text = report(targets, fleet, context, problems, notes, new_keys, tls_targets,
                      args, spread)
        if rls_rows is not None:
            text = text.rstrip("\n") + "\n" + "\n".join(rls_report(rls_rows)) + "\n"
        print()
        print(text, end="")
        if args.out:
            args.out.write_text(text)
            print(f"\nwrote {args.out}")
        if args.json:
            dump = dict(context, targets={
                t.name: {"label": t.label, "pid": t.worker_pid, "rounds": t.rounds,
                         "summary": summarize(t), "notes": t.notes} for t in targets},
                fleet=fleet, new_keys=new_keys, spread=spread, problems=problems,
                tls={t.name: t.runs for t in tls_targets} if tls_targets else None)
            args.json.write_text(json.dumps(dump, indent=2, default=str) + "\n")
            print(f"wrote {args.json}")
        print(f"\n(harness ran {time.monotonic() - started:.0f} s)")
        if problems:
            print("\nFAILED:", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
            return 1
        return 0
    except HarnessError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        if not args.keep_tmp:
            print("(run with --keep-tmp to keep every config and log)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything the harness started", file=sys.stderr)
        return 130
    finally:
        sup.stop_all()
        if args.keep_tmp:
            print(f"kept {tmp} (configs and logs)", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
