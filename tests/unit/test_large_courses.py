"""Large courses: coalesced presence (``presence_batch``), the bounded first view
(``ready.online`` with ``online_total``), and a large fan-out that lets a chat message through
before it is done. Over the fakes and the memory broker; no clock is waited for except the
presence interval itself (short here)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gchat.feed import FANOUT_SLICE, Feed
from gchat.coursemates import MateSet
from tests.support.fakes import FakeMoodle, FakeStore, PresenceRig, RecordingClient


async def events_of(broker: Any, uid: int) -> list[dict[str, Any]]:
    head = await broker.head(uid)
    raw, _ = await broker.read(uid, head.split(":")[0] + ":0")
    return [json.loads(e) for e in raw]


def changes_in(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """The presence changes a client applies, in order: a ``presence`` event is one change, a
    ``presence_batch`` several (docs/protocol.md)."""
    found = []
    for event in events:
        if event["type"] == "presence":
            found.append((event["user"]["id"], event["status"]))
        elif event["type"] == "presence_batch":
            found += [(change["user"]["id"], change["status"]) for change in event["changes"]]
    return found


def presence_frames(events: list[dict[str, Any]]) -> int:
    return sum(1 for e in events if e["type"] in ("presence", "presence_batch"))


class Course(PresenceRig):
    def __init__(self, settings: Any, moodle: Any, broker: Any, size: int) -> None:
        super().__init__(settings, moodle, broker)
        self.users = moodle.classmates(*(f"Student{n:04d}" for n in range(size)))

    async def arrive(self, uid: int) -> RecordingClient:
        client = RecordingClient(self.moodle.identity(uid))
        await self.presence.attach(client)
        return client


@pytest.mark.gen_test(timeout=30)
async def test_a_crowd_arriving_costs_each_user_few_presence_events(settings, moodle, broker):
    """60 course-mates arrive while the first are online: the first one hears of every later
    arrival, in order, in far fewer events than arrivals."""
    course = Course(settings.replace(presence_interval=0.05), moodle, broker, 60)
    first, *rest = course.users
    await course.arrive(first)
    await course.background.settle()
    for uid in rest:
        await course.arrive(uid)
        await asyncio.sleep(0)  # arrivals spread over a few turns of the loop, as on a real server
    await course.background.settle()
    events = await events_of(broker, first)
    assert changes_in(events) == [(uid, "online") for uid in rest]
    assert presence_frames(events) < len(rest) / 5, [e["type"] for e in events]
    assert any(e["type"] == "presence_batch" for e in events)
    # Every later arrival heard of those after it (a batch may carry its own arrival too, which
    # a client ignores), and the events were shared: far fewer distinct ones than deliveries.
    bodies = set()
    for n, uid in enumerate(rest):
        events = await events_of(broker, uid)
        heard = set(changes_in(events)) - {(uid, "online")}
        assert {(later, "online") for later in rest[n + 1:]} <= heard <= {(other, "online") for other in rest}
        bodies |= {json.dumps({k: v for k, v in e.items() if k != "cursor"}) for e in events}
    assert len(bodies) <= presence_frames(events_first := await events_of(broker, first)) + 2, len(bodies)
    assert events_first


@pytest.mark.gen_test
async def test_a_single_change_is_a_plain_presence_event(settings, moodle, broker):
    course = Course(settings, moodle, broker, 2)
    ana, ben = course.users
    await course.arrive(ben)
    await course.background.settle()
    await course.arrive(ana)
    await course.background.settle()
    events = await events_of(broker, ben)
    assert [e["type"] for e in events] == ["presence"]
    assert events[0]["user"]["id"] == ana and events[0]["status"] == "online"


@pytest.mark.gen_test(timeout=30)
async def test_a_batch_is_replayed_on_resume_like_any_event(settings, moodle, broker):
    course = Course(settings.replace(presence_interval=0.05), moodle, broker, 8)
    first, *rest = course.users
    await course.arrive(first)
    await course.background.settle()
    identity = moodle.identity(first)
    _, cursor = await course.feed.catch_up(identity, None)
    for uid in rest:
        await course.arrive(uid)
    await course.background.settle()
    raw, _ = await course.feed.catch_up(identity, cursor)
    replayed = [json.loads(e) for e in raw]
    assert changes_in(replayed) == [(uid, "online") for uid in rest]
    assert all("cursor" in e for e in replayed)


@pytest.mark.gen_test(timeout=30)
async def test_a_change_undone_before_its_delivery_is_delivered_as_it_ends(settings, moodle, broker):
    """Cat comes online and, before the next delivery, goes offline: Ana gets Cat's latest state
    (a late "online" must never overtake a newer "offline"), and Ben's arrival in order."""
    course = Course(settings.replace(presence_interval=0.05), moodle, broker, 3)
    ana, ben, cat = course.users
    await course.arrive(ana)
    await course.background.settle()
    await course.arrive(ben)
    tab = await course.arrive(cat)
    await asyncio.sleep(0)  # both announcements are queued; the next delivery is still ahead
    await course.presence.detach(tab)
    assert await course.background.fire() == 1  # cat's grace period ends
    await course.background.settle()
    assert changes_in(await events_of(broker, ana)) == [(ben, "online"), (cat, "offline")]
    await course.arrive(cat)
    await course.background.settle()
    assert changes_in(await events_of(broker, ana))[-1] == (cat, "online")


