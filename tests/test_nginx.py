"""The real nginx (Debian's package) in front of gchat, configured with conf/nginx-gchat.conf.

Each nginx runs from a private folder, on a free loopback port, with the shipped snippet
included as it is except for three adaptations: the upstream address (the test's gchat), the
listen address, and — for the variants — one deliberate change:

* as shipped: chat over WebSocket and over long-poll through the proxy;
* without the Upgrade/Connection headers (a proxy that strips WebSocket upgrades): the widget,
  in Chromium, falls back to long-polling and still chats in real time;
* with ``proxy_buffering on``: a waiting long-poll still delivers within a second (gchat
  answers polls with ``X-Accel-Buffering: no``).

Each nginx is started once per module and stopped at its end. Nothing sleeps for behaviour:
waits are for events, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator

import pytest
import tornado.httpserver
import tornado.netutil
from tornado.httpclient import AsyncHTTPClient

from gchat.config import Settings
from tests.browser.gchat_browser import (ANA, CHROMIUM, CHROMIUM_ARGS, DAN, GchatServer, buddy, messages, send,
                                         wait_connected, window_with)
from tests.support.clients import PollClient, WSClient, connect
from tests.support.process import ServerProcess, free_port
from tests.services import _apt_install

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNIPPET = os.path.join(REPO, "conf", "nginx-gchat.conf")
START_TIMEOUT_S = 15.0


# -- the snippet and its adaptations ------------------------------------------------------------

def _replace_once(text: str, pattern: str, replacement: str, *, count: int = 1) -> str:
    new, found = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert found == count, f"conf/nginx-gchat.conf: expected {count} match(es) of {pattern!r}, found {found}"
    return new


def adapted_snippet(upstream_port: int, listen_port: int, *, upgrade: bool = True, buffering: bool = False) -> str:
    with open(SNIPPET, encoding="utf-8") as handle:
        text = handle.read()
    text = _replace_once(text, r"^(\s*server\s+)127\.0\.0\.1:8888;", rf"\g<1>127.0.0.1:{upstream_port};")
    text = _replace_once(text, r"^(\s*listen\s+)80;", rf"\g<1>127.0.0.1:{listen_port};")
    if not upgrade:
        text = _replace_once(text, r"^\s*proxy_set_header\s+(Upgrade|Connection)\s+\$\w+;\s*\n", "", count=2)
    if buffering:
        text = _replace_once(text, r"^(\s*)proxy_buffering\s+off;", r"\g<1>proxy_buffering on;")
    return text


def listening(port: int) -> bool:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True


class Nginx:
    """nginx -p DIR -c DIR/nginx.conf in the foreground, with the adapted snippet included."""

    def __init__(self, name: str, snippet: str, port: int) -> None:
        self.binary = _apt_install("nginx", "nginx")
        self.dir = tempfile.mkdtemp(prefix=f"gchat-nginx-{name}-")
        self.port = port
        self.origin = f"http://127.0.0.1:{port}"
        with open(os.path.join(self.dir, "gchat.conf"), "w", encoding="utf-8") as handle:
            handle.write(snippet)
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers may then use the private folder
        temp = "\n".join(f"    {kind}_temp_path {self.dir}/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        with open(os.path.join(self.dir, "nginx.conf"), "w", encoding="utf-8") as handle:
            handle.write(f"{user}worker_processes 1;\nevents {{ worker_connections 256; }}\n"
                         f"http {{\n    access_log {self.dir}/access.log;\n{temp}\n"
                         f"    include {self.dir}/gchat.conf;\n}}\n")
        self.process = ServerProcess(self._command(), log_path=os.path.join(self.dir, "nginx.log"), name="nginx")

    def _command(self, *extra: str) -> list[str]:
        return [self.binary, "-p", self.dir, "-c", os.path.join(self.dir, "nginx.conf"),
                "-g", f"daemon off; pid {self.dir}/nginx.pid; error_log stderr;", *extra]

    def start(self) -> None:
        checked = subprocess.run(self._command("-t"), capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, f"nginx -t refused the snippet:\n{checked.stderr}"
        self.process.start(lambda: listening(self.port), START_TIMEOUT_S)

    def stop(self) -> None:
        self.process.stop()  # SIGTERM is nginx's fast shutdown: it drops open long-polls too
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        return self.process.output()


def running_nginx(name: str, snippet: str, port: int) -> Iterator[Nginx]:
    proxy = Nginx(name, snippet, port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def upstream_port() -> int:
    """Where the in-process gchat of each test listens, behind the module's proxies."""
    return free_port()


