"""Helpers of the browser tests: a real gchat server in demo mode, and people using it.

Each test gets its own server (a subprocess on a free port with its own temporary data folder,
so the SQLite demo database, secret key and event logs start fresh) and stops it afterwards.
The browser is shared by the whole session; every simulated user gets their own browser context
(own cookies, own sessionStorage), as two people on two computers would.

Nothing here sleeps for behaviour: the server is waited for by polling /gchat/health, and the
pages by Playwright's wait_for_* / expect, which poll the page until a condition holds.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from tests.support.process import free_port

REPO = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("GCHAT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 30.0

# Demo users (gchat/demo.py): Ana and Dan share both courses, Ben shares PHY101 with Ana,
# Dan blocks Ben, Eve shares no course, Tereza teaches both; Farid and Grace are in PHY101,
# Hugo in both, Inês in HIS201.
ANA, BEN, CHLOE, DAN, EVE, TEREZA = 3, 4, 5, 6, 7, 8
FARID, GRACE, HUGO, INES = 9, 10, 11, 12


class GchatServer:
    """``python -m gchat`` in demo mode; can be stopped and started again on the same port and
    data folder (a restart, as an admin's supervisor would do)."""

    def __init__(self, data_dir: str, port: int, extra_args: list[str]) -> None:
        self.data_dir = data_dir
        self.port = port
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None
        self.log_path = os.path.join(data_dir, "server.log")
        self.origin = f"http://127.0.0.1:{port}"
        self.base = self.origin + "/gchat"

    def url(self, path: str) -> str:
        return self.base + path

    def start(self) -> None:
        assert self.process is None, "already running"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gchat", f"--port={self.port}", "--address=127.0.0.1",
             f"--data_dir={self.data_dir}", *self.extra_args],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"gchat exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("/health"), timeout=2) as response:
                    if response.status == 200 and json.load(response).get("status") == "ok":
                        return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gchat did not become healthy in {START_TIMEOUT_S} s:\n{self.log_tail()}")
            time.sleep(0.05)  # polling interval of the health check, not a wait for behaviour

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"


def running_server(extra_args: list[str]) -> Iterator[GchatServer]:
    with tempfile.TemporaryDirectory(prefix="gchat-browser-") as data_dir:
        server = GchatServer(data_dir, free_port(), extra_args)
        server.start()
        try:
            yield server
        finally:
            server.stop()


class User:
    """One person: a browser context (cookies, sessionStorage) and the pages they opened."""

    def __init__(self, browser, server: GchatServer, user_id: int, *, no_websocket: bool = False,
                 viewport: dict | None = None, init_script: str | None = None) -> None:
        self.server = server
        self.id = user_id
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800})
        self.context.set_default_timeout(15_000)
        if no_websocket:
            self.context.add_init_script("delete window.WebSocket;")
        if init_script:
            self.context.add_init_script(init_script)
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page = self.new_page()

    def new_page(self):
        page = self.context.new_page()
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        return page

    def login(self, path: str = "/demo/course", wait: bool = True):
        page = self.page
        page.goto(self.server.url("/demo"))
        page.click(f"form:has(input[name=user][value='{self.id}']) button[type=submit]")
        page.wait_for_url("**/demo/course**")
        if path != "/demo/course":
            page.goto(self.server.url(path))
        if wait:
            wait_connected(page)
        return page

    def logout(self, page=None):
        page = page or self.page
        page.click("#logout")
        page.wait_for_url("**/demo")

    def close(self) -> None:
        self.context.close()


def wait_connected(page, timeout: float = 15_000) -> None:
    page.wait_for_function("window.gchat && window.gchat.state === 'connected'", timeout=timeout)


def buddy(page, user_id: int):
    return page.locator(f".gchat-buddy[data-user-id='{user_id}']")


def window_with(page, user_id: int):
    return page.locator(f".gchat-win[data-peer='{user_id}']")


def send(page, user_id: int, text: str) -> None:
    box = window_with(page, user_id).locator("textarea")
    box.fill(text)
    box.press("Enter")


def messages(page, user_id: int):
    return window_with(page, user_id).locator(".gchat-msg")




def demo_sql(server: GchatServer, sql: str, params: tuple = ()) -> None:
    """Change the demo's Moodle the way an admin or Moodle itself would (tables with mdl_)."""
    import sqlite3
    conn = sqlite3.connect(os.path.join(server.data_dir, "demo.sqlite3"), timeout=10)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def search(page, text: str) -> None:
    """Type into the panel's search field; results arrive as .gchat-search-item buttons."""
    page.locator(".gchat-search").fill(text)


def found(page, user_id: int):
    return page.locator(f".gchat-search-item[data-user-id='{user_id}']")


def open_by_search(page, user_id: int, text: str) -> None:
    search(page, text)
    found(page, user_id).click()
    page.locator(f".gchat-win[data-peer='{user_id}'] textarea").wait_for()
    page.locator(".gchat-search").fill("")
