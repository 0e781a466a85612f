"""Read-only lookups in the Moodle database: sessions, users, course-mates, blocks, config.

gchat never writes Moodle's core tables. The rules (shared/moodle-facts.md, DESIGN.md):

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
  on 3.6+, detected from the schema) keeps two users apart.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Iterable

from gchat.cache import TTLCache
from gchat.db import Database, Query
from gchat.php_session import PhpFormatError, mfa_passed, parse_session
from gchat.sessions import DatabaseStore, FileStore, SessionRecord, SessionStore, sid_hash

SID_SHAPE = re.compile(r"\A[A-Za-z0-9,-]{1,128}\Z")  # \Z: "$" would let a trailing newline through
FRONT_PAGE_COURSE = 1
REQUIRED_TABLES = ("sessions", "user", "user_enrolments", "enrol", "course", "config")
MAX_REMEMBERED_SIDS = 100_000
__all__ = ["Moodle", "MoodleConfig", "SessionCheck", "User", "sid_hash"]


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
                 session_cache_ttl: float = 10.0, cache_ttl: float = 30.0, session_dir: str = "",
                 sessions: SessionStore | None = None) -> None:
        self.db = db
        # Where Moodle keeps its sessions (gchat.sessions); session_dir is the old moodle_session_dir.
        self.sessions = sessions or (FileStore(session_dir) if session_dir else DatabaseStore())
        self._sid_of: dict[str, str] = {}  # sid hash → sid, of sessions accepted here (oldest first)
        self.wwwroot = wwwroot.rstrip("/")
        self._session_timeout_override = session_timeout
        self._config: TTLCache[str, MoodleConfig] = TTLCache(max(cache_ttl, 1.0))
        self._sessions: TTLCache[str, SessionCheck] = TTLCache(session_cache_ttl)
        self._profiles: TTLCache[int, User] = TTLCache(cache_ttl)
        self._mates: TTLCache[int, frozenset[int]] = TTLCache(cache_ttl)
        self._block_mode: str | None = None
        self._has_config_plugins: bool | None = None

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
            mfa_enabled=self._mfa_enabled(q),
        )

    def _mfa_enabled(self, q: Query) -> bool:
        """tool_mfa's ``manager::is_ready()``, site part: ``get_config('tool_mfa', 'enabled')`` and at
        least one factor with ``get_config('factor_<name>', 'enabled') == 1``. Loaded (and cached)
        with the config; a site without ``{config_plugins}`` has no MFA."""
        if self._has_config_plugins is None:
            self._has_config_plugins = q.table_exists("config_plugins")
        if not self._has_config_plugins:
            return False
        # LIKE's "_" matches any character: the exact prefix is checked below (portable SQL, no ESCAPE).
        rows = q.all("SELECT plugin, value FROM {config_plugins} WHERE name = %s AND (plugin = %s OR plugin LIKE %s)",
                     ("enabled", "tool_mfa", "factor%"))
        tool = any(plugin == "tool_mfa" and str(value or "").strip() not in ("", "0") for plugin, value in rows)
        factor = any(str(plugin).startswith("factor_") and _int(value, 0) == 1 for plugin, value in rows)
        return tool and factor

    # -- sessions ---------------------------------------------------------------------------

    async def check_session(self, sid: str) -> SessionCheck:
        """The user a Moodle session cookie belongs to, applying every validity rule."""
        if not isinstance(sid, str) or not SID_SHAPE.match(sid):
            return SessionCheck(None, "malformed session id")
        cfg = await self.config()
        return await self._sessions.get_or_load(sid, lambda: self._check_session(sid, cfg), cache_if=lambda c: c.ok)

    async def _check_session(self, sid: str, cfg: MoodleConfig) -> SessionCheck:
        record = await self.sessions.lookup(self.db, sid, with_data=cfg.mfa_enabled)
        if record is None:
            return SessionCheck(None, "no such session")
        if record.problem:
            return SessionCheck(None, record.problem)
        now = int(time.time())
        verdict = self._judge_record(record, cfg, now)
        if verdict is None:  # the session itself is fine: now the user's row (the database stores read it already)
            user = record.user if record.user is not None else await self.db.run(
                lambda q: self._user_state(q, [record.userid]).get(record.userid))
            verdict = self._judge_user(record.userid, user)
        if verdict.ok and cfg.mfa_enabled:
            verdict = self._judge_mfa(record)
        if verdict.ok:
            self._remember_sid(sid)
        return verdict

    @staticmethod
    def _judge_record(record: SessionRecord, cfg: MoodleConfig, now: int) -> SessionCheck | None:
        """Moodle's rules on the session itself; None when they all pass."""
        if record.state != 0:
            return SessionCheck(None, "session state is not 0")
        if record.userid <= 0:
            return SessionCheck(None, "not logged in")
        if record.userid == cfg.site_guest:
            return SessionCheck(None, "guest")
        if record.timemodified + cfg.session_timeout < now:
            return SessionCheck(None, "session timed out")
        return None

    @staticmethod
    def _judge_user(userid: int, user: tuple | None) -> SessionCheck:
        """Moodle's rules on the session's user (always read from the database)."""
        uid, deleted, suspended, confirmed, auth = user or (None, 0, 0, 1, "")
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

    def _judge_mfa(self, record: SessionRecord) -> SessionCheck:
        """With tool_mfa on, only a session whose data says the user passed MFA: Moodle writes
        ``sessions.userid`` at password login, before the second factor (fail closed)."""
        if record.data is None:
            return SessionCheck(None, "multi-factor authentication is on and gchat cannot read this session's "
                                      f"data to verify it: {record.data_problem or 'no data'}")
        try:
            parsed = parse_session(record.data)
        except PhpFormatError as exc:
            return SessionCheck(None, f"multi-factor authentication is on and the session data cannot be parsed ({exc})")
        if not mfa_passed(parsed):
            return SessionCheck(None, "multi-factor authentication not passed yet")
        return SessionCheck(record.userid, "ok")

    def _user_state(self, q: Query, user_ids: Iterable[int]) -> dict[int, tuple]:
        ids = sorted({int(u) for u in user_ids if int(u) > 0})
        if not ids:
            return {}
        marks = ", ".join(["%s"] * len(ids))
        rows = q.all(f"SELECT u.id, u.deleted, u.suspended, u.confirmed, u.auth FROM {{user}} u WHERE u.id IN ({marks})",
                     ids)
        return {int(row[0]): tuple(row) for row in rows}

    def _remember_sid(self, sid: str) -> None:
        """The sid behind a token's hash, for stores keyed by sid (Redis): the re-check then reads
        the session directly instead of listing the user's sessions first."""
        hashed = sid_hash(sid)
        self._sid_of.pop(hashed, None)
        self._sid_of[hashed] = sid
        while len(self._sid_of) > MAX_REMEMBERED_SIDS:
            self._sid_of.pop(next(iter(self._sid_of)))

    async def live_sessions(self, pairs: Iterable[tuple[int, str]]) -> set[tuple[int, str]]:
        """Of (user id, sid hash) pairs, those whose Moodle session is still valid: one store
        round trip (the database store: one query in all), plus one query for the users' rows
        when the store does not read them itself."""
        pairs = set(pairs)
        if not pairs:
            return set()
        cfg = await self.config()
        records = await self.sessions.lookup_many(self.db, pairs, self._sid_of)
        now = int(time.time())
        candidates = [r for r in records if (r.userid, sid_hash(r.sid)) in pairs and not r.problem
                      and self._judge_record(r, cfg, now) is None]
        missing = {r.userid for r in candidates if r.user is None}
        users = await self.db.run(lambda q: self._user_state(q, missing)) if missing else {}
        live = set()
        for record in candidates:
            user = record.user if record.user is not None else users.get(record.userid)
            if self._judge_user(record.userid, user).ok:
                live.add((record.userid, sid_hash(record.sid)))
        for uid, hashed in pairs - live:
            self._forget_sessions_of(uid)
            self._sid_of.pop(hashed, None)
        return live

    def _forget_sessions_of(self, user_id: int) -> None:
        self._sessions.invalidate_where(lambda _sid, check: check.user_id == user_id)

    def forget_session(self, sid: str) -> None:
        self._sessions.invalidate(sid)

    async def close(self) -> None:
        await self.sessions.close()

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
