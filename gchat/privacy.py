"""Personal data in gchat's tables: the background purge, and one user's export and erasure.

* **Retention** (``history_retention_days``, 0 = keep forever): messages older than that are
  deleted; the unread counts of the windows they were counted in are recomputed.
* **Users deleted in Moodle** (``purge_deleted_users``): Moodle keeps a deleted user's row with
  ``user.deleted = 1`` (``delete_user()``); their conversations go, with every message and both
  members' window rows.
* ``gchat privacy export --user ID`` writes every conversation of that user, with all its
  messages, as one JSON document; ``gchat privacy delete --user ID`` erases them.

A conversation is one shared copy for its two members (there is no "my copy" and "your copy" of a
message in ``gchat_messages``), so erasing a user's conversations erases them for the peer too:
leaving the peer with half of a dialogue, or with messages attributed to a person who asked to be
forgotten, would keep exactly the personal data the erasure is for.

Every statement is bounded: ids are selected with ``LIMIT`` and deleted by id (portable SQL, no
``DELETE … LIMIT``), each batch is its own short transaction through ``Database.run``, and the
background purge pauses between batches so that chat traffic always finds the pool free.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from functools import partial
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar
from collections.abc import Callable, Iterator

from gchat.db import Database, Query
from gchat.dialect import Dialect
from gchat.errors import Unavailable

log = logging.getLogger("gchat.privacy")
T = TypeVar("T")

DAY_MS = 86_400_000
MESSAGE_BATCH = 500       # message rows selected, then deleted, per transaction
CONVERSATION_BATCH = 100  # conversations examined or removed per transaction
PURGE_PAUSE = 0.2         # seconds between two batches of the background purge
PURGE_INTERVAL = 3600.0   # seconds between two purge runs
PURGE_FIRST_DELAY = 60.0  # seconds after start-up before the first run (let a restart settle)


@dataclass
class PurgeReport:
    messages: int = 0       # message rows deleted
    members: int = 0        # gchat_members rows deleted
    conversations: int = 0  # conversations deleted
    batches: int = 0        # transactions that deleted something

    def as_dict(self) -> dict[str, int]:
        return {"messages": self.messages, "members": self.members, "conversations": self.conversations}


def _marks(values: list[Any]) -> str:
    return ", ".join(["%s"] * len(values))


# -- units of work (each runs in one transaction) ------------------------------------------------


def _delete_old_messages(q: Query, cutoff_ms: int, after: int, limit: int) -> tuple[int, int]:
    """Delete up to ``limit`` messages older than ``cutoff_ms`` with ids above ``after``; returns
    the last id deleted (0 when none) and how many were. Walking by id also finds imported
    history (old times under new ids), in one pass per run."""
    rows = q.all("SELECT id, conversation FROM {gchat_messages} WHERE id > %s AND time < %s ORDER BY id LIMIT %s",
                 (after, cutoff_ms, limit))
    if not rows:
        return 0, 0
    ids = [int(row[0]) for row in rows]
    deleted = q.execute(f"DELETE FROM {{gchat_messages}} WHERE id IN ({_marks(ids)})", ids)
    _recount_unread(q, sorted({int(row[1]) for row in rows}))
    return ids[-1], deleted


def _recount_unread(q: Query, conversations: list[int]) -> None:
    """A window's unread count counts the peer's messages after its last read one; deleted ones
    no longer count."""
    if conversations:
        q.execute("UPDATE {gchat_members} SET unread = (SELECT COUNT(*) FROM {gchat_messages} g "
                  "WHERE g.conversation = {gchat_members}.conversation AND g.id > {gchat_members}.last_read "
                  "AND g.sender <> {gchat_members}.userid) "
                  f"WHERE unread > 0 AND conversation IN ({_marks(conversations)})", conversations)


def _conversations_of_deleted_users(q: Query, after: int, limit: int) -> list[int]:
    """Conversations above id ``after`` with a member Moodle has deleted."""
    rows = q.all("SELECT c.id FROM {gchat_conversations} c WHERE c.id > %s AND ("
                 "EXISTS (SELECT 1 FROM {user} u WHERE u.id = c.user_low AND u.deleted = 1) OR "
                 "EXISTS (SELECT 1 FROM {user} u WHERE u.id = c.user_high AND u.deleted = 1)) "
                 "ORDER BY c.id LIMIT %s", (after, limit))
    return [int(row[0]) for row in rows]


def _conversation_rows_of(q: Query, user: int, after: int, limit: int) -> list[tuple[Any, ...]]:
    return q.all("SELECT id, user_low, user_high, timecreated FROM {gchat_conversations} "
                 "WHERE (user_low = %s OR user_high = %s) AND id > %s ORDER BY id LIMIT %s",
                 (user, user, after, limit))


def _remove_conversations_step(q: Query, conversations: list[int], limit: int) -> tuple[int, int, int, bool]:
    """Delete up to ``limit`` messages of ``conversations``; once fewer were left, also their
    member rows and the conversations themselves, in the same transaction (a message sent
    meanwhile cannot be left behind without its conversation). Returns the counts and whether
    the conversations are gone."""
    marks = _marks(conversations)
    ids = [int(row[0]) for row in q.all(
        f"SELECT id FROM {{gchat_messages}} WHERE conversation IN ({marks}) ORDER BY id LIMIT %s",
        [*conversations, limit])]
    if ids:
        q.execute(f"DELETE FROM {{gchat_messages}} WHERE id IN ({_marks(ids)})", ids)
    if len(ids) == limit:
        return len(ids), 0, 0, False
    members = q.execute(f"DELETE FROM {{gchat_members}} WHERE conversation IN ({marks})", conversations)
    removed = q.execute(f"DELETE FROM {{gchat_conversations}} WHERE id IN ({marks})", conversations)
    return len(ids), members, removed, True


def _conversations_of(q: Query, user: int, limit: int) -> list[int]:
    """Conversations of ``user``: the ones it is one of the pair of, and the ones it has a window
    row in (a server that still had an erased conversation in memory may have written into it
    again: its rows come back under the old id, without a conversation row)."""
    ids = {int(row[0]) for row in _conversation_rows_of(q, user, 0, limit)}
    ids |= {int(row[0]) for row in q.all(
        "SELECT conversation FROM {gchat_members} WHERE userid = %s ORDER BY conversation LIMIT %s", (user, limit))}
    return sorted(ids)


def _remove_sent_step(q: Query, user: int, limit: int) -> int:
    """Up to ``limit`` messages ``user`` sent that are left outside its conversations."""
    ids = [int(row[0]) for row in q.all("SELECT id FROM {gchat_messages} WHERE sender = %s ORDER BY id LIMIT %s",
                                        (user, limit))]
    if ids:
        q.execute(f"DELETE FROM {{gchat_messages}} WHERE id IN ({_marks(ids)})", ids)
    return len(ids)


# -- drivers ------------------------------------------------------------------------------------


class _Steps:
    """Runs units of work one transaction at a time through ``Database.run`` (off the IOLoop,
    one pooled connection at a time), pausing ``pause`` seconds after each."""

    def __init__(self, db: Database, pause: float) -> None:
        self.db = db
        self.pause = pause

    async def __call__(self, work: Callable[[Query], T]) -> T:
        result = await self.db.run(work)
        if self.pause > 0:
            await asyncio.sleep(self.pause)
        return result


async def _remove_conversations(steps: _Steps, conversations: list[int], limit: int, report: PurgeReport) -> None:
    while True:
        messages, members, removed, done = await steps(
            lambda q: _remove_conversations_step(q, conversations, limit))
        report.messages += messages
        report.members += members
        report.conversations += removed
        report.batches += 1
        if done:
            return


async def purge_old_messages(steps: _Steps, days: int, limit: int, report: PurgeReport) -> None:
    cutoff = int(time.time() * 1000) - days * DAY_MS
    after = 0
    while True:
        last, deleted = await steps(partial(_delete_old_messages, cutoff_ms=cutoff, after=after, limit=limit))
        if not last:
            return
        report.batches += 1
        report.messages += deleted
        after = last


async def purge_deleted_users(steps: _Steps, limit: int, message_limit: int, report: PurgeReport) -> None:
    after = 0
    while True:
        conversations = await steps(partial(_conversations_of_deleted_users, after=after, limit=limit))
        if not conversations:
            return
        await _remove_conversations(steps, conversations, message_limit, report)
        after = conversations[-1]


class Purger:
    """The background purge: started and stopped with the server, one run every ``interval``."""

    def __init__(self, db: Database, *, retention_days: int, deleted_users: bool,
                 message_batch: int = MESSAGE_BATCH, conversation_batch: int = CONVERSATION_BATCH,
                 pause: float = PURGE_PAUSE, interval: float = PURGE_INTERVAL,
                 first_delay: float = PURGE_FIRST_DELAY) -> None:
        self.db = db
        self.retention_days = retention_days
        self.deleted_users = deleted_users
        self.message_batch = message_batch
        self.conversation_batch = conversation_batch
        self.pause = pause
        self.interval = interval
        self.first_delay = first_delay
        self.runs = 0
        self.last_report: PurgeReport | None = None
        self._ran: asyncio.Event | None = None  # set after each background run (tests await it)
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.retention_days > 0 or self.deleted_users

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._ran = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def wait_run(self) -> PurgeReport | None:
        """Until the background loop has finished a run since the last call."""
        assert self._ran is not None, "the purge was not started"
        await self._ran.wait()
        self._ran.clear()
        return self.last_report

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        await asyncio.sleep(self.first_delay)
        while True:
            try:
                report = await self.run_once()
                if report.messages or report.conversations:
                    log.info("purged %d messages, %d conversations, %d window rows",
                             report.messages, report.conversations, report.members)
            except Unavailable as exc:
                log.warning("chat history not purged this time: %s", exc)
            except Exception:
                log.exception("chat history purge failed")
            if self._ran is not None:
                self._ran.set()
            await asyncio.sleep(self.interval)

    async def run_once(self) -> PurgeReport:
        """One complete purge, batch after batch; returns what was deleted."""
        steps = _Steps(self.db, self.pause)
        report = PurgeReport()
        if self.retention_days > 0:
            await purge_old_messages(steps, self.retention_days, self.message_batch, report)
        if self.deleted_users:
            await purge_deleted_users(steps, self.conversation_batch, self.message_batch, report)
        self.runs += 1
        self.last_report = report
        return report


# -- one user's data (gchat privacy export|delete) ----------------------------------------------------


def export_user(db: Database, user: int, out: TextIO, *, limit: int = MESSAGE_BATCH) -> int:
    """Write every conversation of ``user`` with all its messages (both members') and this user's
    window state as one JSON document to ``out``; returns how many conversations. Read in batches,
    written one conversation at a time, so a long history never sits in memory whole."""
    out.write(f'{{"user": {int(user)}, "exported": {int(time.time() * 1000)}, "conversations": [')
    count = 0
    after = 0
    while True:
        rows = db.run_sync(partial(_conversation_rows_of, user=user, after=after, limit=CONVERSATION_BATCH))
        for conv_id, low, high, created in rows:
            conv_id = int(conv_id)
            state = db.run_sync(partial(_member_row, conversation=conv_id, user=user))
            conversation: dict[str, Any] = {
                "id": conv_id, "with": int(high) if int(low) == user else int(low), "created": int(created),
                "open": bool(state[0]) if state else False, "minimized": bool(state[1]) if state else False,
                "unread": int(state[2]) if state else 0, "last_read": int(state[3]) if state else 0,
                "messages": list(_messages_of(db, conv_id, limit)),
            }
            out.write(("\n  " if count == 0 else ",\n  ") + json.dumps(conversation, ensure_ascii=False))
            count += 1
        if len(rows) < CONVERSATION_BATCH:
            break
        after = int(rows[-1][0])
    out.write("\n]}\n" if count else "]}\n")
    out.flush()
    return count


def _messages_of(db: Database, conversation: int, limit: int) -> Iterator[dict[str, Any]]:
    after = 0
    while True:
        rows = db.run_sync(partial(_message_rows, conversation=conversation, after=after, limit=limit))
        for message_id, sender, text, stamp, client_id in rows:
            yield {"id": int(message_id), "from": int(sender), "text": text, "time": int(stamp),
                   "client_id": Dialect.client_id_value(client_id)}
        if len(rows) < limit:
            return
        after = int(rows[-1][0])


async def delete_user(db: Database, user: int, *, limit: int = MESSAGE_BATCH, pause: float = 0.0) -> PurgeReport:
    """Erase every conversation of ``user`` (with the peer's side of it, see the module docstring),
    every message it sent and every window row it has, batch by batch."""
    steps = _Steps(db, pause)
    report = PurgeReport()
    while True:
        conversations = await steps(lambda q: _conversations_of(q, user, CONVERSATION_BATCH))
        if not conversations:
            break
        await _remove_conversations(steps, conversations, limit, report)
    while True:
        removed = await steps(lambda q: _remove_sent_step(q, user, limit))
        report.messages += removed
        if removed < limit:
            return report


def _member_row(q: Query, *, conversation: int, user: int) -> tuple[Any, ...] | None:
    return q.one("SELECT is_open, minimized, unread, last_read FROM {gchat_members} WHERE conversation = %s "
                 "AND userid = %s", (conversation, user))


def _message_rows(q: Query, *, conversation: int, after: int, limit: int) -> list[tuple[Any, ...]]:
    return q.all("SELECT id, sender, text, time, client_id FROM {gchat_messages} WHERE conversation = %s "
                 "AND id > %s ORDER BY id LIMIT %s", (conversation, after, limit))
