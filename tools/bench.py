#!/usr/bin/env python3
"""gchat's load benchmark: gchat against a bare Tornado relay and a python-socketio relay,
on one machine, in one run, with the server and the load generator on separate cores.

    python tools/bench.py --quick            # small numbers, ≈30 s per target: a smoke run
    python tools/bench.py                    # the full run, ≈11-13 minutes (three targets)
    python tools/bench.py --target gchat     # or tornado, socketio, all (default), or a list: gchat,tornado

What it does, for each target (see docs/performance.md for the method):

1. Starts the server itself (a subprocess pinned with ``taskset`` to ``--server-cpu``, default
   CPU 0). gchat gets a fresh MariaDB database with the Moodle 2.2 tables, gchat's tables
   (``gchat initdb``), users, courses and sessions; the relays need none.
2. Throughput: pairs of users exchange 100-character messages at an open-loop target rate
   (sends are scheduled by the clock, never paced by replies; the intended send time travels
   in the text). The rate steps up until p99 passes 250 ms, a message is lost or a send fails:
   the last rate that passed is the *knee*. Separately for WebSocket pairs and long-poll pairs,
   then each again at half its knee, then a mixed run (WS↔WS, WS↔poll, poll↔poll at once).
3. Idle: 1,000 / 5,000 / 10,000 idle WebSockets, then (on a fresh server) as many idle
   long-poll tabs: RSS delta per connection after ``gc.collect()`` in the server, and the CPU
   their heartbeats cost, measured with heartbeats every 10 s (Engine.IO polling: 20 s) and
   scaled back to the real intervals (WebSocket ping 25 s, long-poll 45-55 s, Engine.IO 25 s).
4. Prints one markdown table: gchat's figures and its ratio to each baseline, the machine, and
   warnings (e.g. a load generator near saturation: such a result is not a server limit).

The load generator runs in ``--gen-procs`` worker processes (default 1) pinned to
``--gen-cpu`` (default CPU 1), each holding many connections on one event loop (uvloop when
installed). Its CPU is measured from /proc and reported with every step.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tools.bench import profile  # noqa: E402
from tools.bench.gen import worker_main  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
P99_LIMIT_MS = 250.0
GEN_CPU_WARN = 70.0     # % of one core: the generator may start to distort latency
GEN_CPU_BOUND = 85.0    # % of one core: the step measures the generator, not the server
LAG_BOUND_MS = 25.0     # p99 of how late the generator issued its sends
OTHER_LOAD_LIMIT = 40.0  # % of a core taken by other processes (MariaDB excepted) during a step
DISTURBED_RETRIES = 3    # a step disturbed by other load is run again, at most this often per phase
MIN_HEARTBEATS = 50      # fewer in an idle window: no per-heartbeat cost is derived
# Real heartbeat intervals, seconds (what the idle CPU figure is scaled to).
REAL_HB = {("gchat", "ws"): 25.0, ("gchat", "poll"): 50.0, ("tornado", "ws"): 25.0, ("tornado", "poll"): 50.0,
           ("socketio", "ws"): 25.0, ("socketio", "poll"): 25.0}
TARGETS = ("gchat", "tornado", "socketio")
NAMES = {"gchat": "gchat", "tornado": "bare Tornado relay", "socketio": "python-socketio relay"}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- configuration -------------------------------------------------------------------------

@dataclass
class Config:
    ws_pairs: int = 100
    poll_pairs: int = 100
    mixed_pairs: int = 30          # of each pairing
    start_rate: float = 400.0      # messages/s, all senders together
    factor: float = 1.5
    max_steps: int = 12
    refine: int = 1                # bisection steps between the last pass and the first failure
    warmup: float = 0.7
    measure: float = 3.0
    half_measure: float = 6.0
    drain: float = 2.0
    idle_levels: tuple[int, ...] = (1000, 5000, 10000)
    idle_group: int = 25           # users per course among the idle users (presence fan-out)
    idle_settle: float = 2.0
    idle_window: float = 4.0       # seconds of CPU measurement per idle level (8-24 s at the top one)
    idle_connect_limit: float = 90.0  # seconds allowed to open one idle level's connections
    # Heartbeat interval (s) while measuring idle CPU, instead of the real 25 s / 45-55 s: the
    # top level's window lasts 1.2 intervals, so every connection beats about once in it even
    # when all were opened just before. Not shorter: 10,000 connections would then beat so often
    # that the slower servers (Engine.IO polling: three requests per beat) saturate. The cost
    # per beat is scaled back to the real interval.
    idle_hb_ws: float = 10.0
    idle_hb_poll: float = 10.0
    idle_hb_socketio_poll: float = 20.0
    quiet_wait: float = 120.0      # seconds to wait, before each target, for the machine to calm down

    @classmethod
    def quick(cls) -> "Config":
        return cls(ws_pairs=10, poll_pairs=10, mixed_pairs=4, start_rate=100.0, factor=2.0, max_steps=3, refine=0,
                   warmup=0.3, measure=1.2, half_measure=1.5, drain=1.5, idle_levels=(300,), idle_settle=0.5,
                   idle_window=1.5, idle_hb_ws=1.0, idle_hb_poll=1.0, idle_hb_socketio_poll=1.0, quiet_wait=0.0)


# -- /proc ---------------------------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


def proc_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def cpu_times() -> dict[int, tuple[float, float]]:
    """Per CPU: (busy, total) jiffies from /proc/stat."""
    out: dict[int, tuple[float, float]] = {}
    try:
        with open("/proc/stat") as handle:
            for line in handle:
                if line.startswith("cpu") and line[3:4].isdigit():
                    name, *values = line.split()
                    numbers = [int(v) for v in values[:8]]
                    total = sum(numbers)
                    out[int(name[3:])] = (total - numbers[3] - numbers[4], total)
    except OSError:
        pass
    return out


def busy_pct(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]], cpu: int) -> float:
    if cpu not in before or cpu not in after:
        return float("nan")
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return busy / total * 100 if total else float("nan")


def find_pid(names: tuple[str, ...], port: int | None = None) -> int | None:
    """The process named one of ``names``; with ``port``, the one listening on that TCP port."""
    inodes: set[str] = set()
    if port is not None:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as handle:
                    for line in list(handle)[1:]:
                        cols = line.split()
                        if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                            inodes.add(f"socket:[{cols[9]}]")
            except OSError:
                continue
    candidates = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as handle:
                if handle.read().strip() not in names:
                    continue
        except OSError:
            continue
        candidates.append(int(entry))
        if inodes:
            try:
                fds = os.listdir(f"/proc/{entry}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        return int(entry)
                except OSError:
                    continue
    return candidates[0] if len(candidates) == 1 else None


def mysql_port(url: str) -> int | None:
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if "unix_socket" in parts.query:
        return None
    return parts.port or 3306


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get_json(port: int, path: str, timeout: float = 10.0) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


# -- the server under test -----------------------------------------------------------------

class Server:
    def __init__(self, target: str, args: argparse.Namespace, run_dir: str, *, hb_scale: float = 1.0,
                 db_url: str | None = None, secret: str = "") -> None:
        self.target = target
        self.args = args
        self.run_dir = run_dir
        self.hb_scale = hb_scale
        self.db_url = db_url
        self.secret = secret
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = ""

    def command(self) -> list[str]:
        scale = self.hb_scale
        py = self.args.python
        if self.target == "gchat":
            lo, hi = 45.0 / scale, 55.0 / scale
            cmd = [py, os.path.join(ROOT, "tools", "bench", "serve_gchat.py"), "serve",
                   f"--db_url={self.db_url}", "--db_prefix=mdl_", "--address=127.0.0.1", f"--port={self.port}",
                   f"--secret_key={self.secret}", f"--data_dir={os.path.join(self.run_dir, 'gchat-data')}",
                   f"--moodle_wwwroot=http://127.0.0.1:{self.port}", "--log_level=warning",
                   # The benchmark's users send far faster than a person: lift the per-user and
                   # per-address limits (they protect a real site; they are not what we measure).
                   "--send_rate=1000000", "--send_burst=1000000", "--opens_per_minute=1000000",
                   "--max_connections_per_address=1000000",
                   f"--ws_ping_interval={25.0 / scale:g}", f"--longpoll_timeout={lo:g}-{hi:g}"]
            cmd += self.args.gchat_arg or []
        elif self.target == "tornado":
            cmd = [py, os.path.join(ROOT, "tools", "bench_baselines", "tornado_relay.py"), f"--port={self.port}",
                   f"--ping-interval={25.0 / scale:g}", f"--poll-timeout={45.0 / scale:g}-{55.0 / scale:g}"]
            cmd += self.args.relay_arg or []
        else:
            cmd = [py, os.path.join(ROOT, "tools", "bench_baselines", "socketio_relay.py"), f"--port={self.port}",
                   f"--ping-interval={25.0 / scale:g}", "--ping-timeout=20"]
        if self.args.server_cpu >= 0 and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(self.args.server_cpu)] + cmd
        return cmd

    def start(self) -> None:
        self.port = free_port()
        self.log_path = os.path.join(self.run_dir, f"server-{self.target}-{self.port}.log")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("GCHAT_CONFIG", None)
        if self.args.tracemalloc and self.target == "gchat":
            env["BENCH_TRACEMALLOC"] = "1"
        if self.args.gchat_experiment and self.target == "gchat":
            env["BENCH_EXPERIMENTS"] = self.args.gchat_experiment
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                         start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited at start-up:\n{self.tail()}")
            try:
                self.stats()
                return
            except (OSError, RuntimeError, ValueError):
                time.sleep(0.1)
        raise RuntimeError(f"{self.target} did not answer /bench/stats within 30 s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self, collect: bool = False) -> dict[str, Any]:
        return http_get_json(self.port, "/bench/stats" + ("?gc=1" if collect else ""))

    def queries(self) -> int | None:
        try:
            value = self.stats().get("queries")
            return int(value) if value is not None else None
        except (OSError, RuntimeError, ValueError):
            return None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- the load generator processes ----------------------------------------------------------

class Generators:
    def __init__(self, count: int, cpu: int, use_uvloop: bool) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, cpu if cpu >= 0 else None, use_uvloop), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        self.senders = [0] * count

    def __len__(self) -> int:
        return len(self.pipes)

    def call(self, op: str, kwargs_each: list[dict[str, Any]], timeout: float = 300.0) -> list[Any]:
        for pipe, kwargs in zip(self.pipes, kwargs_each):
            pipe.send((op, kwargs))
        results = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise RuntimeError(f"generator did not answer {op} within {timeout:.0f} s")
            status, value = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"generator failed in {op}:\n{value}")
            results.append(value)
        return results

    def call_all(self, op: str, timeout: float = 300.0, **kwargs: Any) -> list[Any]:
        return self.call(op, [kwargs] * len(self.pipes), timeout)

    def cpu(self) -> float:
        return sum(proc_cpu(p.pid) for p in self.procs)

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("quit", {}))
                pipe.poll(10) and pipe.recv()
            except (OSError, EOFError):
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()


# -- statistics ----------------------------------------------------------------------------

def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def summarise(values_ns: array) -> dict[str, float]:
    values = sorted(values_ns)
    ms = 1e-6
    return {"n": len(values), "p50": percentile(values, 0.50) * ms, "p99": percentile(values, 0.99) * ms,
            "p999": percentile(values, 0.999) * ms, "max": (values[-1] * ms) if values else float("nan")}


PAIRING = {"ws>ws": "WS↔WS", "ws>poll": "WS↔poll", "poll>ws": "WS↔poll", "poll>poll": "poll↔poll"}


@dataclass
class Sample:
    server_cpu: float
    gen_cpu: float
    db_cpu: float
    queries: int | None
    questions: int | None
    t: float
    cpus: dict[int, tuple[float, float]] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg: Config = args.cfg
        self.run_dir = args.out
        self.site = None
        self.db_pid = find_pid(("mariadbd", "mysqld"), mysql_port(args.mysql))
        self.results: dict[str, Any] = {"targets": {}, "warnings": [], "config": asdict(self.cfg)}
        self.gens: Generators | None = None
        self.server: Server | None = None
        self.secret = secrets.token_urlsafe(24)
        self.users: dict[str, Any] = {}

    # -- samples ----------------------------------------------------------------------------
    def sample(self) -> Sample:
        assert self.server is not None and self.gens is not None
        questions = None
        if self.site is not None and self.server.target == "gchat":
            try:
                questions = self.site.questions()
            except Exception:
                questions = None
        return Sample(server_cpu=proc_cpu(self.server.pid), gen_cpu=self.gens.cpu(),
                      db_cpu=proc_cpu(self.db_pid) if self.db_pid else float("nan"),
                      queries=self.server.queries(), questions=questions, t=time.monotonic(), cpus=cpu_times())

    def warn(self, text: str) -> None:
        if text not in self.results["warnings"]:
            self.results["warnings"].append(text)
        log("WARNING: " + text)

    def wait_quiet(self) -> None:
        """Wait (bounded) until other processes leave the two cores mostly idle."""
        deadline = time.monotonic() + self.cfg.quiet_wait
        while True:
            before = cpu_times()
            time.sleep(3)
            after = cpu_times()
            load = sum(busy_pct(before, after, c) for c in (self.args.server_cpu, self.args.gen_cpu))
            if load < 30 or time.monotonic() >= deadline:
                break
            log(f"the machine is busy ({load:.0f}% of the two cores used by other processes); waiting")
        self.results.setdefault("load_at_start", {})[len(self.results["targets"])] = load
        if load >= 30:
            self.warn(f"other processes used {load:.0f}% of the two cores when a target started")

    # -- users ------------------------------------------------------------------------------
    def plan_users(self, targets: list[str]) -> None:
        cfg = self.cfg
        pair_sets = {"ws": [("ws", "ws")] * cfg.ws_pairs, "poll": [("poll", "poll")] * cfg.poll_pairs,
                     "mixed": [("ws", "ws"), ("ws", "poll"), ("poll", "poll")] * cfg.mixed_pairs}
        idle_n = max(cfg.idle_levels) + 20  # 20 warm-up clients before the baseline RSS
        if "gchat" in targets:
            from tools.bench.site import BenchSite

            name = f"gchat_bench_{os.getpid()}"
            self.site = BenchSite(self.args.mysql, name)
            self.results["database"] = name
            started = time.monotonic()
            self.site.create(ROOT, self.args.python)
            sets = {key: self.site.add_groups([2] * len(pairs)) for key, pairs in pair_sets.items()}
            groups = self.site.add_groups([cfg.idle_group] * math.ceil(idle_n / cfg.idle_group))
            idle = [u for g in groups for u in g][:idle_n]
            log(f"MariaDB database {name}: {sum(len(s) for s in sets.values()) * 2 + len(idle)} users, sessions "
                f"and courses in {time.monotonic() - started:.1f} s")
        else:
            from tools.bench.site import BenchUser

            next_id = [10]

            def user() -> BenchUser:
                next_id[0] += 1
                return BenchUser(next_id[0], "")

            sets = {key: [[user(), user()] for _ in pairs] for key, pairs in pair_sets.items()}
            idle = [user() for _ in range(idle_n)]
        self.users = {"pairs": {key: list(zip(sets[key], pair_sets[key])) for key in pair_sets}, "idle": idle}

    def tokens(self, target: str, users: list[Any], bootstrap: bool) -> dict[int, str]:
        """gchat: a token from api/bootstrap (the real path) or, for the thousands of idle users,
        minted with gchat's own signer and secret for their real Moodle session. Relays: the id."""
        if target != "gchat":
            return {u.id: str(u.id) for u in users}
        if not bootstrap:
            from gchat.auth import Identity, TokenSigner
            from gchat.moodle import sid_hash

            signer = TokenSigner(self.secret, 3600)
            return {u.id: signer.issue(Identity(u.id, sid_hash(u.sid))) for u in users}
        assert self.server is not None
        port = self.server.port

        def one(user: Any) -> tuple[int, str]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("GET", "/gchat/api/bootstrap", headers={"Cookie": f"MoodleSession={user.sid}"})
                response = conn.getresponse()
                body = json.loads(response.read())
                if response.status != 200:
                    raise RuntimeError(f"bootstrap of user {user.id}: {response.status} {body}")
                return user.id, body["token"]
            finally:
                conn.close()

        with ThreadPoolExecutor(16) as pool:
            return dict(pool.map(one, users))

    # -- servers ----------------------------------------------------------------------------
    def start_server(self, target: str, hb_scale: float = 1.0) -> Server:
        self.server = Server(target, self.args, self.run_dir, hb_scale=hb_scale,
                             db_url=self.site.url if self.site is not None else None, secret=self.secret)
        self.server.start()
        return self.server

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def target_spec(self, target: str) -> dict[str, Any]:
        assert self.server is not None
        return {"kind": target, "host": "127.0.0.1", "port": self.server.port, "prefix": "/gchat"}

    # -- one open-loop step -----------------------------------------------------------------
    def step(self, rate: float, measure: float) -> dict[str, Any]:
        assert self.gens is not None and self.server is not None
        cfg = self.cfg
        total_senders = sum(self.gens.senders)
        t0 = time.monotonic_ns() + 300_000_000
        w0 = t0 + int(cfg.warmup * 1e9)
        w1 = w0 + int(measure * 1e9)
        kwargs = [{"rate": rate * n / total_senders, "t0": t0, "w0": w0, "w1": w1} for n in self.gens.senders]
        self.gens.call("start_step", kwargs)
        time.sleep(max(0.0, (w0 - time.monotonic_ns()) / 1e9))
        before = self.sample()
        time.sleep(max(0.0, (w1 - time.monotonic_ns()) / 1e9))
        after = self.sample()
        parts = self.gens.call_all("collect_step", drain=cfg.drain)
        lat: dict[str, array] = {}
        sent: dict[str, int] = {}
        errors: dict[str, int] = {}
        lag = array("q")
        arrivals = dups = ok = 0
        for part in parts:
            for label, raw in part["lat"].items():
                values = array("q")
                values.frombytes(raw)
                lat.setdefault(PAIRING.get(label, label), array("q")).extend(values)
            for label, n in part["sent"].items():
                key = PAIRING.get(label, label)
                sent[key] = sent.get(key, 0) + n
            for code, n in part["errors"].items():
                errors[code] = errors.get(code, 0) + n
            values = array("q")
            values.frombytes(part["lag"])
            lag.extend(values)
            arrivals += part["arrivals"]
            dups += part["dups"]
            ok += part["ok"]
        window = (after.t - before.t) or measure
        all_lat = array("q")
        for values in lat.values():
            all_lat.extend(values)
        overall = summarise(all_lat)
        pairings = {label: summarise(values) for label, values in lat.items()}
        total_sent = sum(sent.values())
        lost = total_sent - overall["n"]
        lag_summary = summarise(lag)
        result = {
            "rate": rate, "sent": total_sent, "received": overall["n"], "lost": lost, "dups": dups,
            "errors": errors, "replies_ok": ok,
            "delivered_per_s": arrivals / measure, "latency": overall, "pairings": pairings,
            "server_cpu": (after.server_cpu - before.server_cpu) / window * 100,
            "gen_cpu": (after.gen_cpu - before.gen_cpu) / window * 100,
            "db_cpu": (after.db_cpu - before.db_cpu) / window * 100,
            "server_rss_kb": proc_rss_kb(self.server.pid),
            # What else ran on the two cores: busy % of the core minus our own process on it.
            "foreign_server_core": busy_pct(before.cpus, after.cpus, self.args.server_cpu)
            - (after.server_cpu - before.server_cpu) / window * 100,
            "foreign_gen_core": busy_pct(before.cpus, after.cpus, self.args.gen_cpu)
            - (after.gen_cpu - before.gen_cpu) / window * 100,
            "gen_lag_p99_ms": lag_summary["p99"],
        }
        if before.queries is not None and after.queries is not None:
            result["queries"] = after.queries - before.queries
            result["queries_per_msg"] = result["queries"] / max(1, total_sent)
        if before.questions is not None and after.questions is not None:
            result["questions_per_msg"] = (after.questions - before.questions - 1) / max(1, total_sent)
        if arrivals:
            result["server_cpu_us_per_msg"] = (after.server_cpu - before.server_cpu) / arrivals * 1e6
        result["passed"] = bool(overall["n"]) and overall["p99"] <= P99_LIMIT_MS and lost == 0 and not errors
        # Saturated: our generator used (nearly) its whole core. Disturbed: it was late although it
        # had CPU to spare, or other processes of the machine (not MariaDB) took a large share of
        # the two cores: the step measured the neighbours, not the server.
        others = max(0.0, result["foreign_server_core"]) + max(0.0, result["foreign_gen_core"]) \
            - (result["db_cpu"] if not math.isnan(result["db_cpu"]) else 0.0)
        result["other_load"] = others
        result["gen_saturated"] = result["gen_cpu"] >= GEN_CPU_BOUND
        result["disturbed"] = not result["gen_saturated"] and (lag_summary["p99"] > LAG_BOUND_MS
                                                               or others > OTHER_LOAD_LIMIT)
        result["gen_bound"] = result["gen_saturated"]
        flag = "pass" if result["passed"] else "FAIL"
        if result["gen_saturated"]:
            flag += " (generator saturated)"
        elif result["disturbed"]:
            flag += " (disturbed by other load)"
        log(f"  {rate:8.0f}/s target → {result['delivered_per_s']:8.0f}/s delivered  p50 {overall['p50']:7.1f} "
            f"p99 {overall['p99']:7.1f} p99.9 {overall['p999']:7.1f} ms  lost {lost} err {sum(errors.values())}  "
            f"cpu server {result['server_cpu']:5.1f}% gen {result['gen_cpu']:5.1f}% db {result['db_cpu']:5.1f}%  "
            f"lag {lag_summary['p99']:.1f} ms  other load cpu{self.args.server_cpu} "
            f"{max(0.0, result['foreign_server_core']):3.0f}% cpu{self.args.gen_cpu} "
            f"{max(0.0, result['foreign_gen_core']):3.0f}%  "
            + (f"q/msg {result['queries_per_msg']:.2f}  " if "queries_per_msg" in result else "") + flag)
        if result["gen_cpu"] >= GEN_CPU_WARN:
            self.warn(f"{self.server.target}: load generator at {result['gen_cpu']:.0f}% of its core at "
                      f"{rate:.0f} msgs/s (≥ {GEN_CPU_WARN:.0f}%: latency figures may include generator delay)")
        return result

    def connect_pairs(self, target: str, key: str) -> None:
        assert self.gens is not None
        pairs = self.users["pairs"][key]
        users = [u for (a, b), _ in pairs for u in (a, b)]
        tokens = self.tokens(target, users, bootstrap=True)
        per_worker: list[list[Any]] = [[] for _ in range(len(self.gens))]
        for i, ((a, b), (ta, tb)) in enumerate(pairs):
            per_worker[i % len(self.gens)].append([[a.id, tokens[a.id], ta], [b.id, tokens[b.id], tb]])
        spec = self.target_spec(target)
        started = time.monotonic()
        results = self.gens.call("connect_pairs", [{"target": spec, "group": key, "pairs": p} for p in per_worker])
        self.gens.senders = [2 * len(p) for p in per_worker]
        missing = sum(r["warm_missing"] for r in results)
        log(f"{target}: {len(users)} clients of {len(pairs)} {key} pairs connected and warmed in "
            f"{time.monotonic() - started:.1f} s" + (f" ({missing} warm-up messages missing)" if missing else ""))

    def close_group(self, key: str) -> None:
        assert self.gens is not None
        self.gens.call_all("close_group", group=key)

    def recover(self) -> None:
        """After an overloaded step: let the backlog drain before the next measurement."""
        assert self.gens is not None
        self.gens.call_all("drain_quiet", timeout=60)
        time.sleep(0.5)

    # -- phases -----------------------------------------------------------------------------
    def knee(self, target: str, key: str) -> dict[str, Any]:
        cfg = self.cfg
        log(f"{target}: knee search over {key} pairs")
        self.connect_pairs(target, key)
        steps = []
        rate = cfg.start_rate
        last_pass: dict[str, Any] | None = None
        first_fail: dict[str, Any] | None = None
        retries = DISTURBED_RETRIES
        for _ in range(cfg.max_steps):
            result = self.step(rate, cfg.measure)
            steps.append(result)
            while not result["passed"] and result["disturbed"] and retries > 0:
                retries -= 1
                log("  disturbed by other processes: again after a pause")
                self.recover()
                time.sleep(2)
                result = self.step(rate, cfg.measure)
                steps.append(result)
            if result["passed"] and not result["gen_bound"]:
                last_pass = result
                rate *= cfg.factor
                continue
            if result["passed"]:  # passed, but the generator is the limit now: stop climbing
                last_pass = result
            else:
                first_fail = result
            break
        for _ in range(cfg.refine):
            if last_pass is None or first_fail is None or first_fail["gen_bound"]:
                break
            self.recover()
            mid = math.sqrt(last_pass["rate"] * first_fail["rate"])
            result = self.step(mid, cfg.measure)
            steps.append(result)
            if result["passed"] and not result["gen_bound"]:
                last_pass = result
            else:
                first_fail = result
        if first_fail is not None:
            self.recover()
        half = None
        if last_pass is not None:
            log(f"{target}: {key} at half the knee ({last_pass['rate'] / 2:.0f} msgs/s)")
            half = self.step(last_pass["rate"] / 2, cfg.half_measure)
        prof = None
        if self.args.profile and last_pass is not None:
            rate = last_pass["rate"] * 0.8
            log(f"{target}: profiling {key} at {rate:.0f} msgs/s (80% of the knee) for {self.args.profile:g} s")
            prof = self.profiled(f"{target}-{key}-load", lambda: self.step(rate, self.args.profile))
        self.close_group(key)
        return {"steps": steps, "knee": last_pass, "first_fail": first_fail, "half": half, "profile": prof,
                "generator_bound": bool(last_pass and last_pass["gen_bound"]) or
                bool(first_fail and first_fail["gen_bound"])}

    def profiled(self, name: str, work: Any, seconds: float | None = None) -> dict[str, Any] | None:
        """Run ``work()`` while py-spy samples the server; summary and raw stacks in the run folder."""
        assert self.server is not None
        path = os.path.join(self.run_dir, f"profile-{name}.txt")
        spy = profile.record(self.server.pid, (seconds or self.args.profile) + self.cfg.warmup + 0.3, path,
                             self.args.gen_cpu)
        if spy is None:
            self.warn("py-spy is not installed: no profile (pip install py-spy)")
            work()
            return None
        step = work()
        try:
            _, err = spy.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            spy.kill()
            err = b"timeout"
        if not os.path.exists(path):
            self.warn(f"py-spy wrote no profile: {err.decode(errors='replace')[-300:]}")
            return None
        summary = profile.summarise(path)
        text = profile.render(summary, name)
        with open(os.path.join(self.run_dir, f"profile-{name}.md"), "w") as handle:
            handle.write(text + "\n")
        log(f"profile {name}: {path} ({summary['samples']} samples)")
        return {"summary": summary, "step": step, "raw": path}

    def mixed(self, target: str, rate: float) -> dict[str, Any]:
        log(f"{target}: mixed pairings at {rate:.0f} msgs/s")
        self.connect_pairs(target, "mixed")
        result = self.step(rate, self.cfg.half_measure)
        self.close_group("mixed")
        return result

    def idle(self, target: str, transport: str) -> dict[str, Any]:
        assert self.gens is not None
        cfg = self.cfg
        interval = cfg.idle_hb_ws if transport == "ws" else \
            cfg.idle_hb_socketio_poll if target == "socketio" else cfg.idle_hb_poll
        scale = REAL_HB[(target, transport)] / interval
        server = self.start_server(target, hb_scale=scale)
        try:
            spec = self.target_spec(target)
            idle_users = self.users["idle"]
            tokens = self.tokens(target, idle_users, bootstrap=False)
            clients = [[u.id, tokens[u.id], transport] for u in idle_users]
            warm, rest = clients[:20], clients[20:]
            self.gens.call("connect_idle", [{"target": spec, "group": "idle", "clients": warm[i::len(self.gens)],
                                             "concurrency": self.args.connect_concurrency}
                                            for i in range(len(self.gens))])
            time.sleep(cfg.idle_settle)
            server.stats(collect=True)
            base_rss = proc_rss_kb(server.pid)
            tracing = self.args.tracemalloc and target == "gchat"
            if tracing:
                http_get_json(server.port, "/bench/stats?tm=baseline", timeout=120)
            levels = []
            connected = 0
            for level in cfg.idle_levels:
                batch = rest[connected:level]
                started = time.monotonic()
                try:
                    self.gens.call("connect_idle", [{"target": spec, "group": "idle", "clients": batch[i::len(self.gens)],
                                                     "concurrency": self.args.connect_concurrency,
                                                     "limit": cfg.idle_connect_limit}
                                                    for i in range(len(self.gens))], timeout=cfg.idle_connect_limit + 60)
                except RuntimeError as exc:
                    self.warn(f"{target}: could not open {level:,} idle {transport} connections: "
                              f"{str(exc).strip().splitlines()[-1][:200]}")
                    levels.append({"n": level, "failed": True})
                    break
                connect_s = time.monotonic() - started
                connected = level
                time.sleep(cfg.idle_settle)
                server.stats(collect=True)
                rss = proc_rss_kb(server.pid)
                traced = None
                if tracing:
                    traced = {"by_line": http_get_json(server.port, "/bench/stats?tm=diff&top=40", timeout=300),
                              "by_file": http_get_json(server.port, "/bench/stats?tm=diff&top=25&key=filename",
                                                       timeout=300)}
                    with open(os.path.join(self.run_dir, f"tracemalloc-{target}-{transport}-{level}.json"), "w") as fh:
                        json.dump(traced, fh, indent=1)
                hb0 = sum(c["heartbeats"] for c in self.gens.call_all("counters", group="idle"))
                window = max(cfg.idle_window * 2, interval * 1.2) if level == max(cfg.idle_levels) \
                    else cfg.idle_window
                spy = None
                if self.args.profile and level == max(cfg.idle_levels):
                    spy = profile.record(server.pid, window, os.path.join(
                        self.run_dir, f"profile-{target}-idle-{transport}.txt"), self.args.gen_cpu)
                before = self.sample()
                time.sleep(window)
                after = self.sample()
                prof = None
                if spy is not None:
                    spy.communicate(timeout=120)
                    path = os.path.join(self.run_dir, f"profile-{target}-idle-{transport}.txt")
                    if os.path.exists(path):
                        prof = profile.summarise(path)
                        with open(path[:-4] + ".md", "w") as handle:
                            handle.write(profile.render(prof, f"{target} idle {transport}") + "\n")
                counters = self.gens.call_all("counters", group="idle")
                hb = sum(c["heartbeats"] for c in counters) - hb0
                still_open = sum(c["open"] for c in counters)
                elapsed = after.t - before.t
                cpu_s = after.server_cpu - before.server_cpu
                real = REAL_HB[(target, transport)]
                per_hb_us = cpu_s / hb * 1e6 if hb >= MIN_HEARTBEATS else float("nan")
                entry = {
                    "n": level, "connect_s": connect_s, "connect_per_s": len(batch) / connect_s if connect_s else 0,
                    "rss_kb": rss, "kb_per_conn": (rss - base_rss) / level,
                    "cpu_measured_pct": cpu_s / elapsed * 100, "heartbeats": hb,
                    "hb_interval_s": real / scale, "cpu_us_per_hb": per_hb_us,
                    "cpu_real_pct": (per_hb_us * 1e-6 * level / real * 100) if hb >= MIN_HEARTBEATS else float("nan"),
                    "gen_cpu": (after.gen_cpu - before.gen_cpu) / elapsed * 100,
                    "open": still_open,
                }
                if traced is not None:
                    entry["tracemalloc"] = traced
                if prof is not None:
                    entry["profile"] = prof
                if before.queries is not None and after.queries is not None:
                    entry["queries"] = after.queries - before.queries
                    entry["queries_per_hb"] = entry["queries"] / max(1, hb)
                levels.append(entry)
                log(f"{target}: {level} idle {transport}: {entry['kb_per_conn']:.1f} KB each (RSS {rss / 1024:.0f} "
                    f"MiB), {hb} heartbeats in {elapsed:.1f} s cost {cpu_s:.2f} s CPU = {per_hb_us:.0f} µs each → "
                    f"{entry['cpu_real_pct']:.2f}% of a core at the real {real:g} s"
                    + (f", {entry['queries']} queries" if "queries" in entry else "")
                    + (f"; only {still_open} still open" if still_open < level + len(warm) else ""))
                if still_open < level + len(warm):
                    self.warn(f"{target}: {level + len(warm) - still_open} idle {transport} connections dropped")
            self.gens.call_all("close_group", group="idle", timeout=120)
            return {"base_rss_kb": base_rss, "levels": levels}
        finally:
            self.stop_server()

    def run_target(self, target: str) -> dict[str, Any]:
        started = time.monotonic()
        out: dict[str, Any] = {}
        self.wait_quiet()
        if "load" in self.args.phases:
            server = self.start_server(target)
            try:
                out["start_rss_kb"] = proc_rss_kb(server.pid)
                out["ws"] = self.knee(target, "ws")
                out["poll"] = self.knee(target, "poll")
                knees = [k["knee"]["rate"] for k in (out["ws"], out["poll"]) if k["knee"]]
                if knees:
                    out["mixed"] = self.mixed(target, min(knees) / 2)
                out["after_load_rss_kb"] = proc_rss_kb(server.pid)
            finally:
                self.stop_server()
        if "idle" in self.args.phases:
            out["idle_ws"] = self.idle(target, "ws")
            out["idle_poll"] = self.idle(target, "poll")
        out["seconds"] = time.monotonic() - started
        log(f"{target}: done in {out['seconds']:.0f} s")
        return out

    def run(self, targets: list[str]) -> dict[str, Any]:
        self.results["machine"] = machine_info(self.args)
        self.plan_users(targets)
        self.gens = Generators(self.args.gen_procs, self.args.gen_cpu, not self.args.no_uvloop)
        try:
            for target in targets:
                self.results["targets"][target] = self.run_target(target)
                with open(os.path.join(self.run_dir, "results.json"), "w") as handle:  # partial results
                    json.dump(self.results, handle, indent=1, default=str)
        finally:
            self.gens.close()
            self.stop_server()
            if self.site is not None and not self.args.keep_db:
                self.site.drop()
        return self.results


