"""What a long-poll's answer still owes the browser after the server let go of the request it
parked: the keep-alive an HTTP/1.0 client (a proxy speaking 1.0) asked for, and the CORS
headers of a Moodle page. Several polls go over one TCP connection here, as a browser's do."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from tests.support.clients import WSClient, bootstrap

MOODLE_ORIGIN = "http://moodle.test"  # the test settings' moodle_wwwroot


class KeptAliveConnection:
    """One TCP connection carrying HTTP/1.0 polls with ``Connection: keep-alive``."""

    def __init__(self, base_url: str, token: str) -> None:
        self.netloc = urlsplit(base_url).netloc
        self.token = token

    async def open(self) -> KeptAliveConnection:
        host, port = self.netloc.rsplit(":", 1)
        self.reader, self.writer = await asyncio.open_connection(host, int(port))
        return self

    async def poll(self, cursor: str | None) -> tuple[int, dict[str, str], dict[str, Any]]:
        path = "/gchat/api/poll?tab=kept" + (f"&cursor={quote(cursor)}" if cursor else "")
        self.writer.write((f"GET {path} HTTP/1.0\r\nHost: {self.netloc}\r\nX-Gchat-Token: {self.token}\r\n"
                           f"Origin: {MOODLE_ORIGIN}\r\nConnection: keep-alive\r\n\r\n").encode())
        head = (await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
        status_line, *lines = head.strip().split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), 10)
        return int(status_line.split()[1]), headers, json.loads(body)

    def close(self) -> None:
        self.writer.close()


def presence_of(events: list[dict[str, Any]], user: int) -> list[str]:
    """The statuses ``events`` announce for ``user``, single or batched."""
    changes = [change for event in events if event["type"] == "presence_batch" for change in event["changes"]]
    changes += [event for event in events if event["type"] == "presence"]
    return [change["status"] for change in changes if change["user"]["id"] == user]


def assert_kept_and_allowed(headers: dict[str, str]) -> None:
    assert headers["connection"] == "Keep-Alive"  # Tornado answers the HTTP/1.0 client's keep-alive
    assert headers["access-control-allow-origin"] == MOODLE_ORIGIN


@pytest.mark.gen_test(timeout=30)
async def test_polls_of_a_moodle_page_keep_their_connection_and_cors_headers(http_server, base_url, site):
    ana, ben = site.classmates("Ana", "Ben")
    _, boot = await bootstrap(base_url, site.login(ana))
    connection = await KeptAliveConnection(base_url, boot["token"]).open()
    try:
        status, headers, ready = await connection.poll(None)
        assert status == 200 and ready["events"][0]["type"] == "ready"
        assert_kept_and_allowed(headers)
        # Each later poll waits (nothing new) until Ben comes online, then goes offline; all of
        # them travel on the one connection, which each answer therefore kept open.
        waiting = asyncio.ensure_future(connection.poll(ready["cursor"]))
        _, boot_b = await bootstrap(base_url, site.login(ben))
        ben_ws = await WSClient(base_url, boot_b["token"]).connect()
        status, headers, online = await waiting
        assert status == 200 and presence_of(online["events"], ben) == ["online"], online
        assert_kept_and_allowed(headers)
        waiting = asyncio.ensure_future(connection.poll(online["cursor"]))
        await ben_ws.close()
        status, headers, offline = await waiting
        assert status == 200 and presence_of(offline["events"], ben) == ["offline"]
        assert_kept_and_allowed(headers)
    finally:
        connection.close()
