"""A real supervisord (PyPI ``supervisor``) running gchat with conf/supervisord.conf.

The [program:gchat] section is used as shipped, adapted to a temporary folder as the file's
header describes: the command is this checkout's ``gchat serve --config=...``, the folders
(/var/lib/gchat, /var/log/gchat) are the temporary folder's, and gchat runs as the test's own
user (no ``gchat`` account here). A private supervisord needs the [supervisord],
[unix_http_server], [rpcinterface:supervisor] and [supervisorctl] sections, as the file says.
gchat serves its demo site (its own SQLite Moodle) so that the test can log in and chat.

The test SIGKILLs gchat: supervisord must start it again, /gchat/health must answer again, and a
client must reconnect and chat. Waits are for events (a state, a pid, a health answer), bounded.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import TypeVar
from collections.abc import Callable, Iterator

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from tests.browser.gchat_browser import ANA, DAN, free_port
from tests.support.clients import PollClient, WSClient, bootstrap
from tests.test_nginx import is_message

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "conf", "supervisord.conf")
BIN = os.path.dirname(sys.executable)
WAIT_S = 40.0  # startsecs (5 s) and a restart, with room to spare on a busy machine

T = TypeVar("T")


def program_section() -> str:
    """[program:gchat] as shipped (up to the commented-out multi-process variant)."""
    with open(SHIPPED, encoding="utf-8") as handle:
        text = handle.read()
    start = text.index("[program:gchat]")
    end = text.index("; -- Several processes", start)
    return text[start:end]


def adapted_conf(folder: str, gchat_conf: str) -> str:
    program = program_section()

    def swap(pattern: str, replacement: str) -> None:
        nonlocal program
        program, found = re.subn(pattern, replacement, program, flags=re.MULTILINE)
        assert found == 1, f"conf/supervisord.conf: expected one match of {pattern!r}"

    swap(r"^command = /opt/gchat/venv/bin/gchat serve --config=/etc/gchat/gchat\.conf$",
         f"command = {os.path.join(BIN, 'gchat')} serve --config={gchat_conf}")
    swap(r"^directory = /var/lib/gchat$", f"directory = {folder}/lib")
    swap(r"^user = gchat\n", "")
    swap(r'GCHAT_DATA_DIR="/var/lib/gchat"', f'GCHAT_DATA_DIR="{folder}/lib"')
    swap(r"^stdout_logfile = /var/log/gchat/gchat\.log$", f"stdout_logfile = {folder}/log/gchat.log")
    return (f"[supervisord]\nnodaemon = true\nlogfile = {folder}/supervisord.log\npidfile = {folder}/supervisord.pid\n"
            f"childlogdir = {folder}/log\n{'user = root' if os.geteuid() == 0 else ''}\n\n"
            f"[unix_http_server]\nfile = {folder}/supervisor.sock\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl = unix://{folder}/supervisor.sock\n\n{program}")


class Supervisor:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="gchat-supervisord-")
        for sub in ("lib", "log"):
            os.makedirs(os.path.join(self.dir, sub))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        gchat_conf = os.path.join(self.dir, "gchat.conf")
        with open(gchat_conf, "w", encoding="utf-8") as handle:
            handle.write(f"address = 127.0.0.1\nport = {self.port}\npresence_grace = 1\n")
        self.conf = os.path.join(self.dir, "supervisord.conf")
        with open(self.conf, "w", encoding="utf-8") as handle:
            handle.write(adapted_conf(self.dir, gchat_conf))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([os.path.join(BIN, "supervisord"), "-c", self.conf],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ctl(self, *args: str) -> str:
        done = subprocess.run([os.path.join(BIN, "supervisorctl"), "-c", self.conf, *args],
                              capture_output=True, text=True, timeout=30)
        return done.stdout.strip()

    def status(self) -> str:
        """RUNNING, STARTING, BACKOFF, ... ("" while supervisord itself is not up yet)."""
        words = self.ctl("status", "gchat").split()
        return words[1] if len(words) > 1 and words[0] == "gchat" else ""

    def pid(self) -> int:
        text = self.ctl("pid", "gchat")
        return int(text) if text.isdigit() else 0

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/gchat/health", timeout=2) as response:
                return response.status == 200 and json.load(response).get("status") == "ok"
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def wait(self, what: str, check: Callable[[], T]) -> T:
        deadline = time.monotonic() + WAIT_S
        while True:
            value = check()
            if value:
                return value
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"supervisord exited while waiting for {what}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen in {WAIT_S} s:\n{self.logs()}")
            time.sleep(0.1)  # polling interval of supervisorctl / the health check, not a behaviour wait

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # supervisord stops gchat (stopsignal TERM), then exits
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        text = ""
        for name in ("supervisord.log", "log/gchat.log"):
            try:
                with open(os.path.join(self.dir, name), encoding="utf-8", errors="replace") as handle:
                    text += f"-- {name}\n" + handle.read()[-3000:]
            except OSError:
                pass
        return text


@pytest.fixture
def supervised() -> Iterator[Supervisor]:
    supervisor = Supervisor()
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()


async def demo_login(base: str, user_id: int) -> str:
    """The demo site's login form, as a browser posts it: returns the MoodleSession cookie."""
    xsrf = secrets.token_hex(16)  # Tornado's check: the _xsrf cookie and form field must match
    try:
        await AsyncHTTPClient().fetch(base + "/gchat/demo/login", method="POST",
                                      body=f"user={user_id}&_xsrf={xsrf}", headers={"Cookie": f"_xsrf={xsrf}"},
                                      follow_redirects=False)
    except HTTPClientError as exc:
        assert exc.code == 302 and exc.response is not None, exc
        cookie = exc.response.headers["Set-Cookie"]
        return re.search(r"MoodleSession=([^;]+)", cookie).group(1)
    raise AssertionError("the demo login did not redirect")


