"""Property-based: whatever a client sends, over both transports and to every endpoint, the server
answers with a code of the contract (docs/protocol.md §7) at its one HTTP status, never a 500 or
a traceback in the log, and the connection (or the next request) still works.

Inputs: raw frames and bodies; every command type with each of its fields given every JSON type
(deep and wide structures, huge and tiny numbers, long strings, Unicode's odd corners: lone
surrogates, controls, bidi and format characters, non-characters); number literals JSON does not
have; every query parameter (``cursor``, ``tab``, ``token``) and header (``X-Gchat-Token``,
``Origin``, ``Content-Type``, the Moodle cookie) of every endpoint. Metrics are on (their hook
once crashed on an odd ``type``), and the session re-check runs at its shipped interval.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import urllib.parse

import pytest
from hypothesis import HealthCheck, assume, given, settings as hsettings, strategies as st
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from gchat.errors import HTTP_STATUS
from gchat.metrics import Metrics
from tests.support.clients import WSClient, bootstrap
from tests.support.server_thread import ServerThread

# The server runs in a thread of this process and draws from `random` (long-poll timeouts, the
# re-check's jitter) while hypothesis draws examples: hypothesis takes that for the strategy's.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

CONTRACT_CODES = {"not_logged_in", "bad_token", "token_expired", "session_ended", "bad_origin", "bad_json",
                  "bad_command", "too_long", "empty", "rate_limited", "not_allowed", "not_found",
                  "too_many_connections", "unavailable", "shutting_down"}
# Each command type and its fields (docs/protocol.md §6); a test checks this covers the router's.
COMMAND_FIELDS = {
    "open": ["user"], "send": ["conversation", "text", "client_id"], "seen": ["conversation", "message"],
    "close": ["conversation"], "minimize": ["conversation", "minimized"],
    "history": ["conversation", "before", "limit"], "typing": ["conversation"], "ping": [],
    "conversations": ["before", "limit"], "search": ["query", "offset", "limit"],
}
WS_CLOSE_CODES = {1008, 1013, 4000}  # what a refused WebSocket may close with (§2)
# Past 4 x max_frame_bytes Tornado stops reading (a WebSocket closes with 1009, a request body is
# cut off): tests/test_limits.py has those; the fuzzer stays below.
MAX_FUZZ_BYTES = 4 * 16384

# -- values ----------------------------------------------------------------------------------------

odd_pieces = st.one_of(
    st.characters(categories=["Cs"]),  # lone surrogates: only escaped ("\ud800") can they reach JSON
    st.characters(categories=["Cc", "Cf", "Co", "Zl", "Zp", "Mn"]),
    st.sampled_from(["\x00", "\u202e", "\ufeff", "\ufffe", "\uffff", "\U0010ffff", "\U0001f469\u200d\U0001f467",
                     "\u0130", "\u00df", "\ufdfa", "\u2028", "\"", "\\", "</script>", "%00", "'; --"]))
strings = st.one_of(
    st.text(max_size=30),
    st.lists(odd_pieces, max_size=8).map("".join),
    st.builds(lambda c, n: c * n, st.characters(), st.integers(1000, 3000)),  # long, some over 1333
)
numbers = st.one_of(
    st.integers(min_value=0, max_value=20),  # the fixture's users (11, 12) and conversation (1)
    st.integers(),
    st.sampled_from([-1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -2**63, 2**64, 10**40, -10**40]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([-0.0, 5e-324, 1.7976931348623157e308, 1.5, 11.0]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(strings, inner, max_size=6)),
    max_leaves=25)
wide_values = st.one_of(st.lists(st.integers(), min_size=200, max_size=1500),
                        st.dictionaries(st.text(max_size=6), st.none(), min_size=100, max_size=800))
any_value = st.one_of(scalars, json_values, wide_values)
# JSON texts Python's encoder never writes: deep nesting, number literals JSON does not have.
deep_texts = st.builds(lambda d, o, c: o * d + c * d, st.integers(1, 3000), st.just("["), st.just("]")) | \
    st.integers(1, 2000).map(lambda d: '{"a":' * d + "1" + "}" * d)
odd_literals = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" * 5000, "-0", "0x10", "01",
                                ".5", "1.", "+1", "true1", "nul", "\"\\ud800\"", "\"\\udc00\\ud800\""])
raw_values = st.one_of(deep_texts, odd_literals)

field_names = st.sampled_from(["user", "conversation", "text", "client_id", "message", "minimized", "before",
                               "limit", "query", "offset", "from", "ref", "sender", "user_id", "userid",
                               "type"]) | strings


def encode(data, ascii_only: bool) -> str:
    """JSON text of ``data``; with ``ascii_only`` false only when the text is UTF-8-encodable
    (a lone surrogate can only travel escaped)."""
    text = json.dumps(data, ensure_ascii=ascii_only)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data)
    return text


@st.composite
def typed_commands(draw) -> str:
    """A command of a known type whose fields (its own, extra ones, identity ones) hold anything."""
    kind = draw(st.sampled_from(sorted(COMMAND_FIELDS)))
    command: dict = {"type": kind}
    if draw(st.booleans()):
        command["ref"] = draw(any_value)
    for name in COMMAND_FIELDS[kind]:
        if draw(st.integers(0, 3)):
            command[name] = draw(any_value)
    for name, value in draw(st.dictionaries(field_names, any_value, max_size=3)).items():
        command.setdefault(name, value)
    text = encode(command, draw(st.booleans()))
    if draw(st.integers(0, 4)) == 0:  # splice a raw value JSON's encoder would not write
        raw = draw(raw_values)
        name = draw(st.sampled_from(["ref"] + COMMAND_FIELDS[kind]))
        text = text[:-1] + ("," if len(text) > 2 else "") + json.dumps(name) + ":" + raw + "}"
    return text


raw_bodies = st.one_of(
    typed_commands(),
    st.builds(encode, json_values, st.booleans()),
    raw_values,
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)

# Query parameter values: text, or raw bytes percent-encoded (not UTF-8, NULs, controls). URLs
# stay within 8 KB, as proxies have them (nginx's large_client_header_buffers; Tornado's own
# limit on a request's head is 64 KB, past which it closes the connection).
param_texts = st.one_of(st.text(max_size=60), st.lists(odd_pieces, max_size=8).map("".join),
                        st.integers(100, 2000).map(lambda n: "9" * n))
param_values = st.one_of(
    st.none(),
    param_texts.map(lambda s: urllib.parse.quote(s.encode("utf-8", "surrogatepass"), safe="")),
    st.binary(max_size=40).map(lambda b: "".join(f"%{x:02X}" for x in b)),
    st.sampled_from(["", "%", "%zz", "a%00b", "+", "%2B1", "ab:%C2%B2", "ab:%EF%BC%91", "x:1&x=2"]),
)
header_values = st.one_of(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
                          st.text(st.characters(min_codepoint=0x80, max_codepoint=0xFF), max_size=20))


# -- the server ---------------------------------------------------------------------------------------

class LogRecords(logging.Handler):
    """Records that would be an operator's trouble: errors, and anything with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


