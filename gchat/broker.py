"""Event logs and presence counts: the part of gchat's state that is not in the database.

Every event a user must see is appended to that user's **event log** and gets a cursor
``"<epoch>:<seq>"``; a client resumes by sending the last cursor it processed. A log lives while
its user is online (or within the presence grace period) and is dropped when the user goes
offline; the next log of that user gets a new epoch. So a cursor is resumable only when its
epoch is the live one and nothing after it has been trimmed: otherwise the router answers with
``ready`` and ``reset: true`` — never a silent gap. The database stays the source of truth.

The wire side of cursors and events is gchat/wire.py. The :class:`Broker` interface is small so
that a Redis implementation (several processes, several hosts) can stand beside
:class:`MemoryBroker`, the default and the fast path.
"""

from __future__ import annotations

import abc
import logging
import secrets
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet

from gchat.wire import CursorGone, format_cursor, parse_cursor, with_cursor

log = logging.getLogger("gchat.broker")

Wakeup = Callable[[], None]
OrphanHandler = Callable[[int], None]


class Broker(abc.ABC):
    """Per-user event logs, wake-ups and presence counts.

    ``name`` says which kind it is (health, metrics, logs); :meth:`stats` offers its own counts
    to /metrics (integers by lower-case name).
    """

    name = "broker"

    async def start(self) -> None:
        """Connect and start background work (nothing for the memory broker)."""

    async def close(self) -> None:
        """Release connections and stop background work."""

    # -- event logs -------------------------------------------------------------------------

    @abc.abstractmethod
    async def ensure_log(self, user_id: int) -> None:
        """Make sure ``user_id`` has a live log (called when one of its clients attaches)."""

    @abc.abstractmethod
    async def drop_log(self, user_id: int) -> None:
        """Forget ``user_id``'s log (the user went offline); old cursors become resets."""

    @abc.abstractmethod
    async def publish(self, user_ids: Iterable[int], body: str) -> None:
        """Append an encoded event to the live logs of ``user_ids`` and wake their clients."""

    @abc.abstractmethod
    async def head(self, user_id: int) -> str:
        """The cursor of the newest event in ``user_id``'s log (``epoch:0`` when empty)."""

    @abc.abstractmethod
    async def read(self, user_id: int, cursor: str) -> tuple[list[str], str]:
        """Events after ``cursor`` (wire JSON with cursors) and the new cursor; or CursorGone."""

    def read_now(self, user_id: int, cursor: str) -> tuple[list[str], str] | None:
        """:meth:`read` without waiting, for a broker whose logs are in this process; None
        when it cannot answer so (the caller then uses :meth:`read`). Never raises CursorGone."""
        return None

    def __init__(self) -> None:
        # This process's clients, by user: one wake-up, or a list when a user has several
        # (most have one: no list each).
        self._wakeups: dict[int, Wakeup | list[Wakeup]] = {}
        # Called with a user id whose last connection vanished without a detach on this process
        # (another process crashed or stopped); the router then runs its grace-period check.
        self.on_orphan: OrphanHandler | None = None

    def report_orphans_to(self, handler: OrphanHandler) -> None:
        """Who hears of users left online with no live connection (the router's presence)."""
        self.on_orphan = handler

    def subscribe(self, user_id: int, wakeup: Wakeup) -> None:
        """Call ``wakeup()`` whenever ``user_id``'s log grows (on this process's IOLoop)."""
        known = self._wakeups.get(user_id)
        if known is None:
            self._wakeups[user_id] = wakeup
        elif isinstance(known, list):
            known.append(wakeup)
        else:
            self._wakeups[user_id] = [known, wakeup]

    def unsubscribe(self, user_id: int, wakeup: Wakeup) -> None:
        known = self._wakeups.get(user_id)
        if known is None:
            return
        if isinstance(known, list):
            if wakeup in known:
                known.remove(wakeup)
                if len(known) == 1:
                    self._wakeups[user_id] = known[0]
        elif known == wakeup:
            del self._wakeups[user_id]

    def _wake(self, user_id: int) -> None:
        known = self._wakeups.get(user_id)
        if known is None:
            return
        for wakeup in tuple(known) if isinstance(known, list) else (known,):
            try:
                wakeup()
            except Exception:  # one broken client must not stop delivery to the others
                log.exception("wake-up of a client of user %s failed", user_id)

    # -- presence ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def add_connection(self, user_id: int, conn_id: str) -> bool:
        """Count a live connection; True when the user was offline and is now online."""

    @abc.abstractmethod
    async def remove_connection(self, user_id: int, conn_id: str) -> int:
        """Stop counting a connection; returns how many the user still has."""

    @abc.abstractmethod
    async def connection_count(self, user_id: int) -> int: ...

    @abc.abstractmethod
    async def mark_offline(self, user_id: int) -> bool:
        """Called after the grace period with no connections: True for the one caller that
        moved the user from online to offline (so the offline fan-out happens once)."""

    @abc.abstractmethod
    async def online(self, user_ids: Iterable[int]) -> set[int]:
        """Which of ``user_ids`` are online."""

    async def healthy(self) -> bool:
        return True

    @abc.abstractmethod
    def stats(self) -> dict[str, int]:
        """This broker's own counts for /metrics (names are lower-case words)."""


