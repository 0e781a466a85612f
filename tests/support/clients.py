"""Protocol clients for tests: one over WebSocket, one over long-poll, with the same interface.

Both keep every event they receive (in order) and the last cursor; ``command`` sends one command
and returns its reply; ``wait_for`` awaits an event matching a predicate (no sleeps).
:func:`connect` is the one way a test logs a user in and connects them; :class:`People` keeps
a test's clients and closes them when it ends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import struct
from typing import Any, Protocol
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

Event = dict[str, Any]


async def bootstrap(base_url: str, sid: str | None, prefix: str = "/gchat",
                    cookie: str = "MoodleSession") -> tuple[int, dict[str, Any]]:
    headers = {"Cookie": f"{cookie}={sid}"} if sid else {}
    client = AsyncHTTPClient()
    try:
        response = await client.fetch(f"{base_url}{prefix}/api/bootstrap", headers=headers)
        return response.code, json.loads(response.body)
    except HTTPClientError as exc:
        assert exc.response is not None
        return exc.code, json.loads(exc.response.body)


def unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


class BaseClient:
    transport = "?"

    def __init__(self, base_url: str, token: str, prefix: str = "/gchat") -> None:
        self.base_url = base_url
        self.prefix = prefix
        self.token = token
        self.events: list[Event] = []
        self.cursor: str | None = None
        self._changed = asyncio.Condition()
        self._refs = 0
        self.closed_error: Event | None = None

    async def _got(self, event: Event) -> None:
        if "cursor" in event:
            self.cursor = event["cursor"]
        if event.get("type") == "error":
            self.closed_error = event
        if event.get("type") == "presence_batch":
            # As the widget does (docs/protocol.md): each change as if it were a presence event
            # (news of this user itself included, which a client ignores).
            self.events += [{"cursor": event.get("cursor"), "type": "presence", **change, "batched": True}
                            for change in event["changes"]]
        else:
            self.events.append(event)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 5.0, start: int = 0) -> Event:
        async def find() -> Event:
            seen = start
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                async with self._changed:
                    await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)

    async def wait_type(self, kind: str, timeout: float = 5.0, **fields: Any) -> Event:
        return await self.wait_for(lambda e: e.get("type") == kind and all(e.get(k) == v for k, v in fields.items()),
                                   timeout)

    def of_type(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.get("type") == kind]

    def messages(self) -> list[dict[str, Any]]:
        return [e["message"] for e in self.of_type("message")]

    async def command(self, kind: str, **fields: Any) -> dict[str, Any]:
        self._refs += 1
        return await self.raw({"type": kind, "ref": self._refs, **fields})

    async def raw(self, command: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def send_text(self, conversation: int, text: str, client_id: str | None = None) -> dict[str, Any]:
        return await self.command("send", conversation=conversation, text=text,
                                  client_id=client_id or secrets.token_hex(8))


class WSClient(BaseClient):
    transport = "websocket"

    async def connect(self, cursor: str | None = None, origin: str | None = None) -> WSClient:
        url = self.base_url.replace("http", "ws", 1) + f"{self.prefix}/ws?token={quote(self.token)}"
        if cursor:
            url += f"&cursor={quote(cursor)}"
        headers = {"Origin": origin} if origin else {}
        self.conn = await websocket_connect(HTTPRequest(url, headers=headers))
        self.close_code: int | None = None
        self._replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        while True:
            frame = await self.conn.read_message()
            if frame is None:
                self.close_code = self.conn.close_code
                async with self._changed:
                    self._changed.notify_all()
                return
            data = json.loads(frame)
            if data.get("type") == "reply":
                future = self._replies.pop(data.get("ref"), None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                await self._got(data)

    async def raw(self, command: Any) -> dict[str, Any]:
        ref = command.get("ref") if isinstance(command, dict) else None
        future = asyncio.get_running_loop().create_future()
        self._replies[ref] = future
        await self.conn.write_message(json.dumps(command) if not isinstance(command, (str, bytes)) else command)
        return await asyncio.wait_for(future, 10)

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        await asyncio.wait_for(self._reader, timeout)
        return self.close_code

    async def close(self) -> None:
        self.conn.close()
        try:
            await asyncio.wait_for(self._reader, 5)
        except (TimeoutError, Exception):
            pass


class PollClient(BaseClient):
    transport = "longpoll"

    async def connect(self, cursor: str | None = None) -> PollClient:
        self.tab = secrets.token_hex(6)
        self.cursor = cursor
        self.http = AsyncHTTPClient(force_instance=True)
        self.status: int | None = None
        self.error: dict[str, Any] | None = None
        self._stop = False
        self._loop_task = asyncio.get_running_loop().create_task(self._poll_loop())
        return self

    async def poll_once(self) -> tuple[int, dict[str, Any]]:
        """One GET api/poll on its own TCP connection, which closing the page (cancelling this
        coroutine) really closes, as a browser does (Tornado's HTTP client would keep it)."""
        path = f"{self.prefix}/api/poll?tab={self.tab}"
        if self.cursor:
            path += f"&cursor={quote(self.cursor)}"
        parts = urlsplit(self.base_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nX-Gchat-Token: {self.token}\r\n"
                          "Connection: close\r\n\r\n").encode())
            raw = await reader.read()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if b"chunked" in head.lower():
            body = unchunk(body)
        return status, json.loads(body)

    async def _poll_loop(self) -> None:
        while not self._stop:
            status, body = await self.poll_once()
            if status != 200:
                self.status, self.error = status, body.get("error")
                async with self._changed:
                    self._changed.notify_all()
                return
            for event in body["events"]:
                await self._got(event)
            self.cursor = body["cursor"]

    async def raw(self, command: Any) -> dict[str, Any]:
        body = command if isinstance(command, (str, bytes)) else json.dumps(command)
        try:
            response = await self.http.fetch(f"{self.base_url}{self.prefix}/api/send", method="POST", body=body,
                                             headers={"X-Gchat-Token": self.token,
                                                      "Content-Type": "application/json"})
            reply: dict[str, Any] = json.loads(response.body)
        except HTTPClientError as exc:
            assert exc.response is not None
            reply = json.loads(exc.response.body)
            reply["http_status"] = exc.code
        return reply

    async def close(self) -> None:
        self._stop = True
        self._loop_task.cancel()
        try:
            await self._loop_task
        except (asyncio.CancelledError, Exception):
            pass
        self.http.close()


