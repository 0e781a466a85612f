"""The feed: events into users' logs, and what a client gets when it (re)connects.

Every event a user must see is published to that user's event log (gchat/broker.py); a client
reads its log after its cursor. A client without a cursor, or with one the log cannot resume,
gets a ``ready`` snapshot built from the database (marked ``reset: true`` in the second case),
never a partial replay.

Large courses: ``ready.online`` lists at most ``ready_online_limit`` course-mates (the first by
name) and then says how many are online in all (``online_total``); search finds the others. A
fan-out to many users (presence) is written in slices, with the event loop free between them.
Snapshots read the database a few at a time, so that a crowd connecting at once leaves room in
the pool for the sends of those already chatting.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Collection, Iterable
from typing import Any

from gchat.auth import Identity
from gchat.broker import Broker
from gchat.config import Settings
from gchat.coursemates import MateSet
from gchat.errors import AuthError
from gchat.moodle import User
from gchat.ports import ChatStorage, MoodleLookups
from gchat.store import MemberState, Message, Pair, Read
from gchat.wire import CursorGone, encode_event, with_cursor

FANOUT_SLICE = 64  # recipients whose logs get an event in one turn of the event loop


def conversation_view(uid: int, pair: Pair, state: MemberState, messages: list[Message] | None,
                      profiles: dict[int, User], peer_read: Read | None = None) -> dict[str, Any]:
    """A conversation as ``uid`` sees it (docs/protocol.md: the conversation object)."""
    peer_id = pair.peer_of(uid)
    peer = profiles.get(peer_id)
    result: dict[str, Any] = {
        "id": pair.id,
        "with": peer.as_dict() if peer else {"id": peer_id, "name": f"#{peer_id}", "picture": ""},
        "open": state.open, "minimized": state.minimized, "unread": state.unread,
        # What `unread` counted up to: a client adds the peer's messages after it, whichever
        # of this event and a message event it gets first.
        "unread_upto": state.newest,
    }
    if messages is not None:
        # With the messages comes how far the peer has read them (read receipts).
        result["messages"] = [m.as_dict() for m in messages]
        result["peer_read"] = peer_read.as_dict() if peer_read else None
    return result


class Feed:
    """Publishes events (counting them) and answers catch-ups."""

    def __init__(self, settings: Settings, *, broker: Broker, moodle: MoodleLookups, store: ChatStorage) -> None:
        self._settings = settings
        self._broker = broker
        self._moodle = moodle
        self._store = store
        self.events_published = 0
        # Snapshots in the database at once: half the pool at most (see the module's docstring).
        self._snapshots = asyncio.Semaphore(max(1, settings.db_pool_size // 2))

    async def publish(self, user_ids: Iterable[int], event: dict[str, Any]) -> None:
        """Encode ``event`` once and append it to the logs of ``user_ids``."""
        self.events_published += 1
        body = encode_event(event)
        ids = user_ids if isinstance(user_ids, Collection) else list(user_ids)
        if len(ids) <= FANOUT_SLICE:
            await self._broker.publish(ids, body)
            return
        ids = list(ids)
        for start in range(0, len(ids), FANOUT_SLICE):
            if start:
                await asyncio.sleep(0)  # commands and messages that arrived meanwhile go first
            await self._broker.publish(ids[start:start + FANOUT_SLICE], body)

    async def conversation_event(self, uid: int, pair: Pair, state: MemberState,
                                 messages: list[Message] | None) -> dict[str, Any]:
        profiles = await self._moodle.users([pair.peer_of(uid)])
        reads = await self._store.peer_reads(uid, [pair.id]) if messages is not None else {}
        return {"type": "conversation",
                "conversation": conversation_view(uid, pair, state, messages, profiles, reads.get(pair.id))}

    async def catch_up(self, identity: Identity, cursor: str | None) -> tuple[list[str], str]:
        """Everything after ``cursor`` as wire JSON, and the cursor to continue from.

        No cursor: a ``ready`` snapshot. A cursor that cannot be resumed: ``ready`` with
        ``reset: true`` and a fresh snapshot, never a partial replay.
        """
        if cursor:
            try:
                return await self._broker.read(identity.user_id, cursor)
            except CursorGone:
                return await self._ready(identity, reset=True)
        return await self._ready(identity, reset=False)

    def catch_up_now(self, identity: Identity, cursor: str) -> tuple[list[str], str] | None:
        """:meth:`catch_up` of a resumable cursor without a turn of the event loop, where the
        broker can (the memory broker); None otherwise."""
        return self._broker.read_now(identity.user_id, cursor)

    async def _ready(self, identity: Identity, *, reset: bool) -> tuple[list[str], str]:
        uid = identity.user_id
        # The head is taken before the snapshot is read, so nothing published meanwhile is
        # missed; it may be delivered twice (in the snapshot and as an event), which clients
        # absorb by message id.
        head = await self._broker.head(uid)
        async with self._snapshots:
            me = await self._moodle.user(uid)
            if me is None:
                raise AuthError("session_ended", "the Moodle user is gone")
            mates = await self._moodle.coursemates(uid)
            online_ids = await self._broker.online(mates)
            views = await self._store.open_views(uid, self._settings.history_size)
            reads = await self._store.peer_reads(uid, [pair.id for pair, _, _ in views])
            limit = self._settings.ready_online_limit
            # A very large course: the first names, and how many are online in all. Shared
            # course-mate sets know their name order (gchat/coursemates.py): no sort of the course.
            first = mates.first(online_ids, limit) if limit and len(online_ids) > limit \
                and isinstance(mates, MateSet) else None
            listed = online_ids if first is None else first
            profiles = await self._moodle.users({*listed, *(pair.peer_of(uid) for pair, _, _ in views)})
        event: dict[str, Any] = {"type": "ready", "me": me.as_dict(), "online": [],
                                 "conversations": [conversation_view(uid, pair, state, messages, profiles,
                                                                     reads.get(pair.id))
                                                   for pair, state, messages in views],
                                 "reset": reset, "coursemates": len(mates)}
        online = [profiles[i] for i in listed if i in profiles]
        if limit and len(online_ids) > limit:
            if first is None:
                online = heapq.nsmallest(limit, online, key=lambda u: (u.name.lower(), u.id))
            event["online_total"] = len(online_ids)
        else:
            online.sort(key=lambda u: (u.name.lower(), u.id))
        event["online"] = [u.as_dict() for u in online]
        body = encode_event(event)
        try:
            later, cursor = await self._broker.read(uid, head)
        except CursorGone:  # the log was dropped meanwhile (user went offline): the snapshot stands
            later, cursor = [], head
        return [with_cursor(head, body), *later], cursor
