"""The holes a security review found (issue 12), each over both transports where it applies,
with metrics on (the application fixture builds them when prometheus-client is installed): the
server answers with a code of the contract, the connection goes on, every reply is valid JSON,
and no ERROR line (no traceback) reaches the log. See docs/protocol.md §2, §3 and §7."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import struct
from typing import Any
from urllib.parse import quote

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from gchat.metrics import Metrics
from tests.support.clients import PollClient, RawWebSocket, WSClient, bootstrap
from tests.support.redis import with_params

pytestmark = pytest.mark.usefixtures("settings")

TRANSPORTS = ["websocket", "longpoll"]


@pytest.fixture(params=["memory", "redis"])
def brokers(request, settings):
    """A test that reads cursors runs with each broker (their ``read`` parses the cursor)."""
    if request.param == "memory":
        return settings
    url = with_params(request.getfixturevalue("redis_url"), key_prefix=request.getfixturevalue("redis_prefix"))
    return settings.replace(broker_url=url)


def strict_loads(text: str | bytes) -> Any:
    """JSON as RFC 8259 has it: NaN and ±Infinity are not JSON (Python's json accepts them)."""
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in a reply: not valid JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def error_log(caplog):
    """Every record at ERROR or above of gchat and Tornado, for tests that assert there is none."""
    caplog.set_level(logging.WARNING)
    return lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


class RawWS:
    """A WebSocket whose frames a test reads as text, to check each is strict JSON."""

    async def connect(self, base_url: str, token: str, cursor: str | None = None) -> RawWS:
        url = base_url.replace("http", "ws", 1) + f"/gchat/ws?token={quote(token)}"
        if cursor is not None:
            url += f"&cursor={quote(cursor)}"
        self.conn = await websocket_connect(HTTPRequest(url))
        return self

    async def next_of(self, kind: str) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(self.conn.read_message(), 10)
            assert frame is not None, f"closed with {self.conn.close_code} before a {kind}"
            data = strict_loads(frame)
            if data.get("type") == kind:
                return data

    async def exchange(self, text: str) -> dict[str, Any]:
        await self.conn.write_message(text)
        return await self.next_of("reply")

    def close(self) -> None:
        self.conn.close()


async def post_raw(base_url: str, token: str, body: str | bytes) -> tuple[int, dict[str, Any]]:
    try:
        response = await AsyncHTTPClient().fetch(f"{base_url}/gchat/api/send", method="POST", body=body,
                                                 headers={"X-Gchat-Token": token})
        return response.code, strict_loads(response.body)
    except HTTPClientError as exc:
        assert exc.response is not None
        return exc.code, strict_loads(exc.response.body)


async def token_of(base_url: str, site: Any, user: int) -> str:
    code, boot = await bootstrap(base_url, site.login(user))
    assert code == 200, boot
    return boot["token"]


class Exchanger:
    """One frame or body in, its reply (strictly parsed) out, over one transport."""

    def __init__(self, base_url: str, token: str, transport: str) -> None:
        self.base_url, self.token, self.transport = base_url, token, transport
        self.ws: RawWS | None = None

    async def start(self) -> Exchanger:
        if self.transport == "websocket":
            self.ws = await RawWS().connect(self.base_url, self.token)
            await self.ws.next_of("ready")
        return self

    async def send(self, text: str) -> dict[str, Any]:
        if self.ws is not None:
            return await self.ws.exchange(text)
        status, reply = await post_raw(self.base_url, self.token, text)
        assert status < 500, (status, reply)
        assert (status == 200) == reply["ok"], (status, reply)
        return reply

    async def still_works(self) -> None:
        pong = await self.send('{"type":"ping","ref":"after"}')
        assert pong["ok"] and pong["ref"] == "after"

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


@pytest.fixture
def exchangers(http_server, base_url, site, io_loop):
    made: list[Exchanger] = []

    async def make(user: int, transport: str) -> Exchanger:
        exchanger = await Exchanger(base_url, await token_of(base_url, site, user), transport).start()
        made.append(exchanger)
        return exchanger

    yield make
    for exchanger in made:
        exchanger.close()


# -- 1. a type that is not a string -----------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_hole1_a_type_that_is_not_a_string_is_a_bad_command(exchangers, site, services, error_log,
                                                                     transport):
    assert isinstance(services.router.observer, Metrics), "metrics must be on: the crash was in their hook"
    (ana,) = site.classmates("Ana")
    tab = await exchangers(ana, transport)
    for kind in (["send"], {"type": "send"}, 7, 1.5, None, True, ["ping"]):
        reply = await tab.send(json.dumps({"type": kind, "ref": 3}))
        assert reply["ok"] is False and reply["error"]["code"] == "bad_command", (kind, reply)
        assert reply["ref"] == 3
    await tab.still_works()
    assert not error_log()