@pytest.fixture(scope="module")
def nginx(upstream_port) -> Iterator[Nginx]:
    port = free_port()
    yield from running_nginx("shipped", adapted_snippet(upstream_port, port), port)


@pytest.fixture(scope="module")
def nginx_buffered(upstream_port) -> Iterator[Nginx]:
    port = free_port()
    yield from running_nginx("buffered", adapted_snippet(upstream_port, port, buffering=True), port)


@pytest.fixture(scope="module")
def demo_gchat() -> Iterator[GchatServer]:
    """gchat in demo mode (its own SQLite Moodle and demo pages), as a subprocess."""
    with tempfile.TemporaryDirectory(prefix="gchat-nginx-demo-") as data_dir:
        server = GchatServer(data_dir, free_port(), ["--presence_grace=1", "--log_level=warning"])
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def nginx_no_upgrade(demo_gchat) -> Iterator[Nginx]:
    port = free_port()
    yield from running_nginx("no-upgrade", adapted_snippet(demo_gchat.port, port, upgrade=False), port)


@pytest.fixture(scope="module")
def nginx_demo(demo_gchat) -> Iterator[Nginx]:
    """The shipped snippet in front of the demo server: the browser's control case."""
    port = free_port()
    yield from running_nginx("demo", adapted_snippet(demo_gchat.port, port), port)


@pytest.fixture
def gchat_behind(io_loop, app, upstream_port):
    """This test's gchat (production's make_app over the test database) on the upstream port,
    trusting the proxy's X-Real-IP as conf/nginx-gchat.conf advises (xheaders = true)."""
    server = tornado.httpserver.HTTPServer(app, xheaders=True)
    server.add_sockets(tornado.netutil.bind_sockets(upstream_port, "127.0.0.1"))
    yield app
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=10)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition of the server's state (checked every few ms, bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def is_message(text: str) -> Callable[[dict], bool]:
    return lambda e: e.get("type") == "message" and e["message"]["text"] == text


# -- as shipped ---------------------------------------------------------------------------------

def test_snippet_read_timeout_outlasts_the_longest_poll():
    with open(SNIPPET, encoding="utf-8") as handle:
        text = handle.read()
    longest_poll = Settings().longpoll_timeout[1]
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        [seconds] = re.findall(rf"^\s*{name}\s+(\d+)s;", text, flags=re.MULTILINE)
        assert int(seconds) > longest_poll + 15, f"{name} must outlast a {longest_poll} s long-poll"
    assert re.search(r"^\s*proxy_buffering\s+off;", text, flags=re.MULTILINE)
    assert re.search(r"^\s*proxy_http_version\s+1\.1;", text, flags=re.MULTILINE)


@pytest.mark.gen_test(timeout=60)
async def test_chat_through_nginx_over_websocket_and_longpoll(nginx, gchat_behind, site):
    base = nginx.origin
    ana, ben = site.classmates("Ana", "Ben")
    # The browser's Origin is nginx's: gchat sees the Host the browser used, so it is its own.
    a = await connect(base, site, ana, WSClient, origin=base)
    b = await connect(base, site, ben, PollClient)
    a2 = await connect(base, site, ana, PollClient)  # Ana's second tab, long-polling

    conv = (await a.command("open", user=ben))["conversation"]["id"]
    sent = await a.send_text(conv, "hello through nginx")
    assert sent["ok"]
    assert (await b.wait_for(is_message("hello through nginx")))["message"] == sent["message"]
    await a2.wait_for(is_message("hello through nginx"))
    back = await b.send_text(conv, "olá de volta, über long-poll")
    assert back["ok"]
    await a.wait_for(is_message("olá de volta, über long-poll"))
    await a2.wait_for(is_message("olá de volta, über long-poll"))

    health = await AsyncHTTPClient().fetch(base + "/gchat/health")
    assert health.code == 200 and b'"websocket":1' in health.body and b'"longpoll":2' in health.body
    metrics = await AsyncHTTPClient().fetch(base + "/gchat/metrics")  # allowed from 127.0.0.1
    assert b"gchat_messages_total 2.0" in metrics.body
    for client in (a, b, a2):
        await client.close()