# -- the machine ---------------------------------------------------------------------------

def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    probe = ("import sys, tornado\ntry:\n import tornado.speedups; s = True\nexcept ImportError:\n s = False\n"
             "try:\n from importlib.metadata import version; sio = version('python-socketio')\nexcept Exception:\n sio = None\n"
             "try:\n import uvloop; uv = uvloop.__version__\nexcept Exception:\n uv = None\n"
             "import json; print(json.dumps({'python': sys.version.split()[0], 'tornado': tornado.version, "
             "'speedups': s, 'socketio': sio, 'uvloop': uv}))")
    try:
        versions = json.loads(subprocess.run([args.python, "-c", probe], capture_output=True, text=True,
                                             timeout=30).stdout)
    except Exception:
        versions = {}
    mariadb = None
    try:
        from tests.services import mysql_connect

        conn = mysql_connect(args.mysql)
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            mariadb = cur.fetchone()[0]
        conn.close()
    except Exception:
        pass
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "gchat"], capture_output=True, text=True,
                                    cwd=ROOT, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "mariadb": mariadb,
            "commit": commit, "gchat_dirty": dirty,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "server_cpu": args.server_cpu, "gen_cpu": args.gen_cpu, "gen_procs": args.gen_procs, **versions,
            **({"uvloop": None} if args.no_uvloop else {})}