# -- 2. deep nesting ----------------------------------------------------------------------------------

DEEP = ["[" * 1000 + "]" * 1000,
        '{"type":"ping","ref":1,"x":' + "[" * 1000 + "]" * 1000 + "}",
        '{"a":' * 700 + "1" + "}" * 700,
        "[" * 5000,  # not even JSON: still no recursion
        '{"type":"ping","ref":1,"x":' + "[" * 40 + "]" * 40 + "}"]  # deeper than any command needs


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_hole2_deep_json_is_refused_and_the_connection_goes_on(exchangers, site, error_log, transport):
    (ana,) = site.classmates("Ana")
    tab = await exchangers(ana, transport)
    for frame in DEEP:
        assert len(frame) < 16384
        reply = await tab.send(frame)
        assert reply["error"]["code"] in ("bad_json", "bad_command"), reply
        await tab.still_works()
    # Brackets inside strings are text, not nesting.
    fine = await tab.send(json.dumps({"type": "ping", "ref": "[" * 3000 + "{" * 3000}))
    assert fine["ok"] is False or fine["ok"] is True  # a reply; the ref is too long to echo
    assert (await tab.send(json.dumps({"type": "ping", "ref": 2, "x": [[[[1]]]]})))["ok"]
    assert not error_log()


# -- 3. cursors that are not ours ---------------------------------------------------------------------

ODD_SEQS = ["²", "１２", "٣", "+1", "-1", " 1", "1 ", "1e3", "0x1", "99999999999999999999999999999", "",
            "1:1", "00", "1\u00a0", "𝟙"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=60)
async def test_hole3_an_odd_cursor_gets_a_fresh_ready(http_server, base_url, site, brokers, error_log, transport):
    (ana,) = site.classmates("Ana")
    token = await token_of(base_url, site, ana)
    first = await RawWS().connect(base_url, token)
    epoch = (await first.next_of("ready"))["cursor"].partition(":")[0]  # Ana's log lives while she is online
    odd = [f"{epoch}:{seq}" for seq in ODD_SEQS] + ["²:1", "ep och:1", "é:0", ":1", "x" * 80 + ":1"]
    poll = PollClient(base_url, token)
    poll.tab = secrets.token_hex(4)  # one tab: each poll gets its ready at once, none waits
    for cursor in odd:
        if transport == "websocket":
            ws = await RawWS().connect(base_url, token, cursor=cursor)
            ready = await ws.next_of("ready")
            ws.close()
        else:
            poll.cursor = cursor
            status, body = await poll.poll_once()
            assert status == 200, (cursor, status, body)
            ready = body["events"][0]
        assert ready["type"] == "ready" and ready["reset"] is True, cursor
    first.close()
    assert not error_log()


# -- 4. NaN and Infinity --------------------------------------------------------------------------------

NOT_JSON_NUMBERS = ['{"type":"ping","ref":NaN}', '{"type":"ping","ref":Infinity}', '{"type":"ping","ref":-Infinity}',
                    '{"type":"ping","ref":1e999}', '{"type":"ping","ref":-1e999}',
                    '{"type":"history","ref":1,"conversation":1,"limit":NaN}', '[NaN]', 'NaN',
                    '{"type":"ping","ref":1,"x":{"y":[Infinity]}}']


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_hole4_nan_and_infinity_are_refused(exchangers, site, error_log, transport):
    (ana,) = site.classmates("Ana")
    tab = await exchangers(ana, transport)
    for frame in NOT_JSON_NUMBERS:
        reply = await tab.send(frame)  # strictly parsed: a NaN echoed in "ref" would fail here
        assert reply["ok"] is False and reply["error"]["code"] in ("bad_json", "bad_command"), (frame, reply)
    await tab.still_works()
    assert (await tab.send('{"type":"ping","ref":1.5e300}'))["ref"] == 1.5e300  # big but finite is a number
    assert not error_log()


# -- 6. bad bytes in a static path ----------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_hole6_bad_bytes_in_a_static_path_are_not_found(http_server, base_url, error_log):
    client = AsyncHTTPClient()
    ok = await client.fetch(f"{base_url}/gchat/static/gchat.js")
    assert ok.code == 200
    for path in ("gchat.js%00.png", "%00", "gchat.js%00", "..%00/etc/passwd", "gchat%ff.js", "%c0%ae%c0%ae/x",
                 "gchat.js%0a", "gchat.js%01", "%ed%a0%80.js", "a" * 5000, "..%2f..%2fsetup.py", "%2e%2e/setup.py"):
        with pytest.raises(HTTPClientError) as failed:
            await client.fetch(f"{base_url}/gchat/static/{path}")
        assert failed.value.code in (400, 403, 404), (path, failed.value.code)
    assert not error_log()


