"""The widget's directory: a user's recent conversations and a search of their course-mates.

Two commands of the protocol (docs/protocol.md §6, "conversations" and "search"):

* ``conversations`` lists the conversations the user is a member of that have messages, newest
  message first, paged by the newest message's time (``before``), each with the peer's profile,
  the user's window state and unread count, the last message and how far the peer has read.
* ``search`` finds course-mates by name, online or not, from the same authorised set that
  ``open`` accepts (``Moodle.coursemates``), so a person who is offline can be found and
  written to; the message waits for them. The set and its profiles are cached by ``Moodle``,
  so a search costs no query while the cache is warm; only the page's online states are asked
  of the broker.

gchat/commands.py's ``cmd_conversations`` and ``cmd_search`` hand over to this; the queries live in
the store and the Moodle lookups.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from gchat.auth import Identity
from gchat.broker import Broker
from gchat.errors import bad_command
from gchat.limits import RateLimits
from gchat.moodle import User
from gchat.ports import ChatStorage, MoodleLookups
from gchat.store import Read

MAX_PAGE = 50
DEFAULT_PAGE = 20
MAX_QUERY = 100
MAX_OFFSET = 100_000


def fold(text: str) -> str:
    """Case- and accent-insensitive form of a name: "Chloé" and "CHLOE" both become "chloe"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def _page_limit(cmd: dict[str, Any]) -> int:
    limit = cmd.get("limit", DEFAULT_PAGE)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise bad_command(f"limit must be an integer from 1 to {MAX_PAGE}")
    return limit


def _user_dict(profiles: dict[int, User], user_id: int) -> dict[str, object]:
    user = profiles.get(user_id)
    return user.as_dict() if user else {"id": user_id, "name": f"#{user_id}", "picture": ""}


def _read_dict(read: Read | None) -> dict[str, int] | None:
    return read.as_dict() if read else None


class Directory:
    """Handlers of ``conversations`` and ``search`` (each ``(identity, command) -> reply fields``)."""

    def __init__(self, *, moodle: MoodleLookups, store: ChatStorage, broker: Broker, limits: RateLimits) -> None:
        self.moodle = moodle
        self.store = store
        self.broker = broker
        self._limits = limits

    async def conversations(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        me = identity.user_id
        before = cmd.get("before")
        if before is not None and (isinstance(before, bool) or not isinstance(before, int)
                                   or not 0 < before < 2**63):
            raise bad_command("before must be a time in Unix milliseconds")
        limit = _page_limit(cmd)
        rows, more = await self.store.recent(me, before, limit)
        profiles = await self.moodle.users({row.pair.peer_of(me) for row in rows})
        return {"conversations": [{
            "id": row.pair.id,
            "with": _user_dict(profiles, row.pair.peer_of(me)),
            "open": row.state.open, "minimized": row.state.minimized, "unread": row.state.unread,
            "last_message": row.last_message.as_dict(),
            "peer_read": _read_dict(row.peer_read),
        } for row in rows], "more": more}

    async def search(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        me = identity.user_id
        query = cmd.get("query")
        if not isinstance(query, str) or not 1 <= len(query) <= MAX_QUERY:
            raise bad_command(f"query must be a string of 1 to {MAX_QUERY} characters")
        words = fold(query).split()
        if not words:
            raise bad_command("query must contain a letter or digit")
        offset = cmd.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
            raise bad_command(f"offset must be an integer from 0 to {MAX_OFFSET}")
        limit = _page_limit(cmd)
        self._limits.check("search", me)
        mates = await self.moodle.coursemates(me)
        profiles = await self.moodle.users(mates)
        matches = sorted((user for uid, user in profiles.items() if uid in mates
                          and all(word in fold(user.name) for word in words)),
                         key=lambda u: (fold(u.name), u.id))
        page = matches[offset:offset + limit]
        online = await self.broker.online([user.id for user in page])
        return {"users": [{**user.as_dict(), "online": user.id in online} for user in page],
                "more": offset + limit < len(matches)}