class _Log:
    """One user's events: at least ``size`` of the newest are kept (a few more, between two
    trims). A plain list, small while the user gets few events: most idle users hold a handful."""

    __slots__ = ("epoch", "first", "last", "size", "bodies")

    def __init__(self, size: int) -> None:
        self.epoch = secrets.token_hex(5)
        self.first = 1  # seq of bodies[0]
        self.last = 0  # seq of the newest event
        self.size = size
        self.bodies: list[str] = []

    def append(self, body: str) -> None:
        bodies = self.bodies
        bodies.append(body)
        self.last += 1
        if len(bodies) >= self.size + max(16, self.size // 8):  # trim in slices, not one by one
            drop = len(bodies) - self.size
            del bodies[:drop]
            self.first += drop


class MemoryBroker(Broker):
    """Everything in this process: the default for a single gchat process."""

    name = "memory"

    def __init__(self, log_size: int = 1000) -> None:
        super().__init__()
        self._log_size = log_size
        self._logs: dict[int, _Log] = {}
        # Live connections: each one's user, and how many each user has (no set per user).
        self._connection_user: dict[str, int] = {}
        self._connection_count: dict[int, int] = {}
        self._online: set[int] = set()

    async def ensure_log(self, user_id: int) -> None:
        if user_id not in self._logs:
            self._logs[user_id] = _Log(self._log_size)

    async def drop_log(self, user_id: int) -> None:
        self._logs.pop(user_id, None)

    async def publish(self, user_ids: Iterable[int], body: str) -> None:
        for uid in user_ids:
            user_log = self._logs.get(uid)
            if user_log is None:
                continue  # offline: nothing to resume; the next ready is built from the database
            user_log.append(body)
            self._wake(uid)

    async def head(self, user_id: int) -> str:
        user_log = self._logs.get(user_id)
        if user_log is None:
            await self.ensure_log(user_id)
            user_log = self._logs[user_id]
        return format_cursor(user_log.epoch, user_log.last)

    async def read(self, user_id: int, cursor: str) -> tuple[list[str], str]:
        return self._read(user_id, cursor)

    def read_now(self, user_id: int, cursor: str) -> tuple[list[str], str] | None:
        try:
            return self._read(user_id, cursor)
        except CursorGone:
            return None

    def _read(self, user_id: int, cursor: str) -> tuple[list[str], str]:
        epoch, seq = parse_cursor(cursor)
        user_log = self._logs.get(user_id)
        if user_log is None or epoch != user_log.epoch:
            raise CursorGone("unknown epoch")
        if seq > user_log.last or seq < user_log.first - 1:
            raise CursorGone("cursor outside the log")
        start = seq - user_log.first + 1
        first = user_log.first
        events = [with_cursor(f"{epoch}:{first + i}", body) for i, body in enumerate(user_log.bodies[start:], start)]
        return events, format_cursor(epoch, user_log.last)

    async def add_connection(self, user_id: int, conn_id: str) -> bool:
        if self._connection_user.get(conn_id) != user_id:
            self._connection_user[conn_id] = user_id
            self._connection_count[user_id] = self._connection_count.get(user_id, 0) + 1
        if user_id in self._online:
            return False
        self._online.add(user_id)
        return True

    async def remove_connection(self, user_id: int, conn_id: str) -> int:
        if self._connection_user.get(conn_id) != user_id:
            return self._connection_count.get(user_id, 0)
        del self._connection_user[conn_id]
        left = self._connection_count[user_id] - 1
        if left:
            self._connection_count[user_id] = left
        else:
            del self._connection_count[user_id]
        return left

    async def connection_count(self, user_id: int) -> int:
        return self._connection_count.get(user_id, 0)

    async def mark_offline(self, user_id: int) -> bool:
        if user_id in self._connection_count or user_id not in self._online:
            return False
        self._online.discard(user_id)
        return True

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        if isinstance(user_ids, AbstractSet):  # a course's members: a set intersection, at C speed
            return set(self._online & user_ids)
        return {uid for uid in user_ids if uid in self._online}

    def stats(self) -> dict[str, int]:
        return {"logs": len(self._logs), "online": len(self._online), "connections": len(self._connection_user)}