# -- 7. typing is rate limited on both transports -----------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_hole7_typing_floods_are_rate_limited(people, site, settings, transport):
    ana, ben, a, b, conv = await people.chat(transport, "websocket")
    burst = settings.send_burst
    codes = []
    for _ in range(burst + 20):
        reply = await a.command("typing", conversation=conv)
        codes.append(True if reply["ok"] else reply["error"]["code"])
    assert codes.count(True) <= burst + 1  # the bucket refills at send_rate per second meanwhile
    assert codes.count("rate_limited") >= 19
    assert (await a.send_text(conv, "done typing"))["ok"]  # a bucket of its own: sends still go
    await b.wait_type("message")
    assert len(b.of_type("typing")) == codes.count(True)  # a refused notice never reaches the peer


# -- 8. the token in log lines ---------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_hole8_tokens_never_reach_the_log_in_full(http_server, base_url, site, caplog):
    caplog.set_level(logging.DEBUG)
    (ana,) = site.classmates("Ana")
    token = await token_of(base_url, site, ana)
    ws = await WSClient(base_url, token).connect()  # the access log line of the upgrade holds the URL
    await ws.wait_type("ready")
    await ws.close()
    poll = await PollClient(base_url, token).connect()
    await poll.wait_type("ready")
    await poll.close()
    client = AsyncHTTPClient()
    for url in (f"{base_url}/gchat/ws?token={token}",  # no Upgrade header: Tornado's 400 is logged
                f"{base_url}/gchat/ws?cursor=x&token={token}&x=%ff",
                f"{base_url}/gchat/static/gchat.js%00?token={token}",
                f"{base_url}/gchat/nowhere?token={quote(token)}"):
        with pytest.raises(HTTPClientError):
            await client.fetch(url)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    bad = await WSClient(base_url, forged).connect()
    assert await bad.wait_closed() == 1008
    lines = [r.getMessage() for r in caplog.records] + [r.exc_text or "" for r in caplog.records]
    assert any("/gchat/ws?" in line for line in lines), "the access log should still show the requests"
    signature = token.rsplit(".", 1)[-1]
    assert not [line for line in lines if signature in line or forged.rsplit(".", 1)[-1] in line]
    assert not [line for line in lines if token in line or quote(token) in line]


# -- 9. invalid UTF-8 in a text frame --------------------------------------------------------------------

async def raw_ws_frames(base_url: str, token: str, frames: list[tuple[int, bytes]]) -> tuple[int | None, bytes]:
    """Open a WebSocket by hand, send ``frames`` ((opcode, payload)) and return the close code the
    server sent (None: no close frame) with the payloads it sent before, one per line."""
    raw = await RawWebSocket.open(base_url, token)
    for opcode, payload in frames:
        raw.send(opcode, payload)
    close_code: int | None = None
    received = b""
    try:
        while True:
            opcode, payload = await raw.receive()
            if opcode == 0x8:
                close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                break
            received += payload + b"\n"
    except asyncio.IncompleteReadError:
        pass  # dropped without a close frame
    finally:
        raw.close()
    return close_code, received


@pytest.mark.gen_test(timeout=30)
async def test_hole9_invalid_utf8_closes_with_1007(http_server, base_url, site, error_log):
    (ana,) = site.classmates("Ana")
    token = await token_of(base_url, site, ana)
    for bad in (b"\xff\xfe", b'{"type":"ping","ref":"\xc3"}', b"\xed\xa0\x80", b"\xc0\xaf"):
        code, _ = await raw_ws_frames(base_url, token, [(0x1, bad)])
        assert code == 1007, (bad, code)
    # Valid UTF-8 on the same path still gets its reply, and a binary frame is bad_json, not a close.
    code, received = await raw_ws_frames(base_url, token, [(0x2, b"\xff"), (0x1, '{"type":"ping","ref":"é"}'.encode()),
                                                          (0x8, struct.pack(">H", 1000))])
    replies = [json.loads(line) for line in received.splitlines() if b'"reply"' in line]
    assert [r["ok"] or r["error"]["code"] for r in replies] == ["bad_json", True] and replies[1]["ref"] == "é"
    assert code == 1000
    assert not error_log()
