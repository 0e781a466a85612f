"""The Redis broker's heartbeat: this process says it is alive every ``presence_ttl / 3``,
re-registers its connections when Redis forgot them, reaps the processes that stopped beating,
and repairs what an outage left behind (lost events, connections closed meanwhile, missed
wake-ups)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gchat.redis_link import BACKOFF_MAX_SECS, BACKOFF_MIN_SECS, RedisLink, raise_if_cancelled
from gchat.redis_publish import RedisPublisher

try:
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - RedisLink refuses to start without redis
    pass

log = logging.getLogger("gchat.redis")


class RedisKeepAlive:
    """The keep-alive loop of one process, and what it must remember between beats."""

    def __init__(self, link: RedisLink, publisher: RedisPublisher, *, wake: Callable[[int], None],
                 woken_users: Callable[[], list[int]],
                 orphaned: Callable[[list[int]], Awaitable[None]]) -> None:
        self._link = link
        self._keys = link.keys
        self._publisher = publisher
        self._wake = wake
        self._woken_users = woken_users
        self._orphaned = orphaned
        self._beat_every = link.presence_ttl / 3
        self.local: dict[int, set[str]] = {}  # this process's connections, for re-registration
        self.unremoved: set[tuple[int, str]] = set()  # connections to remove when Redis is back
        self._resync = False

    def subscribed(self) -> None:
        """The wake-up channel was (re)subscribed. Wake-ups published while nobody listened are
        gone: once Redis answers the keep-alive loop, every local client re-reads its cursor."""
        self._resync = True

    async def run(self) -> None:
        """Beat every presence_ttl/3; on failure retry with capped exponential backoff."""
        backoff = BACKOFF_MIN_SECS
        probe = self._link.probe
        while not self._link.closed:
            raise_if_cancelled()
            orphans: list[int] = []
            probe.clear()
            try:
                async with asyncio.timeout(self._link.op_timeout):
                    orphans = await self.beat()
                self._link.set_up()
                await self._recover()
                delay, backoff = self._beat_every, BACKOFF_MIN_SECS
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._link.set_down(exc)
                delay, backoff = backoff, min(backoff * 2, BACKOFF_MAX_SECS)
            except Exception:  # a bug must not stop the heartbeat of a whole process
                log.exception("Redis keep-alive failed")
                delay = self._beat_every
            await self._orphaned(orphans)
            try:
                async with asyncio.timeout(delay):
                    await probe.wait()
            except TimeoutError:
                pass

    async def beat(self) -> list[int]:
        """Say this process is alive; re-register its connections if Redis forgot them; reap
        processes that stopped beating. Returns the users they left orphaned."""
        scripts, procs, pid = self._link.scripts, self._keys.procs, self._keys.process_id
        fresh = await scripts["beat"](keys=[procs], args=[pid, self._link.ttl_ms])
        if not fresh and self.local:
            args: list[Any] = [self._keys.prefix, pid]
            for uid, conns in list(self.local.items()):
                for conn_id in conns:
                    args += [uid, conn_id]
            await scripts["add_many"](keys=[procs], args=args)
            log.info("re-registered %d connections of this process in Redis", (len(args) - 2) // 2)
        reaped = await scripts["reap"](keys=[procs], args=[self._link.ttl_ms, self._keys.prefix])
        return [int(uid) for uid in reaped]

    async def _recover(self) -> None:
        """After an outage: reset the users whose events were lost, remove the connections that
        closed meanwhile, and re-read every local client (wake-ups may have been missed)."""
        publisher = self._publisher
        if publisher.lost:
            lost, publisher.lost = publisher.lost, set()
            keys = [k for uid in lost for k in self._keys.log(uid)]
            try:
                await self._link.scripts["forget"](keys=keys, args=[])
                await self._link.redis.publish(self._keys.channel,
                                               f"{self._keys.process_id}|{','.join(map(str, lost))}")
            except BaseException:
                publisher.lost |= lost
                raise
            log.info("reset the event logs of %d users whose events were lost while Redis was away", len(lost))
            for uid in lost:
                self._wake(uid)
        orphans = []
        while self.unremoved:
            uid, conn_id = self.unremoved.pop()
            try:
                left = await self._link.scripts["remove"](keys=[self._keys.conns(uid), self._keys.procs],
                                                          args=[self._keys.member(conn_id), self._link.ttl_ms])
            except BaseException:
                self.unremoved.add((uid, conn_id))
                raise
            if left == 0 and uid not in self.local:
                orphans.append(uid)
        await self._orphaned(orphans)
        if self._resync:
            self._resync = False
            for uid in self._woken_users():
                self._wake(uid)
