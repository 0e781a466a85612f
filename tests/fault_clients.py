"""Widget-like protocol clients for the fault test (tests/test_faults.py).

A :class:`Tab` behaves like one page running the widget, over one transport: it keeps its
cursor and reconnects with backoff when the connection drops, takes the ``ready`` snapshot on a
reset and fetches older messages with ``history`` when the snapshot may not reach back to what
it already had, drops events whose cursor it already processed, and shows messages once by id.
Every message it sends has a ``client_id``; a send answered ``unavailable``, ``shutting_down``,
``rate_limited``, or lost to a timeout or a dropped connection is sent again with the same
``client_id`` (with backoff) until it gets ``ok``. Nothing here sleeps for a fixed time to wait
for the server: waits are for conditions, with timeouts.

Every send attempt is written to a shared :class:`Ledger` (outcome and timing), so the test can
count attempts, acknowledgements and retries, and measure reply times during an outage.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable
from urllib.parse import quote, urlsplit

import tornado.websocket
from tornado.httpclient import HTTPRequest

from tests.support.clients import unchunk

Message = dict[str, Any]

# Reply error codes after which the same command is simply tried again later.
RETRYABLE = frozenset({"unavailable", "shutting_down", "rate_limited", "too_many_connections",
                       "timeout", "dropped", "not_connected"})
SEND_TIMEOUT = 8.0  # seconds a client waits for one reply before it counts the attempt as lost
POLL_TIMEOUT = 90.0  # protocol: a long-poll client timeout of at least 90 s
MESSAGE_FIELDS = ("id", "conversation", "from", "text", "client_id")


def now() -> float:
    return time.monotonic()


class Failed(Exception):
    """A command or request that got no answer: ``kind`` is ``timeout``, ``dropped`` or ``not_connected``."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


async def http_request(base_url: str, method: str, path: str, *, headers: dict[str, str] | None = None,
                       body: str | None = None, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """One HTTP/1.1 request on its own connection (``Connection: close``), as a browser tab whose
    server may vanish at any moment sees it: a refused, reset or cut-short answer is ``dropped``."""
    parts = urlsplit(base_url)

    async def go() -> tuple[int, dict[str, Any]]:
        try:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        except OSError as exc:
            raise Failed("dropped", f"connect: {exc}") from None
        try:
            data = body.encode() if body is not None else b""
            lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
                     f"Content-Length: {len(data)}"]
            lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
            raw = await reader.read()
        except OSError as exc:
            raise Failed("dropped", str(exc)) from None
        finally:
            writer.close()
        head, sep, payload = raw.partition(b"\r\n\r\n")
        if not sep:
            raise Failed("dropped", f"no complete answer ({len(raw)} bytes)")
        head_lines = head.decode("latin-1").split("\r\n")
        status = int(head_lines[0].split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head_lines[1:])}
        if "chunked" in fields.get("transfer-encoding", "").lower():
            payload = unchunk(payload)
        elif "content-length" in fields and len(payload) != int(fields["content-length"]):
            raise Failed("dropped", "the answer was cut short")
        try:
            return status, json.loads(payload)
        except ValueError:
            raise Failed("dropped", f"not JSON: {payload[:80]!r}") from None

    try:
        return await asyncio.wait_for(go(), timeout)
    except TimeoutError:
        raise Failed("timeout", f"{method} {path}") from None


class Backoff:
    """Exponential backoff with "equal jitter", like the widget's."""

    def __init__(self, base: float = 0.2, cap: float = 2.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(self.attempt, 10))
        self.attempt += 1
        return ceiling * (0.5 + random.random() * 0.5)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class Attempt:
    tab: str
    client_id: str
    started: float
    ended: float
    outcome: str  # "ok" or an error code or a Failed kind

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Outgoing:
    client_id: str
    sender: int
    conversation: int
    text: str
    tab: str
    queued_at: float = field(default_factory=lambda: now())
    outcomes: list[str] = field(default_factory=list)


