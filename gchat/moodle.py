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

# Moodle's names (public/message/classes/api.php, public/lib/accesslib.php).
PRIVACY_PREFERENCE = "message_blocknoncontacts"
SEND_CAPABILITY = "moodle/site:sendmessage"
CONTEXT_SYSTEM = 10  # CONTEXT_SYSTEM; the system context is (10, instanceid 0)
CAP_ALLOW = 1
CAP_PROHIBIT = -1000  # CAP_PREVENT (-1) and CAP_INHERIT (0) grant nothing by themselves
_ID_CHUNK = 500  # ids per IN (...) list: bounded statements on every engine


@dataclass(frozen=True, slots=True)
class Circle:
    """One user's place among its course-mates, as Moodle's messaging rules decide it.

    ``mates``: the course-mates this user may open and message, and sees online; ``audience``:
    the course-mates who may message this user, and see it online; ``blocked``: users blocked
    either way; ``closed``: course-mates who accept messages from their contacts only, this
    user not being one of them."""

    mates: frozenset[int]
    audience: frozenset[int]
    blocked: frozenset[int]
    closed: frozenset[int]


@dataclass(frozen=True, slots=True)
class SiteMessaging:
    """Moodle's site-wide messaging configuration (``{config}``)."""

    enabled: bool
    default_role: int | None
    site_admins: frozenset[int]
    system_context: int | None


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
        self._mates: TTLCache[int, Circle] = TTLCache(cache_ttl)
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
        if not self._has_table(q, "config_plugins"):
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
        """Users who share an active enrolment in a visible course with ``user_id``, do not block
        it or get blocked by it, and accept its messages (see ``Circle``): the people it may
        open, message and see online. Cached for ``cache_ttl``; profiles are cached alongside."""
        return (await self._circle(user_id)).mates

    async def audience(self, user_id: int) -> frozenset[int]:
        """The course-mates who may message ``user_id``: the ones told when it comes online or
        goes offline (a user who accepts only its contacts is online for its contacts only)."""
        return (await self._circle(user_id)).audience

    async def _circle(self, user_id: int) -> Circle:
        return await self._mates.get_or_load(user_id, lambda: self._load_circle(user_id))

    async def _load_circle(self, user_id: int) -> Circle:
        cfg = await self.config()

        def work(q: Query) -> tuple[list[tuple], set[int], tuple[set[int], set[int], set[int], bool]]:
            rows, blocked = self._coursemate_rows(q, user_id, cfg.site_guest)
            candidates = {int(row[0]) for row in rows} - blocked
            return rows, blocked, self._privacy_rows(q, user_id, candidates)

        rows, blocked, (only_contacts, my_contacts, contact_of, me_only_contacts) = await self.db.run(work)
        mates = set()
        for row in rows:
            user = self._user_from_row(row)
            self._profiles.put(user.id, user)
            if user.id not in blocked:
                mates.add(user.id)
        closed = {uid for uid in mates & only_contacts if uid not in contact_of}
        audience = mates & my_contacts if me_only_contacts else mates
        return Circle(mates=frozenset(mates - closed), audience=frozenset(audience),
                      blocked=frozenset(blocked), closed=frozenset(closed))

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
        self._senders.invalidate(user_id)

    # -- messaging privacy ------------------------------------------------------------------
    #
    # Moodle 3.6+ decides in \core_message\api::can_send_message() (public/message/classes/api.php):
    # the sender needs moodle/site:sendmessage at the system context, then can_contact_user()
    # refuses a recipient who blocked the sender (is_blocked), then reads the recipient's
    # get_user_privacy_messaging_preference(): MESSAGE_PRIVACY_ONLYCONTACTS (1) admits contacts
    # only (is_contact(): a {message_contacts} row in either direction),
    # MESSAGE_PRIVACY_COURSEMEMBER (0, the default) also admits anyone sharing a course, and
    # MESSAGE_PRIVACY_SITE (2) anyone, but only with $CFG->messagingallusers (without it 2 is
    # read as 0). Moodle 2.x (message/externallib.php send_instant_messages(), message/index.php)
    # refuses when the recipient set message_blocknoncontacts (message/lib.php
    # message_print_settings() writes '1' or '0') and has no {message_contacts} row
    # (userid = recipient, contactid = sender); a row with blocked = 1 is a block. Every version
    # stops instant messages when $CFG->messaging is empty (public/lib/messagelib.php
    # message_send(); message/index.php in 2.x).
    #
    # gchat's authorised set is course-mates, whatever the preference: MESSAGE_PRIVACY_SITE
    # widens Moodle's circle to the whole site, but gchat's buddy list, presence and `open` stay
    # within shared courses (a site-wide presence list would show everyone to everyone), so 2
    # behaves as 0 here. Only 1 narrows the circle, and gchat applies it exactly. gchat
    # checks blocks both ways (Moodle only the recipient's) and does not implement the
    # moodle/site:messageanyuser and moodle/site:readallmessages exceptions: it may refuse
    # where Moodle allows, never the reverse.

    def _has_table(self, q: Query, name: str) -> bool:
        if name not in self._tables:
            self._tables[name] = q.table_exists(name)
        return self._tables[name]

    def _contact_mode(self, q: Query) -> str:
        """'one_way' on 2.x-3.5 (the recipient's own rows, blocked = 0), 'mutual' on 3.6+ (a row
        either way), 'none' without the table."""
        if self._detect_block_mode(q) == "contacts":
            return "one_way"
        return "mutual" if self._has_table(q, "message_contacts") else "none"

    def _privacy_rows(self, q: Query, me: int, candidates: set[int]) -> tuple[set[int], set[int], set[int], bool]:
        """Of ``candidates``, who accepts contacts only; who may message ``me`` as a contact;
        whose contact ``me`` is; and whether ``me`` accepts contacts only."""
        only_contacts = self._only_contacts_among(q, candidates | {me})
        me_only_contacts = me in only_contacts
        only_contacts.discard(me)
        my_contacts: set[int] = set()
        contact_of: set[int] = set()
        mode = self._contact_mode(q)
        if mode == "mutual" and (me_only_contacts or only_contacts):
            rows = q.all("SELECT contactid FROM {message_contacts} WHERE userid = %s "
                         "UNION SELECT userid FROM {message_contacts} WHERE contactid = %s", (me, me))
            my_contacts = contact_of = {int(r[0]) for r in rows}
        elif mode == "one_way":
            if me_only_contacts:
                my_contacts = {int(r[0]) for r in q.all(
                    "SELECT contactid FROM {message_contacts} WHERE userid = %s AND blocked = 0", (me,))}
            if only_contacts:
                contact_of = {int(r[0]) for r in q.all(
                    "SELECT userid FROM {message_contacts} WHERE contactid = %s AND blocked = 0", (me,))}
        return only_contacts, my_contacts, contact_of, me_only_contacts

    def _only_contacts_among(self, q: Query, user_ids: set[int]) -> set[int]:
        if not user_ids or not self._has_table(q, "user_preferences"):
            return set()
        found: set[int] = set()
        ids = sorted(user_ids)
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start:start + _ID_CHUNK]
            marks = ", ".join(["%s"] * len(chunk))
            rows = q.all(f"SELECT userid, value FROM {{user_preferences}} WHERE name = %s AND userid IN ({marks})",
                         [PRIVACY_PREFERENCE, *chunk])
            found |= {int(uid) for uid, value in rows if str(value).strip() == "1"}
        return found

    async def refusal(self, me: int, peer: int) -> str | None:
        """Why ``me`` may not open or message ``peer``, as a protocol reason (``blocked``,
        ``contacts_only``, ``no_shared_course``), or None when it may. A block first (as in
        Moodle), then the shared course (gchat's circle), then the recipient's preference. Costs
        no query within ``cache_ttl`` of the last look at ``me``'s course-mates."""
        circle = await self._circle(me)
        if peer != me and peer in circle.mates:
            return None
        if peer in circle.blocked:
            return "blocked"
        if peer in circle.closed:
            return "contacts_only"
        return "no_shared_course"

    async def site_messaging(self) -> SiteMessaging:
        return await self._site.get_or_load("site", lambda: self.db.run(self._load_site_messaging))

    def _load_site_messaging(self, q: Query) -> SiteMessaging:
        names = ("messaging", "defaultuserroleid", "siteadmins")
        rows = dict(q.all("SELECT name, value FROM {config} WHERE name IN (%s, %s, %s)", names))
        # A missing row reads as the admin default, 1 (admin/settings: admin_setting_configcheckbox
        # 'messaging', default 1; a Moodle install writes every default); a row that PHP's
        # empty() calls empty ('0' or '') turns messaging off.
        value = rows.get("messaging")
        enabled = value is None or str(value).strip() not in ("", "0")
        admins = frozenset(int(part) for part in str(rows.get("siteadmins") or "").split(",")
                           if part.strip().isdigit())
        role = _int(rows.get("defaultuserroleid"), 0)
        context = None
        if self._has_table(q, "context"):
            found = q.scalar("SELECT id FROM {context} WHERE contextlevel = %s AND instanceid = 0", (CONTEXT_SYSTEM,))
            context = int(found) if found is not None else None
        return SiteMessaging(enabled=enabled, default_role=role or None, site_admins=admins, system_context=context)

    async def messaging_enabled(self) -> bool:
        """Moodle's site switch ``messaging`` (Site administration › Advanced features)."""
        return (await self.site_messaging()).enabled

    async def can_send(self, user_id: int) -> bool:
        """Whether ``user_id`` has ``moodle/site:sendmessage`` at the system context; cached."""
        site = await self.site_messaging()
        return await self._senders.get_or_load(
            user_id, lambda: self.db.run(lambda q: self._has_send_capability(q, user_id, site)))

    def _has_send_capability(self, q: Query, user_id: int, site: SiteMessaging) -> bool:
        """has_capability() (public/lib/accesslib.php) at the system context.

        Site admins ($CFG->siteadmins) have every capability before roles are looked at. Every
        logged-in user has $CFG->defaultuserroleid at the system context
        (get_user_roles_sitewide_accessdata()) besides the roles assigned there.
        has_capability_in_accessdata() evaluates each role on its own: a CAP_PROHIBIT in any role
        refuses, otherwise a CAP_ALLOW in any role grants (a CAP_PREVENT in one role does not
        cancel an allow in another), and a role with neither grants nothing.

        Without the role tables, the system context or ``defaultuserroleid`` (which every Moodle
        install sets), gchat is not looking at a Moodle site's roles (the embedded demo) and
        does not restrict sending."""
        if user_id in site.site_admins:
            return True
        if site.default_role is None or site.system_context is None:
            return True
        if not (self._has_table(q, "role_capabilities") and self._has_table(q, "role_assignments")):
            return True
        rows = q.all("SELECT rc.roleid, rc.permission FROM {role_capabilities} rc "
                     "WHERE rc.contextid = %s AND rc.capability = %s AND (rc.roleid = %s OR rc.roleid IN "
                     "(SELECT ra.roleid FROM {role_assignments} ra WHERE ra.userid = %s AND ra.contextid = %s))",
                     (site.system_context, SEND_CAPABILITY, site.default_role, user_id, site.system_context))
        permissions = {int(row[1]) for row in rows}
        if CAP_PROHIBIT in permissions:
            return False
        return CAP_ALLOW in permissions


def _int(value: object, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default
