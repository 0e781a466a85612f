"""Moodle's session rules, as a part of :class:`gchat.moodle.Moodle` (docs/design.md).

A session cookie names a session in Moodle's session store (gchat/sessions.py: ``{sessions}``,
session files, or Moodle 4.5+'s Redis store); it is valid when the record exists with
``state = 0``, ``userid > 0``, ``userid <> siteguest`` and ``timemodified + sessiontimeout >=
now``, and the user (always read from ``{user}``) is not deleted, not suspended, confirmed and
``auth <> 'nologin'``; with multi-factor authentication on, the session data must also say the
user passed it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from gchat.cache import TTLCache
from gchat.db import Database, Query
from gchat.moodle_types import MoodleConfig, SessionCheck
from gchat.php_session import PhpFormatError, mfa_passed, parse_session
from gchat.session_digest import SessionDigests, bucket_of, read_digests
from gchat.sessions import SessionRecord, SessionStore, sid_hash

SID_SHAPE = re.compile(r"\A[A-Za-z0-9,-]{1,128}\Z")  # \Z: "$" would let a trailing newline through
MAX_REMEMBERED_SIDS = 100_000


class SessionRules:
    """Session lookups with Moodle's rules applied (a part of Moodle: it provides the attributes
    declared here)."""

    db: Database
    sessions: SessionStore
    _sid_of: dict[str, str]
    _sessions: TTLCache[str, SessionCheck]
    _digests: SessionDigests
    config: Callable[[], Awaitable[MoodleConfig]]

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
    def _judge_user(userid: int, user: tuple[Any, ...] | None) -> SessionCheck:
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
            return SessionCheck(None, "multi-factor authentication is on and the session data cannot be parsed "
                                      f"({exc})")
        if not mfa_passed(parsed):
            return SessionCheck(None, "multi-factor authentication not passed yet")
        return SessionCheck(record.userid, "ok")

    def _user_state(self, q: Query, user_ids: Iterable[int]) -> dict[int, tuple[Any, ...]]:
        ids = sorted({int(u) for u in user_ids if int(u) > 0})
        if not ids:
            return {}
        marks = ", ".join(["%s"] * len(ids))
        rows = q.all("SELECT u.id, u.deleted, u.suspended, u.confirmed, u.auth FROM {user} u "
                     f"WHERE u.id IN ({marks})", ids)
        return {int(row[0]): tuple(row) for row in rows}

    def _remember_sid(self, sid: str) -> None:
        """The sid behind a token's hash, for stores keyed by sid (Redis): the re-check then reads
        the session directly instead of listing the user's sessions first."""
        hashed = sid_hash(sid)
        self._sid_of.pop(hashed, None)
        self._sid_of[hashed] = sid
        while len(self._sid_of) > MAX_REMEMBERED_SIDS:
            self._sid_of.pop(next(iter(self._sid_of)))

    async def live_sessions(self, pairs: Iterable[tuple[int, str]], *,
                            recheck: bool = False) -> set[tuple[int, str]]:
        """Of (user id, sid hash) pairs, those whose Moodle session is still valid: one store
        round trip (the database store: one query in all), plus one query for the users' rows
        when the store does not read them itself. ``recheck``: the periodic re-check of every
        watched session, which with the database store mostly reads a digest instead, once its
        users were read (gchat/session_digest.py); its baselines are not disturbed by the
        lookups of single sessions meanwhile."""
        pairs = set(pairs)
        if not pairs:
            return set()
        cfg = await self.config()
        if recheck and self.sessions.kind == "database":
            live = await self._live_by_digest(pairs, cfg)
        else:
            records = await self.sessions.lookup_many(self.db, pairs, self._sid_of)
            live = {key for _, key in await self._valid(records, cfg, int(time.time())) if key in pairs}
        for uid, hashed in pairs - live:
            self._forget_sessions_of(uid)
            self._sid_of.pop(hashed, None)
        return live

    async def _live_by_digest(self, pairs: set[tuple[int, str]], cfg: MoodleConfig) -> set[tuple[int, str]]:
        """``live_sessions`` for sessions kept as rows: the digests first, a full read of the
        buckets whose digest changed (or of all of them when none could be spared)."""
        plan = self._digests.plan(pairs)
        buckets = plan.buckets
        unchanged = comparable = self._digests.comparable(buckets)
        if comparable:
            oldest = int(time.time()) - cfg.session_timeout
            digests = await self.db.run(lambda q: read_digests(q, plan.user_list, cfg.site_guest, oldest))
            unchanged = self._digests.unchanged(comparable, digests)
        # A bucket's keys are of its own users only: one intersection (in C) for all unchanged buckets.
        live = pairs & frozenset().union(*(base.live for base in unchanged.values()))
        changed = {b: users for b, users in buckets.items() if b not in unchanged}
        if changed:
            to_read = {key for key in pairs if bucket_of(key[0]) in changed}
            now = int(time.time())
            valid = await self._valid(await self.sessions.lookup_many(self.db, to_read, self._sid_of), cfg, now)
            self._digests.remember(changed, ((record.id, key) for record, key in valid))
            live |= {key for _, key in valid if key in to_read}
        return live

    async def _valid(self, records: list[SessionRecord], cfg: MoodleConfig,
                     now: int) -> list[tuple[SessionRecord, tuple[int, str]]]:
        """The records that pass every rule (MFA aside: the re-check reads no session data),
        each with its (user id, sid hash) key."""
        # Each record's hash once: the re-check reads every session of thousands of users.
        candidates = [(r, (r.userid, sid_hash(r.sid))) for r in records
                      if not r.problem and self._judge_record(r, cfg, now) is None]
        missing = {r.userid for r, _ in candidates if r.user is None}
        users = await self.db.run(lambda q: self._user_state(q, missing)) if missing else {}
        return [(r, key) for r, key in candidates
                if self._judge_user(r.userid, r.user if r.user is not None else users.get(r.userid)).ok]

    def _forget_sessions_of(self, user_id: int) -> None:
        self._sessions.invalidate_where(lambda _sid, check: check.user_id == user_id)

    def forget_session(self, sid: str) -> None:
        self._sessions.invalidate(sid)
