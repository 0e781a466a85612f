"""Commands alone (through the Router, over fakes): every refusal of the contract with its
code, authorisation, the rate limits, counts, the observer, and shutting down."""

from __future__ import annotations

import asyncio
import json

import pytest

from gchat.auth import TokenSigner
from gchat.errors import GchatError
from gchat.router import Router
from gchat.wire import parse_cursor

PROTOCOL_COMMANDS = {"open", "send", "seen", "close", "minimize", "history", "typing", "ping", "conversations",
                     "search"}


async def log_of(broker, uid):
    head = await broker.head(uid)
    epoch, _ = parse_cursor(head)
    events, _ = await broker.read(uid, f"{epoch}:0")
    return [json.loads(e) for e in events]


@pytest.fixture
def people(moodle):
    """Ana and Ben share a course; Cat too, but blocks Ana; Eve shares nothing."""
    ana, ben, cat = moodle.classmates("Ana", "Ben", "Cat")
    eve = moodle.add_user("Eve")
    moodle.block(cat, ana)
    return {"ana": moodle.identity(ana), "ben": moodle.identity(ben), "cat": moodle.identity(cat),
            "eve": moodle.identity(eve)}


async def opened(router, me, peer) -> int:
    reply = await router.handle(me, {"type": "open", "ref": 1, "user": peer.user_id})
    assert reply["ok"], reply
    return reply["conversation"]["id"]


def test_the_router_knows_exactly_the_protocols_commands(router):
    assert set(router.command_types) == PROTOCOL_COMMANDS


@pytest.mark.gen_test
async def test_a_chat_persists_then_publishes_to_both(router, people, broker, store):
    ana, ben = people["ana"], people["ben"]
    for who in (ana, ben):
        await broker.ensure_log(who.user_id)
    conv = await opened(router, ana, ben)
    reply = await router.handle(ana, {"type": "send", "ref": "r", "conversation": conv, "text": " hi ",
                                      "client_id": "c1"})
    assert reply["ok"] and reply["ref"] == "r" and reply["message"]["text"] == "hi"
    assert reply["message"]["from"] == ana.user_id
    assert (await store.history(conv, None, 10))[0].id == reply["message"]["id"], "stored"
    bens = await log_of(broker, ben.user_id)
    assert [e["type"] for e in bens] == ["conversation", "message"], "the window opens before the message"
    assert bens[1]["message"] == reply["message"]
    assert [e["type"] for e in await log_of(broker, ana.user_id)] == ["conversation", "message"]


@pytest.mark.gen_test
@pytest.mark.parametrize("command,code", [
    ([1, 2], "bad_command"),
    ("send", "bad_command"),
    ({"ref": 1}, "bad_command"),
    ({"type": "fly"}, "bad_command"),
    ({"type": ["open"]}, "bad_command"),
    ({"type": "ping", "ref": [1]}, "bad_command"),
    ({"type": "ping", "ref": "x" * 129}, "bad_command"),
    ({"type": "open", "user": "ben"}, "bad_command"),
    ({"type": "open", "user": True}, "bad_command"),
    ({"type": "open", "user": 0}, "bad_command"),
    ({"type": "open", "user": -3}, "bad_command"),
    ({"type": "open", "user": 2**63}, "bad_command"),
    ({"type": "open", "user": 1.0}, "bad_command"),
    ({"type": "send", "conversation": None, "text": "x"}, "bad_command"),
    ({"type": "history", "conversation": 999}, "not_found"),
])
async def test_malformed_commands_are_refused_with_the_contracts_code(router, people, command, code):
    reply = await router.handle(people["ana"], command)
    assert reply["type"] == "reply" and reply["ok"] is False and reply["error"]["code"] == code
    assert reply["error"]["message"]


@pytest.mark.gen_test
async def test_field_checks_of_each_command(router, people):
    ana, ben = people["ana"], people["ben"]
    conv = await opened(router, ana, ben)
    cases = [
        ({"type": "send", "conversation": conv, "text": "   "}, "empty"),
        ({"type": "send", "conversation": conv, "text": "x" * 1334}, "too_long"),
        ({"type": "send", "conversation": conv, "text": "x", "client_id": "c" * 65}, "bad_command"),
        ({"type": "send", "conversation": conv, "text": "x", "client_id": 5}, "bad_command"),
        ({"type": "send", "conversation": conv, "text": "x", "client_id": ""}, "bad_command"),
        ({"type": "minimize", "conversation": conv, "minimized": "yes"}, "bad_command"),
        ({"type": "history", "conversation": conv, "limit": 0}, "bad_command"),
        ({"type": "history", "conversation": conv, "limit": 51}, "bad_command"),
        ({"type": "history", "conversation": conv, "limit": True}, "bad_command"),
        ({"type": "history", "conversation": conv, "before": "x"}, "bad_command"),
        ({"type": "seen", "conversation": conv}, "bad_command"),
    ]
    for command, code in cases:
        reply = await router.handle(ana, command)
        assert reply["ok"] is False and reply["error"]["code"] == code, command
    assert (await router.handle(ana, {"type": "history", "conversation": conv, "limit": 50}))["ok"]


@pytest.mark.gen_test
async def test_the_sender_is_always_the_tokens_user(router, people, store):
    ana, ben = people["ana"], people["ben"]
    conv = await opened(router, ana, ben)
    for field in ("from", "sender", "user_id", "userid"):
        reply = await router.handle(ana, {"type": "send", "conversation": conv, "text": "as Ben",
                                          field: ben.user_id})
        assert reply["error"]["code"] == "not_allowed", field
    assert await store.history(conv, None, 10) == []
    own = await router.handle(ana, {"type": "send", "conversation": conv, "text": "me", "from": ana.user_id})
    assert own["ok"], "naming oneself is harmless"


