"""The router: every command from every transport, every event to every client.

Transports (WebSocket, long-poll) are thin: they authenticate, parse, and hand a command to
:meth:`Router.handle`, or attach a :class:`Client` and ask :meth:`Router.catch_up` for what it
has not seen. The router authorises (identity only from the token; conversations only between
course-mates who do not block each other; only members read or post), persists through the
store, then publishes through the broker: persist, then publish. Presence (online while any
connection lives, offline after a grace period) is decided here and fanned out as deltas to the
online course-mates only. See DESIGN.md and docs/protocol.md.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import secrets
import time
from typing import Any, Awaitable, Callable, Coroutine

from gchat.auth import Identity, TokenSigner
from gchat.broker import Broker, CursorGone, encode_event, with_cursor
from gchat.config import Settings
from gchat.directory import Directory
from gchat.errors import AuthError, GchatError, Unavailable, bad_command, not_allowed
from gchat.limits import TokenBucket, WindowCounter
from gchat.moodle import Moodle, User, sid_hash
from gchat.store import MAX_HISTORY_LIMIT, ChatStore, MemberState, Message, Pair, Read
from gchat.text import normalise_text

log = logging.getLogger("gchat.router")

_SCALAR = (str, int, float, bool, type(None))
_IDENTITY_FIELDS = ("from", "sender", "user_id", "userid")


class Client(abc.ABC):
    """One live connection of a user: a WebSocket, or one long-poll tab."""

    transport = "?"
    __slots__ = ("identity", "address", "key")

    def __init__(self, identity: Identity, address: str) -> None:
        self.identity = identity
        self.address = address
        self.key = secrets.token_hex(8)

    @property
    def user_id(self) -> int:
        return self.identity.user_id

    @abc.abstractmethod
    def wake(self) -> None:
        """The user's event log grew: deliver what came after this client's cursor."""

    @abc.abstractmethod
    def end(self, error: GchatError) -> None:
        """The server ends this client (session over, shutting down, too slow)."""


def _int_field(cmd: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    value = cmd.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value >= 2**63:
        raise bad_command(f"{name} must be a positive integer id")
    return value


class Router:
    def __init__(self, settings: Settings, *, moodle: Moodle, store: ChatStore, broker: Broker,
                 signer: TokenSigner) -> None:
        self.settings = settings
        self.moodle = moodle
        self.store = store
        self.broker = broker
        self.signer = signer
        self._clients: dict[int, set[Client]] = {}
        self._per_address: dict[str, int] = {}
        self._grace: dict[int, asyncio.TimerHandle] = {}
        self._sends: dict[int, TokenBucket] = {}
        self._opens: dict[int, WindowCounter] = {}
        self._ended: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session_task: asyncio.Task[None] | None = None
        self.closing = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats: dict[str, int] = {"commands": 0, "messages": 0, "events": 0, "errors": 0}
        self.errors_by_code: dict[str, int] = {}
        # gchat.metrics sets this when metrics are on: command_done(command, seconds) and
        # message_published(stored_ms). None costs one test per command.
        self.observer: Any = None
        self._commands: dict[str, Callable[[Identity, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "open": self._open, "send": self._send, "seen": self._seen, "close": self._close,
            "minimize": self._minimize, "history": self._history, "typing": self._typing, "ping": self._ping,
        }
        # Recent conversations and search (gchat/directory.py).
        self.directory = Directory(moodle=moodle, store=store, broker=broker)
        self._commands["conversations"] = self.directory.conversations
        self._commands["search"] = self.directory.search

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._session_task = asyncio.get_running_loop().create_task(self._session_loop())
        self.broker.on_orphan = self._orphaned

    def _orphaned(self, uid: int) -> None:
        if self.closing or uid in self._clients or uid in self._grace:
            return
        self._start_grace(uid)

    def _start_grace(self, uid: int) -> None:
        old = self._grace.pop(uid, None)
        if old is not None:
            old.cancel()
        self._grace[uid] = asyncio.get_running_loop().call_later(
            self.settings.presence_grace, lambda: self.spawn(self._maybe_offline(uid)))

    async def stop(self, drain_secs: float = 3.0) -> None:
        """Refuse new commands, let the ones in flight finish (their replies reach the clients),
        then tell every client to reconnect."""
        self.closing = True
        if self._session_task:
            self._session_task.cancel()
        try:
            await asyncio.wait_for(self._idle.wait(), drain_secs)
        except asyncio.TimeoutError:
            log.warning("%d commands still running at shutdown", self.in_flight)
        for timer in self._grace.values():
            timer.cancel()
        for clients in list(self._clients.values()):
            for client in list(clients):
                client.end(GchatError("shutting_down", "the server is restarting; reconnect"))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends (the event loop
        keeps only weak ones: an unreferenced task can vanish mid-flight)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- authentication ---------------------------------------------------------------------

    async def bootstrap(self, sid: str | None) -> tuple[str, User]:
        """Moodle session cookie → (token, user). Refused: ``not_logged_in``."""
        if not sid:
            raise AuthError("not_logged_in", "no Moodle session cookie")
        check = await self.moodle.check_session(sid)
        if not check.ok:
            raise AuthError("not_logged_in", f"the Moodle session is not valid ({check.reason})")
        assert check.user_id is not None
        user = await self.moodle.user(check.user_id)
        if user is None:
            raise AuthError("not_logged_in", "no such user")
        identity = Identity(user.id, sid_hash(sid))
        self._ended.pop(identity.sid_hash, None)  # a valid session again (cannot happen for a real sid)
        return self.signer.issue(identity), user

    async def cookie_name(self) -> str:
        """The Moodle session cookie: the ``session_cookie`` setting, or ``MoodleSession`` plus
        Moodle's ``sessioncookie`` suffix."""
        if self.settings.session_cookie:
            return self.settings.session_cookie
        return "MoodleSession" + (await self.moodle.config()).session_cookie_suffix

    def authenticate(self, token: str | None) -> Identity:
        identity = self.signer.verify(token)
        if identity.sid_hash in self._ended:
            raise AuthError("session_ended", "the Moodle session has ended")
        return identity

    # -- clients and presence ---------------------------------------------------------------

    def clients_of(self, user_id: int) -> set[Client]:
        return self._clients.get(user_id, set())

    @property
    def client_count(self) -> int:
        return sum(len(c) for c in self._clients.values())

    def count_by_transport(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for clients in self._clients.values():
            for client in clients:
                counts[client.transport] = counts.get(client.transport, 0) + 1
        return counts

    async def attach(self, client: Client) -> None:
        """Start counting ``client`` as a live connection and wake it on new events."""
        if self.closing:
            raise GchatError("shutting_down", "the server is restarting; reconnect")
        uid = client.user_id
        mine = self._clients.setdefault(uid, set())
        if len(mine) >= self.settings.max_connections_per_user:
            if not mine:
                del self._clients[uid]
            raise GchatError("too_many_connections",
                             f"at most {self.settings.max_connections_per_user} connections per user")
        if self._per_address.get(client.address, 0) >= self.settings.max_connections_per_address:
            if not mine:
                del self._clients[uid]
            raise GchatError("too_many_connections", "too many connections from this address")
        mine.add(client)
        self._per_address[client.address] = self._per_address.get(client.address, 0) + 1
        timer = self._grace.pop(uid, None)
        if timer is not None:
            timer.cancel()
        try:
            await self.broker.ensure_log(uid)
            self.broker.subscribe(uid, client.wake)
            became_online = await self.broker.add_connection(uid, client.key)
        except Exception:
            await self.detach(client)
            raise
        if became_online:
            self.spawn(self._announce(uid, "online"))

    async def detach(self, client: Client) -> None:
        uid = client.user_id
        mine = self._clients.get(uid)
        if mine is None or client not in mine:
            return
        mine.discard(client)
        if not mine:
            del self._clients[uid]
        left = self._per_address.get(client.address, 1) - 1
        if left:
            self._per_address[client.address] = left
        else:
            self._per_address.pop(client.address, None)
        self.broker.unsubscribe(uid, client.wake)
        try:
            remaining = await self.broker.remove_connection(uid, client.key)
        except Unavailable:
            remaining = 0  # the broker forgets a lost process's connections by itself
        if remaining == 0 and not self.closing:
            self._start_grace(uid)

    async def _maybe_offline(self, uid: int) -> None:
        self._grace.pop(uid, None)
        if uid in self._clients or self.closing:
            return
        try:
            if await self.broker.connection_count(uid) or not await self.broker.mark_offline(uid):
                return
        except Unavailable:
            self._start_grace(uid)  # try again once the broker is back
            return
        try:
            await self.broker.drop_log(uid)
        except Unavailable:
            log.warning("log of user %s not dropped: broker unavailable", uid)
        await self._announce(uid, "offline")

    async def _announce(self, uid: int, status: str, attempt: int = 1) -> None:
        """Tell the online course-mates of ``uid`` that it came online or went offline; while the
        database is unavailable, try again a few times (a reconnect storm passes)."""
        try:
            user = await self.moodle.user(uid)
            mates = await self.moodle.coursemates(uid)
            targets = await self.broker.online(mates)
            if user is None or not targets:
                return
            # With several processes a late "offline" must not overtake a newer "online".
            if (uid in await self.broker.online([uid])) != (status == "online"):
                return
            await self._publish(targets, {"type": "presence", "user": user.as_dict(), "status": status})
        except Unavailable:
            if attempt < 4 and not self.closing:
                asyncio.get_running_loop().call_later(
                    attempt * 2.0, lambda: self.spawn(self._announce(uid, status, attempt + 1)))
                return
            log.warning("presence of user %s (%s) not announced: database or broker unavailable", uid, status)

    async def _publish(self, user_ids: Any, event: dict[str, Any]) -> None:
        self.stats["events"] += 1
        await self.broker.publish(user_ids, encode_event(event))

    # -- catching up ------------------------------------------------------------------------

    async def catch_up(self, identity: Identity, cursor: str | None) -> tuple[list[str], str]:
        """Everything after ``cursor`` as wire JSON, and the cursor to continue from.

        No cursor: a ``ready`` snapshot. A cursor that cannot be resumed: ``ready`` with
        ``reset: true`` and a fresh snapshot, never a partial replay.
        """
        if cursor:
            try:
                return await self.broker.read(identity.user_id, cursor)
            except CursorGone:
                return await self._ready(identity, reset=True)
        return await self._ready(identity, reset=False)

    async def _ready(self, identity: Identity, *, reset: bool) -> tuple[list[str], str]:
        uid = identity.user_id
        # The head is taken before the snapshot is read, so nothing published meanwhile is
        # missed; it may be delivered twice (in the snapshot and as an event), which clients
        # absorb by message id.
        head = await self.broker.head(uid)
        me = await self.moodle.user(uid)
        if me is None:
            raise AuthError("session_ended", "the Moodle user is gone")
        mates = await self.moodle.coursemates(uid)
        online_ids = await self.broker.online(mates)
        views = await self.store.open_views(uid, self.settings.history_size)
        reads = await self.store.peer_reads(uid, [pair.id for pair, _, _ in views])
        profiles = await self.moodle.users(online_ids | {pair.peer_of(uid) for pair, _, _ in views})
        online = sorted((profiles[i].as_dict() for i in online_ids if i in profiles),
                        key=lambda u: (str(u["name"]).lower(), u["id"]))
        conversations = [self._conversation_dict(uid, pair, state, messages, profiles, reads.get(pair.id))
                         for pair, state, messages in views]
        body = encode_event({"type": "ready", "me": me.as_dict(), "online": online,
                             "conversations": conversations, "reset": reset, "coursemates": len(mates)})
        try:
            later, cursor = await self.broker.read(uid, head)
        except CursorGone:  # the log was dropped meanwhile (user went offline): the snapshot stands
            later, cursor = [], head
        return [with_cursor(head, body)] + later, cursor

    @staticmethod
    def _conversation_dict(uid: int, pair: Pair, state: MemberState, messages: list[Message] | None,
                           profiles: dict[int, User], peer_read: Read | None = None) -> dict[str, Any]:
        peer_id = pair.peer_of(uid)
        peer = profiles.get(peer_id)
        result: dict[str, Any] = {
            "id": pair.id,
            "with": peer.as_dict() if peer else {"id": peer_id, "name": f"#{peer_id}", "picture": ""},
            "open": state.open, "minimized": state.minimized, "unread": state.unread,
        }
        if messages is not None:
            # With the messages comes how far the peer has read them (read receipts).
            result["messages"] = [m.as_dict() for m in messages]
            result["peer_read"] = peer_read.as_dict() if peer_read else None
        return result

    async def _conversation_event(self, uid: int, pair: Pair, state: MemberState,
                                  messages: list[Message] | None) -> dict[str, Any]:
        profiles = await self.moodle.users([pair.peer_of(uid)])
        reads = await self.store.peer_reads(uid, [pair.id]) if messages is not None else {}
        return {"type": "conversation",
                "conversation": self._conversation_dict(uid, pair, state, messages, profiles, reads.get(pair.id))}

    # -- commands ---------------------------------------------------------------------------

    async def handle(self, identity: Identity, command: Any) -> dict[str, Any]:
        """Run one command; always returns its reply (``ok`` true, or false with an error)."""
        ref = command.get("ref") if isinstance(command, dict) else None
        if not isinstance(ref, _SCALAR) or (isinstance(ref, str) and len(ref) > 128):
            ref = None
        self.stats["commands"] += 1
        started = time.perf_counter()
        try:
            if not isinstance(command, dict):
                raise bad_command("a command is a JSON object")
            kind = command.get("type")
            handler = self._commands.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise bad_command(f"unknown command type {kind!r}"[:200])
            if command.get("ref") is not ref:
                raise bad_command("ref must be a JSON scalar")
            for name in _IDENTITY_FIELDS:
                if name in command and command[name] != identity.user_id:
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
            return {"type": "reply", "ref": ref, "ok": True, **result}
        except GchatError as exc:
            return self.error_reply(ref, exc)
        except Exception:
            log.exception("command failed: %r", command if len(repr(command)) < 500 else "(large)")
            return self.error_reply(ref, GchatError("unavailable", "internal error; the command was not applied"))
        finally:
            if self.observer is not None:
                self.observer.command_done(command, time.perf_counter() - started)

    def error_reply(self, ref: Any, error: GchatError) -> dict[str, Any]:
        self.stats["errors"] += 1
        self.errors_by_code[error.code] = self.errors_by_code.get(error.code, 0) + 1
        return {"type": "reply", "ref": ref, "ok": False, "error": error.as_dict()}

    def _rate(self, uid: int) -> None:
        bucket = self._sends.get(uid)
        if bucket is None:
            if len(self._sends) > 50_000:
                self._sends = {k: b for k, b in self._sends.items() if not b.full}
            bucket = self._sends[uid] = TokenBucket(self.settings.send_rate, self.settings.send_burst)
        if not bucket.take():
            raise GchatError("rate_limited", "too many messages; slow down")

    async def _member_pair(self, identity: Identity, cmd: dict[str, Any]) -> Pair:
        conversation = _int_field(cmd, "conversation")
        assert conversation is not None
        pair = await self.store.pair(conversation)
        if pair is None:
            raise GchatError("not_found", "no such conversation")
        if not pair.has(identity.user_id):
            raise not_allowed("you are not a member of this conversation")
        return pair

    async def _open(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        me = identity.user_id
        peer = _int_field(cmd, "user")
        assert peer is not None
        if peer == me:
            raise not_allowed("you cannot chat with yourself")
        self._rate(me)
        if not await self.moodle.can_chat(me, peer):
            raise not_allowed("you can only chat with course-mates who have not blocked you")
        window = self._opens.get(me)
        if window is None:
            if len(self._opens) > 50_000:
                self._opens = {k: w for k, w in self._opens.items() if not w.idle}
            window = self._opens[me] = WindowCounter(self.settings.opens_per_minute, 60.0)
        if not window.allow():
            raise GchatError("rate_limited", "too many conversations opened in the last minute")
        pair, state, messages = await self.store.open(me, peer, self.settings.history_size)
        event = await self._conversation_event(me, pair, state, messages)
        await self._publish([me], event)
        return {"conversation": event["conversation"]}

    async def _send(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        me = identity.user_id
        pair = await self._member_pair(identity, cmd)
        text = normalise_text(cmd.get("text"), self.settings.max_message_length)
        client_id = cmd.get("client_id")
        if client_id is not None and (not isinstance(client_id, str) or not 0 < len(client_id) <= 64):
            raise bad_command("client_id must be a string of 1 to 64 characters")
        self._rate(me)
        peer = pair.peer_of(me)
        if not await self.moodle.can_chat(me, peer):
            raise not_allowed("you can only chat with course-mates who have not blocked you")
        # No per-conversation lock: the store writes sends one batch at a time in arrival order
        # and resolves them in that order, so each conversation's messages are published in
        # id order, several of them per batch.
        stored = await self.store.add_message(pair, me, text, client_id, self.settings.history_size)
        if not stored.duplicate:
            self.stats["messages"] += 1
        if stored.peer_opened is not None:
            await self._publish([peer], await self._conversation_event(
                peer, pair, stored.peer_opened, stored.peer_messages))
        # A retry publishes the stored message again: the first attempt may have committed
        # and then failed before it published. Clients drop the repeat by message id.
        await self._publish([me, peer], {"type": "message", "message": stored.message.as_dict()})
        if self.observer is not None and not stored.duplicate:
            self.observer.message_published(stored.message.time)
        return {"message": stored.message.as_dict()}

    async def _seen(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        pair = await self._member_pair(identity, cmd)
        message = _int_field(cmd, "message")
        assert message is not None
        state, changed, read = await self.store.record_read(pair.id, identity.user_id, message)
        if changed:
            await self._publish([identity.user_id], await self._conversation_event(identity.user_id, pair, state, None))
        if read is not None:  # read receipt for the other member
            await self._publish([pair.peer_of(identity.user_id)], {
                "type": "read", "conversation": pair.id, "user": identity.user_id, **read.as_dict()})
        return {}

    async def _close(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        pair = await self._member_pair(identity, cmd)
        state = await self.store.set_open(pair.id, identity.user_id, False)
        await self._publish([identity.user_id], await self._conversation_event(identity.user_id, pair, state, None))
        return {}

    async def _minimize(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        pair = await self._member_pair(identity, cmd)
        minimized = cmd.get("minimized")
        if not isinstance(minimized, bool):
            raise bad_command("minimized must be true or false")
        state = await self.store.set_minimized(pair.id, identity.user_id, minimized)
        await self._publish([identity.user_id], await self._conversation_event(identity.user_id, pair, state, None))
        return {}

    async def _history(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        pair = await self._member_pair(identity, cmd)
        before = _int_field(cmd, "before", required=False)
        limit = cmd.get("limit", self.settings.history_size)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise bad_command(f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}")
        messages = await self.store.history(pair.id, before, limit)
        return {"messages": [m.as_dict() for m in messages]}

    async def _typing(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        pair = await self._member_pair(identity, cmd)
        peer = pair.peer_of(identity.user_id)
        await self._publish([peer], {"type": "typing", "conversation": pair.id, "user": identity.user_id})
        return {}

    async def _ping(self, identity: Identity, cmd: dict[str, Any]) -> dict[str, Any]:
        return {}

    # -- Moodle session re-checks -----------------------------------------------------------

    async def _session_loop(self) -> None:
        while True:
            # Jitter spreads the checks of several processes over the interval.
            await asyncio.sleep(self.settings.session_check_interval * random.uniform(0.9, 1.1))
            try:
                await self.check_sessions()
            except Unavailable:
                log.warning("Moodle sessions not re-checked: database unavailable")
            except Exception:
                log.exception("Moodle session re-check failed")

    async def check_sessions(self) -> int:
        """End the clients whose Moodle session is over (one query for all); returns how many."""
        pairs = {(c.identity.user_id, c.identity.sid_hash) for cs in self._clients.values() for c in cs}
        if not pairs:
            return 0
        live = await self.moodle.live_sessions(pairs)
        ended = 0
        now = time.monotonic()
        for uid, hashed in pairs - live:
            self._ended[hashed] = now
            for client in list(self.clients_of(uid)):
                if client.identity.sid_hash == hashed:
                    client.end(AuthError("session_ended", "you have been logged out of Moodle"))
                    ended += 1
        # Tokens outlive sessions by at most token_ttl: remember ended sessions that long.
        horizon = now - self.settings.token_ttl
        self._ended = {h: t for h, t in self._ended.items() if t > horizon}
        return ended
