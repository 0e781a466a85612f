"""WebSocket heartbeats on a real server (gchat's own pinger, one timer for every socket): a peer
that answers pings stays connected however long it is idle; one that stops answering (a laptop
closed, a network gone without a FIN) is closed after the next ping and its user goes offline
for course-mates, instead of staying online until the kernel gives up on the socket; an admin
sees how many were closed so in /metrics."""

from __future__ import annotations

import asyncio
import struct

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

from tests.support.clients import RawWebSocket, bootstrap

PING, PONG, CLOSE = 0x9, 0xA, 0x8


@pytest.fixture
def settings(settings):
    # Pings every 0.5 s: long beside a loaded loop, a pong is late only when lost. Sessions are
    # re-checked as shipped (every 2 s), for the socket closed because its session ended.
    return settings.replace(ws_ping_interval=0.5, session_check_interval=2.0)


async def raw_socket(base_url, site, user, sid=None):
    code, boot = await bootstrap(base_url, sid or site.login(user))
    assert code == 200, boot
    return await RawWebSocket.open(base_url, boot["token"])


async def ping_timeouts(base_url):
    body = (await AsyncHTTPClient().fetch(f"{base_url}/gchat/metrics")).body.decode()
    [family] = [f for f in text_string_to_metric_families(body) if f.name == "gchat_websocket_ping_timeouts"]
    return family.samples[0].value


async def frames_until(raw, stop, answer_pings):
    """The opcodes received until ``stop(opcode, payload, opcodes so far)`` is true, and the last
    payload; each ping answered with a pong, or not."""
    seen = []
    while True:
        opcode, payload = await raw.receive()
        seen.append(opcode)
        if opcode == PING and answer_pings:
            raw.send(PONG, payload)
        if stop(opcode, payload, seen):
            return seen, payload


@pytest.mark.gen_test(timeout=30)
async def test_a_peer_that_stops_answering_pings_is_closed_and_goes_offline(http_server, base_url, site, people):
    ana, ben, cat = site.classmates("Ana", "Ben", "Cat")
    watcher = await people.connect(cat)
    silent = await raw_socket(base_url, site, ana)
    answering = await raw_socket(base_url, site, ben)
    try:
        assert await ping_timeouts(base_url) == 0
        await watcher.wait_for(lambda e: e.get("type") == "presence" and e["user"]["id"] == ana
                               and e["status"] == "online")
        # Ben answers every ping, all along (a socket left unread would not answer in time).
        ben_pings = asyncio.ensure_future(
            frames_until(answering, lambda op, _, ops: op == CLOSE or ops.count(PING) == 3, answer_pings=True))
        # Ana's socket never answers: pinged, then closed by the pinger ("ping timed out").
        seen, payload = await frames_until(silent, lambda op, _, __: op == CLOSE, answer_pings=False)
        assert seen.count(PING) == 1, seen
        assert struct.unpack(">H", payload[:2])[0] == 1000 and payload[2:] == b"ping timed out"
        assert await ping_timeouts(base_url) == 1
        # Ben: still connected three pings on, and gchat still answers him.
        seen, _ = await ben_pings
        assert seen.count(PING) == 3 and CLOSE not in seen
        answering.send(0x1, b'{"type":"ping","ref":7}')
        seen, reply = await frames_until(answering, lambda op, body, _: op == CLOSE or b'"reply"' in body,
                                         answer_pings=True)
        assert CLOSE not in seen and b'"ref":7' in reply and b'"ok":true' in reply
        assert await ping_timeouts(base_url) == 1  # Ben's socket was never counted
        # Course-mates see Ana go offline once the grace period after the close is over.
        await watcher.wait_for(lambda e: e.get("type") == "presence" and e["user"]["id"] == ana
                               and e["status"] == "offline")
    finally:
        silent.close()
        answering.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_socket_closed_for_another_reason_is_neither_pinged_nor_counted(http_server, base_url, site):
    """A Moodle logout ends the socket (close 4000); its peer never completes the closing
    handshake, so the socket waits seconds for it. Meanwhile it is not pinged, and it is not
    counted as a ping timeout: /metrics counts only what the pings found dead."""
    (ana,) = site.classmates("Ana")
    sid = site.login(ana)
    raw = await raw_socket(base_url, site, ana, sid)
    try:
        await frames_until(raw, lambda op, _, ops: ops.count(PING) == 2, answer_pings=True)  # pinged and answering
        site.logout(sid)
        _, payload = await frames_until(raw, lambda op, _, __: op == CLOSE, answer_pings=True)
        assert struct.unpack(">H", payload[:2])[0] == 4000
        after = []
        with pytest.raises(asyncio.IncompleteReadError):  # gchat gives up on the closing handshake
            while True:
                after.append((await raw.receive())[0])
        assert after == []  # no ping after the close frame
        assert await ping_timeouts(base_url) == 0
    finally:
        raw.close()
