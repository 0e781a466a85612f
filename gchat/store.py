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

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from gchat.db import INTEGRITY_ERRORS, Database, Query
from gchat.dialect import Dialect

TABLES = ("gchat_conversations", "gchat_members", "gchat_messages")

_MYSQL_DDL = (
    """CREATE TABLE IF NOT EXISTS {gchat_conversations} (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        user_low BIGINT NOT NULL,
        user_high BIGINT NOT NULL,
        timecreated BIGINT NOT NULL,
        UNIQUE KEY gchat_pair (user_low, user_high)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS {gchat_members} (
        conversation BIGINT NOT NULL,
        userid BIGINT NOT NULL,
        is_open TINYINT NOT NULL DEFAULT 0,
        minimized TINYINT NOT NULL DEFAULT 0,
        unread INT NOT NULL DEFAULT 0,
        last_read BIGINT NOT NULL DEFAULT 0,
        timemodified BIGINT NOT NULL,
        PRIMARY KEY (conversation, userid),
        KEY gchat_user_open (userid, is_open)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS {gchat_messages} (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        conversation BIGINT NOT NULL,
        sender BIGINT NOT NULL,
        text VARCHAR(1333) NOT NULL,
        client_id VARBINARY(256) NULL,
        time BIGINT NOT NULL,
        UNIQUE KEY gchat_sender_client (sender, client_id),
        KEY gchat_conversation_id (conversation, id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
)

_SQLITE_DDL = (
    """CREATE TABLE IF NOT EXISTS {gchat_conversations} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_low INTEGER NOT NULL,
        user_high INTEGER NOT NULL,
        timecreated INTEGER NOT NULL,
        UNIQUE (user_low, user_high))""",
    """CREATE TABLE IF NOT EXISTS {gchat_members} (
        conversation INTEGER NOT NULL,
        userid INTEGER NOT NULL,
        is_open INTEGER NOT NULL DEFAULT 0,
        minimized INTEGER NOT NULL DEFAULT 0,
        unread INTEGER NOT NULL DEFAULT 0,
        last_read INTEGER NOT NULL DEFAULT 0,
        timemodified INTEGER NOT NULL,
        PRIMARY KEY (conversation, userid))""",
    "CREATE INDEX IF NOT EXISTS {gchat_members_user_open} ON {gchat_members} (userid, is_open)",
    """CREATE TABLE IF NOT EXISTS {gchat_messages} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation INTEGER NOT NULL,
        sender INTEGER NOT NULL,
        text TEXT NOT NULL,
        client_id BLOB NULL,
        time INTEGER NOT NULL,
        UNIQUE (sender, client_id))""",
    "CREATE INDEX IF NOT EXISTS {gchat_messages_conversation_id} ON {gchat_messages} (conversation, id)",
)

# PostgreSQL, the way Moodle's XMLDB makes its own tables there (BIGSERIAL ids, BIGINT, SMALLINT
# flags, VARCHAR text). Index names live in the schema, not in the table, so they carry the
# prefix (Moodle's do too); they match MySQL's keys one for one.
_POSTGRESQL_DDL = (
    """CREATE TABLE IF NOT EXISTS {gchat_conversations} (
        id BIGSERIAL PRIMARY KEY,
        user_low BIGINT NOT NULL,
        user_high BIGINT NOT NULL,
        timecreated BIGINT NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS {gchat_pair} ON {gchat_conversations} (user_low, user_high)",
    """CREATE TABLE IF NOT EXISTS {gchat_members} (
        conversation BIGINT NOT NULL,
        userid BIGINT NOT NULL,
        is_open SMALLINT NOT NULL DEFAULT 0,
        minimized SMALLINT NOT NULL DEFAULT 0,
        unread INTEGER NOT NULL DEFAULT 0,
        last_read BIGINT NOT NULL DEFAULT 0,
        timemodified BIGINT NOT NULL,
        PRIMARY KEY (conversation, userid))""",
    "CREATE INDEX IF NOT EXISTS {gchat_user_open} ON {gchat_members} (userid, is_open)",
    """CREATE TABLE IF NOT EXISTS {gchat_messages} (
        id BIGSERIAL PRIMARY KEY,
        conversation BIGINT NOT NULL,
        sender BIGINT NOT NULL,
        text VARCHAR(1333) NOT NULL,
        client_id BYTEA NULL,
        time BIGINT NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS {gchat_sender_client} ON {gchat_messages} (sender, client_id)",
    "CREATE INDEX IF NOT EXISTS {gchat_conversation_id} ON {gchat_messages} (conversation, id)",
)

_DDL = {"mysql": _MYSQL_DDL, "postgresql": _POSTGRESQL_DDL, "sqlite": _SQLITE_DDL}
# client_id was VARCHAR(64) utf8mb4_bin before it was kept as bytes (a PAD SPACE collation,
# under which "pad" and "pad " were one id); initdb converts such a column in place.
_MYSQL_CLIENT_ID = "ALTER TABLE {gchat_messages} MODIFY client_id VARBINARY(256) NULL"
_TEXT_TYPES = ("varchar", "char", "text", "character varying", "character")

MAX_HISTORY_LIMIT = 50
MAX_BATCH = 200  # sends written in one transaction at most


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    conversation: int
    sender: int
    text: str
    time: int
    client_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "conversation": self.conversation, "from": self.sender,
                "text": self.text, "time": self.time, "client_id": self.client_id}


@dataclass(frozen=True, slots=True)
class Pair:
    """A conversation's identity: its id and its two members (immutable once created)."""

    id: int
    low: int
    high: int

    def has(self, user_id: int) -> bool:
        return user_id in (self.low, self.high)

    def peer_of(self, user_id: int) -> int:
        return self.high if user_id == self.low else self.low


@dataclass(frozen=True, slots=True)
class MemberState:
    open: bool
    minimized: bool
    unread: int
    last_read: int


@dataclass(frozen=True, slots=True)
class Read:
    """How far a member has read a conversation: the last message id read, and when (Unix ms)."""

    message: int
    time: int

    def as_dict(self) -> dict[str, int]:
        return {"message": self.message, "time": self.time}


@dataclass(frozen=True, slots=True)
class Recent:
    """One row of a user's recent conversations: the pair, my view, its newest message, and how
    far the peer has read."""

    pair: Pair
    state: MemberState
    last_message: Message
    peer_read: Read | None


# Columns added after the first release: (table, column, portable column definition). ``gchat
# initdb`` adds the missing ones (ALTER TABLE ... ADD COLUMN is the same on every engine), and
# start-up and ``gchat check`` name them as missing until it has run.
_ADDED_COLUMNS = (
    ("gchat_members", "last_read_time", "BIGINT NOT NULL DEFAULT 0"),  # read receipts: when last_read moved
)


@dataclass(frozen=True, slots=True)
class Stored:
    """The outcome of a send: the message, whether it was already stored (a retry), and the
    peer's view when the send changed it from closed to open."""

    message: Message
    duplicate: bool
    peer_opened: MemberState | None
    peer_messages: list[Message] | None = None


_MESSAGE_COLUMNS = "id, conversation, sender, text, time, client_id"


def _message(row: tuple[Any, ...]) -> Message:
    return Message(id=int(row[0]), conversation=int(row[1]), sender=int(row[2]), text=row[3],
                   time=int(row[4]), client_id=Dialect.client_id_value(row[5]))


_cid = Dialect.client_id_param  # a client_id as it is stored and compared: its UTF-8 bytes


# pair, sender, text, client_id, history size, and the future the sender awaits
_PendingSend = tuple[Pair, int, str, "str | None", int, "asyncio.Future[Stored]"]


def now_ms() -> int:
    return int(time.time() * 1000)


class ChatStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Appended to a SELECT that must see rows committed after this transaction's snapshot
        # (MySQL/MariaDB REPEATABLE READ), or wait for a writer of it that has not committed
        # (PostgreSQL); SQLite has no snapshot older than its write lock.
        self._latest = db.sql_dialect.locking_read
        self._pairs: dict[int, Pair] = {}  # immutable rows: a plain dict cache, bounded below
        self._pending: list[_PendingSend] = []  # sends waiting for the next batch
        self._writing = False
        self._writer: asyncio.Task[None] | None = None  # referenced so the loop cannot drop it
        self._batch_inserts: bool | None = None  # one multi-row INSERT tells its ids (see Query)

    # -- schema -----------------------------------------------------------------------------

    def create_tables(self, q: Query) -> None:
        """Create the tables that are missing and bring older ones up to date (``gchat initdb``)."""
        for ddl in _DDL[self.db.dialect]:
            q.execute(ddl)
        if self.db.dialect == "mysql" and self.outdated(q):
            q.execute(_MYSQL_CLIENT_ID)  # rebuilds the table (and its unique key) with the new column
        self.upgrade_tables(q)

    def outdated(self, q: Query) -> list[str]:
        """What ``gchat initdb`` would still change in the existing tables, for ``gchat check``."""
        kind = q.column_types("gchat_messages").get("client_id")
        if kind in _TEXT_TYPES:
            return [f"{self.db.prefix}gchat_messages.client_id is {kind.upper()}: ids that differ only by "
                    "trailing spaces (or by case) count as one, so such a message is lost as a 'retry'"]
        return []

    def missing_tables(self, q: Query) -> list[str]:
        return [name for name in TABLES if not q.table_exists(name)] + self.missing_columns(q)

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
            self._ensure_members(q, pair)
            q.execute("UPDATE {gchat_members} SET is_open = 1, minimized = 0, timemodified = %s "
                      "WHERE conversation = %s AND userid = %s", (now_ms(), pair.id, me))
            return pair, self._state(q, pair.id, me), self._last_messages(q, pair.id, history)

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

    def _ensure_members(self, q: Query, pair: Pair) -> None:
        for user in (pair.low, pair.high):
            if q.one("SELECT 1 FROM {gchat_members} WHERE conversation = %s AND userid = %s", (pair.id, user)) is None:
                q.insert_new("INSERT INTO {gchat_members} (conversation, userid, timemodified) VALUES (%s, %s, %s)",
                             (pair.id, user, now_ms()))

    def _state(self, q: Query, conversation: int, user: int) -> MemberState:
        row = q.one("SELECT is_open, minimized, unread, last_read FROM {gchat_members} "
                    "WHERE conversation = %s AND userid = %s", (conversation, user))
        if row is None:
            return MemberState(False, False, 0, 0)
        return MemberState(bool(row[0]), bool(row[1]), int(row[2]), int(row[3]))

    async def state(self, conversation: int, user: int) -> MemberState:
        return await self.db.run(lambda q: self._state(q, conversation, user))

    async def view(self, conversation: int, user: int, history: int) -> tuple[MemberState, list[Message]]:
        return await self.db.run(lambda q: (self._state(q, conversation, user),
                                            self._last_messages(q, conversation, history)))

    async def set_open(self, conversation: int, user: int, is_open: bool) -> MemberState:
        def work(q: Query) -> MemberState:
            if is_open:
                q.execute("UPDATE {gchat_members} SET is_open = 1, timemodified = %s "
                          "WHERE conversation = %s AND userid = %s", (now_ms(), conversation, user))
            else:
                # Closing a window is a deliberate act: what it showed counts as read.
                q.execute("UPDATE {gchat_members} SET is_open = 0, minimized = 0, unread = 0, "
                          "last_read = (SELECT COALESCE(MAX(id), 0) FROM {gchat_messages} WHERE conversation = %s), "
                          "timemodified = %s WHERE conversation = %s AND userid = %s",
                          (conversation, now_ms(), conversation, user))
            return self._state(q, conversation, user)

        return await self.db.run(work)

    async def set_minimized(self, conversation: int, user: int, minimized: bool) -> MemberState:
        def work(q: Query) -> MemberState:
            q.execute("UPDATE {gchat_members} SET minimized = %s, timemodified = %s "
                      "WHERE conversation = %s AND userid = %s", (int(minimized), now_ms(), conversation, user))
            return self._state(q, conversation, user)

        return await self.db.run(work)

    async def mark_seen(self, conversation: int, user: int, message_id: int) -> tuple[MemberState, bool]:
        """Record that ``user`` read up to ``message_id``; returns the view and whether it changed
        (``record_read`` without the read receipt)."""
        state, changed, _ = await self.record_read(conversation, user, message_id)
        return state, changed

    async def open_views(self, user: int, history: int) -> list[tuple[Pair, MemberState, list[Message]]]:
        """Every conversation whose window ``user`` has open, with its last messages (for ``ready``)."""
        def work(q: Query) -> list[tuple[Pair, MemberState, list[Message]]]:
            rows = q.all("SELECT c.id, c.user_low, c.user_high, m.is_open, m.minimized, m.unread, m.last_read "
                         "FROM {gchat_members} m JOIN {gchat_conversations} c ON c.id = m.conversation "
                         "WHERE m.userid = %s AND m.is_open = 1 ORDER BY m.timemodified, c.id", (user,))
            views = []
            for row in rows:
                pair = Pair(int(row[0]), int(row[1]), int(row[2]))
                state = MemberState(bool(row[3]), bool(row[4]), int(row[5]), int(row[6]))
                views.append((pair, state, self._last_messages(q, pair.id, history)))
            return views

        views = await self.db.run(work)
        for pair, _, _ in views:
            self._remember(pair)
        return views

    # -- messages ---------------------------------------------------------------------------

    async def add_message(self, pair: Pair, sender: int, text: str, client_id: str | None,
                          history: int) -> Stored:
        """Store a message (or find the one a retry with the same client_id stored) and count it
        unread for the peer, opening the peer's window. Committed when this returns.

        Sends are written in batches: while one batch is in the database, the sends that arrive
        queue up and go together in the next one, one transaction and one thread-pool hop for
        all of them (group commit). Under light load a batch is one message; under heavy load
        the cost per message falls instead of the queue growing. Batches run one at a time, in
        arrival order, so message ids follow the order the sends were accepted.
        """
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._pending.append((pair, sender, text, client_id, history, future))
        if not self._writing:
            self._writing = True
            self._writer = asyncio.get_running_loop().create_task(self._write_batches())
        return await future

    async def _write_batches(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]

                def work(q: Query, batch: list[_PendingSend] = batch) -> list[Stored]:
                    return self._store_batch(q, [item[:5] for item in batch])

                try:
                    results = await self.db.run(work)
                except Exception as exc:  # every send of the batch gets the error (unavailable)
                    for item in batch:
                        if not item[5].done():
                            item[5].set_exception(exc)
                else:
                    for item, result in zip(batch, results):
                        if not item[5].done():
                            item[5].set_result(result)
        finally:
            self._writing = False

    def _store_batch(self, q: Query, items: list[tuple[Pair, int, str, str | None, int]]) -> list[Stored]:
        """A batch in three statements on MariaDB/MySQL and PostgreSQL: one multi-row INSERT
        that tells its ids (``Query.insert_many``), one read of the peers' windows, one upsert
        adding each peer's unread count. A repeated client_id in the batch fails the INSERT
        whole; then, as on SQLite, each message goes its own way (and its duplicate is found)."""
        if len(items) == 1 or not self._multi_row_ids(q):
            return [self._store_message(q, *item) for item in items]
        stamp = now_ms()
        values = [value for pair, sender, text, client_id, _ in items
                  for value in (pair.id, sender, text, _cid(client_id), stamp)]
        try:
            with q.may_fail():
                ids = q.insert_many("INSERT INTO {gchat_messages} (conversation, sender, text, client_id, time) "
                                    "VALUES " + ", ".join(["(%s, %s, %s, %s, %s)"] * len(items)), values, len(items))
        except INTEGRITY_ERRORS:
            return [self._store_message(q, *item) for item in items]
        messages = [Message(message_id, pair.id, sender, text, stamp, client_id)
                    for message_id, (pair, sender, text, client_id, _) in zip(ids, items)]
        unread: dict[tuple[int, int], int] = {}
        for pair, sender, _, _, _ in items:
            key = (pair.id, pair.peer_of(sender))
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
        for message, (pair, sender, _, _, history) in zip(messages, items):
            key = (pair.id, pair.peer_of(sender))
            if key in opened:
                # The first message of the batch to a closed window opens it (with the messages).
                opened.discard(key)
                results.append(Stored(message, False, self._state(q, pair.id, key[1]),
                                      self._last_messages(q, pair.id, history)))
            else:
                results.append(Stored(message, False, None))
        return results

    def _multi_row_ids(self, q: Query) -> bool:
        if self._batch_inserts is None:
            self._batch_inserts = q.multi_row_ids()
        return self._batch_inserts

    def _store_message(self, q: Query, pair: Pair, sender: int, text: str, client_id: str | None,
                       history: int) -> Stored:
        """The common case costs two statements: the insert (a repeated client_id fails on the
        unique key and returns the stored message) and the peer's unread count, updated only
        where the window is open; a closed window is opened with a second update. Both member
        rows exist: ``open`` creates them with the conversation."""
        peer = pair.peer_of(sender)
        stamp = now_ms()
        message_id = q.insert_new_id("INSERT INTO {gchat_messages} (conversation, sender, text, client_id, time) "
                                     "VALUES (%s, %s, %s, %s, %s)", (pair.id, sender, text, _cid(client_id), stamp))
        if message_id is None:
            # A locking read: earlier statements of the batch may have fixed an older snapshot.
            existing = self._by_client_id(q, sender, client_id, latest=True) if client_id is not None else None
            if existing is None:
                raise RuntimeError(f"{self.db.prefix}gchat_messages refused client_id {client_id!r} of user {sender} "
                                   "but holds no message with it: run gchat initdb to bring the table up to date")
            return Stored(existing, True, None)
        message = Message(message_id, pair.id, sender, text, stamp, client_id)
        if q.execute("UPDATE {gchat_members} SET unread = unread + 1, timemodified = %s "
                     "WHERE conversation = %s AND userid = %s AND is_open = 1", (stamp, pair.id, peer)):
            return Stored(message, False, None)
        self._ensure_members(q, pair)
        q.execute("UPDATE {gchat_members} SET is_open = 1, unread = unread + 1, timemodified = %s "
                  "WHERE conversation = %s AND userid = %s", (stamp, pair.id, peer))
        return Stored(message, False, self._state(q, pair.id, peer), self._last_messages(q, pair.id, history))

    def _by_client_id(self, q: Query, sender: int, client_id: str | None, latest: bool = False) -> Message | None:
        row = q.one(f"SELECT {_MESSAGE_COLUMNS} FROM {{gchat_messages}} WHERE sender = %s AND client_id = %s"
                    + (self._latest if latest else ""), (sender, _cid(client_id)))
        return _message(row) if row else None

    def _last_messages(self, q: Query, conversation: int, limit: int) -> list[Message]:
        rows = q.all(f"SELECT {_MESSAGE_COLUMNS} FROM {{gchat_messages}} WHERE conversation = %s "
                     "ORDER BY id DESC LIMIT %s", (conversation, limit))
        return [_message(row) for row in reversed(rows)]

    async def history(self, conversation: int, before: int | None, limit: int) -> list[Message]:
        """Up to ``limit`` messages older than message id ``before`` (all when None), oldest first."""
        limit = max(1, min(limit, MAX_HISTORY_LIMIT))

        def work(q: Query) -> list[Message]:
            if before is None:
                return self._last_messages(q, conversation, limit)
            rows = q.all(f"SELECT {_MESSAGE_COLUMNS} FROM {{gchat_messages}} WHERE conversation = %s AND id < %s "
                         "ORDER BY id DESC LIMIT %s", (conversation, before, limit))
            return [_message(row) for row in reversed(rows)]

        return await self.db.run(work)

    # -- read receipts and recent conversations (protocol additions: read, peer_read, conversations)

    def upgrade_tables(self, q: Query) -> None:
        """Add the columns that later versions need to tables created by an earlier one."""
        for table, column, definition in _ADDED_COLUMNS:
            if q.table_exists(table) and not q.column_exists(table, column):
                q.execute(f"ALTER TABLE {{{table}}} ADD COLUMN {column} {definition}")

    def missing_columns(self, q: Query) -> list[str]:
        return [f"{table}.{column}" for table, column, _ in _ADDED_COLUMNS
                if q.table_exists(table) and not q.column_exists(table, column)]

    async def record_read(self, conversation: int, user: int, message_id: int
                          ) -> tuple[MemberState, bool, Read | None]:
        """``mark_seen`` that also remembers when the last message read moved forward.

        Returns the view, whether it changed, and the new read position when it moved (for the
        peer's ``read`` event), else None. One transaction."""
        def work(q: Query) -> tuple[MemberState, bool, Read | None]:
            before = self._state(q, conversation, user)
            last_read = max(before.last_read, message_id)
            # Only a message of this conversation counts as read: a made-up id would otherwise
            # show the peer "Seen" under messages that were never read.
            newest = int(q.scalar("SELECT COALESCE(MAX(id), 0) FROM {gchat_messages} WHERE conversation = %s",
                                  (conversation,)) or 0)
            last_read = min(last_read, max(newest, before.last_read))
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
            after = self._state(q, conversation, user)
            return after, after != before, Read(last_read, stamp) if moved else None

        return await self.db.run(work)

    @staticmethod
    def _read_of(message: Any, stamp: Any) -> Read | None:
        message = int(message or 0)
        return Read(message, int(stamp or 0)) if message > 0 else None

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
                found[int(conversation)] = self._read_of(message, stamp)
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
                            MemberState(bool(r[3]), bool(r[4]), int(r[5]), int(r[6])),
                            _message(r[9:15]), self._read_of(r[7], r[8])) for r in rows[:limit]]
            return found, len(rows) > limit

        found, more = await self.db.run(work)
        for row in found:
            self._remember(row.pair)
        return found, more