@pytest.mark.gen_test
async def test_only_coursemates_who_do_not_block_each_other_and_only_members(router, people):
    ana, ben, cat, eve = people["ana"], people["ben"], people["cat"], people["eve"]
    for peer in (ana, cat, eve):
        reply = await router.handle(ana, {"type": "open", "user": peer.user_id})
        assert reply["error"]["code"] == "not_allowed", peer
    conv = await opened(router, ben, cat)
    for command in ({"type": "send", "conversation": conv, "text": "intrude"},
                    {"type": "history", "conversation": conv}, {"type": "seen", "conversation": conv, "message": 1},
                    {"type": "close", "conversation": conv}, {"type": "typing", "conversation": conv},
                    {"type": "minimize", "conversation": conv, "minimized": True}):
        assert (await router.handle(ana, command))["error"]["code"] == "not_allowed", command


@pytest.mark.gen_test
async def test_a_block_after_the_conversation_began_stops_sending(router, people, moodle):
    ana, ben = people["ana"], people["ben"]
    conv = await opened(router, ana, ben)
    moodle.block(ben.user_id, ana.user_id)
    reply = await router.handle(ana, {"type": "send", "conversation": conv, "text": "still there?"})
    assert reply["error"]["code"] == "not_allowed"


@pytest.mark.gen_test
async def test_rate_limits_for_sends_and_typing(router, people, settings):
    ana, ben = people["ana"], people["ben"]
    conv = await opened(router, ana, ben)  # one of Ana's send tokens
    codes = []
    for n in range(settings.send_burst + 1):
        reply = await router.handle(ana, {"type": "send", "conversation": conv, "text": f"m{n}"})
        codes.append(reply["ok"] or reply["error"]["code"])
    assert codes.count(True) == settings.send_burst - 1 and codes[-2:] == ["rate_limited", "rate_limited"]
    assert (await router.handle(ben, {"type": "send", "conversation": conv, "text": "Ben is fine"}))["ok"]
    typing = [(await router.handle(ana, {"type": "typing", "conversation": conv}))["ok"]
              for _ in range(settings.send_burst + 1)]
    assert typing.count(True) == settings.send_burst, "typing has an allowance of its own"


@pytest.mark.gen_test
async def test_new_conversations_per_minute(settings, moodle, store, broker):
    router = Router(settings.replace(opens_per_minute=3), moodle=moodle, store=store, broker=broker,
                    signer=TokenSigner("k", 60))
    mates = moodle.classmates("Dan", "P1", "P2", "P3", "P4")
    dan = moodle.identity(mates[0])
    opens = [await router.handle(dan, {"type": "open", "user": peer}) for peer in mates[1:]]
    assert [r["ok"] or r["error"]["code"] for r in opens] == [True, True, True, "rate_limited"]
    again = await router.handle(dan, {"type": "open", "user": mates[1]})
    assert again["error"]["code"] == "rate_limited", "reopening counts too"
    other = moodle.identity(mates[1])
    assert (await router.handle(other, {"type": "open", "user": mates[2]}))["ok"]


@pytest.mark.gen_test
async def test_counts_for_metrics_and_the_observer(router, people, observed):
    ana, ben = people["ana"], people["ben"]
    conv = await opened(router, ana, ben)
    await router.handle(ana, {"type": "send", "conversation": conv, "text": "one", "client_id": "a"})
    await router.handle(ana, {"type": "send", "conversation": conv, "text": "one", "client_id": "a"})  # a retry
    await router.handle(ana, {"type": "nope"})
    await router.handle(ana, {"type": "open", "user": ana.user_id})
    router.error_reply(None, GchatError("bad_json", "a frame that is not JSON"))
    # Events: Ana's window, Ben's window opened by the message, the message, and the retry's
    # message again (a retry publishes the stored message once more).
    assert router.counts == {"commands": 5, "messages": 1, "events": 4, "errors": 3}
    assert router.errors_by_code == {"bad_command": 1, "not_allowed": 1, "bad_json": 1}
    assert observed.commands == ["open", "send", "send", None, "open"]
    assert len(observed.messages) == 1, "a retry is not a new message"


@pytest.mark.gen_test
async def test_an_unexpected_failure_is_an_unavailable_reply_and_logged(router, people, store, caplog):
    ana, ben = people["ana"], people["ben"]
    conv = await opened(router, ana, ben)

    async def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    store.history = broken
    reply = await router.handle(ana, {"type": "history", "ref": 9, "conversation": conv})
    assert reply == {"type": "reply", "ref": 9, "ok": False,
                     "error": {"code": "unavailable", "message": "internal error; the command was not applied"}}
    assert "command failed" in caplog.text


@pytest.mark.gen_test
async def test_stop_lets_commands_in_flight_finish_then_refuses(router, people, store):
    ana, ben = people["ana"], people["ben"]
    conv = await opened(router, ana, ben)
    release = asyncio.Event()
    history = store.history

    async def slow(*args, **kwargs):
        await release.wait()
        return await history(*args, **kwargs)

    store.history = slow
    running = asyncio.ensure_future(router.handle(ana, {"type": "history", "conversation": conv}))
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(router.stop(drain_secs=5))
    await asyncio.sleep(0)
    refused = await router.handle(ben, {"type": "ping"})
    assert refused["error"]["code"] == "shutting_down"
    assert not stopping.done(), "waits for the command in flight"
    release.set()
    assert (await running)["ok"]
    await stopping
    assert router.closing
