"""The router: every command from every transport, every event to every client.

Transports (WebSocket, long-poll) are thin: they authenticate, parse, and hand a command to
:meth:`Router.handle`, or attach a :class:`Client` and ask :meth:`Router.catch_up` for what it
has not seen. The router is a front over parts with one job each (docs/design.md):

* :class:`~gchat.session_watch.SessionWatch`: cookie → token, token checks, Moodle logouts;
* :class:`~gchat.presence.Presence`: the connections of this process, their limits, online and
  offline (with a grace period) announced to online course-mates;
* :class:`~gchat.feed.Feed`: events into users' logs; catch-up and ``ready`` snapshots;
* :class:`~gchat.commands.Commands` and :class:`~gchat.commands.ChatCommands`: validation,
  rate limits and the command handlers (authorise, persist, then publish).

Flow is one way: transports → router → broker, store, Moodle lookups. See docs/protocol.md.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from gchat.auth import Identity, TokenSigner
from gchat.broker import Broker
from gchat.commands import ChatCommands, Commands
from gchat.config import Settings
from gchat.directory import Directory
from gchat.errors import GchatError
from gchat.feed import Feed
from gchat.limits import RateLimits
from gchat.moodle import User
from gchat.ports import ChatStorage, MoodleLookups, Observer
from gchat.presence import Client, Presence, shutting_down
from gchat.session_watch import SessionWatch
from gchat.tasks import Background

__all__ = ["Client", "Router"]

log = logging.getLogger("gchat.router")

DRAIN_SECS = 3.0


class Router:
    def __init__(self, settings: Settings, *, moodle: MoodleLookups, store: ChatStorage, broker: Broker,
                 signer: TokenSigner, observer: Observer | None = None) -> None:
        self.settings = settings
        self.broker = broker
        self.signer = signer
        self._observer = observer
        self._background = Background()
        self._feed = Feed(settings, broker=broker, moodle=moodle, store=store)
        self._presence = Presence(settings, broker=broker, moodle=moodle, publish=self._feed.publish,
                                  background=self._background)
        self._sessions = SessionWatch(settings, moodle=moodle, signer=signer, presence=self._presence)
        limits = RateLimits(settings)
        directory = Directory(moodle=moodle, store=store, broker=broker, limits=limits)
        self._chat = ChatCommands(settings, moodle=moodle, store=store, feed=self._feed, limits=limits,
                                  directory=directory, observer=observer)
        self._commands = Commands(self._chat.handlers(), observer, admit=self._sessions.admit)

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic session re-check and hear of users other processes left behind."""
        self._sessions.start()
        self.broker.report_orphans_to(self._presence.orphaned)

    async def stop(self, drain_secs: float = DRAIN_SECS) -> None:
        """Refuse new commands, let the ones in flight finish (their replies reach the clients),
        then tell every client to reconnect."""
        self._presence.close()
        self._sessions.stop()
        if not await self._commands.drain(drain_secs):
            log.warning("%d commands still running at shutdown", self._commands.in_flight)
        self._presence.end_clients(shutting_down())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        self._background.spawn(coro)

    @property
    def closing(self) -> bool:
        return self._presence.closing

    # -- sessions and tokens ----------------------------------------------------------------

    async def bootstrap(self, sid: str | None) -> tuple[str, User]:
        """Moodle session cookie → (token, user). Refused: ``not_logged_in``."""
        return await self._sessions.bootstrap(sid)

    async def permissions(self, user_id: int) -> dict[str, bool]:
        """The bootstrap's ``messaging`` and ``can_send`` for ``user_id``."""
        return await self._sessions.permissions(user_id)

    async def cookie_name(self) -> str:
        return await self._sessions.cookie_name()

    def authenticate(self, token: str | None, *, remember: bool = True) -> Identity:
        """``remember=False`` for a token presented once (gchat.auth.TokenSigner.verify)."""
        return self._sessions.authenticate(token, remember=remember)

    async def admit(self, identity: Identity) -> None:
        """A new connection's session is live (fresh from the re-check, or looked up now);
        refused: ``session_ended``. Commands are admitted by ``handle`` itself."""
        await self._sessions.admit(identity)

    async def check_sessions(self) -> int:
        """End the clients whose Moodle session is over; returns how many."""
        return await self._sessions.check_sessions()

    # -- clients ----------------------------------------------------------------------------

    async def attach(self, client: Client) -> None:
        await self._presence.attach(client)

    async def detach(self, client: Client) -> None:
        await self._presence.detach(client)

    async def catch_up(self, identity: Identity, cursor: str | None) -> tuple[list[str], str]:
        return await self._feed.catch_up(identity, cursor)

    def catch_up_now(self, identity: Identity, cursor: str) -> tuple[list[str], str] | None:
        return self._feed.catch_up_now(identity, cursor)

    # -- commands ---------------------------------------------------------------------------

    async def handle(self, identity: Identity, command: Any) -> dict[str, Any]:
        """Run one command; always returns its reply (``ok`` true, or false with an error)."""
        return await self._commands.handle(identity, command)

    def error_reply(self, ref: Any, error: GchatError) -> dict[str, Any]:
        """The reply to a frame that never became a command (bad JSON, too long), counted."""
        return self._commands.refuse(ref, error)

    # -- read-only counts (health, /metrics, the benchmark) ---------------------------------

    @property
    def observer(self) -> Observer | None:
        """What was told about every command and message (gchat/metrics.py's Metrics), if any."""
        return self._observer

    @property
    def command_types(self) -> tuple[str, ...]:
        return self._commands.types

    def clients_of(self, user_id: int) -> set[Client]:
        return set(self._presence.clients_of(user_id))

    @property
    def client_count(self) -> int:
        return self._presence.client_count

    @property
    def connected_users(self) -> int:
        """Users with at least one live connection to this process."""
        return self._presence.user_count

    def count_by_transport(self) -> dict[str, int]:
        return self._presence.count_by_transport()

    @property
    def counts(self) -> dict[str, int]:
        """Commands handled, messages stored, events published, commands refused."""
        return {"commands": self._commands.handled, "messages": self._chat.messages_stored,
                "events": self._feed.events_published, "errors": self._commands.errors}

    @property
    def errors_by_code(self) -> dict[str, int]:
        return self._commands.errors_by_code
