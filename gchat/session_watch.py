"""Moodle sessions: the cookie → token exchange, token checks, and the periodic re-check that
ends the chat of a user who logged out of Moodle.

A token outlives its session by at most ``token_ttl`` seconds: a session the re-check found
ended is remembered that long, and a token of it is refused (``session_ended``) even though its
signature is still good.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from gchat.auth import Identity, TokenSigner
from gchat.config import Settings
from gchat.errors import AuthError, Unavailable
from gchat.moodle import User, sid_hash
from gchat.ports import MoodleLookups
from gchat.presence import Presence

log = logging.getLogger("gchat.router")

DEFAULT_COOKIE = "MoodleSession"
JITTER = (0.9, 1.1)  # spreads the re-checks of several processes over the interval


class SessionWatch:
    def __init__(self, settings: Settings, *, moodle: MoodleLookups, signer: TokenSigner, presence: Presence,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._moodle = moodle
        self._signer = signer
        self._presence = presence
        self._clock = clock
        self._ended: dict[str, float] = {}  # session hash → when the re-check found it ended
        self._task: asyncio.Task[None] | None = None

    async def bootstrap(self, sid: str | None) -> tuple[str, User]:
        """Moodle session cookie → (token, user). Refused: ``not_logged_in``."""
        if not sid:
            raise AuthError("not_logged_in", "no Moodle session cookie")
        check = await self._moodle.check_session(sid)
        if check.user_id is None:
            raise AuthError("not_logged_in", f"the Moodle session is not valid ({check.reason})")
        user = await self._moodle.user(check.user_id)
        if user is None:
            raise AuthError("not_logged_in", "no such user")
        identity = Identity(user.id, sid_hash(sid))
        self._ended.pop(identity.sid_hash, None)  # a valid session again (cannot happen for a real sid)
        return self._signer.issue(identity), user

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

    def authenticate(self, token: str | None) -> Identity:
        identity = self._signer.verify(token)
        if identity.sid_hash in self._ended:
            raise AuthError("session_ended", "the Moodle session has ended")
        return identity

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

    async def check_sessions(self) -> int:
        """End the clients whose Moodle session is over (one query for all); returns how many."""
        pairs = self._presence.sessions()
        if not pairs:
            return 0
        live = await self._moodle.live_sessions(pairs)
        ended = 0
        now = self._clock()
        for uid, hashed in pairs - live:
            self._ended[hashed] = now
            ended += self._presence.end_clients(AuthError("session_ended", "you have been logged out of Moodle"),
                                                session=(uid, hashed))
        # Tokens outlive sessions by at most token_ttl: remember ended sessions that long.
        horizon = now - self._settings.token_ttl
        self._ended = {h: t for h, t in self._ended.items() if t > horizon}
        return ended
