"""Read-only lookups in the Moodle database: sessions, users, course-mates, blocks, config.

gchat never writes Moodle's core tables. The rules (docs/design.md, "Where each rule lives"):

* a session cookie names a session in Moodle's session store (gchat.sessions: ``{sessions}``,
  session files, or Moodle 4.5+'s Redis store); it is valid when the record exists with
  ``state = 0``, ``userid > 0``, ``userid <> siteguest`` and ``timemodified + sessiontimeout >=
  now``, and the user (always read from ``{user}``) is not deleted, not suspended, confirmed and
  ``auth <> 'nologin'``; with multi-factor authentication on (``tool_mfa`` enabled and a factor
  enabled in ``{config_plugins}``) the session data must also say the user passed it;
* course-mates share an active enrolment (``user_enrolments.status = 0``, ``enrol.status = 0``,
  ``timestart <= now``, ``timeend = 0 or > now``; 2147483647 is Moodle's "no end") in a visible
  course other than the front page (id 1);
* a block in either direction (``message_contacts.blocked`` on 2.x, ``message_users_blocked``
  on 3.6+, detected from the schema) keeps two users apart;
* messaging privacy as Moodle enforces it (see "messaging privacy" below): a user who accepts
  messages from contacts only, the site switch ``messaging`` and the capability
  ``moodle/site:sendmessage``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import Any

from gchat.cache import TTLCache
from gchat.coursemates import NOBODY, CourseMembers, MateSet, Unions, name_key
from gchat.db import Database, Query
from gchat.moodle_privacy import MessagingRules
from gchat.moodle_sessions import SID_SHAPE, SessionRules
from gchat.moodle_types import Circle, MoodleConfig, SessionCheck, SiteMessaging, User, config_int
from gchat.session_digest import SessionDigests
from gchat.sessions import DatabaseStore, FileStore, SessionStore, sid_hash

FRONT_PAGE_COURSE = 1
REQUIRED_TABLES = ("sessions", "user", "user_enrolments", "enrol", "course", "config")
_USER_COLUMNS = "u.id, u.firstname, u.lastname, u.lang"
__all__ = ["SID_SHAPE", "Moodle", "MoodleConfig", "SessionCheck", "User", "sid_hash"]


class Moodle(SessionRules, MessagingRules):
    """Moodle lookups with short-TTL caches; every query runs through ``Database.run``."""

    def __init__(self, db: Database, *, wwwroot: str, session_timeout: int = 0,
                 session_cache_ttl: float = 10.0, cache_ttl: float = 30.0, session_dir: str = "",
                 sessions: SessionStore | None = None) -> None:
        self.db = db
        # Where Moodle keeps its sessions (gchat.sessions); session_dir is the old moodle_session_dir.
        self.sessions = sessions or (FileStore(session_dir) if session_dir else DatabaseStore())
        self._sid_of: dict[str, str] = {}  # sid hash → sid, of sessions accepted here (oldest first)
        self._digests = SessionDigests()  # the re-check's baselines (database store)
        self.wwwroot = wwwroot.rstrip("/")
        self._session_timeout_override = session_timeout
        self._config: TTLCache[str, MoodleConfig] = TTLCache(max(cache_ttl, 1.0))
        self._sessions: TTLCache[str, SessionCheck] = TTLCache(session_cache_ttl)
        self._profiles: TTLCache[int, User] = TTLCache(cache_ttl)
        self._mates: TTLCache[int, Circle] = TTLCache(cache_ttl)
        self._members: TTLCache[int, CourseMembers] = TTLCache(cache_ttl)  # course → its members
        self._unions = Unions()
        self._senders: TTLCache[int, bool] = TTLCache(cache_ttl)
        self._site: TTLCache[str, SiteMessaging] = TTLCache(max(cache_ttl, 1.0))
        self._block_mode: str | None = None
        self._tables: dict[str, bool] = {}

    # -- schema -----------------------------------------------------------------------------

    def missing_tables(self, q: Query) -> list[str]:
        return [name for name in REQUIRED_TABLES if not q.table_exists(name)]

    def _detect_block_mode(self, q: Query) -> str:
        if self._block_mode is None:
            if q.table_exists("message_users_blocked"):
                self._block_mode = "users_blocked"  # Moodle 3.6+
            elif q.table_exists("message_contacts") and q.column_exists("message_contacts", "blocked"):
                self._block_mode = "contacts"  # Moodle 2.x-3.5
            else:
                self._block_mode = "none"
        return self._block_mode

    async def block_mode(self) -> str:
        return await self.db.run(self._detect_block_mode)

    # -- config -----------------------------------------------------------------------------

    async def config(self) -> MoodleConfig:
        return await self._config.get_or_load("config", lambda: self.db.run(self._load_config))

    def _load_config(self, q: Query) -> MoodleConfig:
        names = ("sessiontimeout", "siteguest", "sessioncookie", "sessioncookiepath", "dbsessions", "release")
        rows = dict(q.all("SELECT name, value FROM {config} WHERE name IN (%s, %s, %s, %s, %s, %s)", names))
        timeout = self._session_timeout_override or config_int(rows.get("sessiontimeout"), 7200)
        return MoodleConfig(
            session_timeout=timeout,
            site_guest=config_int(rows.get("siteguest"), 1),
            session_cookie_suffix=rows.get("sessioncookie") or "",
            session_cookie_path=rows.get("sessioncookiepath") or "",
            dbsessions=rows.get("dbsessions"),
            release=rows.get("release"),
            mfa_enabled=self._mfa_enabled(q),
        )

    def _mfa_enabled(self, q: Query) -> bool:
        """tool_mfa's ``manager::is_ready()``, site part: ``get_config('tool_mfa', 'enabled')`` and at
        least one factor with ``get_config('factor_<name>', 'enabled') == 1``. Loaded (and cached)
        with the config; a site without ``{config_plugins}`` has no MFA."""
        if not self._has_table(q, "config_plugins"):
            return False
        # LIKE's "_" matches any character: the exact prefix is checked below (portable SQL, no ESCAPE).
        rows = q.all("SELECT plugin, value FROM {config_plugins} WHERE name = %s AND (plugin = %s OR plugin LIKE %s)",
                     ("enabled", "tool_mfa", "factor%"))
        tool = any(plugin == "tool_mfa" and str(value or "").strip() not in ("", "0") for plugin, value in rows)
        factor = any(str(plugin).startswith("factor_") and config_int(value, 0) == 1 for plugin, value in rows)
        return tool and factor

    async def close(self) -> None:
        await self.sessions.close()

    # -- users ------------------------------------------------------------------------------

    def picture_url(self, user_id: int) -> str:
        return f"{self.wwwroot}/user/pix.php/{user_id}/f2.jpg"

    def _user_from_row(self, row: tuple[Any, ...]) -> User:
        uid, first, last, lang = row
        name = " ".join(part for part in ((first or "").strip(), (last or "").strip()) if part)
        return User(id=int(uid), name=name or f"#{uid}", picture=self.picture_url(int(uid)), lang=lang or "en")

    async def user(self, user_id: int) -> User | None:
        found = await self.users([user_id])
        return found.get(user_id)

    async def users(self, user_ids: Iterable[int]) -> dict[int, User]:
        """Profiles by id (display name and avatar URL); cached."""
        # A large course's online list asks for many at once: one look at the clock for all.
        result, missing = self._profiles.get_many(set(user_ids))
        if missing:
            def work(q: Query) -> list[tuple[Any, ...]]:
                marks = ", ".join(["%s"] * len(missing))
                return q.all(f"SELECT {_USER_COLUMNS} FROM {{user}} u WHERE u.id IN ({marks})", missing)

            for row in await self.db.run(work):
                user = self._user_from_row(row)
                self._profiles.put(user.id, user)
                result[user.id] = user
        return result

    # -- course-mates and blocks ------------------------------------------------------------

    async def coursemates(self, user_id: int) -> AbstractSet[int]:
        """Users who share an active enrolment in a visible course with ``user_id``, do not block
        it or get blocked by it, and accept its messages (see ``Circle``): the people it may
        open, message and see online. Cached for ``cache_ttl``, shared between users of the same
        courses (gchat/coursemates.py); profiles are cached alongside."""
        return (await self._circle(user_id)).mates

    async def audience(self, user_id: int) -> AbstractSet[int]:
        """The course-mates who may message ``user_id``: the ones told when it comes online or
        goes offline (a user who accepts only its contacts is online for its contacts only)."""
        return (await self._circle(user_id)).audience

    async def _circle(self, user_id: int) -> Circle:
        return await self._mates.get_or_load(user_id, lambda: self._load_circle(user_id))

    async def _load_circle(self, user_id: int) -> Circle:
        """One unit of work for the user's own rows (its courses, blocks); the members of each
        course from the shared cache (read once per ``cache_ttl`` for everyone in it); one more
        unit only when someone in the circle accepts messages from contacts only."""
        def mine(q: Query) -> tuple[list[int], set[int], str]:
            return self._courses_of(q, user_id), self._blocked_with(q, user_id), self._contact_mode(q)

        course_ids, blocked, contact_mode = await self.db.run(mine)
        members = dict(zip(course_ids, await asyncio.gather(*(self._course(c) for c in course_ids))))
        base, order = self._unions.of(members)
        # Only users someone's course lists as accepting contacts only need a closer look:
        # usually none, and the circle costs no walk through the whole course.
        known = frozenset().union(*(m.only_contacts for m in members.values())) - blocked
        if known and contact_mode != "none":
            candidates = set(base) - blocked - {user_id}

            def privacy(q: Query) -> tuple[set[int], set[int], set[int], bool]:
                return self._privacy_rows(q, user_id, candidates, known_only_contacts=set(known))

            only_contacts, my_contacts, contact_of, me_only_contacts = await self.db.run(privacy)
        else:
            only_contacts, my_contacts, contact_of = set(known - {user_id}), set(), set()
            me_only_contacts = user_id in known
        closed = {uid for uid in only_contacts if uid in base and uid != user_id and uid not in contact_of}
        audience: AbstractSet[int] = MateSet(base, user_id, blocked, order)
        if me_only_contacts:
            audience = frozenset(audience & my_contacts)
        return Circle(mates=MateSet(base, user_id, blocked | closed, order), audience=audience,
                      blocked=frozenset(blocked) if blocked else NOBODY, closed=frozenset(closed) if closed else NOBODY)

    def _courses_of(self, q: Query, me: int) -> list[int]:
        """The visible courses (not the front page) where ``me`` has an active enrolment."""
        now = int(time.time())
        rows = q.all("SELECT DISTINCT c.id FROM {user_enrolments} ue "
                     "JOIN {enrol} e ON e.id = ue.enrolid JOIN {course} c ON c.id = e.courseid "
                     "WHERE ue.userid = %s AND c.id <> %s AND c.visible = 1 AND ue.status = 0 AND e.status = 0 "
                     "AND ue.timestart <= %s AND (ue.timeend = 0 OR ue.timeend > %s)",
                     (me, FRONT_PAGE_COURSE, now, now))
        return sorted(int(row[0]) for row in rows)

    async def _course(self, course_id: int) -> CourseMembers:
        return await self._members.get_or_load(course_id, lambda: self._load_course(course_id))

    async def _load_course(self, course_id: int) -> CourseMembers:
        cfg = await self.config()

        def work(q: Query) -> tuple[list[tuple[Any, ...]], set[int]]:
            now = int(time.time())
            rows = q.all(
                f"SELECT {_USER_COLUMNS} FROM {{enrol}} e "
                "JOIN {user_enrolments} ue ON ue.enrolid = e.id JOIN {user} u ON u.id = ue.userid "
                "WHERE e.courseid = %s AND e.status = 0 AND ue.status = 0 AND ue.timestart <= %s "
                "AND (ue.timeend = 0 OR ue.timeend > %s) AND u.id <> %s AND u.deleted = 0 AND u.suspended = 0 "
                "AND u.confirmed = 1 AND u.auth <> 'nologin'", (course_id, now, now, cfg.site_guest))
            return rows, self._only_contacts_among(q, {int(row[0]) for row in rows})

        rows, only_contacts = await self.db.run(work)
        keys = set()
        for row in rows:
            user = self._user_from_row(row)
            self._profiles.put(user.id, user)
            keys.add(name_key(user.name, user.id))
        return CourseMembers(frozenset(uid for _, uid in keys), frozenset(only_contacts), tuple(sorted(keys)))

    def _blocked_with(self, q: Query, me: int) -> set[int]:
        mode = self._detect_block_mode(q)
        if mode == "users_blocked":
            rows = q.all("SELECT blockeduserid FROM {message_users_blocked} WHERE userid = %s "
                         "UNION SELECT userid FROM {message_users_blocked} WHERE blockeduserid = %s", (me, me))
        elif mode == "contacts":
            rows = q.all("SELECT contactid FROM {message_contacts} WHERE userid = %s AND blocked = 1 "
                         "UNION SELECT userid FROM {message_contacts} WHERE contactid = %s AND blocked = 1", (me, me))
        else:
            rows = []
        return {int(r[0]) for r in rows}

    async def can_chat(self, a: int, b: int) -> bool:
        return a != b and b in await self.coursemates(a)

    def forget_user(self, user_id: int) -> None:
        """Look at ``user_id`` afresh next time (what ``cache_ttl`` does), its courses included."""
        self._mates.invalidate(user_id)
        self._members.clear()
        self._profiles.invalidate(user_id)
        self._senders.invalidate(user_id)

