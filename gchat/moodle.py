"""Read-only lookups in the Moodle database: sessions, users, course-mates, blocks, config.

gchat never writes Moodle's core tables. The rules (docs/design.md, "Where each rule lives"):

* a session cookie names ``{sessions}.sid``; it is valid when the row exists with ``state = 0``,
  ``userid > 0``, ``userid <> siteguest`` and ``timemodified + sessiontimeout >= now``, and the
  user is not deleted, not suspended, confirmed and ``auth <> 'nologin'``;
* course-mates share an active enrolment (``user_enrolments.status = 0``, ``enrol.status = 0``,
  ``timestart <= now``, ``timeend = 0 or > now``; 2147483647 is Moodle's "no end") in a visible
  course other than the front page (id 1);
* a block in either direction (``message_contacts.blocked`` on 2.x, ``message_users_blocked``
  on 3.6+, detected from the schema) keeps two users apart.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Iterable

from gchat.cache import TTLCache
from gchat.db import Database, Query
from gchat.php_session import read_session_file, session_ids

SID_SHAPE = re.compile(r"\A[A-Za-z0-9,-]{1,128}\Z")  # \Z: "$" would let a trailing newline through
FRONT_PAGE_COURSE = 1
REQUIRED_TABLES = ("sessions", "user", "user_enrolments", "enrol", "course", "config")


def sid_hash(sid: str) -> str:
    """What a token carries instead of the sid itself (tokens travel in URLs and JS)."""
    return hashlib.sha256(sid.encode("utf-8")).hexdigest()[:32]


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


@dataclass(frozen=True, slots=True)
class SessionCheck:
    """The outcome of looking up one session: a user id, or the reason it was refused."""

    user_id: int | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.user_id is not None


_USER_COLUMNS = "u.id, u.firstname, u.lastname, u.lang"


class Moodle:
    """Moodle lookups with short-TTL caches; every query runs through ``Database.run``."""

    def __init__(self, db: Database, *, wwwroot: str, session_timeout: int = 0,
                 session_cache_ttl: float = 10.0, cache_ttl: float = 30.0, session_dir: str = "") -> None:
        self.db = db
        self.session_dir = session_dir  # Moodle 2.2-2.5 with dbsessions = 0: $CFG->dataroot/sessions
        self.wwwroot = wwwroot.rstrip("/")
        self._session_timeout_override = session_timeout
        self._config: TTLCache[str, MoodleConfig] = TTLCache(max(cache_ttl, 1.0))
        self._sessions: TTLCache[str, SessionCheck] = TTLCache(session_cache_ttl)
        self._profiles: TTLCache[int, User] = TTLCache(cache_ttl)
        self._mates: TTLCache[int, frozenset[int]] = TTLCache(cache_ttl)
        self._block_mode: str | None = None

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
        timeout = self._session_timeout_override or _int(rows.get("sessiontimeout"), 7200)
        return MoodleConfig(
            session_timeout=timeout,
            site_guest=_int(rows.get("siteguest"), 1),
            session_cookie_suffix=rows.get("sessioncookie") or "",
            session_cookie_path=rows.get("sessioncookiepath") or "",
            dbsessions=rows.get("dbsessions"),
            release=rows.get("release"),
        )

    # -- sessions ---------------------------------------------------------------------------

    async def check_session(self, sid: str) -> SessionCheck:
        """The user a Moodle session cookie belongs to, applying every validity rule."""
        if not isinstance(sid, str) or not SID_SHAPE.match(sid):
            return SessionCheck(None, "malformed session id")
        cfg = await self.config()
        return await self._sessions.get_or_load(
            sid, lambda: self.db.run(lambda q: self._check_session(q, sid, cfg)), cache_if=lambda c: c.ok)

    def _check_session(self, q: Query, sid: str, cfg: MoodleConfig) -> SessionCheck:
        row = q.one("SELECT s.userid, s.state, s.timemodified, u.id, u.deleted, u.suspended, u.confirmed, u.auth "
                    "FROM {sessions} s LEFT JOIN {user} u ON u.id = s.userid WHERE s.sid = %s", (sid,))
        if row is None and self.session_dir:
            return self._check_session_file(q, sid, cfg)
        if row is None:
            return SessionCheck(None, "no such session")
        return self._judge_session(row[:3], row[3:], cfg, int(time.time()))

    def _check_session_file(self, q: Query, sid: str, cfg: MoodleConfig) -> SessionCheck:
        """The same rules for a session PHP keeps in a file (state is always 0 there)."""
        found = read_session_file(self.session_dir, sid)
        if found is None:
            return SessionCheck(None, "no such session")
        uid, modified = found
        user = q.one("SELECT u.id, u.deleted, u.suspended, u.confirmed, u.auth FROM {user} u WHERE u.id = %s",
                     (uid,)) or (None, 0, 0, 1, "")
        return self._judge_session((uid, 0, modified), user, cfg, int(time.time()))

    @staticmethod
    def _judge_session(session: tuple, user: tuple, cfg: MoodleConfig, now: int) -> SessionCheck:
        userid, state, timemodified = (int(session[0] or 0), int(session[1] or 0), int(session[2] or 0))
        if state != 0:
            return SessionCheck(None, "session state is not 0")
        if userid <= 0:
            return SessionCheck(None, "not logged in")
        if userid == cfg.site_guest:
            return SessionCheck(None, "guest")
        if timemodified + cfg.session_timeout < now:
            return SessionCheck(None, "session timed out")
        uid, deleted, suspended, confirmed, auth = user
        if uid is None:
            return SessionCheck(None, "no such user")
        if int(deleted):
            return SessionCheck(None, "user deleted")
        if int(suspended):
            return SessionCheck(None, "user suspended")
        if not int(confirmed):
            return SessionCheck(None, "user not confirmed")
        if auth == "nologin":
            return SessionCheck(None, "user may not log in (nologin)")
        return SessionCheck(userid, "ok")

    async def live_sessions(self, pairs: Iterable[tuple[int, str]]) -> set[tuple[int, str]]:
        """Of (user id, sid hash) pairs, those whose Moodle session is still valid: one query."""
        pairs = set(pairs)
        if not pairs:
            return set()
        cfg = await self.config()
        user_ids = sorted({uid for uid, _ in pairs})

        def work(q: Query) -> set[tuple[int, str]]:
            marks = ", ".join(["%s"] * len(user_ids))
            rows = q.all("SELECT s.sid, s.userid, s.state, s.timemodified, u.id, u.deleted, u.suspended, "
                         "u.confirmed, u.auth FROM {sessions} s JOIN {user} u ON u.id = s.userid "
                         f"WHERE s.userid IN ({marks})", user_ids)
            now = int(time.time())
            live = set()
            for row in rows:
                if self._judge_session(row[1:4], row[4:], cfg, now).ok:
                    live.add((int(row[1]), sid_hash(row[0])))
            return live & pairs

        live = await self.db.run(work)
        if self.session_dir and pairs - live:
            live |= await self._live_file_sessions(pairs - live)
        for uid, _ in pairs - live:
            self._forget_sessions_of(uid)
        return live

    async def _live_file_sessions(self, pairs: set[tuple[int, str]]) -> set[tuple[int, str]]:
        cfg = await self.config()
        wanted = {hashed for _, hashed in pairs}
        sids = [sid for sid in session_ids(self.session_dir) if SID_SHAPE.match(sid) and sid_hash(sid) in wanted]
        live = set()
        for sid in sids:
            check = await self.db.run(lambda q, sid=sid: self._check_session_file(q, sid, cfg))
            if check.ok:
                live.add((check.user_id, sid_hash(sid)))
        return live & pairs

    def _forget_sessions_of(self, user_id: int) -> None:
        self._sessions.invalidate_where(lambda _sid, check: check.user_id == user_id)

    def forget_session(self, sid: str) -> None:
        self._sessions.invalidate(sid)

    # -- users ------------------------------------------------------------------------------

    def picture_url(self, user_id: int) -> str:
        return f"{self.wwwroot}/user/pix.php/{user_id}/f2.jpg"

    def _user_from_row(self, row: tuple) -> User:
        uid, first, last, lang = row
        name = " ".join(part for part in ((first or "").strip(), (last or "").strip()) if part)
        return User(id=int(uid), name=name or f"#{uid}", picture=self.picture_url(int(uid)), lang=lang or "en")

    async def user(self, user_id: int) -> User | None:
        found = await self.users([user_id])
        return found.get(user_id)

    async def users(self, user_ids: Iterable[int]) -> dict[int, User]:
        """Profiles by id (display name and avatar URL); cached."""
        result: dict[int, User] = {}
        missing = []
        for uid in set(user_ids):
            hit = self._profiles.get(uid)
            if hit is None:
                missing.append(uid)
            else:
                result[uid] = hit
        if missing:
            def work(q: Query) -> list[tuple]:
                marks = ", ".join(["%s"] * len(missing))
                return q.all(f"SELECT {_USER_COLUMNS} FROM {{user}} u WHERE u.id IN ({marks})", missing)

            for row in await self.db.run(work):
                user = self._user_from_row(row)
                self._profiles.put(user.id, user)
                result[user.id] = user
        return result

    # -- course-mates and blocks ------------------------------------------------------------

    async def coursemates(self, user_id: int) -> frozenset[int]:
        """Users who share an active enrolment in a visible course with ``user_id`` and do not
        block it or get blocked by it. Cached for ``cache_ttl``; profiles are cached alongside."""
        return await self._mates.get_or_load(user_id, lambda: self._load_coursemates(user_id))

    async def _load_coursemates(self, user_id: int) -> frozenset[int]:
        cfg = await self.config()
        rows, blocked = await self.db.run(lambda q: self._coursemate_rows(q, user_id, cfg.site_guest))
        mates = set()
        for row in rows:
            user = self._user_from_row(row)
            self._profiles.put(user.id, user)
            if user.id not in blocked:
                mates.add(user.id)
        return frozenset(mates)

    def _coursemate_rows(self, q: Query, me: int, site_guest: int) -> tuple[list[tuple], set[int]]:
        now = int(time.time())
        rows = q.all(
            f"SELECT DISTINCT {_USER_COLUMNS} "
            "FROM {user_enrolments} ue1 "
            "JOIN {enrol} e1 ON e1.id = ue1.enrolid "
            "JOIN {course} c ON c.id = e1.courseid "
            "JOIN {enrol} e2 ON e2.courseid = c.id "
            "JOIN {user_enrolments} ue2 ON ue2.enrolid = e2.id "
            "JOIN {user} u ON u.id = ue2.userid "
            "WHERE ue1.userid = %s AND c.id <> %s AND c.visible = 1 "
            "AND ue1.status = 0 AND e1.status = 0 AND ue1.timestart <= %s AND (ue1.timeend = 0 OR ue1.timeend > %s) "
            "AND ue2.status = 0 AND e2.status = 0 AND ue2.timestart <= %s AND (ue2.timeend = 0 OR ue2.timeend > %s) "
            "AND u.id <> %s AND u.id <> %s AND u.deleted = 0 AND u.suspended = 0 AND u.confirmed = 1 "
            "AND u.auth <> 'nologin'",
            (me, FRONT_PAGE_COURSE, now, now, now, now, me, site_guest))
        return rows, self._blocked_with(q, me)

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
        self._mates.invalidate(user_id)
        self._profiles.invalidate(user_id)


def _int(value: object, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default
