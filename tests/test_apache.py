"""The real Apache httpd 2.4 (Debian's apache2) in front of gchat, with conf/apache-gchat.conf.

Each Apache runs as a private instance: its own ServerRoot, config, pid file and logs in a
temporary folder, on a free loopback port, loading only the modules the snippet needs (as
``a2enmod proxy proxy_http proxy_wstunnel headers`` would). The snippet is included inside a
<VirtualHost>, as its header tells the admin to, with two adaptations: the gchat address (the
test's gchat) and, for one variant, the "Older Apache" recipe the snippet documents
(mod_rewrite + mod_proxy_wstunnel instead of ``upgrade=websocket``).

Each Apache is started once per module and stopped at its end. Waits are for events, bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from tests.browser.gchat_browser import free_port
from tests.support.clients import PollClient, WSClient
from tests.services import _apt_install
from tests.test_nginx import connect, gchat_behind, is_message, parked_polls, until, upstream_port  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNIPPET = os.path.join(REPO, "conf", "apache-gchat.conf")
MODULES_DIR = "/usr/lib/apache2/modules"
# What the snippet uses: mod_proxy(+http, +wstunnel for older Apache), headers, setenvif,
# rewrite (older Apache), authz_core/authz_host (Require local); mpm_event is Debian's default.
MODULES = ("mpm_event", "authz_core", "authz_host", "proxy", "proxy_http", "proxy_wstunnel", "headers",
           "setenvif", "rewrite")
START_TIMEOUT_S = 15.0


def adapted_snippet(upstream_port: int, *, older_apache: bool = False) -> str:
    with open(SNIPPET, encoding="utf-8") as handle:
        text = handle.read()
    assert text.count("127.0.0.1:8888") >= 3, "conf/apache-gchat.conf: expected gchat at 127.0.0.1:8888"
    text = text.replace("127.0.0.1:8888", f"127.0.0.1:{upstream_port}")
    if older_apache:
        # What the snippet tells an admin of Apache 2.4.5-2.4.46 to do.
        text, found = re.subn(r" upgrade=websocket", "", text)
        assert found == 1, "conf/apache-gchat.conf: expected one ProxyPass with upgrade=websocket"
        text, found = re.subn(r"^(\s*)#\s*(Rewrite(Engine|Cond|Rule)\b.*)$", r"\1\2", text, flags=re.MULTILINE)
        assert found == 3, "conf/apache-gchat.conf: expected the three commented Rewrite lines"
    return text


class Apache:
    """apache2 -d DIR -f DIR/httpd.conf -DFOREGROUND with the adapted snippet included."""

    def __init__(self, name: str, snippet: str, port: int) -> None:
        self.binary = _apt_install("apache2", "apache2")
        self.dir = tempfile.mkdtemp(prefix=f"gchat-apache-{name}-")
        self.port = port
        self.origin = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.log_path = os.path.join(self.dir, "error.log")
        with open(os.path.join(self.dir, "gchat.conf"), "w", encoding="utf-8") as handle:
            handle.write(snippet)
        modules = "\n".join(f"LoadModule {m}_module {MODULES_DIR}/mod_{m}.so" for m in MODULES)
        # As root, Apache's children must run as someone else; they need nothing from this folder.
        user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
        with open(os.path.join(self.dir, "httpd.conf"), "w", encoding="utf-8") as handle:
            handle.write(f'ServerRoot "{self.dir}"\nDefaultRuntimeDir "{self.dir}"\nPidFile "{self.dir}/httpd.pid"\n'
                         f"Mutex file:{self.dir} default\nListen 127.0.0.1:{port}\nServerName 127.0.0.1\n"
                         f'ErrorLog "{self.log_path}"\nLogLevel warn\n{user}{modules}\n'
                         f"<VirtualHost 127.0.0.1:{port}>\n    ServerName 127.0.0.1\n"
                         f'    Include "{self.dir}/gchat.conf"\n</VirtualHost>\n')

    def _command(self, *extra: str) -> list[str]:
        return [self.binary, "-d", self.dir, "-f", os.path.join(self.dir, "httpd.conf"), *extra]

    def start(self) -> None:
        checked = subprocess.run(self._command("-t"), capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, f"apache2 -t refused the snippet:\n{checked.stderr}"
        self.process = subprocess.Popen(self._command("-DFOREGROUND"), stdout=subprocess.DEVNULL,
                                        stderr=open(os.path.join(self.dir, "stderr.log"), "wb"))
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"apache2 exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"apache2 did not listen in {START_TIMEOUT_S} s:\n{self.log()}") from None
                time.sleep(0.02)  # polling for the listening socket, not waiting for behaviour

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # stop now: children and open tunnels too
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        text = ""
        for name in ("error.log", "stderr.log"):
            try:
                with open(os.path.join(self.dir, name), encoding="utf-8", errors="replace") as handle:
                    text += handle.read()[-3000:]
            except OSError:
                pass
        return text or "(no log)"


def running_apache(name: str, snippet: str) -> Iterator[Apache]:
    proxy = Apache(name, snippet, free_port())
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def apache(upstream_port) -> Iterator[Apache]:
    yield from running_apache("shipped", adapted_snippet(upstream_port))


@pytest.fixture(scope="module")
def apache_older(upstream_port) -> Iterator[Apache]:
    yield from running_apache("older", adapted_snippet(upstream_port, older_apache=True))


class SeenAddress(tornado.web.RequestHandler):
    """Test-only page: the client address gchat's handlers see (xheaders = true)."""

    def get(self) -> None:
        self.write(self.request.remote_ip)


