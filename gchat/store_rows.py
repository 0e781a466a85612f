"""The values gchat's tables hand out, and the few reads that both the store (gchat/store.py)
and its message writer (gchat/message_writer.py) make inside a unit of work."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gchat.db import Query
from gchat.dialect import Dialect


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
    """A member's view of a conversation. ``newest``: the conversation's newest message id when
    it was read, in the same statement as ``unread`` (so ``unread`` counts the peer's messages up
    to it, none after); it tells when the view was taken, not what it is, so it is not compared."""

    open: bool
    minimized: bool
    unread: int
    last_read: int
    newest: int = field(default=0, compare=False)


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


@dataclass(frozen=True, slots=True)
class Stored:
    """The outcome of a send: the message, whether it was already stored (a retry), and, when
    the send opened the peer's closed window, the peer's view, its last messages and how far
    the sender has read them (all read in the send's own transaction)."""

    message: Message
    duplicate: bool
    peer_opened: MemberState | None
    peer_messages: list[Message] | None = None
    peer_read: Read | None = None


MESSAGE_COLUMNS = "id, conversation, sender, text, time, client_id"
cid = Dialect.client_id_param  # a client_id as it is stored and compared: its UTF-8 bytes


def now_ms() -> int:
    return int(time.time() * 1000)


def message_of(row: tuple[Any, ...]) -> Message:
    return Message(id=int(row[0]), conversation=int(row[1]), sender=int(row[2]), text=row[3],
                   time=int(row[4]), client_id=Dialect.client_id_value(row[5]))


def read_of(message: Any, stamp: Any) -> Read | None:
    message = int(message or 0)
    return Read(message, int(stamp or 0)) if message > 0 else None


# The member row's view and the conversation's newest message id, read by one statement (one
# snapshot on every engine); ``m`` is the {gchat_members} row.
STATE_COLUMNS = ("m.is_open, m.minimized, m.unread, m.last_read, "
                 "(SELECT COALESCE(MAX(x.id), 0) FROM {gchat_messages} x WHERE x.conversation = m.conversation)")


def member_state_of(row: Any) -> MemberState:
    """A MemberState from the STATE_COLUMNS of a row."""
    return MemberState(bool(row[0]), bool(row[1]), int(row[2]), int(row[3]), int(row[4]))


def newest_id(q: Query, conversation: int) -> int:
    """The id of the conversation's newest message (0: none)."""
    return int(q.scalar("SELECT COALESCE(MAX(id), 0) FROM {gchat_messages} WHERE conversation = %s",
                        (conversation,)) or 0)


def state_of(q: Query, conversation: int, user: int, lock: str = "") -> MemberState:
    """``user``'s view of ``conversation``. ``lock``: the dialect's locking read, for a unit of
    work whose snapshot may be older than the row (see ChatStore.open)."""
    row = q.one(f"SELECT {STATE_COLUMNS} FROM {{gchat_members}} m WHERE m.conversation = %s AND m.userid = %s"
                + lock, (conversation, user))
    if row is None:
        return MemberState(False, False, 0, 0, newest_id(q, conversation))
    return member_state_of(row)


def last_messages(q: Query, conversation: int, limit: int) -> list[Message]:
    rows = q.all(f"SELECT {MESSAGE_COLUMNS} FROM {{gchat_messages}} WHERE conversation = %s "
                 "ORDER BY id DESC LIMIT %s", (conversation, limit))
    return [message_of(row) for row in reversed(rows)]


def ensure_members(q: Query, pair: Pair) -> None:
    for user in (pair.low, pair.high):
        if q.one("SELECT 1 FROM {gchat_members} WHERE conversation = %s AND userid = %s", (pair.id, user)) is None:
            q.insert_new("INSERT INTO {gchat_members} (conversation, userid, timemodified) VALUES (%s, %s, %s)",
                         (pair.id, user, now_ms()))


def reader_of(q: Query, conversation: int, user: int) -> Read | None:
    """How far ``user`` has read ``conversation`` (the peer's ``peer_read``)."""
    row = q.one("SELECT last_read, last_read_time FROM {gchat_members} WHERE conversation = %s AND userid = %s",
                (conversation, user))
    return read_of(row[0], row[1]) if row else None