@pytest.mark.gen_test
@pytest.mark.parametrize("limit,online", [(5, 12), (5, 5), (0, 12)])
async def test_the_first_view_of_a_large_course_is_bounded(settings, moodle, broker, limit, online):
    feed = Feed(settings.replace(ready_online_limit=limit), broker=broker, moodle=moodle, store=FakeStore())
    me, *mates = moodle.classmates(*(f"Name{n:02d}" for n in range(online + 3)))
    for uid in reversed(mates[:online]):
        await broker.add_connection(uid, "c")
    raw, _ = await feed.catch_up(moodle.identity(me), None)
    [ready] = [json.loads(e) for e in raw]
    listed = [u["id"] for u in ready["online"]]
    if limit and online > limit:
        assert listed == mates[:limit], "the first ones by name"
        assert ready["online_total"] == online
    else:
        assert listed == mates[:online]
        assert "online_total" not in ready, "absent: the list is complete"
    assert ready["coursemates"] == len(mates)


@pytest.mark.gen_test(timeout=30)
async def test_a_message_overtakes_a_large_presence_fan_out(settings, moodle, broker):
    """While a presence event is written to the logs of a crowd, slice by slice, a chat
    message published meanwhile reaches a user of a later slice first."""
    feed = Feed(settings, broker=broker, moodle=moodle, store=FakeStore())
    crowd = moodle.classmates(*(f"S{n:04d}" for n in range(3 * FANOUT_SLICE)))
    for uid in crowd:
        await broker.ensure_log(uid)
    last = crowd[-1]
    fan_out = asyncio.ensure_future(feed.publish(crowd, {"type": "presence", "user": {"id": 1}, "status": "online"}))
    await asyncio.sleep(0)  # the first slice is written; the loop is free again
    assert not fan_out.done()
    await feed.publish([last], {"type": "message", "message": {"id": 1, "text": "hi"}})
    await fan_out
    assert [e["type"] for e in await events_of(broker, last)] == ["message", "presence"]
    assert [e["type"] for e in await events_of(broker, crowd[0])] == ["presence"]


class SharedCourseMoodle(FakeMoodle):
    """Course-mates as the real lookups hand them out: views over one shared set per course."""

    def __init__(self) -> None:
        super().__init__()
        self.course: frozenset[int] = frozenset()

    async def audience(self, user_id: int) -> Any:
        return MateSet(self.course, user_id) if user_id in self.course else frozenset()


@pytest.mark.gen_test(timeout=30)
async def test_a_shared_course_gets_one_event_per_delivery_and_no_news_of_oneself_alone(settings, broker):
    moodle = SharedCourseMoodle()
    course = Course(settings.replace(presence_interval=0.05), moodle, broker, 30)
    moodle.course = frozenset(course.users)
    first, second, *rest = course.users
    await course.arrive(first)
    await course.background.settle()
    await course.arrive(second)
    await course.background.settle()
    # One change: the others hear of it, and nobody gets news of itself alone.
    assert changes_in(await events_of(broker, first)) == [(second, "online")]
    assert changes_in(await events_of(broker, second)) == []
    for uid in rest:
        await course.arrive(uid)
    await course.background.settle()
    online = {(uid, "online") for uid in course.users}
    assert set(changes_in(await events_of(broker, first))) == online - {(first, "online")}
    assert set(changes_in(await events_of(broker, second))) == {(uid, "online") for uid in rest}
    for n, uid in enumerate(rest):
        heard = set(changes_in(await events_of(broker, uid))) - {(uid, "online")}
        assert {(later, "online") for later in rest[n + 1:]} <= heard <= online, uid
    bodies = {json.dumps({k: v for k, v in e.items() if k != "cursor"})
              for uid in course.users for e in await events_of(broker, uid) if e["type"] == "presence_batch"}
    assert 1 <= len(bodies) <= 2, "the crowd's arrivals: one event for everyone (per delivery)"