# -- as shipped -------------------------------------------------------------------------------------

def test_snippet_timeouts_outlast_the_longest_poll():
    from gchat.config import Settings

    with open(SNIPPET, encoding="utf-8") as handle:
        text = handle.read()
    longest_poll = Settings().longpoll_timeout[1]
    [proxy_timeout] = re.findall(r"^\s*ProxyTimeout\s+(\d+)", text, flags=re.MULTILINE)
    [pass_timeout] = re.findall(r"^\s*ProxyPass\s.*\btimeout=(\d+)", text, flags=re.MULTILINE)
    assert int(proxy_timeout) > longest_poll + 15 and int(pass_timeout) > longest_poll + 15


@pytest.mark.gen_test(timeout=60)
async def test_chat_through_apache_over_websocket_and_longpoll(apache, gchat_behind, site):
    base = apache.origin
    ana, ben = site.classmates("Ana", "Ben")
    a = await connect(base, site, ana, WSClient, origin=base)  # the WebSocket upgrade through Apache
    b = await connect(base, site, ben, PollClient)

    conv = (await a.command("open", user=ben))["conversation"]["id"]
    sent = await a.send_text(conv, "hello through apache")
    assert sent["ok"]
    assert (await b.wait_for(is_message("hello through apache")))["message"] == sent["message"]
    back = await b.send_text(conv, "olá de volta, über long-poll")
    assert back["ok"]
    await a.wait_for(is_message("olá de volta, über long-poll"))

    health = await AsyncHTTPClient().fetch(base + "/gchat/health")
    assert health.code == 200 and b'"websocket":1' in health.body and b'"longpoll":1' in health.body
    metrics = await AsyncHTTPClient().fetch(base + "/gchat/metrics")  # "Require local" lets this host in
    assert b"gchat_messages_total 2.0" in metrics.body
    for client in (a, b):
        await client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_waiting_poll_is_answered_at_once_through_apache(apache, gchat_behind, site):
    ana, ben = site.classmates("Ana", "Ben")
    a = await connect(apache.origin, site, ana, PollClient)
    b = await connect(apache.origin, site, ben, PollClient)
    conv = (await a.command("open", user=ben))["conversation"]["id"]
    for i in range(3):
        # Both polls parked in gchat behind Apache, then a message: Ben's poll must come back
        # through the proxy now, not when the 5 s poll ends (nothing buffered or compressed).
        await until(lambda: parked_polls(gchat_behind) == 2)
        assert (await a.send_text(conv, f"prompt {i}"))["ok"]
        await b.wait_for(is_message(f"prompt {i}"), timeout=1.0)
    await a.close()
    await b.close()


@pytest.mark.gen_test(timeout=60)
async def test_origin_check_still_holds_through_apache(apache, gchat_behind, site):
    """ProxyPreserveHost keeps the browser's Host, so gchat still refuses a WebSocket opened by a
    page of another site, and accepts its own."""
    (ana,) = site.classmates("Ana")
    good = await connect(apache.origin, site, ana, WSClient, origin=apache.origin)
    with pytest.raises(HTTPClientError) as refused:
        await WSClient(apache.origin, good.token).connect(origin="https://evil.example")
    assert refused.value.code == 403
    await good.close()


@pytest.mark.gen_test(timeout=60)
async def test_gchat_sees_the_visitors_address_through_apache(apache, gchat_behind):
    """The per-address limits and logs need the visitor's address, not Apache's: the request
    comes from 127.0.0.2 and gchat (xheaders = true, as the snippet advises) must see that."""
    gchat_behind.add_handlers(r".*", [(r"/gchat/test-seen-address", SeenAddress)])
    reader, writer = await asyncio.open_connection("127.0.0.1", apache.port, local_addr=("127.0.0.2", 0))
    try:
        writer.write(b"GET /gchat/test-seen-address HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw[:300]
    assert body.strip().endswith(b"127.0.0.2"), body


# -- the documented recipe for Apache before 2.4.47 (mod_rewrite + mod_proxy_wstunnel) ----------------

@pytest.mark.gen_test(timeout=60)
async def test_older_apache_recipe_also_chats_over_websocket(apache_older, gchat_behind, site):
    base = apache_older.origin
    ana, ben = site.classmates("Ana", "Ben")
    a = await connect(base, site, ana, WSClient, origin=base)
    b = await connect(base, site, ben, PollClient)
    conv = (await a.command("open", user=ben))["conversation"]["id"]
    assert (await a.send_text(conv, "via wstunnel"))["ok"]
    await b.wait_for(is_message("via wstunnel"))
    assert (await b.send_text(conv, "and back"))["ok"]
    await a.wait_for(is_message("and back"))
    health = await AsyncHTTPClient().fetch(base + "/gchat/health")
    assert b'"websocket":1' in health.body
    await a.close()
    await b.close()