# -- the report ----------------------------------------------------------------------------

def fmt(value: Any, digits: int = 0, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}{unit}"


def ratio(a: Any, b: Any) -> str:
    if a is None or b is None or not b or (isinstance(a, float) and math.isnan(a)) or \
            (isinstance(b, float) and math.isnan(b)):
        return "–"
    return f"{a / b:.2f}×"


def knee_rate(phase: dict[str, Any] | None) -> float | None:
    if not phase or not phase.get("knee"):
        return None
    return phase["knee"]["delivered_per_s"]


def half_lat(phase: dict[str, Any] | None, key: str) -> float | None:
    if not phase or not phase.get("half"):
        return None
    return phase["half"]["latency"][key]


def idle_at(out: dict[str, Any], kind: str, n: int, key: str) -> float | None:
    for entry in (out.get(kind) or {}).get("levels", []):
        if entry["n"] == n and not entry.get("failed"):
            return entry.get(key)
    return None


def report(results: dict[str, Any], elapsed: float) -> str:
    targets = results["targets"]
    g = targets.get("gchat", {})
    bases = [t for t in ("tornado", "socketio") if t in targets]
    header = "| | " + " | ".join(["gchat"] + [x for t in bases for x in (NAMES[t], f"gchat ÷ {t}")]) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(bases))]

    def row(label: str, getter: Any, digits: int = 0, unit: str = "") -> None:
        mine = getter(g) if g else None
        cells = [fmt(mine, digits, unit)]
        for t in bases:
            theirs = getter(targets[t])
            cells += [fmt(theirs, digits, unit), ratio(mine, theirs)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("WS knee: delivered msgs/s (p99 ≤ 250 ms, no loss)", lambda o: knee_rate(o.get("ws")))
    row("long-poll knee: delivered msgs/s", lambda o: knee_rate(o.get("poll")))
    for transport, name in (("ws", "WS"), ("poll", "long-poll")):
        for key, label in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")):
            row(f"{name} {label} at half the knee (ms)", lambda o, t=transport, k=key: half_lat(o.get(t), k), 1)
    for pairing in ("WS↔WS", "WS↔poll", "poll↔poll"):
        row(f"mixed run, {pairing} p99 (ms)",
            lambda o, p=pairing: (o.get("mixed") or {}).get("pairings", {}).get(p, {}).get("p99"), 1)
    row("mixed run rate (msgs/s, ½ the lower knee)", lambda o: (o.get("mixed") or {}).get("rate"))
    row("server CPU per delivered WS message at the knee (µs)",
        lambda o: ((o.get("ws") or {}).get("knee") or {}).get("server_cpu_us_per_msg"), 0)
    row("server CPU at the WS knee (% of a core)", lambda o: ((o.get("ws") or {}).get("knee") or {}).get("server_cpu"), 0)
    row("MariaDB CPU at the WS knee (% of a core)", lambda o: ((o.get("ws") or {}).get("knee") or {}).get("db_cpu"), 0)
    levels = results["config"]["idle_levels"]
    for kind, name in (("idle_ws", "idle WebSocket"), ("idle_poll", "idle long-poll")):
        for n in levels:
            row(f"KB per {name} at {n:,}", lambda o, k=kind, n=n: idle_at(o, k, n, "kb_per_conn"), 1)
        top = max(levels)
        row(f"CPU of {top:,} {name} heartbeats (% of a core, real interval)",
            lambda o, k=kind, n=top: idle_at(o, k, n, "cpu_real_pct"), 2)
        row(f"CPU per {name} heartbeat (µs)", lambda o, k=kind, n=top: idle_at(o, k, n, "cpu_us_per_hb"), 0)
    row("server RSS after the load phases (MiB)", lambda o: (o.get("after_load_rss_kb") or 0) / 1024 or None, 0)
    lines.append("")
    if g:
        ws_half = (g.get("ws") or {}).get("half") or {}
        q_msg = ws_half.get("queries_per_msg")
        idle_q = [(kind, e.get("queries_per_hb"), e.get("queries")) for kind in ("idle_ws", "idle_poll")
                  for e in (g.get(kind) or {}).get("levels", []) if e["n"] == max(levels)]
        lines.append(f"gchat database statements per message (WS, half the knee, gchat's own counter): "
                     f"{fmt(q_msg, 2)}; MariaDB 'Questions' per message (whole server): "
                     f"{fmt(ws_half.get('questions_per_msg'), 2)}")
        for kind, per_hb, total in idle_q:
            lines.append(f"gchat statements during the {kind.replace('_', ' ')} window at {max(levels):,}: "
                         f"{fmt(total)} ({fmt(per_hb, 3)} per heartbeat)")
        lines.append("")
    m = results["machine"]
    lines.append(f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB, Linux {m.get('kernel')}; "
                 f"Python {m.get('python')}, Tornado {m.get('tornado')} (speedups "
                 f"{'built' if m.get('speedups') else 'NOT built'}), python-socketio {m.get('socketio') or '–'}, "
                 f"MariaDB {m.get('mariadb') or '–'}; server on CPU {m.get('server_cpu')}, {m.get('gen_procs')} "
                 f"generator process(es) on CPU {m.get('gen_cpu')} (uvloop {m.get('uvloop') or 'off'}); "
                 f"gchat at commit {m.get('commit') or '?'}{' with uncommitted changes in gchat/' if m.get('gchat_dirty') else ''}. "
                 f"Run took {elapsed:.0f} s.")
    for target, out in targets.items():
        for key in ("ws", "poll"):
            phase = out.get(key) or {}
            if phase.get("generator_bound"):
                lines.append(f"**Warning:** {target} {key} knee is generator-bound: the server may go further; "
                             "treat it as a lower bound (and gchat's ratio to it as an upper bound).")
            if phase and not phase.get("knee"):
                lines.append(f"**Warning:** {target} {key}: even the first step failed (no knee).")
    if results.get("experiments"):
        lines.append(f"**gchat ran with what-if patches: {results['experiments']}** (not gchat's behaviour).")
    for warning in results["warnings"]:
        lines.append(f"- {warning}")
    return "\n".join(lines)


def steps_table(results: dict[str, Any]) -> str:
    lines = ["| target | pairs | target msgs/s | delivered/s | p50 ms | p99 ms | p99.9 ms | lost | errors | "
             "server CPU % | generator CPU % | MariaDB CPU % | q/msg | |", "|" + "---|" * 14]
    for target, out in results["targets"].items():
        for key in ("ws", "poll"):
            for s in (out.get(key) or {}).get("steps", []) + ([out[key]["half"]] if (out.get(key) or {}).get("half") else []):
                lat = s["latency"]
                lines.append(f"| {target} | {key} | {s['rate']:.0f} | {s['delivered_per_s']:.0f} | {fmt(lat['p50'], 1)} | "
                             f"{fmt(lat['p99'], 1)} | {fmt(lat['p999'], 1)} | {s['lost']} | {sum(s['errors'].values())} | "
                             f"{s['server_cpu']:.0f} | {s['gen_cpu']:.0f} | {fmt(s['db_cpu'])} | "
                             f"{fmt(s.get('queries_per_msg'), 2)} | {'pass' if s['passed'] else 'FAIL'}"
                             f"{' gen-bound' if s['gen_bound'] else ''} |")
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gchat load benchmark against a bare Tornado relay and "
                                                 "python-socketio (see docs/performance.md)")
    parser.add_argument("--quick", action="store_true", help="≈1 minute smoke run with small numbers")
    parser.add_argument("--target", default="all", help="gchat, tornado, socketio, all, or a comma-separated list")
    parser.add_argument("--mysql", default=os.environ.get("GCHAT_TEST_MYSQL", "mysql://root@127.0.0.1:3306"),
                        help="MariaDB server URL (a database gchat_bench_<pid> is created and dropped)")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the server is pinned to (-1: no pinning)")
    parser.add_argument("--gen-cpu", type=int, default=1, help="CPU the load generator is pinned to (-1: none)")
    parser.add_argument("--gen-procs", type=int, default=1, help="load generator processes")
    parser.add_argument("--connect-concurrency", type=int, default=50,
                        help="connections opened at once when filling the idle levels")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio loop in the generator")
    parser.add_argument("--phases", default="load,idle", help="load (throughput and latency), idle, or both")
    parser.add_argument("--idle", default=None, help="idle levels, e.g. 1000,5000,10000")
    parser.add_argument("--pairs", type=int, default=None, help="WS pairs and long-poll pairs per knee search")
    parser.add_argument("--start-rate", type=float, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--measure", type=float, default=None, help="seconds measured per step")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="sample the server with py-spy for SECONDS at 80%% of each knee and during the largest "
                             "idle window; summaries in the output folder")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace gchat's allocations in the idle phases (slow; memory figures are then inflated)")
    parser.add_argument("--gchat-experiment", default="",
                        help="what-if patches of gchat for this run (tools/bench/serve_gchat.py): nodelay, noping")
    parser.add_argument("--gchat-arg", action="append", help="extra gchat setting, e.g. --gchat-arg=--db_pool_size=16")
    parser.add_argument("--relay-arg", action="append", help="extra tornado_relay.py flag, e.g. --relay-arg=--nodelay")
    parser.add_argument("--python", default=sys.executable, help="Python that runs the servers")
    parser.add_argument("--out", default=None, help="folder for report.md, results.json and server logs")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the benchmark database")
    args = parser.parse_args(argv)

    cfg = Config.quick() if args.quick else Config()
    if args.idle:
        cfg.idle_levels = tuple(int(x) for x in args.idle.split(","))
    if args.pairs:
        cfg.ws_pairs = cfg.poll_pairs = args.pairs
        cfg.mixed_pairs = max(1, args.pairs // 3)
    if args.start_rate:
        cfg.start_rate = args.start_rate
    if args.max_steps:
        cfg.max_steps = args.max_steps
    if args.measure:
        cfg.measure = args.measure
    args.cfg = cfg
    targets = list(TARGETS) if args.target == "all" else [t.strip() for t in args.target.split(",") if t.strip()]
    for t in targets:
        if t not in TARGETS:
            parser.error(f"unknown target {t!r}")
    if args.out is None:
        args.out = os.path.join(tempfile.gettempdir(), "gchat-bench", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(args.out, exist_ok=True)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200_000, 200_000))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.gen_cpu >= 0:
        try:
            os.sched_setaffinity(0, {args.gen_cpu})  # the orchestrator mostly sleeps; keep it off the server's core
        except OSError:
            pass

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # so that servers, generators and the database are cleaned up
    started = time.monotonic()
    bench = Bench(args)
    if args.gchat_experiment:
        bench.results["experiments"] = args.gchat_experiment
    results = bench.run(targets)
    elapsed = time.monotonic() - started
    text = report(results, elapsed)
    details = steps_table(results)
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=1, default=str)
    with open(os.path.join(args.out, "report.md"), "w") as handle:
        handle.write(text + "\n\n## Steps\n\n" + details + "\n")
    print(text)
    print()
    print(details)
    print(f"\n(report and raw results in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
