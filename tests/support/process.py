"""One launcher for every server a test (or the benchmark) runs as a subprocess: gchat itself,
nginx, the benchmark's baselines.

A :class:`ServerProcess` writes its output to a log file, is ready when a probe says so (polled,
never a fixed sleep; the process exiting first is reported with its log), and stops with SIGTERM,
then SIGKILL when it does not exit in time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GCHAT_MAIN = os.path.join(ROOT, "gchat", "main.py")
POLL_SECS = 0.05  # how often a starting server is probed (polling, not a wait for behaviour)
LOG_TAIL_CHARS = 4000


class ServerFailed(RuntimeError):
    """The server exited at start-up, or was not ready in time (the message has its log)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without GCHAT_* settings (so that only the flags count), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCHAT_")}
    env.update(extra)
    return env


def gchat_command(*args: str) -> list[str]:
    """``python gchat/main.py ARGS``: the program an admin runs, from this checkout."""
    return [sys.executable, GCHAT_MAIN, *args]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body (HTTP errors are answers too); OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def health_status(base_url: str, prefix: str = "/gchat") -> int:
    """The status of ``GET {prefix}/health``; 0 when nothing answers."""
    try:
        return http_get(f"{base_url}{prefix}/health")[0]
    except OSError:
        return 0


class ServerProcess:
    """A server subprocess: restartable, each run appending to one log file."""

    def __init__(self, command: Sequence[str], *, log_path: str, cwd: str | None = None,
                 env: Mapping[str, str] | None = None, name: str = "server", new_session: bool = False) -> None:
        self.command = list(command)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.name = name
        self.new_session = new_session
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=self.new_session)

    def _check_alive(self, started: float, timeout: float) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise ServerFailed(f"{self.name} exited with {self.process.returncode}:\n{self.output()}")
        if time.monotonic() - started > timeout:
            raise ServerFailed(f"{self.name} was not ready within {timeout:g}s:\n{self.output()}")

    def start(self, ready: Callable[[], bool], timeout: float = 20.0) -> float:
        """Spawn and poll ``ready()`` until true; returns the seconds that took."""
        self.spawn()
        return self.wait_ready(ready, timeout)

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 20.0) -> float:
        """Poll ``ready()`` of a spawned process until true; returns the seconds that took."""
        started = time.monotonic()
        while True:
            try:
                if ready():
                    return time.monotonic() - started
            except OSError:
                pass  # not listening yet
            self._check_alive(started, timeout)
            time.sleep(POLL_SECS)

    async def astart(self, ready: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> float:
        """:meth:`start` for a test running an event loop (its clients keep running meanwhile)."""
        started = time.monotonic()
        self.spawn()
        while True:
            try:
                if await ready():
                    return time.monotonic() - started
            except OSError:
                pass
            self._check_alive(started, timeout)
            await asyncio.sleep(POLL_SECS)

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; the exit status, or None when it had to be killed."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    async def aterminate(self, timeout: float = 15.0) -> tuple[int | None, float]:
        """SIGTERM without blocking the loop; (exit status or None if killed, seconds it took)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        while self.process.poll() is None:
            if time.monotonic() - started > timeout:
                self.kill()
                return None, time.monotonic() - started
            await asyncio.sleep(0.02)
        return self.process.returncode, time.monotonic() - started

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """Clean-up: SIGTERM, then SIGKILL; nothing when it is not running."""
        if self.running:
            self.terminate(timeout)

    def output(self, tail: int | None = LOG_TAIL_CHARS) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError:
            return "(no log)"
        return text if tail is None else text[-tail:]


class GchatProcess(ServerProcess):
    """``python gchat/main.py`` with the given settings on its own port, ready when
    ``/gchat/health`` answers 200. Its working folder has no conf/gchat.conf, and GCHAT_*
    variables are dropped, so only these flags count."""

    def __init__(self, args: Sequence[str], *, workdir: str, name: str = "gchat", port: int | None = None,
                 command: Sequence[str] | None = None, cwd: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        """``command``: the program (default ``python gchat/main.py``); ``workdir``: where the
        log goes, and the working folder unless ``cwd`` says otherwise."""
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        super().__init__([*(command or gchat_command()), *args, f"--port={self.port}"],
                         log_path=os.path.join(workdir, f"{name}.log"), cwd=cwd or workdir,
                         env=env if env is not None else clean_env(), name=name)

    def healthy(self) -> bool:
        return health_status(self.base_url) == 200

    def start_healthy(self, timeout: float = 20.0) -> float:
        return self.start(self.healthy, timeout)
