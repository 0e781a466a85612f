"""Every limit: crossing it is refused with the contract's error code, the connection keeps
working where the contract says so, and other users are not affected."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from gchat.wire import encode_event
from tests.support.clients import PollClient, WSClient, bootstrap, connect
from tests.support.server_thread import ServerThread


@pytest.fixture
def settings(settings):
    return settings.replace(send_rate=2.0, send_burst=3, opens_per_minute=2, max_connections_per_user=2,
                            max_connections_per_address=5, max_frame_bytes=2048, max_output_bytes=64 * 1024,
                            idle_connection_timeout=0.5)


async def login(base_url, site, user, transport=WSClient):
    return await connect(base_url, site, user, transport)


@pytest.mark.gen_test(timeout=30)
async def test_frame_and_body_size(http_server, base_url, site, settings):
    ana, ben = site.classmates("Ana", "Ben")
    ws = await login(base_url, site, ana)
    poll = await login(base_url, site, ben, PollClient)
    big = json.dumps({"type": "ping", "ref": 1, "pad": "x" * settings.max_frame_bytes})
    reply = await ws.raw(big)
    assert reply["error"]["code"] == "too_long"
    assert (await ws.command("ping"))["ok"]  # the connection keeps working
    reply = await poll.raw(big)
    assert reply["http_status"] == 413 and reply["error"]["code"] == "too_long"
    assert (await poll.command("ping"))["ok"]
    # Far beyond the limit Tornado stops reading and closes with 1009 (message too big).
    await ws.conn.write_message("x" * (settings.max_frame_bytes * 5))
    assert await ws.wait_closed() == 1009
    assert (await poll.command("ping"))["ok"]
    await poll.close()


@pytest.mark.gen_test(timeout=30)
async def test_send_rate_limit(http_server, base_url, site, settings):
    ana, ben = site.classmates("Ana", "Ben")
    a = await login(base_url, site, ana)
    b = await login(base_url, site, ben)
    conv = (await b.command("open", user=ana))["conversation"]["id"]  # Ben's open spends Ben's bucket only
    replies = [await a.send_text(conv, f"flood {i}") for i in range(settings.send_burst + 2)]
    codes = [r["ok"] or r["error"]["code"] for r in replies]
    assert codes[:settings.send_burst] == [True] * settings.send_burst
    assert codes[settings.send_burst:] == ["rate_limited"] * 2
    assert (await b.send_text(conv, "Ben is not limited"))["ok"]
    assert (await a.command("ping"))["ok"]
    stored = site.rows("SELECT COUNT(*) FROM {p}gchat_messages WHERE sender = %s", (ana,))[0][0]
    assert stored == settings.send_burst
    await asyncio.sleep(1.0 / settings.send_rate)  # the refill is the behaviour under test
    assert (await a.send_text(conv, "after a pause"))["ok"]
    await a.close()
    await b.close()


@pytest.mark.gen_test(timeout=30)
async def test_opens_per_minute(http_server, base_url, site):
    ana, ben, cat, dan = site.classmates("Ana", "Ben", "Cat", "Dan")
    a = await login(base_url, site, ana)
    b = await login(base_url, site, ben)
    assert (await a.command("open", user=ben))["ok"]
    assert (await a.command("open", user=cat))["ok"]
    assert (await a.command("open", user=dan))["error"]["code"] == "rate_limited"
    assert (await b.command("open", user=dan))["ok"]
    await a.close()
    await b.close()


@pytest.mark.gen_test(timeout=30)
async def test_connections_per_user_and_address(http_server, base_url, site, settings):
    ana, ben, cat = site.classmates("Ana", "Ben", "Cat")
    tabs = [await login(base_url, site, ana), await login(base_url, site, ana, PollClient)]
    _, boot = await bootstrap(base_url, site.login(ana))
    third = await WSClient(base_url, boot["token"]).connect()
    assert await third.wait_closed() == 1013
    assert third.closed_error["code"] == "too_many_connections"
    poll = PollClient(base_url, boot["token"])
    poll.tab = "extra"
    status, body = await poll.poll_once()
    assert status == 429 and body["error"]["code"] == "too_many_connections"
    others = [await login(base_url, site, ben), await login(base_url, site, ben), await login(base_url, site, cat)]
    assert (await others[0].command("ping"))["ok"]
    # Five connections from 127.0.0.1 now: the next one is over max_connections_per_address.
    _, boot = await bootstrap(base_url, site.login(cat))
    over = await WSClient(base_url, boot["token"]).connect()
    assert await over.wait_closed() == 1013 and over.closed_error["code"] == "too_many_connections"
    for client in tabs + others:
        await client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_client_that_stops_reading_is_cut_off(http_server, base_url, site, services, settings):
    ana, ben = site.classmates("Ana", "Ben")
    a = await login(base_url, site, ana)
    b = await login(base_url, site, ben)
    a._reader.cancel()  # Ana's page stops reading; Tornado's client then stops reading the socket
    body = encode_event({"type": "typing", "conversation": 1, "user": ben, "pad": "y" * 65536})
    for _ in range(200):  # 13 MB: more than the kernel's socket buffers plus max_output_bytes
        await services.broker.publish([ana], body)
        await asyncio.sleep(0)
    received = 0
    while await a.conn.read_message() is not None:
        received += 1
    assert received < 200  # cut off, not buffered without bound
    assert not services.router.clients_of(ana)
    assert (await b.command("ping"))["ok"]
    await b.close()


def test_idle_connections_are_closed(settings, site):
    server = ServerThread(settings).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
            started = time.monotonic()
            assert idle.recv(1) == b""  # the server closed it: it never sent a request
            assert time.monotonic() - started < settings.idle_connection_timeout + 2
    finally:
        server.stop()
