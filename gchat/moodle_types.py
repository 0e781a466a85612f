"""The values Moodle's lookups hand out (gchat/moodle.py and its parts)."""

from __future__ import annotations

import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    picture: str
    lang: str = "en"

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "picture": self.picture}


@dataclass(frozen=True, slots=True)
class MoodleConfig:
    session_timeout: int
    site_guest: int
    session_cookie_suffix: str
    session_cookie_path: str
    dbsessions: str | None
    release: str | None
    mfa_enabled: bool = False


@dataclass(frozen=True, slots=True)
class SessionCheck:
    """The outcome of looking up one session: a user id, or the reason it was refused; and when
    (``time.monotonic()``) the store was read, which a cached outcome keeps."""

    user_id: int | None
    reason: str
    checked_at: float = field(default_factory=time.monotonic, compare=False)

    @property
    def ok(self) -> bool:
        return self.user_id is not None


@dataclass(frozen=True, slots=True)
class Circle:
    """One user's place among its course-mates, as Moodle's messaging rules decide it.

    ``mates``: the course-mates this user may open and message, and sees online; ``audience``:
    the course-mates who may message this user, and see it online; ``blocked``: users blocked
    either way; ``closed``: course-mates who accept messages from their contacts only, this
    user not being one of them."""

    mates: AbstractSet[int]  # shared between users of the same courses (gchat/coursemates.py)
    audience: AbstractSet[int]
    blocked: frozenset[int]
    closed: frozenset[int]


@dataclass(frozen=True, slots=True)
class SiteMessaging:
    """Moodle's site-wide messaging configuration (``{config}``)."""

    enabled: bool
    default_role: int | None
    site_admins: frozenset[int]
    system_context: int | None


def config_int(value: object, default: int) -> int:
    """A number from ``{config}``/``{config_plugins}`` (text columns), or ``default``."""
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default
