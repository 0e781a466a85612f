"""The feed alone: ``ready`` snapshots, resuming from a cursor, and resets instead of gaps."""

from __future__ import annotations

import json

import pytest

from gchat.errors import AuthError
from gchat.feed import Feed
from gchat.wire import parse_cursor


def events_of(raw: list[str]) -> list[dict]:
    return [json.loads(e) for e in raw]


@pytest.fixture
def feed(settings, moodle, store, broker):
    return Feed(settings, broker=broker, moodle=moodle, store=store)


@pytest.mark.gen_test
async def test_no_cursor_is_a_ready_snapshot_with_online_mates_and_open_windows(feed, moodle, store, broker):
    ana, ben, cat = moodle.classmates("Ana", "Ben", "Cat")
    for uid in (ben, cat):
        await broker.add_connection(uid, "c")
    pair, _, _ = await store.open(ana, ben, 3)
    await store.add_message(pair, ana, "hello", None, 3)
    raw, cursor = await feed.catch_up(moodle.identity(ana), None)
    [ready] = events_of(raw)
    assert ready["type"] == "ready" and ready["reset"] is False and ready["cursor"] == cursor
    assert ready["me"]["id"] == ana
    assert [u["id"] for u in ready["online"]] == [ben, cat], "sorted by name"
    [view] = ready["conversations"]
    assert view["id"] == pair.id and view["with"]["id"] == ben and view["open"] is True
    assert [m["text"] for m in view["messages"]] == ["hello"]


@pytest.mark.gen_test
async def test_a_cursor_resumes_with_exactly_what_came_after(feed, moodle, broker):
    (ana,) = moodle.classmates("Ana")
    identity = moodle.identity(ana)
    _, cursor = await feed.catch_up(identity, None)
    for n in range(3):
        await feed.publish([ana], {"type": "note", "n": n})
    raw, now = await feed.catch_up(identity, cursor)
    assert [e["n"] for e in events_of(raw)] == [0, 1, 2]
    assert parse_cursor(now)[1] == parse_cursor(cursor)[1] + 3
    assert await feed.catch_up(identity, now) == ([], now), "nothing new: nothing"
    assert feed.events_published == 3


@pytest.mark.gen_test
@pytest.mark.parametrize("bad", ["garbage", "nosuchepoch:5", "FUTURE"])
async def test_a_cursor_that_cannot_resume_is_a_reset_never_a_gap(feed, moodle, bad):
    (ana,) = moodle.classmates("Ana")
    identity = moodle.identity(ana)
    _, cursor = await feed.catch_up(identity, None)
    if bad == "FUTURE":
        bad = cursor.split(":")[0] + ":999"
    [ready] = events_of((await feed.catch_up(identity, bad))[0])
    assert ready["type"] == "ready" and ready["reset"] is True


@pytest.mark.gen_test
async def test_a_user_gone_from_moodle_ends_the_session(feed, moodle):
    with pytest.raises(AuthError) as refused:
        await feed.catch_up(moodle.identity(999), None)
    assert refused.value.code == "session_ended"


@pytest.mark.gen_test
async def test_a_conversation_event_names_the_peer_even_when_the_profile_is_gone(feed, moodle, store):
    ana, ben = moodle.classmates("Ana", "Ben")
    pair, state, _ = await store.open(ana, 424242, 3)
    event = await feed.conversation_event(ana, pair, state, None)
    assert event["conversation"]["with"] == {"id": 424242, "name": "#424242", "picture": ""}
    assert "messages" not in event["conversation"]
