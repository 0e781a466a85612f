"""What the router's parts need from the outside, as typing Protocols.

The real implementations are :class:`gchat.moodle.Moodle` (read-only Moodle lookups),
:class:`gchat.store.ChatStore` (gchat's own tables) and gchat/metrics.py's ``Metrics`` (the
observer). The fast unit tests (tests/unit/) pass in-memory fakes of the first two. A new
store or Moodle method a command needs is added here too, so both the real class and the fakes
are checked against it.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import Protocol

from gchat.moodle import MoodleConfig, SessionCheck, User
from gchat.store import MemberState, Message, Pair, Read, Recent, Stored


class MoodleLookups(Protocol):
    """Sessions, users, course-mates and blocks, as Moodle has them (cached by the real one)."""

    async def config(self) -> MoodleConfig: ...

    async def check_session(self, sid: str) -> SessionCheck: ...

    async def live_sessions(self, pairs: Iterable[tuple[int, str]], *,
                            recheck: bool = False) -> set[tuple[int, str]]: ...

    async def user(self, user_id: int) -> User | None: ...

    async def users(self, user_ids: Iterable[int]) -> dict[int, User]: ...

    async def coursemates(self, user_id: int) -> AbstractSet[int]: ...

    async def can_chat(self, a: int, b: int) -> bool: ...

    async def audience(self, user_id: int) -> AbstractSet[int]: ...

    async def refusal(self, me: int, peer: int) -> str | None: ...

    async def messaging_enabled(self) -> bool: ...

    async def can_send(self, user_id: int) -> bool: ...


class ChatStorage(Protocol):
    """Conversations, members' window state and messages (gchat's three tables)."""

    async def pair(self, conversation_id: int) -> Pair | None: ...

    async def open(self, me: int, peer: int, history: int) -> tuple[Pair, MemberState, list[Message]]: ...

    async def set_open(self, conversation: int, user: int, is_open: bool) -> MemberState: ...

    async def set_minimized(self, conversation: int, user: int, minimized: bool) -> MemberState: ...

    async def record_read(self, conversation: int, user: int,
                          message_id: int) -> tuple[MemberState, bool, Read | None]: ...

    async def peer_reads(self, user: int, conversations: list[int]) -> dict[int, Read | None]: ...

    async def recent(self, user: int, before: int | None, limit: int) -> tuple[list[Recent], bool]: ...

    async def open_views(self, user: int, history: int) -> list[tuple[Pair, MemberState, list[Message]]]: ...

    async def add_message(self, pair: Pair, sender: int, text: str, client_id: str | None,
                          history: int) -> Stored: ...

    async def history(self, conversation: int, before: int | None, limit: int) -> list[Message]: ...


class Observer(Protocol):
    """Told about every command and every message as they happen (gchat/metrics.py's Metrics).
    Passed to the Router at construction; None costs one test per command."""

    def command_done(self, kind: str | None, seconds: float) -> None:
        """``kind``: the command's type when it is one of the router's commands, else None."""

    def message_published(self, stored_ms: int) -> None:
        """A new message's event is in both users' logs; ``stored_ms`` is its stored time."""
