"""gchat's own tables in the Moodle database (same prefix): conversations, members, messages.

* ``gchat_conversations``: one row per unordered pair of users (``user_low < user_high``, unique).
* ``gchat_members``: each member's view: window open, minimised, unread count, last message read.
* ``gchat_messages``: text (≤ 1333 characters, utf8mb4), sender, Unix time in milliseconds and the
  sender's ``client_id``, unique per sender, so that a retried send stores nothing twice. The
  ``client_id`` is kept as its UTF-8 bytes (VARBINARY, BYTEA, BLOB), so that ids differing only by
  case or trailing spaces are different ids on every engine (see gchat/dialect.py).

The tables are created by ``gchat initdb`` (the demo creates them itself) on MySQL/MariaDB,
PostgreSQL or SQLite, with the same names and indexes; ``initdb`` also brings tables of an older
gchat up to date. Production start-up only checks that they are there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gchat import store_schema
from gchat.db import Database, Query
from gchat.message_writer import MAX_BATCH, MessageWriter
from gchat.store_rows import (MESSAGE_COLUMNS, STATE_COLUMNS, MemberState, Message, Pair, Read, Recent, Stored,
                              ensure_members, last_messages, member_state_of, message_of, newest_id, now_ms, read_of,
                              state_of)
from gchat.store_schema import TABLES

__all__ = ["MAX_BATCH", "MAX_HISTORY_LIMIT", "TABLES", "ChatStore", "MemberState", "Message", "Pair", "Read",
           "Recent", "Stored", "now_ms"]

MAX_HISTORY_LIMIT = 50
# Batches of sends in the database at once, at most; each takes a pooled connection while it
# is written, and the rest of the pool serves every other query.
WRITE_LANES_MAX = 2


class ChatStore:
    def __init__(self, db: Database, write_lanes: int | None = None) -> None:
        self.db = db
        # Appended to a SELECT that must see rows committed after this transaction's snapshot
        # (MySQL/MariaDB REPEATABLE READ), or wait for a writer of it that has not committed
        # (PostgreSQL); SQLite has no snapshot older than its write lock.
        self._latest = db.sql_dialect.locking_read
        self._pairs: dict[int, Pair] = {}  # immutable rows: a plain dict cache, bounded below
        # Half the pool at most writes messages; SQLite has one writer anyway.
        lanes = write_lanes or (1 if db.dialect == "sqlite" else max(1, min(WRITE_LANES_MAX, db.pool_size // 2)))
        self.writer = MessageWriter(db, lanes)

    # -- schema -----------------------------------------------------------------------------

    def create_tables(self, q: Query) -> None:
        """Create the tables that are missing and bring older ones up to date (``gchat initdb``)."""
        store_schema.create_tables(q)

    def outdated(self, q: Query) -> list[str]:
        """What ``gchat initdb`` would still change in the existing tables, for ``gchat check``."""
        return store_schema.outdated(q, self.db.prefix)

    def missing_tables(self, q: Query) -> list[str]:
        return store_schema.missing_tables(q)

    # -- conversations ----------------------------------------------------------------------

    async def pair(self, conversation_id: int) -> Pair | None:
        hit = self._pairs.get(conversation_id)
        if hit is not None:
            return hit
        row = await self.db.run(lambda q: q.one(
            "SELECT id, user_low, user_high FROM {gchat_conversations} WHERE id = %s", (conversation_id,)))
        if row is None:
            return None
        return self._remember(Pair(int(row[0]), int(row[1]), int(row[2])))

    def _remember(self, pair: Pair) -> Pair:
        if len(self._pairs) > 200_000:
            self._pairs.clear()
        self._pairs[pair.id] = pair
        return pair

    async def open(self, me: int, peer: int, history: int) -> tuple[Pair, MemberState, list[Message]]:
        """Create the conversation if new, open it for ``me``; returns my view and its last messages."""
        def work(q: Query) -> tuple[Pair, MemberState, list[Message]]:
            pair = self._find_or_create_pair(q, me, peer)
            ensure_members(q, pair)
            q.execute("UPDATE {gchat_members} SET is_open = 1, minimized = 0, timemodified = %s "
                      "WHERE conversation = %s AND userid = %s", (now_ms(), pair.id, me))
            # A locking read: when another unit of work created the conversation meanwhile, this
            # one's snapshot (REPEATABLE READ) is older than the member row, and an UPDATE that
            # changed nothing (a second open in the same millisecond) left no version of its own
            # to read: a plain read would find no row and say the window is closed.
            return pair, state_of(q, pair.id, me, self._latest), last_messages(q, pair.id, history)

        pair, state, messages = await self.db.run(work)
        self._remember(pair)
        return pair, state, messages

    def _find_or_create_pair(self, q: Query, a: int, b: int) -> Pair:
        low, high = min(a, b), max(a, b)
        row = q.one("SELECT id FROM {gchat_conversations} WHERE user_low = %s AND user_high = %s", (low, high))
        if row is None:
            new_id = q.insert_new_id("INSERT INTO {gchat_conversations} (user_low, user_high, timecreated) "
                                     "VALUES (%s, %s, %s)", (low, high, now_ms()))
            if new_id is not None:
                return Pair(new_id, low, high)
            # Both users opened at once: the other transaction created it first. A plain
            # SELECT would read this transaction's REPEATABLE READ snapshot, taken before that
            # row was committed; a locking read sees it.
            row = q.one("SELECT id FROM {gchat_conversations} WHERE user_low = %s AND user_high = %s"
                        + self._latest, (low, high))
            assert row is not None
        return Pair(int(row[0]), low, high)

    async def state(self, conversation: int, user: int) -> MemberState:
        return await self.db.run(lambda q: state_of(q, conversation, user))

    async def view(self, conversation: int, user: int, history: int) -> tuple[MemberState, list[Message]]:
        return await self.db.run(lambda q: (state_of(q, conversation, user),
                                            last_messages(q, conversation, history)))

    async def set_open(self, conversation: int, user: int, is_open: bool) -> MemberState:
        def work(q: Query) -> MemberState:
            if is_open:
                q.execute("UPDATE {gchat_members} SET is_open = 1, timemodified = %s "
                          "WHERE conversation = %s AND userid = %s", (now_ms(), conversation, user))
                return state_of(q, conversation, user)
            # Closing a window is a deliberate act: what it showed counts as read. The row is
            # locked first, as in record_read: a message committed before is read here, one
            # still being stored waits and then opens the window again with itself unread.
            # (One UPDATE with the newest id as a subquery would read messages with a
            # snapshot from before the wait on PostgreSQL, and lock them on MariaDB.)
            q.execute("UPDATE {gchat_members} SET is_open = 0, minimized = 0, timemodified = %s "
                      "WHERE conversation = %s AND userid = %s", (now_ms(), conversation, user))
            newest = newest_id(q, conversation)
            q.execute("UPDATE {gchat_members} SET unread = 0, last_read = %s "
                      "WHERE conversation = %s AND userid = %s", (newest, conversation, user))
            return MemberState(False, False, 0, newest, newest)  # all of it, as just written

        return await self.db.run(work)

    async def set_minimized(self, conversation: int, user: int, minimized: bool) -> MemberState:
        def work(q: Query) -> MemberState:
            q.execute("UPDATE {gchat_members} SET minimized = %s, timemodified = %s "
                      "WHERE conversation = %s AND userid = %s", (int(minimized), now_ms(), conversation, user))
            return state_of(q, conversation, user)

        return await self.db.run(work)

    async def mark_seen(self, conversation: int, user: int, message_id: int) -> tuple[MemberState, bool]:
        """Record that ``user`` read up to ``message_id``; returns the view and whether it changed
        (``record_read`` without the read receipt)."""
        state, changed, _ = await self.record_read(conversation, user, message_id)
        return state, changed

    async def open_views(self, user: int, history: int) -> list[tuple[Pair, MemberState, list[Message]]]:
        """Every conversation whose window ``user`` has open, with its last messages (for ``ready``)."""
        def work(q: Query) -> list[tuple[Pair, MemberState, list[Message]]]:
            rows = q.all(f"SELECT c.id, c.user_low, c.user_high, {STATE_COLUMNS} "
                         "FROM {gchat_members} m JOIN {gchat_conversations} c ON c.id = m.conversation "
                         "WHERE m.userid = %s AND m.is_open = 1 ORDER BY m.timemodified, c.id", (user,))
            views = []
            for row in rows:
                pair = Pair(int(row[0]), int(row[1]), int(row[2]))
                views.append((pair, member_state_of(row[3:]), last_messages(q, pair.id, history)))
            return views

        views = await self.db.run(work)
        for pair, _, _ in views:
            self._remember(pair)
        return views

    # -- messages ---------------------------------------------------------------------------

    async def add_message(self, pair: Pair, sender: int, text: str, client_id: str | None,
                          history: int) -> Stored:
        """Store a message (or find the one a retry with the same client_id stored) and count it
        unread for the peer, opening the peer's window. Committed when this returns; written in
        batches, several at once, in order within each conversation (gchat/message_writer.py)."""
        return await self.writer.add(pair, sender, text, client_id, history)

    async def history(self, conversation: int, before: int | None, limit: int) -> list[Message]:
        """Up to ``limit`` messages older than message id ``before`` (all when None), oldest first."""
        limit = max(1, min(limit, MAX_HISTORY_LIMIT))

        def work(q: Query) -> list[Message]:
            if before is None:
                return last_messages(q, conversation, limit)
            rows = q.all(f"SELECT {MESSAGE_COLUMNS} FROM {{gchat_messages}} WHERE conversation = %s AND id < %s "
                         "ORDER BY id DESC LIMIT %s", (conversation, before, limit))
            return [message_of(row) for row in reversed(rows)]

        return await self.db.run(work)

    # -- read receipts and recent conversations (protocol additions: read, peer_read, conversations)

    async def record_read(self, conversation: int, user: int, message_id: int
                          ) -> tuple[MemberState, bool, Read | None]:
        """``mark_seen`` that also remembers when the last message read moved forward.

        Returns the view, whether it changed, and the new read position when it moved (for the
        peer's ``read`` event), else None. One transaction."""
        def work(q: Query) -> tuple[MemberState, bool, Read | None]:
            # The member row is locked first, before anything is read: a message being stored
            # now updates this row too (unread + 1), so it is either committed and counted below
            # or waits and adds itself to what is written here. Counting first would write back
            # a count without it: the message would never be unread (on SQLite the write lock
            # is taken here too, and the reads after it see every commit).
            q.execute("UPDATE {gchat_members} SET timemodified = %s WHERE conversation = %s AND userid = %s",
                      (now_ms(), conversation, user))
            before = state_of(q, conversation, user)
            last_read = max(before.last_read, message_id)
            # Only a message of this conversation counts as read: a made-up id would otherwise
            # show the peer "Seen" under messages that were never read.
            last_read = min(last_read, max(before.newest, before.last_read))
            unread = q.scalar("SELECT COUNT(*) FROM {gchat_messages} WHERE conversation = %s AND id > %s "
                              "AND sender <> %s", (conversation, last_read, user))
            stamp = now_ms()
            moved = last_read > before.last_read
            if moved:
                q.execute("UPDATE {gchat_members} SET last_read = %s, last_read_time = %s, unread = %s, "
                          "timemodified = %s WHERE conversation = %s AND userid = %s",
                          (last_read, stamp, int(unread or 0), stamp, conversation, user))
            else:
                q.execute("UPDATE {gchat_members} SET unread = %s, timemodified = %s "
                          "WHERE conversation = %s AND userid = %s",
                          (int(unread or 0), stamp, conversation, user))
            # The row is locked: nothing but these two figures changed since ``before``, and no
            # peer's message can have been stored after its newest (it would wait for the lock).
            after = dataclasses.replace(before, unread=int(unread or 0), last_read=last_read)
            return after, after != before, Read(last_read, stamp) if moved else None

        return await self.db.run(work)

    async def peer_reads(self, user: int, conversations: list[int]) -> dict[int, Read | None]:
        """For each conversation of ``user``: how far the other member has read (None: nothing yet)."""
        if not conversations:
            return {}

        def work(q: Query) -> dict[int, Read | None]:
            marks = ", ".join(["%s"] * len(conversations))
            rows = q.all(f"SELECT conversation, last_read, last_read_time FROM {{gchat_members}} "
                         f"WHERE conversation IN ({marks}) AND userid <> %s", [*conversations, user])
            found: dict[int, Read | None] = {c: None for c in conversations}
            for conversation, message, stamp in rows:
                found[int(conversation)] = read_of(message, stamp)
            return found

        return await self.db.run(work)

    async def recent(self, user: int, before: int | None, limit: int) -> tuple[list[Recent], bool]:
        """``user``'s conversations that have messages, newest message first, those whose newest
        message is older than ``before`` (Unix ms; all when None); at most ``limit``, and whether
        there are more. Open or closed, online peer or not."""
        def work(q: Query) -> tuple[list[Recent], bool]:
            sql = ("SELECT c.id, c.user_low, c.user_high, m.is_open, m.minimized, m.unread, m.last_read, "
                   "p.last_read, p.last_read_time, x.id, x.conversation, x.sender, x.text, x.time, x.client_id "
                   "FROM {gchat_members} m "
                   "JOIN {gchat_conversations} c ON c.id = m.conversation "
                   "JOIN {gchat_messages} x ON x.id = (SELECT MAX(y.id) FROM {gchat_messages} y "
                   "WHERE y.conversation = m.conversation) "
                   "LEFT JOIN {gchat_members} p ON p.conversation = m.conversation AND p.userid <> m.userid "
                   "WHERE m.userid = %s")
            params: list[Any] = [user]
            if before is not None:
                sql += " AND x.time < %s"
                params.append(before)
            sql += " ORDER BY x.time DESC, x.id DESC LIMIT %s"
            params.append(limit + 1)
            rows = q.all(sql, params)
            found = [Recent(Pair(int(r[0]), int(r[1]), int(r[2])),
                            MemberState(bool(r[3]), bool(r[4]), int(r[5]), int(r[6]), int(r[9])),
                            message_of(r[9:15]), read_of(r[7], r[8])) for r in rows[:limit]]
            return found, len(rows) > limit

        found, more = await self.db.run(work)
        for row in found:
            self._remember(row.pair)
        return found, more
