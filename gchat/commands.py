"""Commands: validation, dispatch, rate limits and the handlers (docs/protocol.md, commands).

:class:`Commands` takes any JSON value a transport parsed and always answers with a reply: it
checks the shape every command shares (an object with a known ``type``, a scalar ``ref``, no
field naming a sender), refuses while shutting down, counts, and times the handler for the
observer. :class:`ChatCommands` holds the handlers, one ``cmd_<type>`` method per command type:
adding a method is all it takes to add a command (the metrics' labels follow).

Each handler authorises first (identity only from the token; conversations only between
course-mates who do not block each other; only members read or post), then persists through
the store, then publishes through the feed: persist, then publish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gchat.auth import Identity
from gchat.config import Settings
from gchat.errors import GchatError, bad_command, not_allowed, refused
from gchat.directory import Directory
from gchat.feed import Feed, conversation_view
from gchat.limits import RateLimits
from gchat.ports import ChatStorage, MoodleLookups, Observer
from gchat.store import MAX_HISTORY_LIMIT, MemberState, Pair
from gchat.text import normalise_text
from gchat.wire import command_ref, error_reply, ok_reply

log = logging.getLogger("gchat.router")

Handler = Callable[[Identity, dict[str, Any]], Awaitable[dict[str, Any]]]
Admit = Callable[[Identity], Awaitable[None]]  # raises when the identity's session may not act

# A command may not name its sender: the sender is always the token's user.
IDENTITY_FIELDS = ("from", "sender", "user_id", "userid")
MAX_CLIENT_ID_LENGTH = 64
MAX_LOGGED_COMMAND = 500  # characters of a failed command's repr in the log


def int_field(cmd: dict[str, Any], name: str) -> int:
    """A required id: a positive integer below 2**63 (a bool is not one)."""
    value = cmd.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value >= 2**63:
        raise bad_command(f"{name} must be a positive integer id")
    return value


def optional_int_field(cmd: dict[str, Any], name: str) -> int | None:
    return None if cmd.get(name) is None else int_field(cmd, name)


class Commands:
    """Validation and dispatch of commands, with the counts /metrics reads. ``admit`` (the
    session watch's) runs first: no command of an ended Moodle session is applied."""

    def __init__(self, handlers: Mapping[str, Handler], observer: Observer | None = None, *,
                 admit: Admit | None = None) -> None:
        self._handlers = dict(handlers)
        self._observer = observer
        self._admit = admit
        self.closing = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.handled = 0
        self.errors = 0
        self._errors_by_code: dict[str, int] = {}

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    @property
    def errors_by_code(self) -> dict[str, int]:
        return dict(self._errors_by_code)

    async def handle(self, identity: Identity, command: Any) -> dict[str, Any]:
        """Run one command; always returns its reply (``ok`` true, or false with an error)."""
        ref = command_ref(command)
        self.handled += 1
        started = time.perf_counter()
        kind: str | None = None
        try:
            if self._admit is not None:
                await self._admit(identity)
            if not isinstance(command, dict):
                raise bad_command("a command is a JSON object")
            name = command.get("type")
            handler = self._handlers.get(name) if isinstance(name, str) else None
            if handler is None:
                raise bad_command(f"unknown command type {name!r}"[:200])
            kind = name
            if command.get("ref") is not ref:
                raise bad_command("ref must be a JSON scalar")
            for field in IDENTITY_FIELDS:
                if field in command and command[field] != identity.user_id:
                    raise not_allowed("the sender is the token's user; it cannot be named in a command")
            if self.closing:
                raise GchatError("shutting_down", "the server is restarting; reconnect and retry")
            self.in_flight += 1
            self._idle.clear()
            try:
                result = await handler(identity, command)
            finally:
                self.in_flight -= 1
                if not self.in_flight:
                    self._idle.set()
            return ok_reply(ref, result)
        except GchatError as exc:
            return self.refuse(ref, exc)
        except Exception:
            log.exception("command failed: %r", command if len(repr(command)) < MAX_LOGGED_COMMAND else "(large)")
            return self.refuse(ref, GchatError("unavailable", "internal error; the command was not applied"))
        finally:
            if self._observer is not None:
                self._observer.command_done(kind, time.perf_counter() - started)

    def refuse(self, ref: Any, error: GchatError) -> dict[str, Any]:
        """The error reply to a command (or to a frame that was not one), counted by code."""
        self.errors += 1
        self._errors_by_code[error.code] = self._errors_by_code.get(error.code, 0) + 1
        return error_reply(ref, error)

    async def drain(self, timeout_secs: float) -> bool:
        """Refuse new commands and wait for those in flight; False when some still run."""
        self.closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_secs)
        except TimeoutError:
            return False
        return True


