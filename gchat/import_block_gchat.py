"""``gchat import-block-gchat``: bring the history of the old ``block_gchat`` plugin into gchat.

The old plugin (Moodle 2.2–2.4) kept, in the Moodle database and with Moodle's prefix:

* ``block_gchat_sessions`` — one row per chat between two users (``id``; ``userfrom`` and
  ``userto`` in the plugin's install.xml);
* ``block_gchat_user_sessions`` — each user's side of a session: ``sessionid``, ``userid``,
  ``isopen`` (window open), ``unseen`` (1 when the user has not seen the latest messages);
* ``block_gchat_messages`` — ``id``, ``sessionid``, ``userid`` (the sender), ``text``
  (char 1333) and ``timecreated`` (Unix seconds).

Each old session becomes a gchat conversation between the same two users (several old sessions
of the same pair — the old unique key was the *ordered* pair — become one), each side's window
state becomes a ``gchat_members`` row, and each message becomes a ``gchat_messages`` row with its
time in milliseconds and ``client_id = 'block_gchat:<old message id>'``. That client id is unique
per sender in gchat's table, which is what makes the import **idempotent**: a second run finds
every message already there and stores nothing twice, and a run after the old plugin kept working
for a while imports only what is new. Each conversation is imported in one transaction, so an
interrupted run leaves nothing half done; run it again.

Run it before users start chatting in gchat: gchat orders a conversation by message id, so old
messages imported into a conversation that already has new ones would appear after them (the
command counts and reports such conversations). gchat never changes or deletes the old tables.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

from gchat.db import Database, Query
from gchat.dialect import Dialect
from gchat.errors import Unavailable
from gchat.store import ChatStore

OLD_SESSIONS = "block_gchat_sessions"
OLD_USER_SESSIONS = "block_gchat_user_sessions"
OLD_MESSAGES = "block_gchat_messages"
OLD_TABLES = (OLD_SESSIONS, OLD_USER_SESSIONS, OLD_MESSAGES)
CLIENT_ID_PREFIX = "block_gchat:"
# client_id holds bytes on every engine (gchat/dialect.py): the imported ones are those from
# b"block_gchat:" up to, not including, b"block_gchat;" (';' follows ':'), a range the unique
# (sender, client_id) index serves on MySQL/MariaDB, PostgreSQL and SQLite alike.
_IMPORTED_FROM = Dialect.client_id_param(CLIENT_ID_PREFIX)
_IMPORTED_UNTIL = Dialect.client_id_param(CLIENT_ID_PREFIX[:-1] + chr(ord(CLIENT_ID_PREFIX[-1]) + 1))


class ImportFailed(Exception):
    """The import cannot run (no old tables, database unreachable); one line for the admin."""


@dataclass
class ImportReport:
    sessions: int = 0                # old sessions read
    conversations_created: int = 0
    conversations_existing: int = 0  # already in gchat (an earlier import, or chats since)
    members_created: int = 0
    messages_imported: int = 0
    messages_present: int = 0        # imported by an earlier run
    sessions_skipped: int = 0        # not exactly two users
    messages_skipped: int = 0        # no such session, or the sender is not one of its two users
    conversations_mixed: int = 0     # got old messages after gchat messages (see the module docstring)
    notes: list[str] = field(default_factory=list)

    def add(self, other: ImportReport) -> None:
        for name in self.__dataclass_fields__:
            if name != "notes":
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def lines(self) -> list[str]:
        out = [
            f"block_gchat sessions read: {self.sessions}",
            f"conversations: {self.conversations_created} created, {self.conversations_existing} already there",
            f"members: {self.members_created} created",
            f"messages: {self.messages_imported} imported, {self.messages_present} already imported",
        ]
        if self.sessions_skipped or self.messages_skipped:
            out.append(f"skipped: {self.sessions_skipped} sessions without exactly two users, "
                       f"{self.messages_skipped} messages without a session or from a non-member")
        if self.conversations_mixed:
            out.append(f"warning: {self.conversations_mixed} conversations already had gchat messages; "
                       "the imported history is listed after them")
        return out + self.notes


@dataclass
class _Side:
    isopen: bool = False
    unseen: bool = False


@dataclass
class _Pair:
    low: int
    high: int
    old_sessions: list[int] = field(default_factory=list)
    sides: dict[int, _Side] = field(default_factory=dict)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _read_pairs(q: Query) -> tuple[list[_Pair], ImportReport]:
    """Old sessions grouped by their unordered pair of users, in a stable order."""
    report = ImportReport()
    has_users = q.column_exists(OLD_SESSIONS, "userfrom") and q.column_exists(OLD_SESSIONS, "userto")
    members: dict[int, set[int]] = {}
    if has_users:
        for sid, userfrom, userto in q.all(f"SELECT id, userfrom, userto FROM {{{OLD_SESSIONS}}} ORDER BY id"):
            members[int(sid)] = {int(u) for u in (userfrom, userto) if u}
    else:
        for (sid,) in q.all(f"SELECT id FROM {{{OLD_SESSIONS}}} ORDER BY id"):
            members[int(sid)] = set()
    sides: dict[int, dict[int, _Side]] = {}
    for sid, userid, isopen, unseen in q.all(
            f"SELECT sessionid, userid, isopen, unseen FROM {{{OLD_USER_SESSIONS}}} ORDER BY id"):
        sid, userid = int(sid), int(userid)
        if sid in members and userid:
            members[sid].add(userid)
            sides.setdefault(sid, {})[userid] = _Side(bool(isopen), bool(unseen))
    for sid, users in members.items():
        if len(users) < 2:  # a damaged row: the senders of its messages say who was in it
            users.update(int(u) for (u,) in q.all(
                f"SELECT DISTINCT userid FROM {{{OLD_MESSAGES}}} WHERE sessionid = %s AND userid > 0", (sid,)))
    report.sessions = len(members)
    pairs: dict[tuple[int, int], _Pair] = {}
    for sid, users in sorted(members.items()):
        if len(users) != 2:
            report.sessions_skipped += 1
            report.messages_skipped += int(q.scalar(
                f"SELECT COUNT(*) FROM {{{OLD_MESSAGES}}} WHERE sessionid = %s", (sid,)) or 0)
            continue
        low, high = sorted(users)
        pair = pairs.setdefault((low, high), _Pair(low, high))
        pair.old_sessions.append(sid)
        for uid, side in sides.get(sid, {}).items():
            if uid in (low, high):
                # Several old sessions of one pair become one conversation: its window is open
                # if any of theirs was, and it has unread messages if any of theirs had.
                merged = pair.sides.setdefault(uid, _Side())
                merged.isopen |= side.isopen
                merged.unseen |= side.unseen
    return [pairs[key] for key in sorted(pairs)], report


def _conversation(q: Query, pair: _Pair, first_ms: int, locking_read: str) -> tuple[int, bool]:
    """The gchat conversation of the pair (created if new) and whether it was created."""
    find = "SELECT id FROM {gchat_conversations} WHERE user_low = %s AND user_high = %s"
    row = q.one(find, (pair.low, pair.high))
    if row is not None:
        return int(row[0]), False
    new_id = q.insert_new_id("INSERT INTO {gchat_conversations} (user_low, user_high, timecreated) "
                             "VALUES (%s, %s, %s)", (pair.low, pair.high, first_ms))
    if new_id is not None:
        return new_id, True
    # gchat, running meanwhile, created it after this transaction's snapshot: a locking read sees it.
    row = q.one(find + locking_read, (pair.low, pair.high))
    assert row is not None
    return int(row[0]), False


def _import_pair(q: Query, pair: _Pair, locking_read: str) -> ImportReport:
    """One conversation in one transaction; returns its counts (a deadlock retry runs it again)."""
    report = ImportReport()
    marks = ", ".join(["%s"] * len(pair.old_sessions))
    old = q.all(f"SELECT id, userid, text, timecreated FROM {{{OLD_MESSAGES}}} WHERE sessionid IN ({marks}) "
                "ORDER BY timecreated, id", pair.old_sessions)
    members = (pair.low, pair.high)
    wanted = [row for row in old if int(row[1]) in members]
    report.messages_skipped += len(old) - len(wanted)
    first_ms = int(wanted[0][3]) * 1000 if wanted else _now_ms()
    conversation, created = _conversation(q, pair, first_ms, locking_read)
    if created:
        report.conversations_created += 1
    else:
        report.conversations_existing += 1

    present = {Dialect.client_id_value(cid) for (cid,) in q.all(
        "SELECT client_id FROM {gchat_messages} WHERE sender IN (%s, %s) AND client_id >= %s AND client_id < %s",
        (pair.low, pair.high, _IMPORTED_FROM, _IMPORTED_UNTIL))}
    new = [row for row in wanted if f"{CLIENT_ID_PREFIX}{int(row[0])}" not in present]
    report.messages_present += len(wanted) - len(new)
    if new and not created and q.scalar(
            "SELECT COUNT(*) FROM {gchat_messages} WHERE conversation = %s "
            "AND (client_id IS NULL OR client_id < %s OR client_id >= %s)",
            (conversation, _IMPORTED_FROM, _IMPORTED_UNTIL)):
        report.conversations_mixed += 1
    for old_id, sender, text, timecreated in new:
        q.execute("INSERT INTO {gchat_messages} (conversation, sender, text, client_id, time) "
                  "VALUES (%s, %s, %s, %s, %s)",
                  (conversation, int(sender), text if text is not None else "",
                   Dialect.client_id_param(f"{CLIENT_ID_PREFIX}{int(old_id)}"), int(timecreated or 0) * 1000))
    report.messages_imported += len(new)

    for user in members:
        if q.one("SELECT 1 FROM {gchat_members} WHERE conversation = %s AND userid = %s",
                 (conversation, user)) is not None:
            continue  # gchat's own state (or an earlier import's) wins over the old plugin's
        side = pair.sides.get(user, _Side())
        if side.unseen:
            # The old plugin kept a flag, not a count: what the user wrote last they had seen;
            # the peer's messages after it are the unread ones.
            last_read = int(q.scalar("SELECT COALESCE(MAX(id), 0) FROM {gchat_messages} "
                                     "WHERE conversation = %s AND sender = %s", (conversation, user)))
        else:
            last_read = int(q.scalar("SELECT COALESCE(MAX(id), 0) FROM {gchat_messages} WHERE conversation = %s",
                                     (conversation,)))
        unread = int(q.scalar("SELECT COUNT(*) FROM {gchat_messages} WHERE conversation = %s AND id > %s "
                              "AND sender <> %s", (conversation, last_read, user)))
        # Not inserted when the user opened the conversation in gchat meanwhile.
        if q.insert_new("INSERT INTO {gchat_members} (conversation, userid, is_open, minimized, unread, last_read, "
                        "timemodified) VALUES (%s, %s, %s, 0, %s, %s, %s)",
                        (conversation, user, int(side.isopen), unread, last_read, _now_ms())):
            report.members_created += 1
    return report


def import_history(db: Database, progress: Callable[[str], Any] | None = None) -> ImportReport:
    """Import every old session and message that is not in gchat yet; returns the counts.

    Creates gchat's tables when they are missing (as ``gchat initdb`` does). Raises
    :class:`ImportFailed` when the old tables are not there, Unavailable when the database fails.
    """
    missing = db.run_sync(lambda q: [t for t in OLD_TABLES if not q.table_exists(t)])
    if missing:
        raise ImportFailed(f"{db.where} has no block_gchat tables ({', '.join(db.prefix + t for t in missing)} "
                           f"missing); is db_prefix '{db.prefix}' right, and is this the old Moodle database?")
    db.run_sync(ChatStore(db).create_tables)
    pairs, report = db.run_sync(_read_pairs)
    report.messages_skipped += int(db.run_sync(lambda q: q.scalar(
        f"SELECT COUNT(*) FROM {{{OLD_MESSAGES}}} m LEFT JOIN {{{OLD_SESSIONS}}} s ON s.id = m.sessionid "
        "WHERE s.id IS NULL")) or 0)
    locking_read = db.sql_dialect.locking_read
    for done, pair in enumerate(pairs, 1):
        report.add(db.run_sync(lambda q, pair=pair: _import_pair(q, pair, locking_read)))  # type: ignore[misc]
        if progress is not None and done % 500 == 0:
            progress(f"... {done} of {len(pairs)} conversations")
    return report


def run_command(db: Database, out: Callable[[str], Any] = print) -> ImportReport:
    """What ``gchat import-block-gchat`` does: import, print the counts, close the database."""
    try:
        out(f"importing block_gchat history from {db.where} (prefix {db.prefix})")
        report = import_history(db, out)
    except Unavailable as exc:
        raise ImportFailed(f"db_url: {' '.join(str(exc).split())}") from None
    finally:
        db.close()
    for line in report.lines():
        out(line)
    return report
