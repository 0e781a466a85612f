"""Moodle sessions: the cookie → token exchange, token checks, and the watch that ends the chat
of a user whose Moodle session ended (logout, timeout, killed, user suspended or deleted).

The guarantee (docs/protocol.md §8): within ``fresh_secs`` of a session's end — 3.7 s with the
default ``session_check_interval`` of 2 s — every client of it on this process has been told
``session_ended`` and no command of it is accepted any more, on either transport. It holds
without a query per command, heartbeat or idle poll:

* **one batched re-check** every ``session_check_interval`` (±10 %) asks the session store about
  every session this process cares about at once (one query with the database store, one Redis
  pipeline and one query with Redis's): the sessions of its live clients, and the sessions that
  bootstrapped or sent a command here in the last ``WATCH_AFTER_USE_SECS``, so a long-poll
  ``api/send`` that a balancer sends to a process without that user's tabs is watched too;
* **admission**: a command (or a new connection) is accepted only when its session was found
  live less than ``fresh_secs`` ago — by the re-check, by a bootstrap's lookup, or else by a
  lookup of that one session made there and then (shared by concurrent commands). With the
  default interval the re-check keeps every watched session fresh, so that lookup happens only
  for the first command of a session this process has not seen for a while;
* **bootstrap** hands out no token from a cached lookup older than ``fresh_secs`` (gchat.moodle
  caches lookups for ``session_cache_ttl``), nor for a session found ended unless a lookup made
  there and then finds it live.

A token outlives its session by at most ``token_ttl`` seconds: a session found ended is
remembered that long, and its tokens are refused (``session_ended``) although their signature
is still good.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Set as AbstractSet

from gchat.auth import Identity, TokenSigner
from gchat.config import Settings
from gchat.errors import AuthError, Unavailable
from gchat.moodle import User, sid_hash
from gchat.ports import MoodleLookups
from gchat.presence import Presence

log = logging.getLogger("gchat.router")

DEFAULT_COOKIE = "MoodleSession"
JITTER = (0.9, 1.1)  # spreads the re-checks of several processes over the interval
# Time a re-check may take (its query, the event loop's turn) before a session it keeps fresh
# goes stale and its next command costs a lookup of its own.
CHECK_SLACK_SECS = 1.5
# A session that bootstrapped or sent a command here is re-checked for this long after: its
# tabs may live on another process, whose re-check this process does not hear of.
WATCH_AFTER_USE_SECS = 60.0

Session = tuple[int, str]  # (user id, sid hash), as a token carries it


def session_ended() -> AuthError:
    return AuthError("session_ended", "you have been logged out of Moodle")


class SessionWatch:
    def __init__(self, settings: Settings, *, moodle: MoodleLookups, signer: TokenSigner, presence: Presence,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._moodle = moodle
        self._signer = signer
        self._presence = presence
        self._clock = clock
        self._ended: dict[Session, float] = {}  # → when it was found ended
        self._verified: dict[Session, float] = {}  # → when a lookup that found it live began
        self._used: dict[Session, float] = {}  # → its last bootstrap, command or connection here
        self._used_pruned = clock()
        self._looking: dict[Session, asyncio.Future[bool]] = {}  # lookups of one session, shared
        self._task: asyncio.Task[None] | None = None

    @property
    def fresh_secs(self) -> float:
        """How old a live verdict may be for a command to be accepted on it: one re-check
        interval at its longest, plus the time a re-check may take."""
        return self._settings.session_check_interval * JITTER[1] + CHECK_SLACK_SECS

    # -- tokens ---------------------------------------------------------------------------------

    async def bootstrap(self, sid: str | None) -> tuple[str, User]:
        """Moodle session cookie → (token, user). Refused: ``not_logged_in``."""
        if not sid:
            raise AuthError("not_logged_in", "no Moodle session cookie")
        check = await self._moodle.check_session(sid)
        if check.user_id is None:
            raise AuthError("not_logged_in", f"the Moodle session is not valid ({check.reason})")
        session = (check.user_id, sid_hash(sid))
        now = self._clock()
        self._used[session] = now
        if session in self._ended:
            # Found ended here: a cached verdict must not bring it back; a lookup made now may
            # (the store's passing hiccup must not lock a user out for token_ttl).
            fresh = False
        else:
            self._saw_live(session, now - max(0.0, time.monotonic() - check.checked_at))
            fresh = self._is_fresh(session, now)
        if not fresh and not await self._look_up(session):
            raise AuthError("not_logged_in", "the Moodle session has ended")
        user = await self._moodle.user(check.user_id)
        if user is None:
            raise AuthError("not_logged_in", "no such user")
        return self._signer.issue(Identity(user.id, session[1])), user

    async def permissions(self, user_id: int) -> dict[str, bool]:
        """The bootstrap's ``messaging`` (Moodle's site switch, when honoured) and ``can_send``
        (``moodle/site:sendmessage``) for ``user_id``."""
        messaging = not self._settings.honour_moodle_messaging or await self._moodle.messaging_enabled()
        return {"messaging": messaging, "can_send": await self._moodle.can_send(user_id)}

    async def cookie_name(self) -> str:
        """The Moodle session cookie: the ``session_cookie`` setting, or ``MoodleSession`` plus
        Moodle's ``sessioncookie`` suffix."""
        if self._settings.session_cookie:
            return self._settings.session_cookie
        return DEFAULT_COOKIE + (await self._moodle.config()).session_cookie_suffix

    def authenticate(self, token: str | None, *, remember: bool = True) -> Identity:
        """The token's identity, unless its session is known to have ended (no query)."""
        identity = self._signer.verify(token, remember=remember)
        if (identity.user_id, identity.sid_hash) in self._ended:
            raise AuthError("session_ended", "the Moodle session has ended")
        return identity

    async def admit(self, identity: Identity) -> None:
        """Let a command (or a new connection) of ``identity`` in only when its session was
        found live less than ``fresh_secs`` ago; otherwise look it up now. Refused:
        ``session_ended``; ``unavailable`` when the lookup cannot be made."""
        session = (identity.user_id, identity.sid_hash)
        if session in self._ended:
            raise session_ended()
        now = self._clock()
        self._used[session] = now
        if not self._is_fresh(session, now) and not await self._look_up(session):
            raise session_ended()

    def _is_fresh(self, session: Session, now: float) -> bool:
        verified = self._verified.get(session)
        return verified is not None and now - verified <= self.fresh_secs

    def _saw_live(self, session: Session, when: float) -> None:
        if when > self._verified.get(session, when - 1):
            self._verified[session] = when

    async def _look_up(self, session: Session) -> bool:
        """Whether ``session`` is live now: one lookup, shared by whoever asks meanwhile."""
        pending = self._looking.get(session)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._looking[session] = future
        try:
            started = self._clock()
            live = session in await self._moodle.live_sessions({session})
            if live:
                self._saw_live(session, started)
                self._ended.pop(session, None)  # only bootstrap looks up a session found ended
            else:
                self._end(session, started)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: the waiters re-raise it
            raise
        finally:
            del self._looking[session]
        future.set_result(live)
        return live

    # -- the re-check ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.session_check_interval * random.uniform(*JITTER))
            try:
                await self.check_sessions()
            except Unavailable:
                log.warning("Moodle sessions not re-checked: database unavailable")
            except Exception:
                log.exception("Moodle session re-check failed")

    def watched(self) -> AbstractSet[Session]:
        """The sessions the next re-check asks about: those of this process's clients, and those
        used here within ``WATCH_AFTER_USE_SECS`` (up to a quarter of it more), less the ones
        already found ended."""
        now = self._clock()
        if now - self._used_pruned >= WATCH_AFTER_USE_SECS / 4:  # at most that much longer: watched, not missed
            self._used_pruned = now
            horizon = now - WATCH_AFTER_USE_SECS
            self._used = {s: t for s, t in self._used.items() if t > horizon}
        # Set operations only (in C): this runs every interval over every session of the process.
        return (self._presence.sessions() | self._used.keys()) - self._ended.keys()

    async def check_sessions(self) -> int:
        """Re-check every watched session in one store round trip; end the clients of those that
        are over. Returns how many clients were ended."""
        sessions = self.watched()
        for gone in self._verified.keys() - sessions:
            del self._verified[gone]
        now = self._clock()
        ended = 0
        if sessions:
            live = await self._moodle.live_sessions(sessions, recheck=True)
            # ``now``: no later than the start of any lookup made meanwhile, so on the safe side.
            self._verified.update(dict.fromkeys(live, now))
            for session in sessions - live:
                ended += self._end(session, now)
        # Tokens outlive sessions by at most token_ttl: remember ended sessions that long.
        horizon = now - self._settings.token_ttl
        self._ended = {s: t for s, t in self._ended.items() if t > horizon}
        return ended

    def _end(self, session: Session, when: float) -> int:
        """``session`` is over: refuse its tokens, end its clients here; returns how many."""
        self._ended[session] = when
        self._verified.pop(session, None)
        self._used.pop(session, None)
        return self._presence.end_clients(session_ended(), session=session)