CLIENTS = {"websocket": WSClient, "longpoll": PollClient}


class RawWebSocket:
    """A WebSocket spoken by hand, frame by frame: for what a well-behaved client library never
    does (invalid UTF-8, a peer that never answers a ping)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, base_url: str, token: str) -> RawWebSocket:
        parts = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /gchat/ws?token={quote(token)} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert b" 101 " in head.split(b"\r\n")[0], head
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes) -> None:
        """One final frame, masked as a client must (payloads under 126 bytes)."""
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def receive(self, timeout: float = 10) -> tuple[int, bytes]:
        """The next frame's opcode and payload; IncompleteReadError when the server dropped the
        connection without a close frame."""
        first = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        length = first[1] & 0x7F
        if length == 126:
            length = struct.unpack(">H", await self.reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", await self.reader.readexactly(8))[0]
        return first[0] & 0x0F, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


class MoodleLogin(Protocol):
    def login(self, user_id: int) -> str:
        """A valid Moodle session for the user; returns its sid."""


async def connect(base_url: str, site: MoodleLogin, user: int, transport: str | type[BaseClient] = "websocket",
                  *, prefix: str = "/gchat", **options: Any) -> Any:
    """Log ``user`` in to Moodle, bootstrap, connect over ``transport`` (``websocket``,
    ``longpoll`` or a client class) with ``options`` (``cursor``, ``origin``), and return the
    client once its ``ready`` arrived."""
    code, boot = await bootstrap(base_url, site.login(user), prefix)
    assert code == 200, boot
    kind: Any = CLIENTS[transport] if isinstance(transport, str) else transport
    client = await kind(base_url, boot["token"], prefix).connect(**options)
    await client.wait_type("ready")
    return client


async def websocket_meets_longpoll(base_url: str, ana: int, ana_sid: str, ben: int, ben_sid: str
                                   ) -> tuple[Any, Any, dict[str, Any]]:
    """Ana connects over WebSocket from her Moodle session and sees nobody online; Ben connects
    over long-poll from his and sees Ana; Ana hears Ben come online. Returns their clients and
    Ana's bootstrap answer."""
    code, boot = await bootstrap(base_url, ana_sid)
    assert code == 200 and boot["user"]["id"] == ana, boot
    a = await WSClient(base_url, boot["token"]).connect()
    ready = await a.wait_type("ready")
    assert ready["me"]["id"] == ana and ready["online"] == []
    code, ben_boot = await bootstrap(base_url, ben_sid)
    assert code == 200 and ben_boot["user"]["id"] == ben, ben_boot
    b = await PollClient(base_url, ben_boot["token"]).connect()
    ready = await b.wait_type("ready")
    assert [u["id"] for u in ready["online"]] == [ana]
    online = await a.wait_type("presence", status="online")
    assert online["user"]["id"] == ben and online["user"]["name"] == "Ben Tester"
    return a, b, boot


async def send_and_receive(sender: Any, receiver: Any, conversation: int, texts: list[tuple[str, str]]
                           ) -> list[dict[str, Any]]:
    """``sender`` sends each (text, client_id); ``receiver`` gets each message as stored. The
    stored messages, in order."""
    sent = [(await sender.send_text(conversation, text, client_id=client_id))["message"] for text, client_id in texts]
    for message in sent:
        got = await receiver.wait_for(lambda e, m=message: e.get("type") == "message" and e["message"]["id"] == m["id"])
        assert got["message"] == message
    return sent


class People:
    """The people of one test on one server: ``await people.connect(ana, "longpoll")``, and
    ``await people.chat(first, second)`` for the usual set-up of two course-mates, connected,
    with a conversation open. Every client is closed when the test ends."""

    def __init__(self, base_url: str, site: Any) -> None:
        self.base_url = base_url
        self.site = site
        self.clients: list[BaseClient] = []

    def track(self, client: BaseClient) -> BaseClient:
        self.clients.append(client)
        return client

    async def connect(self, user: int, transport: str | type[BaseClient] = "websocket", **options: Any) -> Any:
        return self.track(await connect(self.base_url, self.site, user, transport, **options))

    async def chat(self, first: str = "websocket", second: str = "websocket",
                   names: tuple[str, str] = ("Ana", "Ben")) -> tuple[int, int, Any, Any, int]:
        """Two course-mates connected (over ``first`` and ``second``), the first having opened
        a conversation with the second: (first's id, second's id, their clients, conversation)."""
        one, two = self.site.classmates(*names)
        a = await self.connect(one, first)
        b = await self.connect(two, second)
        conversation = (await a.command("open", user=two))["conversation"]["id"]
        return one, two, a, b, conversation

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
