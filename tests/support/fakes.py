"""In-memory fakes of what the router's parts use, for the unit layer (tests/unit/): the Moodle
lookups (gchat.ports.MoodleLookups), the chat store (gchat.ports.ChatStorage), a client that
records what it was told, and background work run by hand instead of by the clock.

They follow the real classes' contracts as tests/test_store.py and tests/test_moodle_rules.py
pin them down against MariaDB; they are no substitute for those tests, only a fast way to test
the router's parts alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from gchat.auth import Identity
from gchat.broker import Broker
from gchat.config import Settings
from gchat.errors import GchatError, Unavailable
from gchat.feed import Feed
from gchat.moodle import MoodleConfig, SessionCheck, User, sid_hash
from gchat.presence import Client, Presence
from gchat.store import MAX_HISTORY_LIMIT, MemberState, Message, Pair, Read, Recent, Stored
from gchat.tasks import Background


class FakeMoodle:
    """Users, courses, blocks and sessions in dicts. ``down = True``: every lookup raises
    Unavailable, as the real one does while the database is away."""

    def __init__(self, cookie_suffix: str = "") -> None:
        self._users: dict[int, User] = {}
        self._courses: dict[int, set[int]] = {}
        self._blocks: set[tuple[int, int]] = set()
        self._sessions: dict[str, int] = {}
        self._ids = itertools.count(11)
        self._course_ids = itertools.count(2)
        self.cookie_suffix = cookie_suffix
        self.down = False
        self.lookups = 0

    # -- building the site ------------------------------------------------------------------

    def add_user(self, first: str, last: str = "Tester") -> int:
        uid = next(self._ids)
        self._users[uid] = User(uid, f"{first} {last}", f"http://moodle.test/user/pix.php/{uid}/f1.jpg")
        return uid

    def add_course(self, *members: int) -> int:
        course = next(self._course_ids)
        self._courses[course] = set(members)
        return course

    def classmates(self, *names: str) -> list[int]:
        """Users sharing one new course."""
        ids = [self.add_user(name) for name in names]
        self.add_course(*ids)
        return ids

    def block(self, blocker: int, blocked: int) -> None:
        self._blocks.add((blocker, blocked))

    def login(self, uid: int) -> str:
        sid = secrets.token_hex(13)
        self._sessions[sid] = uid
        return sid

    def logout(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def identity(self, uid: int) -> Identity:
        """The identity of a fresh session of ``uid``, as a token carries it."""
        return Identity(uid, sid_hash(self.login(uid)))

    # -- MoodleLookups ----------------------------------------------------------------------

    def _lookup(self) -> None:
        self.lookups += 1
        if self.down:
            raise Unavailable()

    async def config(self) -> MoodleConfig:
        self._lookup()
        return MoodleConfig(7200, 1, self.cookie_suffix, "/", "1", "2.2")

    async def check_session(self, sid: str) -> SessionCheck:
        self._lookup()
        uid = self._sessions.get(sid)
        return SessionCheck(uid, "ok" if uid is not None else "no session")

    async def live_sessions(self, pairs: Iterable[tuple[int, str]], *, recheck: bool = False) -> set[tuple[int, str]]:
        self._lookup()
        live = {(uid, sid_hash(sid)) for sid, uid in self._sessions.items()}
        return set(pairs) & live

    async def user(self, user_id: int) -> User | None:
        self._lookup()
        return self._users.get(user_id)

    async def users(self, user_ids: Iterable[int]) -> dict[int, User]:
        self._lookup()
        return {uid: self._users[uid] for uid in user_ids if uid in self._users}

    async def coursemates(self, user_id: int) -> frozenset[int]:
        self._lookup()
        return frozenset(uid for members in self._courses.values() if user_id in members
                         for uid in members if uid != user_id and (uid, user_id) not in self._blocks
                         and (user_id, uid) not in self._blocks)

    async def can_chat(self, a: int, b: int) -> bool:
        return a != b and b in await self.coursemates(a)

    async def audience(self, user_id: int) -> frozenset[int]:
        return await self.coursemates(user_id)

    async def refusal(self, me: int, peer: int) -> str | None:
        if (me, peer) in self._blocks or (peer, me) in self._blocks:
            return "blocked"
        return None if await self.can_chat(me, peer) else "no_shared_course"

    async def messaging_enabled(self) -> bool:
        return True

    async def can_send(self, user_id: int) -> bool:
        return True


class FakeStore:
    """The chat tables in dicts, with the real store's rules: a retried client_id is stored
    once; a message to a closed window opens it (with its last messages) and counts unread;
    closing a window reads it; ``open_views`` lists the open windows."""

    def __init__(self) -> None:
        self._pairs: dict[int, Pair] = {}
        self._by_members: dict[tuple[int, int], Pair] = {}
        self._states: dict[tuple[int, int], MemberState] = {}
        self._messages: dict[int, list[Message]] = {}
        self._by_client_id: dict[tuple[int, str], Message] = {}
        self._pair_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._read_times: dict[tuple[int, int], int] = {}

    def _state(self, conversation: int, user: int) -> MemberState:
        state = self._states.get((conversation, user), MemberState(False, False, 0, 0))
        newest = max((m.id for m in self._messages.get(conversation, [])), default=0)
        return dataclasses.replace(state, newest=newest)

    def _set(self, conversation: int, user: int, **changes: Any) -> MemberState:
        old = self._state(conversation, user)
        state = MemberState(**{"open": old.open, "minimized": old.minimized, "unread": old.unread,
                               "last_read": old.last_read, **changes})
        self._states[(conversation, user)] = state
        return self._state(conversation, user)

    def _last(self, conversation: int, limit: int) -> list[Message]:
        return self._messages.get(conversation, [])[-limit:]

    async def pair(self, conversation_id: int) -> Pair | None:
        return self._pairs.get(conversation_id)

    async def open(self, me: int, peer: int, history: int) -> tuple[Pair, MemberState, list[Message]]:
        low, high = min(me, peer), max(me, peer)
        pair = self._by_members.get((low, high))
        if pair is None:
            pair = Pair(next(self._pair_ids), low, high)
            self._pairs[pair.id] = self._by_members[(low, high)] = pair
        return pair, self._set(pair.id, me, open=True, minimized=False), self._last(pair.id, history)

    async def set_open(self, conversation: int, user: int, is_open: bool) -> MemberState:
        if is_open:
            return self._set(conversation, user, open=True)
        newest = max((m.id for m in self._messages.get(conversation, [])), default=0)
        return self._set(conversation, user, open=False, minimized=False, unread=0, last_read=newest)

    async def set_minimized(self, conversation: int, user: int, minimized: bool) -> MemberState:
        return self._set(conversation, user, minimized=minimized)

    async def record_read(self, conversation: int, user: int,
                          message_id: int) -> tuple[MemberState, bool, Read | None]:
        before = self._state(conversation, user)
        newest = max((m.id for m in self._messages.get(conversation, [])), default=0)
        last_read = min(max(before.last_read, message_id), max(newest, before.last_read))
        unread = sum(1 for m in self._messages.get(conversation, []) if m.id > last_read and m.sender != user)
        after = self._set(conversation, user, last_read=last_read, unread=unread)
        moved = last_read > before.last_read
        if moved:
            self._read_times[(conversation, user)] = int(time.time() * 1000)
        return after, after != before, Read(last_read, self._read_times[(conversation, user)]) if moved else None

    async def peer_reads(self, user: int, conversations: list[int]) -> dict[int, Read | None]:
        found: dict[int, Read | None] = {}
        for conversation in conversations:
            peer = self._pairs[conversation].peer_of(user)
            last = self._state(conversation, peer).last_read
            found[conversation] = Read(last, self._read_times.get((conversation, peer), 0)) if last else None
        return found

    async def recent(self, user: int, before: int | None, limit: int) -> tuple[list[Recent], bool]:
        rows = []
        for (conversation, uid), state in self._states.items():
            messages = self._messages.get(conversation)
            if uid != user or not messages or (before is not None and messages[-1].time >= before):
                continue
            peer_read = (await self.peer_reads(user, [conversation]))[conversation]
            rows.append(Recent(self._pairs[conversation], state, messages[-1], peer_read))
        rows.sort(key=lambda r: (r.last_message.time, r.last_message.id), reverse=True)
        return rows[:limit], len(rows) > limit

    async def open_views(self, user: int, history: int) -> list[tuple[Pair, MemberState, list[Message]]]:
        return [(self._pairs[conv], self._state(conv, uid), self._last(conv, history))
                for (conv, uid), state in sorted(self._states.items()) if uid == user and state.open]

    async def add_message(self, pair: Pair, sender: int, text: str, client_id: str | None,
                          history: int) -> Stored:
        if client_id is not None and (sender, client_id) in self._by_client_id:
            return Stored(self._by_client_id[(sender, client_id)], True, None)
        message = Message(next(self._message_ids), pair.id, sender, text, int(time.time() * 1000), client_id)
        self._messages.setdefault(pair.id, []).append(message)
        if client_id is not None:
            self._by_client_id[(sender, client_id)] = message
        peer = pair.peer_of(sender)
        was = self._state(pair.id, peer)
        state = self._set(pair.id, peer, open=True, unread=was.unread + 1)
        if was.open:
            return Stored(message, False, None)
        return Stored(message, False, state, self._last(pair.id, history),
                      (await self.peer_reads(peer, [pair.id]))[pair.id])

    async def history(self, conversation: int, before: int | None, limit: int) -> list[Message]:
        limit = max(1, min(limit, MAX_HISTORY_LIMIT))
        older = [m for m in self._messages.get(conversation, []) if before is None or m.id < before]
        return older[-limit:]


class RecordingClient(Client):
    """A connection that records its wake-ups and how it was ended."""

    transport = "fake"
    __slots__ = ("wakeups", "ended")

    def __init__(self, identity: Identity, address: str = "10.0.0.1") -> None:
        super().__init__(identity, address)
        self.wakeups = 0
        self.ended: GchatError | None = None

    def wake(self) -> None:
        self.wakeups += 1

    def end(self, error: GchatError) -> None:
        self.ended = error


class ManualBackground(Background):
    """Background work the test runs by hand: ``later()`` work waits for :meth:`fire` instead
    of the clock (so grace periods need no sleeping), spawned work for :meth:`settle`."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[float, Callable[[], Coroutine[Any, Any, Any]], asyncio.TimerHandle]] = []

    def later(self, delay_secs: float, work: Callable[[], Coroutine[Any, Any, Any]]) -> asyncio.TimerHandle:
        # A handle that never fires by itself: cancelling it is what the code under test does.
        handle = asyncio.get_running_loop().call_later(3600.0, lambda: None)
        self.pending.append((delay_secs, work, handle))
        return handle

    @property
    def delays(self) -> list[float]:
        """The delays of the timers still armed."""
        return [delay for delay, _, handle in self.pending if not handle.cancelled()]

    async def fire(self) -> int:
        """Run every armed timer's work now (as if its delay had passed); returns how many."""
        due, self.pending = self.pending, []
        fired = 0
        for _, work, handle in due:
            if handle.cancelled():
                continue
            handle.cancel()
            await work()
            fired += 1
        await self.settle()
        return fired

    async def settle(self) -> None:
        """Let every spawned task run to its end."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))


class PresenceRig:
    """Presence over the feed and a broker, background work run by hand (ManualBackground)."""

    def __init__(self, settings: Settings, moodle: FakeMoodle, broker: Broker) -> None:
        self.moodle = moodle
        self.broker = broker
        self.background = ManualBackground()
        self.feed = Feed(settings, broker=broker, moodle=moodle, store=FakeStore())
        self.presence = Presence(settings, broker=broker, moodle=moodle, publish=self.feed.publish,
                                 background=self.background)

    async def attach(self, uid: int, address: str = "10.0.0.1") -> RecordingClient:
        client = RecordingClient(self.moodle.identity(uid), address)
        await self.presence.attach(client)
        await self.background.settle()
        return client

    async def detach(self, client: RecordingClient) -> None:
        await self.presence.detach(client)
        await self.background.settle()

    async def presence_events(self, uid: int) -> list[tuple[int, str]]:
        head = await self.broker.head(uid)
        events, _ = await self.broker.read(uid, head.split(":")[0] + ":0")
        changes = []
        for e in map(json.loads, events):  # a presence_batch is several presence events in one
            for change in e["changes"] if e["type"] == "presence_batch" else [e] if e["type"] == "presence" else []:
                changes.append((change["user"]["id"], change["status"]))
        return changes


async def cancel_pending_tasks() -> None:
    """End what a test left running (presence fan-out waiting for its interval) before its loop
    closes: every other task is cancelled and awaited."""
    pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