class Fuzzed:
    def __init__(self, server: ServerThread, token: str, sid: str, errors: LogRecords) -> None:
        self.server, self.token, self.sid, self.errors = server, token, sid, errors
        self.netloc = urllib.parse.urlsplit(server.base_url).netloc

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One request, sent as given (http.client re-encodes nothing in ``path``)."""
        conn = http.client.HTTPConnection(self.netloc, timeout=15)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                conn.putheader(name, value.encode("latin-1"))
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def send(self, body: str | bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        status, raw = self.request("POST", "/gchat/api/send", data, {"X-Gchat-Token": self.token, **(headers or {})})
        return status, strict_json(raw)

    def assert_clean(self) -> None:
        assert not self.errors.records, [r.getMessage()[:300] for r in self.errors.records]
        self.errors.records.clear()


def strict_json(raw: bytes) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in an answer: not JSON")

    return json.loads(raw, parse_constant=refuse)


@pytest.fixture
def fuzzed(settings, site):
    # Generous limits (the fuzzer is fast; limits have their own tests); quick long-polls; the
    # shipped session re-check interval, running while the fuzzer works.
    server = ServerThread(settings.replace(send_rate=10_000, send_burst=10_000, opens_per_minute=10_000,
                                           max_connections_per_user=10_000, max_connections_per_address=10_000,
                                           longpoll_timeout=(0.05, 0.05), session_check_interval=2.0)).start()
    ana, ben = site.classmates("Ana", "Ben")
    sid = site.login(ana)
    _, boot = asyncio.run(bootstrap(server.base_url, sid))
    errors = LogRecords()
    for name in ("gchat", "tornado"):
        logging.getLogger(name).addHandler(errors)
    target = Fuzzed(server, boot["token"], sid, errors)
    status, opened = target.send(json.dumps({"type": "open", "user": ben}))
    assert status == 200 and opened["conversation"]["id"] == 1
    assert isinstance(server.services.router.observer, Metrics)
    yield target
    for name in ("gchat", "tornado"):
        logging.getLogger(name).removeHandler(errors)
    server.stop()


def check_reply(status: int, reply: dict) -> None:
    assert status < 500 or reply.get("error", {}).get("code") in ("unavailable", "shutting_down"), (status, reply)
    assert reply.get("type") == "reply" and isinstance(reply.get("ok"), bool), reply
    if reply["ok"]:
        assert status == 200, (status, reply)
    else:
        code = reply["error"]["code"]
        assert code in CONTRACT_CODES and status == HTTP_STATUS[code], (status, reply)


def check_error_answer(status: int, body: bytes) -> None:
    """A refused HTTP request: the contract's shape and status."""
    error = strict_json(body)["error"]
    assert error["code"] in CONTRACT_CODES and status == HTTP_STATUS[error["code"]], (status, body[:300])


FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                  HealthCheck.data_too_large])


def test_the_fuzzer_knows_every_command(fuzzed):
    assert set(fuzzed.server.services.router.command_types) == set(COMMAND_FIELDS)


# -- commands ----------------------------------------------------------------------------------------------

@hsettings(max_examples=250, **FUZZ)
@given(body=raw_bodies)
def test_longpoll_send_survives_anything(fuzzed, body):
    assume(len(body.encode("utf-8", "surrogatepass")) <= MAX_FUZZ_BYTES)
    status, reply = fuzzed.send(body)
    check_reply(status, reply)
    status, pong = fuzzed.send(json.dumps({"type": "ping", "ref": "after"}))
    assert status == 200 and pong["ok"] and pong["ref"] == "after"
    fuzzed.assert_clean()


async def websocket_exchange(base_url: str, token: str, frames: list[str]) -> None:
    client = await WSClient(base_url, token).connect()
    try:
        await client.wait_type("ready")
        client._reader.cancel()  # read the frames here, strictly
        for frame in frames:
            await client.conn.write_message(frame)
            while True:
                answer = await asyncio.wait_for(client.conn.read_message(), 10)
                assert answer is not None, f"closed with {client.conn.close_code} after {frame[:200]!r}"
                data = strict_json(answer.encode("utf-8"))
                if data.get("type") == "reply":
                    break
            assert isinstance(data["ok"], bool)
            if not data["ok"]:
                assert data["error"]["code"] in CONTRACT_CODES, data
        await client.conn.write_message('{"type":"ping","ref":"after"}')
        while True:
            data = strict_json((await asyncio.wait_for(client.conn.read_message(), 10)).encode("utf-8"))
            if data.get("type") == "reply":
                assert data["ok"] and data["ref"] == "after"
                break
    finally:
        client.conn.close()


@hsettings(max_examples=80, **FUZZ)
@given(frames=st.lists(raw_bodies, min_size=1, max_size=6))
def test_websocket_survives_anything(fuzzed, frames):
    assume(all(len(frame.encode("utf-8", "surrogatepass")) <= MAX_FUZZ_BYTES for frame in frames))
    asyncio.run(websocket_exchange(fuzzed.server.base_url, fuzzed.token, frames))
    fuzzed.assert_clean()


# -- query parameters and headers -------------------------------------------------------------------------------

def query(*params: tuple[str, str | None]) -> str:
    return "&".join(f"{name}={value}" for name, value in params if value is not None)


@hsettings(max_examples=150, **FUZZ)
@given(tab=param_values, cursor=param_values, token=st.one_of(st.none(), header_values, st.just("valid")),
       extra=st.dictionaries(st.sampled_from(["tab", "cursor", "token", "x"]), param_values, max_size=2))
