"""The Redis broker: event logs, wake-ups and presence shared by any number of gchat processes.

Selected by ``broker_url`` (``redis://host:6379/0``, ``rediss://…``, ``unix:///path?db=0``). Any
process serves any request of any user, so no sticky sessions are needed. Redis is a cache of
recent events and of who is connected; the database stays the source of truth
(docs/design.md).

Keys, all under the key prefix (``gchat:`` unless the URL says ``?key_prefix=…``)::

    log:<uid>       hash {epoch, seq}: the live log of a user; no key = no log
    events:<uid>    stream of that log, entry id "<seq>-0", field "e" = the event's JSON
    on:<uid>        "1" while the user is online (set once by the offline → online transition)
    conns:<uid>     set of "<process id>|<connection id>", the user's connections everywhere
    procs           sorted set: process id → its last heartbeat (Redis clock, ms)
    proc:<pid>      set of user ids a process has had connections for (to clean up after it)
    wake            pub/sub channel: "<process id>|<uid>,<uid>,…" after every batch of publishes
                    (every process hears every wake-up and wakes its own clients of those users)

Each log has a random **epoch**: a flushed or restarted Redis, or a dropped log, means a new
epoch, so an old cursor is never trusted (``CursorGone`` → ``ready`` with ``reset: true``). Every
change that must be atomic (append only to a live log, offline → online exactly once, online →
offline exactly once, reaping a dead process) is one Lua script.

A connection counts only while its process keeps beating (every ``presence_ttl / 3``); the
connections of a process that has not beaten for ``presence_ttl`` seconds (crashed, or stuck)
stop counting, and the first process to notice reaps them and reports the users left with no
connection through :attr:`RedisBroker.on_orphan`.

Redis faults: reconnection with capped exponential backoff (0.1 s doubling to 5 s), a warning
when Redis is lost and an info line when it is back. While Redis is down, :meth:`publish` never
raises (the message is committed already); it remembers whose events were lost and, when Redis
answers again, drops those logs and wakes their clients, who then get a ``reset`` instead of a
silent gap. Other calls raise :class:`~gchat.errors.Unavailable` at once.

Running Redis for gchat: no persistence is needed, and none is better (``save ""``,
``appendonly no``): a restart is then a clean reset, while a restore from an older snapshot could
hand out again sequence numbers that clients have already seen. Presence keys must not be
evicted: ``maxmemory-policy noeviction`` or ``volatile-lru`` (only event logs carry a TTL).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable
from typing import Any

from gchat.broker import Broker
from gchat.errors import Unavailable
from gchat.redis_keepalive import RedisKeepAlive
from gchat.redis_link import DEFAULT_OP_TIMEOUT_SECS, RedisLink
from gchat.redis_publish import LOG_TTL_SECS, RedisPublisher
from gchat.wire import CursorGone, format_cursor, parse_cursor, with_cursor

try:
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - RedisLink refuses to start without redis
    pass

log = logging.getLogger("gchat.redis")

DEFAULT_PUBLISH_TIMEOUT_SECS = 0.5


class RedisBroker(Broker):
    """Event logs, wake-ups and presence in Redis, shared by several gchat processes.

    :param url: ``redis://``, ``rediss://`` or ``unix://`` URL; gchat reads two parameters of
        its own from it: ``key_prefix`` (default ``gchat:``) and ``presence_ttl`` (seconds).
    :param log_size: events kept per user (approximately: ``XADD MAXLEN ~``, never fewer).
    :param presence_ttl: seconds after which the connections of a process that stopped beating
        no longer count; it beats every third of that.
    :param process_id: this process's name in Redis (default host:pid:random); no ``|``.
    """

    name = "redis"

    def __init__(self, url: str, *, log_size: int = 1000, key_prefix: str | None = None,
                 presence_ttl: float | None = None, process_id: str | None = None,
                 op_timeout: float = DEFAULT_OP_TIMEOUT_SECS,
                 publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT_SECS) -> None:
        super().__init__()
        self._link = RedisLink(url, key_prefix=key_prefix, presence_ttl=presence_ttl, process_id=process_id,
                               op_timeout=op_timeout)
        self._keys = self._link.keys
        self._publisher = RedisPublisher(self._link, log_size=log_size, publish_timeout=publish_timeout,
                                         wake=self._wake)
        self._keeper = RedisKeepAlive(self._link, self._publisher, wake=self._wake,
                                      woken_users=lambda: list(self._wakeups), orphaned=self._orphaned)
        # This process's connections (user → connection ids), for re-registration.
        self._local = self._keeper.local
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def where(self) -> str:
        return self._link.where

    @property
    def prefix(self) -> str:
        return self._keys.prefix

    @property
    def process_id(self) -> str:
        return self._keys.process_id

    @property
    def presence_ttl(self) -> float:
        return self._link.presence_ttl

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Register this process, then keep beating and listening in the background. Redis
        being down at start is not fatal: the process keeps trying and says so."""
        self._link.closed = False
        try:
            orphans = await asyncio.wait_for(self._keeper.beat(), self._link.op_timeout)
            self._link.set_up()
        except (RedisError, OSError) as exc:
            self._link.set_down(exc)
            orphans = []
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keeper.run()),
                       loop.create_task(self._link.listen(self._dispatch, self._keeper.subscribed))]
        await self._orphaned(orphans)

    async def close(self) -> None:
        """Stop the background work and withdraw this process's connections."""
        if self._link.closed:
            return
        self._link.closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        await self._publisher.drain()
        args: list[Any] = [self.process_id, self.prefix]
        for uid, conns in self._local.items():
            for conn_id in conns:
                args += [uid, self._keys.member(conn_id)]
        try:
            await asyncio.wait_for(self._link.scripts["close"](keys=[self._keys.procs], args=args),
                                   self._link.op_timeout)
        except (RedisError, OSError) as exc:
            log.warning("could not withdraw this process's connections from Redis (%s); they expire in %.0fs",
                        exc, self.presence_ttl)
        self._local.clear()
        await self._link.aclose()

    async def healthy(self) -> bool:
        return self._link.healthy and not self._link.closed

    async def _orphaned(self, uids: list[int]) -> None:
        """Users left online with no live connection: the router's grace period decides (or,
        with no router listening, they go offline now, with no presence event)."""
        for uid in uids:
            if uid in self._local:
                continue
            try:
                if self.on_orphan is not None:
                    self.on_orphan(uid)
                elif await self.mark_offline(uid):
                    await self.drop_log(uid)
            except Unavailable:
                log.warning("user %s left without connections, but Redis is away: still online", uid)
            except Exception:
                log.exception("handling user %s, left without connections, failed", uid)

    # -- wake-ups ----------------------------------------------------------------------------

    def _dispatch(self, data: Any) -> None:
        try:
            origin, sep, ids = str(data).partition("|")
            if not sep:
                raise ValueError("no '|'")
            if origin == self.process_id:
                return  # woken locally already
            for text in ids.split(","):
                if text:
                    self._wake(int(text))
        except Exception:
            log.exception("bad wake-up message on %s: %.200r", self._keys.channel, data)

    # -- event logs --------------------------------------------------------------------------

    async def ensure_log(self, user_id: int) -> None:
        await self._link.call("ensure", self._keys.log(user_id), [secrets.token_hex(5), LOG_TTL_SECS])

    async def drop_log(self, user_id: int) -> None:
        """Forget the log, unless the user has live connections again (on any process): a user
        who came back between ``mark_offline`` and this call keeps the log their clients use."""
        await self._link.call("drop", self._keys.log(user_id) + [self._keys.conns(user_id), self._keys.procs],
                              [self._link.ttl_ms])

    async def publish(self, user_ids: Iterable[int], body: str) -> None:
        """See :meth:`RedisPublisher.publish`: never raises for Redis trouble."""
        await self._publisher.publish(list(dict.fromkeys(int(u) for u in user_ids)), body)

    async def head(self, user_id: int) -> str:
        epoch, seq = await self._link.call("ensure", self._keys.log(user_id), [secrets.token_hex(5), LOG_TTL_SECS])
        return format_cursor(epoch, seq)

    async def read(self, user_id: int, cursor: str) -> tuple[list[str], str]:
        epoch, seq = parse_cursor(cursor)
        reply = await self._link.call("read", self._keys.log(user_id), [epoch, seq])
        if reply[0] == 0:
            raise CursorGone(reply[1])
        events = [with_cursor(format_cursor(epoch, reply[i].partition("-")[0]), reply[i + 1])
                  for i in range(2, len(reply), 2)]
        return events, format_cursor(epoch, reply[1])

    # -- presence ----------------------------------------------------------------------------

    async def add_connection(self, user_id: int, conn_id: str) -> bool:
        keys = self._keys
        try:
            came_online = await self._link.call("add", [keys.conns(user_id), keys.on(user_id), keys.proc_users],
                                                [keys.member(conn_id), user_id])
        except Unavailable:
            self._keeper.unremoved.add((user_id, conn_id))  # it may have been added: take it back later
            raise
        self._local.setdefault(user_id, set()).add(conn_id)
        return bool(came_online)

    async def remove_connection(self, user_id: int, conn_id: str) -> int:
        conns = self._local.get(user_id)
        if conns is not None:
            conns.discard(conn_id)
            if not conns:
                del self._local[user_id]
        if self._link.closed:
            return 0
        try:
            return int(await self._link.call("remove", [self._keys.conns(user_id), self._keys.procs],
                                             [self._keys.member(conn_id), self._link.ttl_ms]))
        except Unavailable:
            # Removed when Redis is back (then reported through on_orphan if it was the last).
            self._keeper.unremoved.add((user_id, conn_id))
            return len(self._local.get(user_id, ()))

    async def connection_count(self, user_id: int) -> int:
        return int(await self._link.call("count", [self._keys.conns(user_id), self._keys.procs],
                                         [self._link.ttl_ms]))

    async def mark_offline(self, user_id: int) -> bool:
        keys = self._keys
        return bool(await self._link.call("offline", [keys.conns(user_id), keys.on(user_id), keys.procs],
                                          [self._link.ttl_ms, user_id, self.prefix]))

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        uids = list(dict.fromkeys(int(u) for u in user_ids))
        if not uids:
            return set()
        flags = await self._link.mget([self._keys.on(uid) for uid in uids])
        return {uid for uid, flag in zip(uids, flags, strict=False) if flag}

    def stats(self) -> dict[str, int]:
        """This process's side (for /metrics): events published and lost, Redis outages seen,
        users awaiting a reset, local connections and subscribed users, and health."""
        return {"events_published": self._publisher.published, "events_lost": self._publisher.losses,
                "outages": self._link.outages, "resets_pending": len(self._publisher.lost),
                "connections": sum(len(c) for c in self._local.values()),
                "subscribed_users": len(self._wakeups), "healthy": int(self._link.healthy)}
