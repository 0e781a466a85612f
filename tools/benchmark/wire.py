"""Minimal, fast client-side wire code for the load generator: a WebSocket client and a
keep-alive HTTP/1.1 client, both plain ``asyncio.Protocol`` objects.

They are deliberately bare so that the generator costs less CPU per message than any server it
drives (a generator-bound result must never pass for a server limit):

* client frames use the all-zero masking key. RFC 6455 requires client frames to be masked but
  lets the client pick the key; the server still runs its unmasking code, only the generator
  skips the XOR. No extensions are offered (no permessage-deflate), for every target alike.
* text frames are handed over as ``bytes``; nothing is decoded that the caller does not need.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable

ZERO_MASK = b"\x00\x00\x00\x00"
SOURCES = 64  # loopback source addresses to spread client connections over
_next_source = [0]


def source_for(host: str) -> tuple[str, int] | None:
    """A local address for the next connection to ``host``: on loopback, one of 127.0.0.2-65 in
    turn, so that tens of thousands of connections (and the TIME_WAIT sockets of closed ones)
    do not exhaust the ~28,000 ephemeral ports of a single address pair."""
    if host != "127.0.0.1":
        return None
    _next_source[0] += 1
    return (f"127.0.0.{2 + _next_source[0] % SOURCES}", 0)


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0xFF)) + n.to_bytes(8, "big")
    return head + ZERO_MASK + payload


class WSProtocol(asyncio.Protocol):
    """One WebSocket connection. ``on_text(bytes)`` gets every text (or binary) message;
    ``on_ping()`` is told about each protocol ping (answered here); ``on_close()`` once."""

    def __init__(self, host: str, port: int, path: str, on_text: Callable[[bytes], None],
                 on_close: Callable[[], None] | None = None, on_ping: Callable[[], None] | None = None) -> None:
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.on_text = on_text
        self.on_close = on_close
        self.on_ping = on_ping
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.closed = False
        self.close_code: int | None = None
        self._buf = b""
        self._fragments: list[bytes] | None = None

    # asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during the handshake: {exc}"))
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback()

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buf = data
                return
            status = data[:data.find(b"\r\n")]
            if b" 101 " not in status + b" ":
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(f"handshake refused: {status.decode(errors='replace')}"))
                self.transport.close()  # type: ignore[union-attr]
                return
            self.upgraded = True
            self.opened.set_result(True)
            data = data[end + 4:]
        pos = 0
        n = len(data)
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                head = 10
            if b1 & 0x80:  # servers never mask; tolerate it anyway
                head += 4
            end = pos + head + length
            if end > n:
                break
            payload = data[pos + head:end]
            if b1 & 0x80:
                mask = data[pos + head - 4:pos + head]
                payload = bytes(c ^ mask[i & 3] for i, c in enumerate(payload))
            pos = end
            opcode = b0 & 0x0F
            if opcode == 0x1 or opcode == 0x2:
                if b0 & 0x80:
                    self.on_text(payload)
                else:
                    self._fragments = [payload]
            elif opcode == 0x0:
                if self._fragments is not None:
                    self._fragments.append(payload)
                    if b0 & 0x80:
                        whole, self._fragments = b"".join(self._fragments), None
                        self.on_text(whole)
            elif opcode == 0x9:
                self.transport.write(ws_frame(payload, 0xA))  # type: ignore[union-attr]
                if self.on_ping is not None:
                    self.on_ping()
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.closed:
                    self.transport.write(ws_frame(payload[:2], 0x8))  # type: ignore[union-attr]
                    self.transport.close()  # type: ignore[union-attr]
                    self.closed = True
                return
        if pos < n:
            self._buf = data[pos:]

    # sending ------------------------------------------------------------------------------
    def send(self, payload: bytes) -> None:
        if not self.closed:
            self.transport.write(ws_frame(payload))  # type: ignore[union-attr]

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            try:
                self.transport.write(ws_frame(b"\x03\xe8", 0x8))
            finally:
                self.transport.close()
                self.closed = True


async def ws_connect(host: str, port: int, path: str, on_text: Callable[[bytes], None], *,
                     on_close: Callable[[], None] | None = None, on_ping: Callable[[], None] | None = None,
                     timeout: float = 30.0) -> WSProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: WSProtocol(host, port, path, on_text, on_close, on_ping), host, port,
                               local_addr=source_for(host)), timeout)
    await asyncio.wait_for(proto.opened, timeout)
    return proto


class HTTPProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._buf and self.waiter is not None and not self.waiter.done():
            self._try_parse(eof=True)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    def send(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self.waiter is not None and not self.waiter.done():
            raise RuntimeError("one request at a time on an HTTPProtocol")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)  # type: ignore[union-attr]
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._try_parse(eof=False)

    def _try_parse(self, eof: bool) -> None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = buf[:end].lower()
        status = int(head[9:12])
        body_start = end + 4
        keep = b"\r\nconnection: close" not in head
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            length = int(head[i + 17:j if j >= 0 else len(head)])
            if len(buf) - body_start < length:
                return
            body = buf[body_start:body_start + length]
            self._buf = buf[body_start + length:]
        elif b"\r\ntransfer-encoding: chunked" in head:
            pos = body_start
            parts = []
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return
                size = int(buf[pos:line_end].split(b";")[0], 16)
                if size == 0:
                    trailer_end = buf.find(b"\r\n", line_end + 2)
                    if trailer_end < 0:
                        return
                    self._buf = buf[trailer_end + 2:]
                    break
                if len(buf) < line_end + 2 + size + 2:
                    return
                parts.append(buf[line_end + 2:line_end + 2 + size])
                pos = line_end + 2 + size + 2
            body = b"".join(parts)
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
            self._buf = buf[body_start:]
        else:  # delimited by the end of the connection
            if not eof:
                return
            body = buf[body_start:]
            self._buf = b""
            keep = False
        if not keep and self.transport is not None:
            self.transport.close()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))


class HTTPClient:
    """Requests on one connection that is reopened when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.proto: HTTPProtocol | None = None
        self.host_header = f"Host: {host}:{port}\r\n".encode()

    async def _connection(self) -> HTTPProtocol:
        if self.proto is None or self.proto.closed:
            loop = asyncio.get_running_loop()
            _, self.proto = await asyncio.wait_for(
                loop.create_connection(HTTPProtocol, self.host, self.port, local_addr=source_for(self.host)), 30)
        assert self.proto is not None
        return self.proto

    async def request(self, method: bytes, path: bytes, headers: bytes = b"", body: bytes | None = None,
                      retry: bool = True) -> tuple[int, bytes]:
        raw = method + b" " + path + b" HTTP/1.1\r\n" + self.host_header + headers
        if body is not None:
            raw += b"Content-Length: %d\r\n\r\n" % len(body) + body
        else:
            raw += b"\r\n"
        proto = await self._connection()
        reused = proto is self.proto and proto.transport is not None
        try:
            return await proto.send(raw)
        except ConnectionError:
            # A keep-alive connection the server had just closed (idle timeout): once more.
            if retry and reused:
                self.proto = None
                proto = await self._connection()
                return await proto.send(raw)
            raise

    def close(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()
        self.proto = None
