"""Property-based: random and malformed commands over both transports. Never a 500 or a
traceback; always a reply with an error code of the contract; the next valid command works."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from tests.support.clients import WSClient, bootstrap
from tests.support.server_thread import ServerThread

CONTRACT_CODES = {"not_logged_in", "bad_token", "token_expired", "session_ended", "bad_origin", "bad_json",
                  "bad_command", "too_long", "empty", "rate_limited", "not_allowed", "not_found",
                  "too_many_connections", "unavailable", "shutting_down"}
COMMAND_TYPES = ["open", "send", "seen", "close", "minimize", "history", "typing", "ping"]

# Small integers hit the real users (11, 12) and conversation (1) of the fixture.
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=0, max_value=20),
                    st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=False), st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                           max_leaves=12)
field_names = st.sampled_from(["user", "conversation", "text", "client_id", "message", "minimized", "before",
                               "limit", "from", "ref", "sender"]) | st.text(max_size=12)
commands = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(COMMAND_TYPES) | st.text(max_size=12)},
                          optional={"ref": scalars}).flatmap(
        lambda base: st.dictionaries(field_names, json_values, max_size=5).map(lambda extra: {**extra, **base})),
    json_values,
)
raw_bodies = st.one_of(commands.map(json.dumps), st.text(max_size=200),
                       st.binary(max_size=200).map(lambda b: b.decode("latin-1")))


class ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def fuzz_server(settings, site):
    # Generous rate limits: the fuzzer sends fast, and rate limiting has its own tests.
    server = ServerThread(settings.replace(send_rate=10_000, send_burst=10_000, opens_per_minute=10_000)).start()
    ana, ben = site.classmates("Ana", "Ben")
    sid = site.login(ana)
    _, boot = asyncio.run(bootstrap(server.base_url, sid))
    status, opened = post(server.base_url, boot["token"], json.dumps({"type": "open", "user": ben}))
    assert status == 200 and opened["conversation"]["id"] == 1
    errors = ErrorRecords()
    for name in ("gchat", "tornado"):
        logging.getLogger(name).addHandler(errors)
    yield server, boot["token"], errors
    for name in ("gchat", "tornado"):
        logging.getLogger(name).removeHandler(errors)
    server.stop()


def check_reply(reply):
    assert reply.get("type") == "reply" and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        assert reply["error"]["code"] in CONTRACT_CODES, reply


def post(base_url, token, body: str):
    request = urllib.request.Request(f"{base_url}/gchat/api/send", data=body.encode("utf-8", "surrogatepass"),
                                     headers={"X-Gchat-Token": token}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


FUZZ = hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=raw_bodies)
def test_longpoll_send_survives_anything(fuzz_server, body):
    server, token, errors = fuzz_server
    status, reply = post(server.base_url, token, body)
    assert status < 500, (status, reply)
    check_reply(reply)
    assert (status == 200) == reply["ok"]
    status, pong = post(server.base_url, token, json.dumps({"type": "ping", "ref": "after"}))
    assert status == 200 and pong["ok"] and pong["ref"] == "after"
    assert not errors.records, [r.getMessage() for r in errors.records]


@FUZZ
@given(frames=st.lists(raw_bodies, min_size=1, max_size=5))
def test_websocket_survives_anything(fuzz_server, frames):
    server, token, errors = fuzz_server

    async def run():
        client = await WSClient(server.base_url, token).connect()
        await client.wait_type("ready")
        for frame in frames:
            client._replies.clear()
            future = asyncio.get_running_loop().create_future()
            try:
                ref = json.loads(frame).get("ref") if frame.lstrip().startswith("{") else None
            except ValueError:
                ref = None
            if not isinstance(ref, (str, int, float, bool, type(None))) or (isinstance(ref, str) and len(ref) > 128):
                ref = None
            client._replies[ref] = future
            if ref is not None:  # a reply with an unusable ref comes back with ref null
                client._replies[None] = future
            await client.conn.write_message(frame)
            check_reply(await asyncio.wait_for(future, 10))
        pong = await client.command("ping")
        assert pong["ok"]
        assert client.close_code is None
        await client.close()

    asyncio.run(run())
    assert not errors.records, [r.getMessage() for r in errors.records]