def test_poll_parameters_and_token_header(fuzzed, tab, cursor, token, extra):
    headers = {"X-Gchat-Token": fuzzed.token if token == "valid" else token} if token is not None else {}
    path = "/gchat/api/poll?" + query(("tab", tab), ("cursor", cursor), *extra.items())
    status, body = fuzzed.request("GET", path, headers=headers)
    if status == 200:
        answer = strict_json(body)
        assert isinstance(answer["events"], list) and isinstance(answer["cursor"], str)
        if answer["events"] and answer["events"][0]["type"] == "ready":
            assert isinstance(answer["events"][0]["reset"], bool)
    else:
        check_error_answer(status, body)
    status, body = fuzzed.request("GET", "/gchat/api/poll?tab=after", headers={"X-Gchat-Token": fuzzed.token})
    assert status == 200, body
    fuzzed.assert_clean()


async def websocket_attempt(base_url: str, path: str, origin: str | None) -> None:
    url = base_url.replace("http", "ws", 1) + path
    headers = {"Origin": origin} if origin is not None else {}
    try:
        conn = await websocket_connect(HTTPRequest(url, headers=headers))
    except HTTPClientError as exc:
        assert exc.code in (400, 403), exc  # a handshake refused: bad Origin (§2) or not a WebSocket request
        return
    try:
        first = await asyncio.wait_for(conn.read_message(), 10)
        assert first is not None, f"dropped without a frame, close {conn.close_code}"
        event = strict_json(first.encode("utf-8"))
        if event["type"] == "error":
            assert event["code"] in CONTRACT_CODES
            assert await asyncio.wait_for(conn.read_message(), 10) is None
            assert conn.close_code in WS_CLOSE_CODES, conn.close_code
        else:
            assert event["type"] == "ready" and isinstance(event["reset"], bool), event
    finally:
        conn.close()


@hsettings(max_examples=120, **FUZZ)
@given(token=st.one_of(st.just("valid"), param_values), cursor=param_values,
       origin=st.one_of(st.none(), st.just("http://moodle.test"), st.text(st.characters(min_codepoint=0x20,
                                                                                          max_codepoint=0x7E))))
def test_websocket_parameters_and_origin(fuzzed, token, cursor, origin):
    token_param = urllib.parse.quote(fuzzed.token) if token == "valid" else token
    path = "/gchat/ws?" + query(("token", token_param), ("cursor", cursor))

    async def run() -> None:
        await websocket_attempt(fuzzed.server.base_url, path, origin)
        await websocket_exchange(fuzzed.server.base_url, fuzzed.token, [])  # the next one works

    asyncio.run(run())
    fuzzed.assert_clean()


@hsettings(max_examples=100, **FUZZ)
@given(cookie=st.one_of(st.just("valid"), header_values), name=st.sampled_from(["MoodleSession", "moodlesession",
                                                                                "MoodleSessionx", "x"]),
       origin=st.one_of(st.none(), header_values), content_type=st.one_of(st.none(), header_values),
       body=raw_bodies)
def test_bootstrap_cookie_and_send_headers(fuzzed, cookie, name, origin, content_type, body):
    assume(len(body.encode("utf-8", "surrogatepass")) <= MAX_FUZZ_BYTES)
    value = fuzzed.sid if cookie == "valid" else cookie
    headers = {"Cookie": f"{name}={value}"}
    if origin is not None:
        headers["Origin"] = origin
    status, raw = fuzzed.request("GET", "/gchat/api/bootstrap", headers=headers)
    if status == 200:
        assert strict_json(raw)["user"]["id"] and name == "MoodleSession" and value == fuzzed.sid
    else:
        check_error_answer(status, raw)
    extra = {"Origin": origin} if origin is not None else {}
    if content_type is not None:
        extra["Content-Type"] = content_type
    check_reply(*fuzzed.send(body, extra))
    status, raw = fuzzed.request("GET", "/gchat/api/bootstrap", headers={"Cookie": f"MoodleSession={fuzzed.sid}"})
    assert status == 200, raw
    fuzzed.assert_clean()
