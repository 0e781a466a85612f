"""The write path of ``send``: messages stored in batches, several batches at once.

A send is committed before its ``ok`` (the durability promise), so its latency is the time its
batch spends in the database plus the time it waits for a batch to start. Batches are group
commits: the sends that arrive while batches are in the database go together into the next one
(one transaction, one thread-pool hop, three statements whatever its size), so under load the
cost per message falls instead of the queue growing.

Up to ``lanes`` batches are in the database at once, each on its own pooled connection, so a
send does not wait for an unrelated batch to finish. Order is kept per conversation: a
conversation with a batch in the database gets no second one until the first is done, and a
batch resolves its sends in arrival order, so each conversation's messages get increasing ids
and are published in id order. Across conversations nothing is ordered (nothing needs to be).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from gchat.db import INTEGRITY_ERRORS, Database, Query
from gchat.store_rows import (MESSAGE_COLUMNS, Message, Pair, Stored, cid, ensure_members, last_messages, message_of,
                              now_ms, reader_of, state_of)

MAX_BATCH = 200  # sends written in one transaction at most


@dataclass(slots=True)
class _Send:
    pair: Pair
    sender: int
    text: str
    client_id: str | None
    history: int
    future: asyncio.Future[Stored]


class MessageWriter:
    """Writes sends in batches; :meth:`add` resolves when the send is committed."""

    def __init__(self, db: Database, lanes: int) -> None:
        self.db = db
        self.lanes = max(1, lanes)
        # Appended to a SELECT that must see rows committed after this transaction's snapshot.
        self._latest = db.sql_dialect.locking_read
        self._pending: deque[_Send] = deque()
        self._busy: set[int] = set()  # conversations with a batch in the database
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # referenced so the loop cannot drop them
        self._batch_inserts: bool | None = None  # one multi-row INSERT tells its ids (see Query)
        self.batches = 0
        self.messages = 0

    async def add(self, pair: Pair, sender: int, text: str, client_id: str | None, history: int) -> Stored:
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._pending.append(_Send(pair, sender, text, client_id, history, future))
        self._start()
        return await future

    # -- scheduling ----------------------------------------------------------------------------

    def _start(self) -> None:
        """Start batches while a lane is free and some pending send's conversation is not busy."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a writer task closed with its loop (shutdown): nothing more to start
            return
        while self._in_flight < self.lanes and self._pending:
            batch = self._take()
            if not batch:
                return
            self._in_flight += 1
            self._busy.update(send.pair.id for send in batch)
            task = loop.create_task(self._write(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Send]:
        """Up to MAX_BATCH pending sends, oldest first, of conversations without a batch in the
        database; the others keep their place in the queue."""
        pending = self._pending
        if not self._busy:
            return [pending.popleft() for _ in range(min(len(pending), MAX_BATCH))]
        batch: list[_Send] = []
        kept: deque[_Send] = deque()
        for send in pending:
            if len(batch) < MAX_BATCH and send.pair.id not in self._busy:
                batch.append(send)
            else:
                kept.append(send)
        self._pending = kept
        return batch

    async def _write(self, batch: list[_Send]) -> None:
        try:
            results = await self.db.run(lambda q: self._store_batch(q, batch))
        except Exception as exc:  # every send of the batch gets the error (unavailable)
            for send in batch:
                if not send.future.done():
                    send.future.set_exception(exc)
        else:
            self.batches += 1
            self.messages += len(batch)
            for send, result in zip(batch, results):
                if not send.future.done():
                    send.future.set_result(result)
        finally:
            self._in_flight -= 1
            self._busy.difference_update(send.pair.id for send in batch)
            self._start()

    # -- one batch, in one transaction ------------------------------------------------------------

    def _store_batch(self, q: Query, batch: list[_Send]) -> list[Stored]:
        """A batch in three statements on MariaDB/MySQL and PostgreSQL: one multi-row INSERT
        that tells its ids (``Query.insert_many``), one read of the peers' windows, one upsert
        adding each peer's unread count. A repeated client_id in the batch fails the INSERT
        whole; then, as on SQLite, each message goes its own way (and its duplicate is found)."""
        if len(batch) == 1 or not self._multi_row_ids(q):
            return [self._store_message(q, send) for send in batch]
        stamp = now_ms()
        values = [value for s in batch for value in (s.pair.id, s.sender, s.text, cid(s.client_id), stamp)]
        try:
            with q.may_fail():
                ids = q.insert_many("INSERT INTO {gchat_messages} (conversation, sender, text, client_id, time) "
                                    "VALUES " + ", ".join(["(%s, %s, %s, %s, %s)"] * len(batch)), values, len(batch))
        except INTEGRITY_ERRORS:
            return [self._store_message(q, send) for send in batch]
        unread: dict[tuple[int, int], int] = {}
        for s in batch:
            key = (s.pair.id, s.pair.peer_of(s.sender))
            unread[key] = unread.get(key, 0) + 1
        keys = list(unread)
        rows = q.all("SELECT conversation, userid, is_open FROM {gchat_members} WHERE (conversation, userid) IN ("
                     + ", ".join(["(%s, %s)"] * len(keys)) + ")", [v for key in keys for v in key])
        opened = {(int(c), int(u)) for c, u, is_open in rows if not int(is_open)}
        opened |= set(keys) - {(int(c), int(u)) for c, u, _ in rows}
        q.execute(q.dialect.upsert(
            "INSERT INTO {gchat_members} (conversation, userid, is_open, unread, timemodified) VALUES "
            + ", ".join(["(%s, %s, 1, %s, %s)"] * len(keys)), ("conversation", "userid"), "gchat_members",
            {"is_open": "1", "unread": "OLD.unread + NEW.unread", "timemodified": "NEW.timemodified"}),
            [v for key in keys for v in (key[0], key[1], unread[key], stamp)])
        results = []
        for message_id, s in zip(ids, batch):
            message = Message(message_id, s.pair.id, s.sender, s.text, stamp, s.client_id)
            key = (s.pair.id, s.pair.peer_of(s.sender))
            if key in opened:
                # The first message of the batch to a closed window opens it (with the messages).
                opened.discard(key)
                results.append(self._opened(q, message, s, key[1]))
            else:
                results.append(Stored(message, False, None))
        return results

    @staticmethod
    def _opened(q: Query, message: Message, send: _Send, peer: int) -> Stored:
        return Stored(message, False, state_of(q, send.pair.id, peer), last_messages(q, send.pair.id, send.history),
                      reader_of(q, send.pair.id, send.sender))

    def _multi_row_ids(self, q: Query) -> bool:
        if self._batch_inserts is None:
            self._batch_inserts = q.multi_row_ids()
        return self._batch_inserts

    def _store_message(self, q: Query, s: _Send) -> Stored:
        """The common case costs two statements: the insert (a repeated client_id fails on the
        unique key and returns the stored message) and the peer's unread count, updated only
        where the window is open; a closed window is opened with a second update. Both member
        rows exist: ``open`` creates them with the conversation."""
        pair, peer, stamp = s.pair, s.pair.peer_of(s.sender), now_ms()
        message_id = q.insert_new_id("INSERT INTO {gchat_messages} (conversation, sender, text, client_id, time) "
                                     "VALUES (%s, %s, %s, %s, %s)",
                                     (pair.id, s.sender, s.text, cid(s.client_id), stamp))
        if message_id is None:
            # A locking read: earlier statements of the batch may have fixed an older snapshot.
            existing = self._by_client_id(q, s.sender, s.client_id) if s.client_id is not None else None
            if existing is None:
                raise RuntimeError(f"{self.db.prefix}gchat_messages refused client_id {s.client_id!r} of user "
                                   f"{s.sender} but holds no message with it: run gchat initdb to bring the table "
                                   "up to date")
            return Stored(existing, True, None)
        message = Message(message_id, pair.id, s.sender, s.text, stamp, s.client_id)
        if q.execute("UPDATE {gchat_members} SET unread = unread + 1, timemodified = %s "
                     "WHERE conversation = %s AND userid = %s AND is_open = 1", (stamp, pair.id, peer)):
            return Stored(message, False, None)
        ensure_members(q, pair)
        q.execute("UPDATE {gchat_members} SET is_open = 1, unread = unread + 1, timemodified = %s "
                  "WHERE conversation = %s AND userid = %s", (stamp, pair.id, peer))
        return self._opened(q, message, s, peer)

    def _by_client_id(self, q: Query, sender: int, client_id: str | None) -> Message | None:
        row = q.one(f"SELECT {MESSAGE_COLUMNS} FROM {{gchat_messages}} WHERE sender = %s AND client_id = %s"
                    + self._latest, (sender, cid(client_id)))
        return message_of(row) if row else None