class Ledger:
    """Every message queued, every send attempt and every acknowledgement, across all tabs."""

    def __init__(self) -> None:
        self.messages: dict[str, Outgoing] = {}
        self.attempts: list[Attempt] = []
        self.acked: dict[str, Message] = {}  # client_id -> the stored message from the ok reply
        self.refused: dict[str, str] = {}  # client_id -> a non-retryable error code (must stay empty)
        self.gave_up: set[str] = set()
        self.anomalies: list[str] = []
        self.not_connected = 0  # a send that waited for a connection that was not there (not sent)

    def attempt(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        self.messages[attempt.client_id].outcomes.append(attempt.outcome)

    def acked_in(self, conversation: int) -> set[int]:
        return {m["id"] for m in self.acked.values() if m["conversation"] == conversation}


class Tab:
    """One page with the widget: a connection loop, a sender loop and what it shows."""

    transport = "?"

    def __init__(self, name: str, user_id: int, sid: str, base_url: str, ledger: Ledger, *,
                 history_size: int, prefix: str = "/gchat") -> None:
        self.name = name
        self.user_id = user_id
        self.sid = sid
        self.base_url = base_url
        self.prefix = prefix
        self.ledger = ledger
        self.history_size = history_size
        self.token: str | None = None
        self.conversation: int | None = None
        self.closing = False
        # What the tab shows: messages by id (first copy), and the order ids first arrived in.
        self.seen: dict[int, Message] = {}
        self.arrival: list[int] = []
        self.first_source: dict[int, str] = {}
        self.arrived_at: dict[int, float] = {}
        self.by_sender_client_id: dict[tuple[int, str | None], int] = {}
        self.app_duplicates = 0  # a second id for one (sender, client_id): shown twice
        self.raw_arrivals = 0
        self.raw_repeats = 0  # arrivals of an id already shown (snapshot overlap, replays)
        self.sources: collections.Counter[str] = collections.Counter()
        self.cursor_repeats = 0
        self.readies = 0
        self.resets = 0
        self.history_fetches = 0
        self.drops: list[tuple[float, str]] = []  # (when, why) a connection or poll failed
        self.typing_at: list[float] = []
        self.bootstraps = 0
        self.fatal: str | None = None
        self._epoch: str | None = None
        self._seq = -1
        self.cursor: str | None = None
        self._outbox: collections.deque[str] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._changed = asyncio.Event()
        self.connected = asyncio.Event()
        self.give_up_at = float("inf")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._counter = 0  # messages written
        self._refs = 0  # commands sent

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self.renew_token()
        self._spawn(self._connection_loop())
        self._spawn(self._sender_loop())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.ledger.anomalies.append(f"{self.name}: task crashed: {task.exception()!r}")

    async def close(self) -> None:
        self.closing = True
        await self._disconnect()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _disconnect(self) -> None:
        pass

    async def renew_token(self) -> None:
        """GET api/bootstrap with the Moodle cookie until it answers (it needs the database)."""
        backoff = Backoff()
        while not self.closing:
            try:
                status, body = await http_request(self.base_url, "GET", f"{self.prefix}/api/bootstrap",
                                                  headers={"Cookie": f"MoodleSession={self.sid}"}, timeout=10)
            except Failed:
                status, body = 0, {}
            if status == 200:
                self.token = body["token"]
                self.bootstraps += 1
                return
            if status == 401:
                self.fatal = f"bootstrap refused: {body}"
                return
            await asyncio.sleep(backoff.next())

    # -- what the tab shows ------------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        cursor = event.get("cursor")
        if isinstance(cursor, str):
            epoch, _, seq_text = cursor.partition(":")
            seq = int(seq_text)
            if epoch == self._epoch and seq <= self._seq:
                self.cursor_repeats += 1
                return
            if epoch != self._epoch and event.get("type") != "ready":
                # Events of a new log must start with a snapshot: anything else is a silent gap.
                self.ledger.anomalies.append(f"{self.name}: {event.get('type')} of a new epoch without ready")
            self._epoch, self._seq, self.cursor = epoch, seq, cursor
        kind = event.get("type")
        if kind == "ready":
            self._on_ready(event)
        elif kind == "message":
            self._show(event["message"], "event")
        elif kind == "conversation":
            for message in event["conversation"].get("messages") or ():
                self._show(message, "conversation")
        elif kind == "typing":
            self.typing_at.append(now())
        self._changed.set()

    def _on_ready(self, event: dict[str, Any]) -> None:
        self.readies += 1
        if event.get("reset"):
            self.resets += 1
        for conversation in event.get("conversations") or ():
            messages = conversation.get("messages") or []
            known = max((i for i, m in self.seen.items() if m["conversation"] == conversation["id"]), default=0)
            for message in messages:
                self._show(message, "snapshot")
            if messages and len(messages) >= self.history_size and messages[0]["id"] > known:
                # The snapshot holds the last history_size messages only: what came between the
                # last one this tab showed and the snapshot's oldest is fetched with history.
                self._spawn(self._backfill(conversation["id"], messages[0]["id"], known))

    def _show(self, message: Message, source: str) -> None:
        self.raw_arrivals += 1
        self.sources[source] += 1
        mid = message["id"]
        first = self.seen.get(mid)
        if first is not None:
            self.raw_repeats += 1
            if any(first.get(k) != message.get(k) for k in MESSAGE_FIELDS):
                self.ledger.anomalies.append(f"{self.name}: message {mid} changed: {first} / {message}")
            return
        self.seen[mid] = message
        self.arrival.append(mid)
        self.first_source[mid] = source
        self.arrived_at[mid] = now()
        key = (message["from"], message.get("client_id"))
        if key[1] is not None:
            if key in self.by_sender_client_id:
                self.app_duplicates += 1
            else:
                self.by_sender_client_id[key] = mid

    async def _backfill(self, conversation: int, before: int, floor: int) -> None:
        backoff = Backoff()
        while not self.closing:
            try:
                reply = await self.command({"type": "history", "conversation": conversation, "before": before,
                                            "limit": 50}, SEND_TIMEOUT)
            except Failed:
                await asyncio.sleep(backoff.next())
                continue
            if not reply.get("ok"):
                if reply["error"]["code"] in RETRYABLE:
                    await asyncio.sleep(backoff.next())
                    continue
                self.ledger.anomalies.append(f"{self.name}: history refused: {reply}")
                return
            self.history_fetches += 1
            messages = reply["messages"]
            for message in messages:
                self._show(message, "history")
            if len(messages) < 50 or messages[0]["id"] <= floor:
                return
            before = messages[0]["id"]

    def shows_all(self, ids: set[int]) -> bool:
        return ids <= self.seen.keys()

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = now() + timeout
        while not condition():
            left = deadline - now()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except TimeoutError:
                pass
        return True

    # -- sending -----------------------------------------------------------------------------

    def queue_message(self, text: str) -> str:
        assert self.conversation is not None
        self._counter += 1
        client_id = f"{self.name}-{self._counter}-{secrets.token_hex(4)}"
        self.ledger.messages[client_id] = Outgoing(client_id, self.user_id, self.conversation, text, self.name)
        self._outbox.append(client_id)
        self._outbox_ready.set()
        return client_id

    @property
    def pending(self) -> int:
        return len(self._outbox)

    async def _sender_loop(self) -> None:
        backoff = Backoff()
        while not self.closing:
            if not self._outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            client_id = self._outbox[0]
            if now() > self.give_up_at:
                self.ledger.gave_up.update(self._outbox)
                self._outbox.clear()
                continue
            out = self.ledger.messages[client_id]
            started = now()
            try:
                reply = await self.command({"type": "send", "conversation": out.conversation, "text": out.text,
                                            "client_id": client_id}, SEND_TIMEOUT)
                outcome = "ok" if reply.get("ok") else reply["error"]["code"]
            except Failed as exc:
                if exc.kind == "not_connected":
                    self.ledger.not_connected += 1
                    await asyncio.sleep(backoff.next())
                    continue
                reply, outcome = {}, exc.kind
            self.ledger.attempt(Attempt(self.name, client_id, started, now(), outcome))
            if outcome == "ok":
                message = reply["message"]
                if (message.get("client_id") != client_id or message.get("from") != self.user_id
                        or message.get("conversation") != out.conversation):
                    self.ledger.anomalies.append(f"{self.name}: reply to {client_id} is another message: {message}")
                self.ledger.acked[client_id] = message
                self._outbox.popleft()
                backoff.reset()
            elif outcome in RETRYABLE:
                await asyncio.sleep(backoff.next())
            else:
                self.ledger.refused[client_id] = outcome
                self._outbox.popleft()

    async def command(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        raise NotImplementedError

    async def _connection_loop(self) -> None:
        raise NotImplementedError

    def _after_drop(self, why: str) -> str | None:
        """Record a failed connection; returns what to do: ``renew``, ``stop`` or None."""
        self.drops.append((now(), why))
        if "session_ended" in why:
            self.fatal = why
            return "stop"
        if "bad_token" in why or "token_expired" in why:
            return "renew"
        return None


class WSTab(Tab):
    transport = "websocket"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn: tornado.websocket.WebSocketClientConnection | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def _connection_loop(self) -> None:
        backoff = Backoff()
        while not self.closing and not self.fatal:
            url = self.base_url.replace("http", "ws", 1) + f"{self.prefix}/ws?token={quote(self.token or '')}"
            if self.cursor:
                url += f"&cursor={quote(self.cursor)}"
            try:
                conn = await tornado.websocket.websocket_connect(HTTPRequest(url, connect_timeout=3, request_timeout=5))
            except Exception as exc:  # refused, reset, 5xx during start-up or shutdown
                self.drops.append((now(), f"connect: {type(exc).__name__}"))
                await asyncio.sleep(backoff.next())
                continue
            self.conn = conn
            self.connected.set()
            opened = now()
            error_code = ""
            while True:
                frame = await conn.read_message()
                if frame is None:
                    break
                data = json.loads(frame)
                kind = data.get("type")
                if kind == "reply":
                    future = self._replies.pop(str(data.get("ref")), None)
                    if future is not None and not future.done():
                        future.set_result(data)
                elif kind == "error":
                    error_code = data.get("code", "")
                else:
                    self.on_event(data)
            self.conn = None
            self.connected.clear()
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(Failed("dropped", "the WebSocket closed"))
            self._replies.clear()
            if self.closing:
                return
            todo = self._after_drop(f"closed {conn.close_code} {error_code}".strip())
            if todo == "stop":
                return
            if todo == "renew":
                await self.renew_token()
            if now() - opened > 2:
                backoff.reset()
            await asyncio.sleep(backoff.next())

    async def command(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self.conn is None:
            try:
                await asyncio.wait_for(self.connected.wait(), 1.0)
            except TimeoutError:
                raise Failed("not_connected") from None
        conn = self.conn
        if conn is None:
            raise Failed("not_connected")
        self._refs += 1
        ref = f"{self.name}-r{self._refs}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[ref] = future
        try:
            await conn.write_message(json.dumps(dict(command, ref=ref)))
            return await asyncio.wait_for(future, timeout)
        except tornado.websocket.WebSocketClosedError:
            raise Failed("dropped", "the WebSocket closed") from None
        except TimeoutError:
            raise Failed("timeout", command["type"]) from None
        finally:
            self._replies.pop(ref, None)

    async def _disconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()


class PollTab(Tab):
    transport = "longpoll"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tab_id = secrets.token_hex(6)
        self.polls = 0

    async def _connection_loop(self) -> None:
        backoff = Backoff()
        while not self.closing and not self.fatal:
            path = f"{self.prefix}/api/poll?tab={self.tab_id}"
            if self.cursor:
                path += f"&cursor={quote(self.cursor)}"
            try:
                status, body = await http_request(self.base_url, "GET", path,
                                                  headers={"X-Gchat-Token": self.token or ""}, timeout=POLL_TIMEOUT)
            except Failed as exc:
                self.connected.clear()
                self.drops.append((now(), f"poll {exc}"))
                await asyncio.sleep(backoff.next())
                continue
            if status == 200:
                self.polls += 1
                self.connected.set()
                for event in body["events"]:
                    self.on_event(event)
                if self._epoch is not None and body["cursor"].partition(":")[0] == self._epoch:
                    self.cursor = body["cursor"]
                backoff.reset()
                continue
            self.connected.clear()
            code = (body.get("error") or {}).get("code", "?")
            todo = self._after_drop(f"poll {status} {code}")
            if todo == "stop":
                return
            if todo == "renew":
                await self.renew_token()
            await asyncio.sleep(backoff.next())

    async def command(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._refs += 1
        body = json.dumps(dict(command, ref=f"{self.name}-r{self._refs}"))
        status, reply = await http_request(self.base_url, "POST", f"{self.prefix}/api/send",
                                           headers={"X-Gchat-Token": self.token or "",
                                                    "Content-Type": "application/json"},
                                           body=body, timeout=timeout)
        if "type" not in reply:  # an HTTP-level error body: {"error": {...}}
            code = (reply.get("error") or {}).get("code", "?")
            if code in ("bad_token", "token_expired"):
                self._spawn(self.renew_token())
            return {"type": "reply", "ok": False, "error": {"code": code, "message": f"HTTP {status}"}}
        return reply
