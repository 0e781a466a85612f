"""RedisBroker against a real Redis: cursors and replay, trimming, epochs, wake-ups and presence
across two brokers (two processes, as Redis sees them), crashed and closed processes, and Redis
going away and coming back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from collections.abc import AsyncIterator, Callable

import pytest
import redis

from gchat.broker import Broker, MemoryBroker
from gchat.wire import CursorGone, encode_event
from gchat.config import ConfigError
from gchat.errors import Unavailable
from gchat.redis_broker import RedisBroker

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def body(n: int) -> str:
    return encode_event({"type": "note", "n": n})


@contextlib.asynccontextmanager
async def started(url: str, prefix: str, *names: str, **options: Any) -> AsyncIterator[list[RedisBroker]]:
    brokers = [RedisBroker(url, key_prefix=prefix, process_id=name, **options) for name in names]
    try:
        for broker in brokers:
            await broker.start()
        yield brokers
    finally:
        for broker in brokers:
            await broker.close()


async def crash(broker: RedisBroker) -> None:
    """What SIGKILL leaves behind: no more heartbeats, nothing withdrawn."""
    for task in broker._tasks:
        task.cancel()
    # A cancelled loop must end even when something inside swallowed the cancellation (Python
    # 3.11's wait_for can): close() relies on it as much as this does.
    _, running = await asyncio.wait(broker._tasks, timeout=5)
    assert not running, f"background loops still running after cancel: {running}"
    broker._link.closed = True  # close() becomes a no-op
    await broker._link.redis.aclose()
    await broker._link.sub.aclose()


async def eventually(check: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s")
        await asyncio.sleep(0.05)


def strip_epoch(events: list[str], epoch: str) -> list[str]:
    return [e.replace(epoch, "E") for e in events]


async def replay_script(broker: Broker) -> list[Any]:
    """The same steps on any broker; returns what it saw with the epoch replaced by E."""
    seen: list[Any] = []
    await broker.publish([7], body(0))  # no log yet: not kept
    await broker.ensure_log(7)
    head = await broker.head(7)
    epoch = head.split(":")[0]
    seen.append(head.replace(epoch, "E"))
    for n in (1, 2, 3):
        await broker.publish([7, 8], body(n))
    await broker.ensure_log(7)  # idempotent: same epoch, same events
    for cursor in (head, f"{epoch}:1", f"{epoch}:3"):
        events, now = await broker.read(7, cursor)
        seen.append((strip_epoch(events, epoch), now.replace(epoch, "E")))
    for cursor in (f"{epoch}:4", "nonsense", f"{epoch}x:1", ":1", f"{epoch}:-1"):
        with pytest.raises(CursorGone):
            await broker.read(7, cursor)
    seen.append((await broker.head(7)).replace(epoch, "E"))
    return seen


@pytest.mark.gen_test(timeout=10)
async def test_cursors_and_replay_match_the_memory_broker(io_loop, redis_url, redis_prefix):
    async with started(redis_url, redis_prefix, "p1") as (broker,):
        got = await replay_script(broker)
    assert got == await replay_script(MemoryBroker())
    assert got[0] == "E:0"
    assert got[1] == (['{"cursor":"E:1","type":"note","n":1}', '{"cursor":"E:2","type":"note","n":2}',
                       '{"cursor":"E:3","type":"note","n":3}'], "E:3")
    assert got[3] == ([], "E:3")


@pytest.mark.gen_test(timeout=10)
async def test_trimmed_log_gives_cursor_gone(io_loop, redis_url, redis_prefix):
    async with started(redis_url, redis_prefix, "p1", log_size=10) as (broker,):
        await broker.ensure_log(3)
        epoch = (await broker.head(3)).split(":")[0]
        await asyncio.gather(*(broker.publish([3], body(n)) for n in range(1, 301)))
        assert await broker.head(3) == f"{epoch}:300"
        with pytest.raises(CursorGone):
            await broker.read(3, f"{epoch}:0")
        events, cursor = await broker.read(3, f"{epoch}:290")  # at least log_size events are kept
        assert cursor == f"{epoch}:300"
        assert events == [f'{{"cursor":"{epoch}:{n}","type":"note","n":{n}}}' for n in range(291, 301)]


@pytest.mark.gen_test(timeout=10)
async def test_concurrent_publishes_keep_their_order(io_loop, redis_url, redis_prefix):
    async with started(redis_url, redis_prefix, "p1") as (broker,):
        await broker.ensure_log(4)
        head = await broker.head(4)
        await asyncio.gather(*(broker.publish([4], body(n)) for n in range(1000)))
        events, _ = await broker.read(4, head)
        assert [int(e.rsplit(":", 1)[1].rstrip("}")) for e in events] == list(range(1000))


@pytest.mark.gen_test(timeout=10)
async def test_drop_log_makes_a_new_epoch(io_loop, redis_url, redis_prefix):
    async with started(redis_url, redis_prefix, "p1") as (broker,):
        await broker.ensure_log(5)
        await broker.publish([5], body(1))
        old = await broker.head(5)
        await broker.drop_log(5)
        with pytest.raises(CursorGone):
            await broker.read(5, old)
        await broker.publish([5], body(2))  # no live log: not appended, not resurrected
        with pytest.raises(CursorGone):
            await broker.read(5, old)
        new = await broker.head(5)
        assert new.endswith(":0") and new.split(":")[0] != old.split(":")[0]
        # A user who has a live connection again (on any process) keeps the log its clients use.
        await broker.add_connection(5, "c1")
        await broker.drop_log(5)
        assert await broker.read(5, new) == ([], new)


@pytest.mark.gen_test(timeout=10)
async def test_wakeups_cross_processes(io_loop, redis_url, redis_prefix, caplog):
    async with started(redis_url, redis_prefix, "p1", "p2") as (one, two):
        woken = asyncio.Event()
        local: list[int] = []

        def broken() -> None:
            raise RuntimeError("a broken client")

        two.subscribe(9, broken)  # must not stop the next subscriber or the listener
        two.subscribe(9, woken.set)
        one.subscribe(9, lambda: local.append(1))
        await one.ensure_log(9)
        head = await one.head(9)
        await one.publish([9], body(1))
        await asyncio.wait_for(woken.wait(), 3)
        events, _ = await two.read(9, head)
        assert len(events) == 1
        # A bad message on the channel is logged and skipped; the listener goes on.
        raw = redis.asyncio.Redis.from_url(redis_url)
        await raw.publish(redis_prefix + "wake", "garbage")
        await raw.publish(redis_prefix + "wake", "p1|x,y")
        await raw.aclose()
        woken.clear()
        await asyncio.sleep(0.2)  # past the re-read that follows subscribing (a harmless extra wake-up)
        before = len(local)
        await one.publish([9], body(2))
        await asyncio.wait_for(woken.wait(), 3)
        await asyncio.sleep(0.1)
        assert len(local) == before + 1  # the publisher's own clients: woken once, not again by Redis
        assert "bad wake-up message" in caplog.text
        two.unsubscribe(9, woken.set)
        two.unsubscribe(9, broken)
        woken.clear()
        await one.publish([9], body(3))
        await asyncio.sleep(0.2)
        assert not woken.is_set()


@pytest.mark.gen_test(timeout=10)
async def test_presence_transitions_happen_once_across_processes(io_loop, redis_url, redis_prefix):
    async with started(redis_url, redis_prefix, "p1", "p2") as (one, two):
        came = await asyncio.gather(one.add_connection(21, "a"), two.add_connection(21, "b"),
                                    one.add_connection(21, "c"), two.add_connection(21, "d"))
        assert sorted(came) == [False, False, False, True]
        assert await one.connection_count(21) == 4 and await two.connection_count(21) == 4
        assert await two.online([21, 22, 23]) == {21}
        assert await one.mark_offline(21) is False  # it has connections
        assert await one.remove_connection(21, "a") == 3
        assert await two.remove_connection(21, "b") == 2
        assert await one.remove_connection(21, "c") == 1
        assert await two.remove_connection(21, "d") == 0
        assert await one.online([21]) == {21}  # online until the grace period ends
        went = await asyncio.gather(one.mark_offline(21), two.mark_offline(21), one.mark_offline(21),
                                    two.mark_offline(21))
        assert sorted(went) == [False, False, False, True]
        assert await one.online([21]) == set()
        assert await two.add_connection(21, "e") is True  # and back online, once
        ids = list(range(1000, 1500)) + [21]
        calls: list[int] = []
        mget = one._link.redis.mget

        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return await mget(*args, **kwargs)

        one._link.redis.mget = counted  # type: ignore[method-assign]
        assert await one.online(ids) == {21}
        assert calls == [1]  # one round trip however many ids


@pytest.mark.gen_test(timeout=15)
async def test_crashed_process_stops_counting_after_the_ttl(io_loop, redis_url, redis_prefix):
    async with started(redis_url, redis_prefix, "p1", "p2", presence_ttl=0.6) as (one, two):
        orphans: list[int] = []
        two.on_orphan = orphans.append
        assert await one.add_connection(31, "a") is True
        assert await one.add_connection(32, "b") is True
        assert await two.add_connection(32, "c") is False
        assert await two.connection_count(31) == 1
        started_at = time.monotonic()
        await crash(one)
        while await two.connection_count(31) != 0:
            await asyncio.sleep(0.05)
        assert time.monotonic() - started_at < 0.6 + 0.6  # the TTL, and some slack for a busy machine
        assert await two.connection_count(32) == 1  # its own connection still counts
        await eventually(lambda: orphans, timeout=2, what="orphan report")
        assert orphans == [31]  # user 32 is still connected through p2
        assert await two.mark_offline(31) is True
        assert await two.online([31, 32]) == {32}


@pytest.mark.gen_test(timeout=15)
async def test_closed_process_withdraws_its_connections(io_loop, redis_url, redis_prefix):
    async with started(redis_url, redis_prefix, "p2", presence_ttl=0.6) as (two,):
        one = RedisBroker(redis_url, key_prefix=redis_prefix, process_id="p1", presence_ttl=0.6)
        await one.start()
        await one.ensure_log(33)
        cursor = await one.head(33)
        assert await one.add_connection(33, "a") is True
        await one.close()
        assert await two.connection_count(33) == 0  # at once, not after the TTL
        # Nobody set on_orphan: p2 takes the user offline itself when it reaps p1.
        await eventually(lambda: _not_online(two, 33), timeout=2, what="user 33 offline")
        with pytest.raises(CursorGone):
            await two.read(33, cursor)


async def _not_online(broker: RedisBroker, uid: int) -> bool:
    return uid not in await broker.online([uid])


@pytest.mark.gen_test(timeout=20)
async def test_redis_restart_resets_cursors_and_recovers(io_loop, private_redis, caplog):
    caplog.set_level(logging.INFO, logger="gchat.redis")
    async with started(private_redis.url, "t:", "p1", presence_ttl=1.0, publish_timeout=0.3) as (broker,):
        woken: list[int] = []
        broker.subscribe(41, lambda: woken.append(1))
        await broker.ensure_log(41)
        await broker.publish([41], body(1))
        cursor = await broker.head(41)
        assert await broker.add_connection(41, "a") is True
        private_redis.stop()
        await eventually(lambda: not broker._link.healthy, timeout=3, what="Redis seen as lost")
        assert not await broker.healthy()
        began = time.monotonic()
        await broker.publish([41], body(2))  # committed elsewhere; must neither raise nor hang
        assert time.monotonic() - began < 0.4
        with pytest.raises(Unavailable):
            await broker.read(41, cursor)
        private_redis.start()
        await eventually(broker.healthy, timeout=8, what="Redis back")
        with pytest.raises(CursorGone):  # Redis forgot the log: the client resets
            await broker.read(41, cursor)
        assert await broker.connection_count(41) == 1  # this process re-registered its connection
        assert await broker.online([41]) == {41}
        await eventually(lambda: woken, timeout=2, what="clients woken to re-read")
        new = await broker.head(41)
        assert new.split(":")[0] != cursor.split(":")[0]
        stats = broker.stats()
        assert stats["outages"] == 1 and stats["events_lost"] == 1 and stats["events_published"] == 1
        assert stats["resets_pending"] == 0 and stats["connections"] == 1 and stats["healthy"] == 1
    assert "Redis at unix://" in caplog.text and "lost" in caplog.text and "is back" in caplog.text


@pytest.mark.gen_test(timeout=20)
async def test_events_lost_in_an_outage_reset_their_users(io_loop, private_redis):
    """Redis keeps its data but did not take an event: the user's log must not resume with a gap."""
    async with started(private_redis.url, "t:", "p1", "p2", op_timeout=0.5, publish_timeout=0.3) as (one, two):
        await one.ensure_log(51)
        await one.publish([51], body(1))
        cursor = await one.head(51)
        woken = asyncio.Event()
        two.subscribe(51, woken.set)
        pause = redis.Redis.from_url(private_redis.url)
        pause.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
        pause.close()
        await one.publish([51], body(2))  # times out: lost
        assert one._publisher.lost == {51}
        await eventually(lambda: not one._publisher.lost, timeout=8, what="lost events handled")
        await asyncio.wait_for(woken.wait(), 3)  # the other process's clients are told to re-read
        with pytest.raises(CursorGone):
            await two.read(51, cursor)


def test_url_parameters_and_errors():
    broker = RedisBroker("redis://127.0.0.1:6379/3?key_prefix=site1:&presence_ttl=4")
    assert broker.prefix == "site1:" and broker.presence_ttl == 4.0
    assert broker.where == "redis://127.0.0.1:6379/3"
    assert RedisBroker("unix:///tmp/r.sock?db=2").prefix == "gchat:"
    with pytest.raises(ConfigError, match="broker_url"):
        RedisBroker("http://127.0.0.1:6379")
    with pytest.raises(ConfigError, match="presence_ttl"):
        RedisBroker("redis://127.0.0.1/0?presence_ttl=soon")