@pytest.mark.gen_test(timeout=60)
async def test_websocket_resumes_through_nginx_after_a_drop(nginx, gchat_behind, site):
    ana, ben = site.classmates("Ana", "Ben")
    a = await connect(nginx.origin, site, ana, WSClient)
    b = await connect(nginx.origin, site, ben, WSClient)
    conv = (await a.command("open", user=ben))["conversation"]["id"]
    await a.send_text(conv, "first")
    await b.wait_for(is_message("first"))
    cursor, token = b.cursor, b.token
    await b.close()
    await a.send_text(conv, "while you were away")
    again = await WSClient(nginx.origin, token).connect(cursor=cursor)
    await again.wait_for(is_message("while you were away"))
    assert again.of_type("ready") == []
    await a.close()
    await again.close()


# -- proxy_buffering on -------------------------------------------------------------------------

def parked_polls(app) -> int:
    """Long-polls waiting in the server right now."""
    tabs = app.settings["poll_tabs"]._tabs.values()
    return sum(1 for tab in tabs if tab._waiter is not None and not tab._waiter.done())


@pytest.mark.gen_test(timeout=60)
async def test_buffering_proxy_still_delivers_a_waiting_poll_within_a_second(nginx_buffered, gchat_behind, site):
    ana, ben = site.classmates("Ana", "Ben")
    a = await connect(nginx_buffered.origin, site, ana, PollClient)
    b = await connect(nginx_buffered.origin, site, ben, PollClient)
    conv = (await a.command("open", user=ben))["conversation"]["id"]
    loop = asyncio.get_running_loop()
    for i in range(3):
        # Both polls parked in gchat (behind nginx), then a message: Ben's poll must come back
        # through the buffering proxy at once, not at the end of the 5 s poll.
        await until(lambda: parked_polls(gchat_behind) == 2)
        started = loop.time()
        assert (await a.send_text(conv, f"buffered {i}"))["ok"]
        await b.wait_for(is_message(f"buffered {i}"), timeout=1.0)
        assert loop.time() - started < 1.0
    await a.close()
    await b.close()


# -- no Upgrade headers: the widget falls back to long-polling (Chromium) -------------------------

@pytest.fixture
def chromium():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class Person:
    """A demo user in their own browser context, reaching gchat only through the proxy."""

    def __init__(self, browser, proxy: Nginx, user_id: int) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.context.set_default_timeout(15_000)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.websockets: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("websocket", lambda ws: self.websockets.append(ws.url))
        self.page.goto(f"{proxy.origin}/gchat/demo")
        self.page.click(f"form:has(input[name=user][value='{user_id}']) button[type=submit]")
        self.page.wait_for_url("**/demo/course**")
        wait_connected(self.page)

    def close(self) -> None:
        self.context.close()


def test_widget_without_upgrade_headers_falls_back_to_longpoll_and_chats_live(chromium, nginx_no_upgrade):
    from playwright.sync_api import expect

    ana = Person(chromium, nginx_no_upgrade, ANA)
    dan = Person(chromium, nginx_no_upgrade, DAN)
    try:
        for person in (ana, dan):
            assert person.page.evaluate("window.gchat.transport") == "longpoll"
            # It did try a WebSocket (through the proxy), which the proxy could not upgrade.
            assert any(url.startswith(f"ws://127.0.0.1:{nginx_no_upgrade.port}/gchat/ws") for url in person.websockets)
        a, d = ana.page, dan.page
        expect(buddy(a, DAN)).to_be_visible()  # Dan's arrival reached Ana's waiting poll
        buddy(a, DAN).click()
        send(a, DAN, "Dan, can you read this without WebSockets?")
        # Real time: far sooner than a long-poll's 45-55 s heartbeat would bring it.
        expect(messages(d, ANA).last.locator(".gchat-text")).to_have_text(
            "Dan, can you read this without WebSockets?", timeout=5_000)
        send(d, ANA, "Yes, over long-polling.")
        expect(messages(a, DAN).last.locator(".gchat-text")).to_have_text("Yes, over long-polling.", timeout=5_000)
        expect(window_with(a, DAN)).to_be_visible()
        assert a.evaluate("window.gchat.transport") == d.evaluate("window.gchat.transport") == "longpoll"
        assert not ana.errors and not dan.errors, (ana.errors, dan.errors)
    finally:
        ana.close()
        dan.close()


def test_widget_through_the_shipped_snippet_uses_websocket(chromium, nginx_demo):
    """The control case of the test above: the same browser and server, the snippet as shipped
    (the browser's Origin and Host reach gchat intact, so its WebSocket is accepted)."""
    ana = Person(chromium, nginx_demo, ANA)
    try:
        assert ana.page.evaluate("window.gchat.transport") == "websocket"
        assert not ana.errors, ana.errors
    finally:
        ana.close()