class ChatCommands:
    """The handlers: ``cmd_<type>(identity, command) -> reply fields``."""

    def __init__(self, settings: Settings, *, moodle: MoodleLookups, store: ChatStorage, feed: Feed,
                 limits: RateLimits, directory: Directory, observer: Observer | None = None) -> None:
        self._settings = settings
        self._directory = directory
        self._moodle = moodle
        self._store = store
        self._feed = feed
        self._limits = limits
        self._observer = observer
        self.messages_stored = 0

    def handlers(self) -> dict[str, Handler]:
        """Every ``cmd_<type>`` method, by type."""
        return {name[4:]: getattr(self, name) for name in dir(type(self)) if name.startswith("cmd_")}

    async def _member_pair(self, identity: Identity, cmd: dict[str, Any]) -> Pair:
        conversation = int_field(cmd, "conversation")
        await self._check_messaging()
        pair = await self._store.pair(conversation)
        if pair is None:
            raise GchatError("not_found", "no such conversation")
        if not pair.has(identity.user_id):
            raise refused("not_member")
        return pair

    async def _check_messaging(self) -> None:
        """Moodle's site switch ``messaging`` (when honoured): off means no chat command works."""
        if self._settings.honour_moodle_messaging and not await self._moodle.messaging_enabled():
            raise refused("messaging_disabled")

    async def _check_may_write(self, me: int, peer: int) -> None:
        """``moodle/site:sendmessage``, then Moodle's rules between the two (blocks, shared
        course, the peer's contacts-only preference), each refusal with its reason."""
        if not await self._moodle.can_send(me):
            raise refused("cannot_send")
        reason = await self._moodle.refusal(me, peer)
        if reason is not None:
            raise refused(reason)

    async def _publish_state(self, uid: int, pair: Pair, state: MemberState) -> None:
        await self._feed.publish([uid], await self._feed.conversation_event(uid, pair, state, None))

    async def cmd_open(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        me = identity.user_id
        peer = int_field(cmd, "user")
        if peer == me:
            raise not_allowed("you cannot chat with yourself")
        await self._check_messaging()
        self._limits.check("send", me)
        await self._check_may_write(me, peer)
        self._limits.check("open", me)
        pair, state, messages = await self._store.open(me, peer, self._settings.history_size)
        event = await self._feed.conversation_event(me, pair, state, messages)
        await self._feed.publish([me], event)
        return {"conversation": event["conversation"]}

    async def cmd_send(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        me = identity.user_id
        pair = await self._member_pair(identity, cmd)
        text = normalise_text(cmd.get("text"), self._settings.max_message_length)
        client_id = cmd.get("client_id")
        if client_id is not None and (not isinstance(client_id, str)
                                      or not 0 < len(client_id) <= MAX_CLIENT_ID_LENGTH):
            raise bad_command(f"client_id must be a string of 1 to {MAX_CLIENT_ID_LENGTH} characters")
        self._limits.check("send", me)
        peer = pair.peer_of(me)
        await self._check_may_write(me, peer)
        # No per-conversation lock: the store writes each conversation's sends one batch at a
        # time in arrival order and resolves them in that order; nothing below waits on the
        # database, so each conversation's messages are published in id order.
        stored = await self._store.add_message(pair, me, text, client_id, self._settings.history_size)
        if not stored.duplicate:
            self.messages_stored += 1
        if stored.peer_opened is not None:
            # Everything the peer's view needs came with the send's own transaction, but the
            # sender's profile (cached: the sender's course-mates were just looked at).
            profiles = await self._moodle.users([me])
            await self._feed.publish([peer], {"type": "conversation", "conversation": conversation_view(
                peer, pair, stored.peer_opened, stored.peer_messages, profiles, stored.peer_read)})
        # A retry publishes the stored message again: the first attempt may have committed
        # and then failed before it published. Clients drop the repeat by message id.
        message = stored.message.as_dict()  # one dict for the event and the reply
        await self._feed.publish([me, peer], {"type": "message", "message": message})
        if self._observer is not None and not stored.duplicate:
            self._observer.message_published(stored.message.time)
        return {"message": message}

    async def cmd_seen(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        pair = await self._member_pair(identity, cmd)
        message = int_field(cmd, "message")
        state, changed, read = await self._store.record_read(pair.id, identity.user_id, message)
        if changed:
            await self._publish_state(identity.user_id, pair, state)
        if read is not None:  # a read receipt for the other member
            await self._feed.publish([pair.peer_of(identity.user_id)], {
                "type": "read", "conversation": pair.id, "user": identity.user_id, **read.as_dict()})
        return {}

    async def cmd_close(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        pair = await self._member_pair(identity, cmd)
        state = await self._store.set_open(pair.id, identity.user_id, False)
        await self._publish_state(identity.user_id, pair, state)
        return {}

    async def cmd_minimize(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        pair = await self._member_pair(identity, cmd)
        minimized = cmd.get("minimized")
        if not isinstance(minimized, bool):
            raise bad_command("minimized must be true or false")
        state = await self._store.set_minimized(pair.id, identity.user_id, minimized)
        await self._publish_state(identity.user_id, pair, state)
        return {}

    async def cmd_history(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        pair = await self._member_pair(identity, cmd)
        before = optional_int_field(cmd, "before")
        limit = cmd.get("limit", self._settings.history_size)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise bad_command(f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}")
        messages = await self._store.history(pair.id, before, limit)
        return {"messages": [m.as_dict() for m in messages]}

    async def cmd_typing(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        pair = await self._member_pair(identity, cmd)
        self._limits.check("typing", identity.user_id)
        peer = pair.peer_of(identity.user_id)
        await self._feed.publish([peer], {"type": "typing", "conversation": pair.id, "user": identity.user_id})
        return {}

    async def cmd_ping(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def cmd_conversations(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        """Recent conversations, newest first (gchat/directory.py)."""
        return await self._directory.conversations(identity, cmd)

    async def cmd_search(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        """Course-mates by name, online or not (gchat/directory.py)."""
        return await self._directory.search(identity, cmd)
