"""Presence: who is connected to this process, and who is online for their course-mates.

A user is online while any of their connections lives (on any process: the broker counts
them), and goes offline only after ``presence_grace`` seconds without one, so that moving from
one Moodle page to the next does not flash them offline. Each change is announced to the
user's online course-mates only, coalesced with other changes (gchat/presence_fanout.py). The
connection limits (per user, per client address) are enforced here, where the connections are
counted.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from gchat.auth import Identity
from gchat.broker import Broker
from gchat.config import Settings
from gchat.errors import GchatError, Unavailable
from gchat.ports import MoodleLookups
from gchat.presence_fanout import Change, PresenceFanout
from gchat.tasks import Background

log = logging.getLogger("gchat.presence")

ANNOUNCE_ATTEMPTS = 4
ANNOUNCE_RETRY_SECS = 2.0  # times the attempt number: 2 s, 4 s, 6 s

Publish = Callable[[Iterable[int], dict[str, Any]], Awaitable[None]]


def shutting_down() -> GchatError:
    return GchatError("shutting_down", "the server is restarting; reconnect")


class Client(abc.ABC):
    """One live connection of a user: a WebSocket, or one long-poll tab."""

    transport = "?"
    __slots__ = ("identity", "address", "key")

    def __init__(self, identity: Identity, address: str) -> None:
        self.identity = identity
        self.address = address
        self.key = secrets.token_hex(8)

    @property
    def user_id(self) -> int:
        return self.identity.user_id

    @abc.abstractmethod
    def wake(self) -> None:
        """The user's event log grew: deliver what came after this client's cursor."""

    @abc.abstractmethod
    def end(self, error: GchatError) -> None:
        """The server ends this client (session over, shutting down, too slow)."""


class Presence:
    """The registry of this process's clients, the grace timers, and the presence fan-out."""

    def __init__(self, settings: Settings, *, broker: Broker, moodle: MoodleLookups, publish: Publish,
                 background: Background) -> None:
        self._settings = settings
        self._broker = broker
        self._moodle = moodle
        self._background = background
        self._clients: dict[int, list[Client]] = {}  # a list each: most users have one client
        self._sessions: frozenset[tuple[int, str]] | None = None  # sessions(), until a client comes or goes
        self._per_address: dict[str, int] = {}
        self._grace: dict[int, asyncio.TimerHandle] = {}
        self.fanout = PresenceFanout(publish, broker, background, settings.presence_interval)
        # Lookups for announcements in the database at once: a crowd arriving together must
        # leave the pool to the sends of those already chatting (snapshots are bounded too).
        self._lookups = asyncio.Semaphore(max(1, settings.db_pool_size // 4))
        self.closing = False

    # -- counts (read-only) -------------------------------------------------------------------

    def clients_of(self, user_id: int) -> set[Client]:
        return set(self._clients.get(user_id, ()))

    @property
    def client_count(self) -> int:
        return sum(len(c) for c in self._clients.values())

    @property
    def user_count(self) -> int:
        """Users with at least one live connection to this process."""
        return len(self._clients)

    def count_by_transport(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for clients in self._clients.values():
            for client in clients:
                counts[client.transport] = counts.get(client.transport, 0) + 1
        return counts

    def sessions(self) -> frozenset[tuple[int, str]]:
        """(user, session hash) of every live client. Kept between re-checks while no client
        comes or goes: the session watch asks every couple of seconds, about thousands."""
        if self._sessions is None:
            self._sessions = frozenset((c.identity.user_id, c.identity.sid_hash)
                                       for cs in self._clients.values() for c in cs)
        return self._sessions

    # -- clients ------------------------------------------------------------------------------

    async def attach(self, client: Client) -> None:
        """Start counting ``client`` as a live connection and wake it on new events."""
        if self.closing:
            raise shutting_down()
        uid = client.user_id
        mine = self._clients.setdefault(uid, [])
        if len(mine) >= self._settings.max_connections_per_user:
            if not mine:
                del self._clients[uid]
            raise GchatError("too_many_connections",
                             f"at most {self._settings.max_connections_per_user} connections per user")
        if self._per_address.get(client.address, 0) >= self._settings.max_connections_per_address:
            if not mine:
                del self._clients[uid]
            raise GchatError("too_many_connections", "too many connections from this address")
        mine.append(client)
        self._sessions = None
        self._per_address[client.address] = self._per_address.get(client.address, 0) + 1
        timer = self._grace.pop(uid, None)
        if timer is not None:
            timer.cancel()
        try:
            await self._broker.ensure_log(uid)
            self._broker.subscribe(uid, client.wake)
            became_online = await self._broker.add_connection(uid, client.key)
        except Exception:
            await self.detach(client)
            raise
        if became_online:
            self._background.spawn(self.announce(uid, "online"))

    async def detach(self, client: Client) -> None:
        uid = client.user_id
        mine = self._clients.get(uid)
        if mine is None or client not in mine:
            return
        mine.remove(client)
        self._sessions = None
        if not mine:
            del self._clients[uid]
        left = self._per_address.get(client.address, 1) - 1
        if left:
            self._per_address[client.address] = left
        else:
            self._per_address.pop(client.address, None)
        self._broker.unsubscribe(uid, client.wake)
        try:
            remaining = await self._broker.remove_connection(uid, client.key)
        except Unavailable:
            remaining = 0  # the broker forgets a lost process's connections by itself
        if remaining == 0 and not self.closing:
            self._start_grace(uid)

    def end_clients(self, error: GchatError, *, session: tuple[int, str] | None = None) -> int:
        """End every client (or those of one (user, session hash)); returns how many."""
        if session is None:
            targets = [c for cs in self._clients.values() for c in cs]
        else:
            uid, hashed = session
            targets = [c for c in self.clients_of(uid) if c.identity.sid_hash == hashed]
        for client in targets:
            client.end(error)
        return len(targets)

    def close(self) -> None:
        """Shutting down: no new clients, no grace timers, no more announcements."""
        self.closing = True
        for timer in self._grace.values():
            timer.cancel()
        self.fanout.close()

    # -- online and offline -------------------------------------------------------------------

    def orphaned(self, uid: int) -> None:
        """The broker found ``uid`` online with no live connection (another process went away)."""
        if self.closing or uid in self._clients or uid in self._grace:
            return
        self._start_grace(uid)

    def _start_grace(self, uid: int) -> None:
        old = self._grace.pop(uid, None)
        if old is not None:
            old.cancel()
        self._grace[uid] = self._background.later(self._settings.presence_grace, lambda: self._maybe_offline(uid))

    async def _maybe_offline(self, uid: int) -> None:
        self._grace.pop(uid, None)
        if uid in self._clients or self.closing:
            return
        try:
            if await self._broker.connection_count(uid) or not await self._broker.mark_offline(uid):
                return
        except Unavailable:
            self._start_grace(uid)  # try again once the broker is back
            return
        try:
            await self._broker.drop_log(uid)
        except Unavailable:
            log.warning("log of user %s not dropped: broker unavailable", uid)
        await self.announce(uid, "offline")

    async def announce(self, uid: int, status: str, attempt: int = 1) -> None:
        """Tell the online course-mates of ``uid`` that it came online or went offline (at the
        next presence delivery, gchat/presence_fanout.py); while the database is unavailable,
        try again a few times (a reconnect storm passes)."""
        try:
            async with self._lookups:
                user = await self._moodle.user(uid)
                audience = await self._moodle.audience(uid)  # who may message uid: its online status is theirs to see
        except Unavailable:
            if attempt < ANNOUNCE_ATTEMPTS and not self.closing:
                self._background.later(attempt * ANNOUNCE_RETRY_SECS, lambda: self.announce(uid, status, attempt + 1))
                return
            log.warning("presence of user %s (%s) not announced: database or broker unavailable", uid, status)
            return
        if user is not None and audience:
            self.fanout.add(Change(uid, user.as_dict(), status, audience))
