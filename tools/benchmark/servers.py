"""The servers under test: gchat (tools/benchmark/serve_gchat.py), the bare Tornado relay and
the python-socketio relay, each a subprocess pinned to the server's CPU, started through the
tests' process launcher (tests/support/process.py) and ready when ``/bench/stats`` answers."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
from typing import Any

from tests.support.process import ROOT, ServerFailed, ServerProcess, free_port

START_SECS = 30.0
STOP_SECS = 15.0
# Real heartbeat intervals, seconds: the servers run with them divided by hb_scale.
WS_PING_SECS = 25.0
LONGPOLL_SECS = (45.0, 55.0)


def http_get_json(port: int, path: str, timeout: float = 10.0) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
        result: dict[str, Any] = json.loads(body)
        return result
    finally:
        conn.close()


class Server:
    """One target's server for one phase."""

    def __init__(self, target: str, args: argparse.Namespace, run_dir: str, *, hb_scale: float = 1.0,
                 db_url: str | None = None, secret: str = "") -> None:
        self.target = target
        self.args = args
        self.run_dir = run_dir
        self.hb_scale = hb_scale
        self.db_url = db_url
        self.secret = secret
        self.port = 0
        self.process: ServerProcess | None = None

    def command(self) -> list[str]:
        scale = self.hb_scale
        py = self.args.python
        ping = f"{WS_PING_SECS / scale:g}"
        lo, hi = LONGPOLL_SECS[0] / scale, LONGPOLL_SECS[1] / scale
        if self.target == "gchat":
            cmd = [py, "-m", "tools.benchmark.serve_gchat", "serve",
                   f"--db_url={self.db_url}", "--db_prefix=mdl_", "--address=127.0.0.1", f"--port={self.port}",
                   f"--secret_key={self.secret}", f"--data_dir={os.path.join(self.run_dir, 'gchat-data')}",
                   f"--moodle_wwwroot=http://127.0.0.1:{self.port}", "--log_level=warning",
                   # The benchmark's users send far faster than a person: lift the per-user and
                   # per-address limits (they protect a real site; they are not what we measure).
                   "--send_rate=1000000", "--send_burst=1000000", "--opens_per_minute=1000000",
                   "--max_connections_per_address=1000000",
                   f"--ws_ping_interval={ping}", f"--longpoll_timeout={lo:g}-{hi:g}"]
            cmd += self.args.gchat_arg or []
        elif self.target == "tornado":
            cmd = [py, os.path.join(ROOT, "tools", "bench_baselines", "tornado_relay.py"), f"--port={self.port}",
                   f"--ping-interval={ping}", f"--poll-timeout={lo:g}-{hi:g}"]
            if not getattr(self.args, "relay_nagle", False):
                cmd.append("--nodelay")  # as gchat does on its WebSockets: the same stack, at its best
            cmd += self.args.relay_arg or []
        else:
            cmd = [py, os.path.join(ROOT, "tools", "bench_baselines", "socketio_relay.py"), f"--port={self.port}",
                   f"--ping-interval={ping}", "--ping-timeout=20"]
        if self.args.server_cpu >= 0 and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(self.args.server_cpu)] + cmd
        return cmd

    def start(self) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("GCHAT_CONFIG", None)
        if self.args.tracemalloc and self.target == "gchat":
            env["BENCH_TRACEMALLOC"] = "1"
        if self.args.gchat_experiment and self.target == "gchat":
            env["BENCH_EXPERIMENTS"] = self.args.gchat_experiment
        self.process = ServerProcess(self.command(), log_path=os.path.join(
            self.run_dir, f"server-{self.target}-{self.port}.log"), cwd=ROOT, env=env, name=self.target,
            new_session=True)
        try:
            self.process.start(self._answers, START_SECS)
        except ServerFailed as exc:
            raise RuntimeError(str(exc)) from None

    def _answers(self) -> bool:
        try:
            self.stats()
        except (RuntimeError, ValueError):
            return False
        return True

    def tail(self, lines: int = 30) -> str:
        if self.process is None:
            return ""
        return "\n".join(self.process.output(tail=None).splitlines()[-lines:])

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stats(self, collect: bool = False) -> dict[str, Any]:
        return http_get_json(self.port, "/bench/stats" + ("?gc=1" if collect else ""))

    def queries(self) -> int | None:
        try:
            value = self.stats().get("queries")
            return int(value) if value is not None else None
        except (OSError, RuntimeError, ValueError):
            return None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(STOP_SECS)
