"""WebSocket transport: ``GET ws?token=T[&cursor=C]``.

The handshake checks ``Origin`` (403 for a page of another site). A bad or expired token gets an
``error`` event and close code 1008. Events are pushed from the user's event log as it grows;
each command frame gets one reply frame. A bad command never closes the connection. A client
whose unsent output passes ``max_output_bytes`` (it stopped reading) is cut off instead of
growing the server's memory. A text frame that is not UTF-8 closes the connection with 1007, as
RFC 6455 §8.1 requires (Tornado alone drops it without a close frame).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import tornado.httputil
import tornado.iostream
import tornado.websocket

from gchat.auth import Identity
from gchat.config import Settings
from gchat.errors import (WS_CLOSE_GOING_AWAY, WS_CLOSE_INVALID_DATA, WS_CLOSE_POLICY, WS_CLOSE_SERVER_ERROR,
                          WS_CLOSE_SESSION_ENDED, WS_CLOSE_TRY_AGAIN, GchatError)
from gchat.router import Client, Router
from gchat.transports.base import OriginPolicy, forget_parsed_request, query_text
from gchat.transports.heartbeat import Pinger
from gchat.wire import dumps, error_event, loads

log = logging.getLogger("gchat.websocket")

_CLOSE_CODES = {
    "session_ended": WS_CLOSE_SESSION_ENDED,
    "shutting_down": WS_CLOSE_GOING_AWAY,
    "too_many_connections": WS_CLOSE_TRY_AGAIN,
    "unavailable": WS_CLOSE_TRY_AGAIN,
}


class WebSocketClient(Client):
    transport = "websocket"
    __slots__ = ("handler", "cursor", "_pumping", "_again")

    def __init__(self, handler: WebSocketHandler, identity: Identity, address: str) -> None:
        super().__init__(identity, address)
        self.handler = handler
        self.cursor: str | None = None
        # True until start(): a wake-up before the first catch-up only marks "read again".
        self._pumping = True
        self._again = False

    def wake(self) -> None:
        if self._pumping:
            self._again = True
        elif self.cursor is not None and self._deliver_now(self.cursor):
            return
        else:
            self._pumping = True
            self.handler.router.spawn(self._pump())

    def _deliver_now(self, cursor: str) -> bool:
        """The common case, a client that is caught up and gets a new event: written at once,
        without a task (the memory broker). False when it needs the asynchronous way."""
        found = self.handler.router.catch_up_now(self.identity, cursor)
        if found is None:
            return False
        events, self.cursor = found
        self._write(events)
        return True

    def _write(self, events: list[str]) -> bool:
        """Write ``events`` in order; False when the connection is gone (the rest are dropped)."""
        return all(self.handler.send(event) for event in events)

    def start(self, cursor: str | None) -> None:
        self.cursor = cursor
        self.handler.router.spawn(self._pump())

    async def _pump(self) -> None:
        router = self.handler.router
        try:
            while True:
                self._again = False
                events, self.cursor = await router.catch_up(self.identity, self.cursor)
                if not self._write(events):
                    return
                if not self._again:
                    return
        except GchatError as exc:
            self.handler.fail(exc, _CLOSE_CODES.get(exc.code, WS_CLOSE_POLICY))
        except Exception:
            log.exception("delivery to a WebSocket of user %s failed", self.user_id)
            self.handler.fail(GchatError("unavailable", "internal error; reconnect"), WS_CLOSE_SERVER_ERROR)
        finally:
            self._pumping = False

    def end(self, error: GchatError) -> None:
        self.handler.fail(error, _CLOSE_CODES.get(error.code, WS_CLOSE_POLICY))


class StrictUtf8Protocol(tornado.websocket.WebSocketProtocol13):
    """RFC 6455 §8.1: a text frame that is not UTF-8 fails the connection with 1007. Tornado's
    own protocol drops it without a close frame (and so without a reason a client could log)."""

    def _handle_message(self, opcode: int, data: bytes) -> Any:
        if opcode == 0x1 and not self.client_terminated:
            try:
                data.decode("utf-8")  # compression is off (get_compression_options): the data as sent
            except UnicodeDecodeError:
                self.close(WS_CLOSE_INVALID_DATA, "text frames must be UTF-8")
                return None
        return super()._handle_message(opcode, data)


class WebSocketHandler(tornado.websocket.WebSocketHandler):
    def initialize(self, router: Router, settings: Settings, origins: OriginPolicy, pinger: Pinger | None) -> None:
        self.router = router
        self.gchat_settings = settings
        self.origins = origins
        self.pinger = pinger
        self.client: WebSocketClient | None = None
        self.ping_slot = 0
        self._ponged = True  # no ping outstanding

    def check_origin(self, origin: str) -> bool:
        return self.origins.allows(origin, self.request.host)

    def get_compression_options(self) -> None:
        return None  # chat frames are small; compression would cost CPU and memory per socket

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        protocol = super().get_websocket_protocol()
        if not isinstance(protocol, tornado.websocket.WebSocketProtocol13):
            return protocol  # None: a version Tornado does not speak (it answers 426)
        return StrictUtf8Protocol(self, False, protocol.params)

    async def open(self, *args: Any) -> None:
        # Small frames must leave at once: with Nagle's algorithm on (Tornado's default) a reply
        # or event can wait for the peer's delayed ACK, tens of milliseconds.
        self.set_nodelay(True)
        stream = self.ws_connection.stream if self.ws_connection else None
        if stream is not None:
            stream.max_write_buffer_size = self.gchat_settings.max_output_bytes
        try:
            identity = self.router.authenticate(query_text(self.request, "token"), remember=False)
            await self.router.admit(identity)  # no query while the session watch keeps it fresh
            client = WebSocketClient(self, identity, self.request.remote_ip or "?")
            await self.router.attach(client)
        except GchatError as exc:
            self.fail(exc, _CLOSE_CODES.get(exc.code, WS_CLOSE_POLICY))
            return
        self.client = client
        client.start(query_text(self.request, "cursor") or None)
        self._forget_handshake()
        if self.pinger is not None:  # last: once open() has returned, Tornado calls on_close, which takes it off
            self.pinger.add(self)

    def _forget_handshake(self) -> None:
        """What Tornado keeps of the handshake for the life of the socket and never reads again —
        the request's header objects, its query with the token (parsed and as text), the headers
        of the 101 answer, the finished HTTP/1 connection objects — is let go: about 3 KB per
        idle connection. The access log line was written with the 101; what an error log of this
        socket shows later is its path."""
        request = self.request
        forget_parsed_request(request)
        request.uri = request.path
        request.query = ""
        self._headers = tornado.httputil.HTTPHeaders()
        request.connection = None
        request.server_connection = None

    async def on_message(self, message: str | bytes) -> None:
        client = self.client
        if client is None:
            return
        if isinstance(message, bytes):
            reply = self.router.error_reply(None, GchatError("bad_json", "send text frames with JSON"))
        elif len(message) > self.gchat_settings.max_frame_bytes:
            reply = self.router.error_reply(None, GchatError(
                "too_long", f"a frame may have at most {self.gchat_settings.max_frame_bytes} bytes"))
        else:
            try:
                command = loads(message)
            except ValueError as exc:
                reply = self.router.error_reply(None, GchatError("bad_json", f"the frame is not valid JSON: {exc}"))
            else:
                reply = await self.router.handle(client.identity, command)
        self.send(dumps(reply))

    def send(self, text: str) -> bool:
        """Write one frame; False when the connection is gone or was cut off for not reading."""
        return self._write(self.write_message, text)

    def heartbeat(self) -> bool:
        """The pinger's visit, once per ``ws_ping_interval``: a peer that did not answer the last
        ping is closed (as Tornado's own pings would: code 1000, "ping timed out") and False
        answered; the others are pinged. A socket already closing is left alone: it was not
        closed for a ping, and on_close takes it off the ring."""
        if self._closing():
            return True
        if not self._ponged:
            log.debug("user %s: WebSocket closed, no pong in %g s", self.client and self.client.user_id,
                      self.gchat_settings.ws_ping_interval)
            self.close(reason="ping timed out")
            return False
        self._ponged = False
        self._write(self.ping)
        return True

    def _closing(self) -> bool:
        return self.ws_connection is None or self.ws_connection.is_closing()

    def on_pong(self, data: bytes) -> None:
        self._ponged = True

    def _write(self, write: Callable[..., object], *args: Any) -> bool:
        """Run one frame's ``write(*args)`` (a message or a ping) on a socket that is still open;
        a client over ``max_output_bytes`` unread is cut off. False when nothing was written."""
        if self._closing():
            return False
        try:
            write(*args)
            return True
        except tornado.websocket.WebSocketClosedError:
            return False
        except tornado.iostream.StreamBufferFullError:
            log.warning("user %s: WebSocket cut off, over %d bytes unread", self.client and self.client.user_id,
                        self.gchat_settings.max_output_bytes)
            self.ws_connection.stream.close()  # type: ignore[union-attr]
            return False

    def fail(self, error: GchatError, close_code: int) -> None:
        """Tell the client why (an ``error`` event, no cursor) and close the socket."""
        self.send(error_event(error))
        self.close(close_code, error.code)

    def on_close(self) -> None:
        if self.pinger is not None:
            self.pinger.discard(self)
        client, self.client = self.client, None
        if client is not None:
            self.router.spawn(self.router.detach(client))