async def client(base: str, sid: str, kind: type, **kwargs):
    code, boot = await bootstrap(base, sid)
    assert code == 200, boot
    connected = await kind(base, boot["token"]).connect(**kwargs)
    await connected.wait_type("ready", timeout=10)
    return connected


def test_shipped_program_section_restarts_gchat_after_a_crash_not_after_a_clean_exit():
    text = program_section()
    assert re.search(r"^autorestart = unexpected$", text, flags=re.MULTILINE)
    assert re.search(r"^exitcodes = 0$", text, flags=re.MULTILINE)
    assert re.search(r"^stopsignal = TERM$", text, flags=re.MULTILINE)


@pytest.mark.gen_test(timeout=120)
async def test_supervisord_restarts_a_killed_gchat_and_clients_come_back(supervised):
    first = supervised.wait("gchat RUNNING under supervisord", lambda: supervised.status() == "RUNNING"
                            and supervised.pid())
    assert supervised.healthy()
    base = supervised.base
    ana_sid, dan_sid = await demo_login(base, ANA), await demo_login(base, DAN)
    ana = await client(base, ana_sid, WSClient, origin=base)
    dan = await client(base, dan_sid, PollClient)
    conv = (await ana.command("open", user=DAN))["conversation"]["id"]
    assert (await ana.send_text(conv, "before the crash"))["ok"]
    await dan.wait_for(is_message("before the crash"))
    await dan.close()

    os.kill(first, signal.SIGKILL)
    await ana.wait_closed(timeout=10)  # the browser's socket dies with the process
    second = supervised.wait("a new gchat process", lambda: supervised.pid() not in (0, first) and supervised.pid())
    supervised.wait("/gchat/health answering again", supervised.healthy)
    assert second != first

    # The same Moodle sessions, the same token secret (data_dir): both come back and chat.
    ana = await client(base, ana_sid, WSClient, origin=base)
    dan = await client(base, dan_sid, PollClient)
    assert (await ana.send_text(conv, "after the restart"))["ok"]
    await dan.wait_for(is_message("after the restart"), timeout=10)
    history = await dan.command("history", conversation=conv)
    assert [m["text"] for m in history["messages"]][-2:] == ["before the crash", "after the restart"]
    await ana.close()
    await dan.close()
    # Past startsecs the new process counts as started, and it is still the same one.
    supervised.wait("gchat RUNNING again", lambda: supervised.status() == "RUNNING")
    assert supervised.pid() == second
