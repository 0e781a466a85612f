"""The load generator: one worker process holding many client connections on one event loop.

The orchestrator (tools/benchmark/run.py) drives workers over a ``multiprocessing`` pipe with small
commands: connect pairs, start an open-loop step, collect it, connect idle clients, close.

Open loop: sends are scheduled by the clock (the j-th send of a step is due at
``t0 + j / rate``, round-robin over the senders), never paced by replies. The *intended* send
time (``time.monotonic_ns``, one clock for every process of the machine) travels in the message
text, so a message that waited in the generator, on the wire or in the server counts all of that
as latency (no coordinated omission). ``lag`` is how late the generator itself was.

Closed loop (``start_closed``): each pair bounces one message back and forth: a client that
receives its peer's message sends the next one at once, so the rate is whatever the server
sustains with one message in flight per pair, and the latency is each hop's send → receipt.

Storm (``storm_*``, tools/benchmark/storm.py): many clients of one course connect at a bounded
concurrency while a pair chats; each storm client counts the presence frames and changes it
receives and when the last one arrived.

Message text: ``b:<intended ns>:<sender id>:<seq>:xxxx…`` padded to 100 characters.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import secrets
import time
import traceback
from array import array
from collections import deque
from typing import Any
from urllib.parse import quote

from tools.benchmark.procfs import raise_nofile
from tools.benchmark.wire import HTTPClient, ws_connect

MONO = time.monotonic_ns
TEXT_SIZE = 100
PAD = b"x" * TEXT_SIZE
SETUP_ACK = 1_000_000_000  # socket.io ack ids at or above this are setup commands


def parse_text(text: bytes) -> tuple[int, int, int]:
    parts = text.split(b":", 4)
    return int(parts[1]), int(parts[2]), int(parts[3])


class StepStats:
    def __init__(self, w0: int, w1: int) -> None:
        self.w0 = w0
        self.w1 = w1
        self.lat: dict[str, array] = {}
        self.sent: dict[str, int] = {}
        self.arrivals = 0
        self.dups = 0
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.lag = array("q")

    def result(self) -> dict[str, Any]:
        return {"lat": {k: v.tobytes() for k, v in self.lat.items()}, "sent": self.sent,
                "recv": {k: len(v) for k, v in self.lat.items()}, "arrivals": self.arrivals, "dups": self.dups,
                "ok": self.ok, "errors": self.errors, "lag": self.lag.tobytes()}


class Worker:
    def __init__(self) -> None:
        self.groups: dict[str, list[Conn]] = {}
        self.senders: list[Conn] = []
        self.stats: StepStats | None = None
        self.errors: dict[str, int] = {}
        self.disconnects = 0
        self.retries = 0
        self.echoes = 0
        self._sched: asyncio.Task[None] | None = None
        self.bouncing: list[Conn] = []  # the clients of a closed-loop run
        self.storm_task: asyncio.Task[None] | None = None  # the storm's connections (genstorm.py)
        self.chat_task: asyncio.Task[None] | None = None  # the storm's chatting pair
        self.rtt_log: list[tuple[int, int]] = []  # (when, round trip ns) of the pair's messages

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1
        if self.stats is not None:
            self.stats.errors[code] = self.stats.errors.get(code, 0) + 1

    # -- commands from the orchestrator -----------------------------------------------------

    async def connect_pairs(self, target: dict[str, Any], group: str, pairs: list[list[Any]],
                            concurrency: int = 100) -> dict[str, Any]:
        started = time.monotonic()
        conns: list[Conn] = []
        for a, b in pairs:
            ca = make_conn(self, target, a)
            cb = make_conn(self, target, b)
            ca.peer, cb.peer = cb, ca
            ca.label_out = cb.label_in = f"{ca.transport}>{cb.transport}"
            cb.label_out = ca.label_in = f"{cb.transport}>{ca.transport}"
            conns += [ca, cb]
        await self._connect_all(conns, concurrency)
        self.groups[group] = conns

        async def open_pair(ca: Conn) -> None:
            reply = await ca.command({"type": "open", "user": ca.peer.uid})
            if not reply.get("ok"):
                raise RuntimeError(f"open failed: {reply}")
            ca.conv = ca.peer.conv = int(reply["conversation"]["id"])

        await gather_limited([open_pair(c) for c in conns[::2]], concurrency)
        self.senders = list(conns)
        random.Random(7).shuffle(self.senders)
        # One message each way opens the windows (gchat's first message does extra work).
        for c in conns:
            c.fire(0, MONO())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(c.got < 1 for c in conns):
            await asyncio.sleep(0.05)
        missing = sum(1 for c in conns if c.got < 1)
        return {"connected": len(conns), "seconds": time.monotonic() - started, "warm_missing": missing}

    async def connect_idle(self, target: dict[str, Any], group: str, clients: list[list[Any]],
                           concurrency: int = 200, limit: float = 600.0) -> dict[str, Any]:
        started = time.monotonic()
        conns = [make_conn(self, target, c) for c in clients]
        try:
            await asyncio.wait_for(self._connect_all(conns, concurrency), limit)
        except TimeoutError:
            for c in conns:
                c.close()
            done = sum(1 for c in conns if c.ready.done() and not c.ready.cancelled() and c.ready.exception() is None)
            raise RuntimeError(f"only {done} of {len(conns)} connections opened within {limit:.0f} s") from None
        self.groups.setdefault(group, []).extend(conns)
        return {"connected": len(conns), "seconds": time.monotonic() - started}

    async def _connect_all(self, conns: list[Conn], concurrency: int, attempts: int = 4) -> None:
        """Connect every client; a refused or dropped one tries again after a pause (as a real
        client backs off), up to ``attempts`` times in all."""
        todo = list(conns)
        for attempt in range(attempts):
            results = await gather_limited([c.connect() for c in todo], concurrency, return_exceptions=True)
            failed = [(c, r) for c, r in zip(todo, results) if isinstance(r, BaseException)]
            if not failed:
                return
            self.retries += len(failed)
            if attempt == attempts - 1:
                for c in conns:
                    c.close()
                raise RuntimeError(f"{len(failed)} of {len(conns)} connections failed {attempts} times; "
                                   f"first: {failed[0][1]!r}")
            todo = []
            for c, _ in failed:
                c.close()
                c.reset()
                todo.append(c)
            await asyncio.sleep(1.0 + attempt)

    async def start_step(self, rate: float, t0: int, w0: int, w1: int) -> dict[str, Any]:
        self.stats = StepStats(w0, w1)
        for c in self.senders:
            self.stats.sent.setdefault(c.label_out, 0)
            self.stats.lat.setdefault(c.label_in, array("q"))
        self._sched = asyncio.get_running_loop().create_task(self._schedule(rate, t0, w1, self.senders))
        return {"senders": len(self.senders)}

    async def _schedule(self, rate: float, t0: int, t_end: int, senders: list[Conn]) -> None:
        period = 1e9 / rate
        n = len(senders)
        j = 0
        delay = max((t0 - MONO()) / 1e9, 0)
        await asyncio.sleep(delay)
        while True:
            now = MONO()
            while True:
                intended = t0 + int(j * period)
                if intended > now or intended >= t_end:
                    break
                senders[j % n].fire(intended, now)
                j += 1
            nxt = t0 + int(j * period)
            if nxt >= t_end:
                return
            # Sleep at least a millisecond: event-loop timers have millisecond resolution, and a
            # shorter sleep would spin. Sends due meanwhile go out together (their lag is counted).
            await asyncio.sleep(max((nxt - MONO()) / 1e9, 0.001))

    async def start_closed(self, group: str, w0: int, w1: int) -> dict[str, Any]:
        """Closed loop over the pairs of ``group``: the first of each pair serves one message;
        every receipt is answered at once by the receiver (see ``Conn.on_message``)."""
        conns = self.groups[group]
        self.stats = StepStats(w0, w1)
        for c in conns:
            self.stats.sent.setdefault(c.label_out, 0)
            self.stats.lat.setdefault(c.label_in, array("q"))
            c.bounce = True
        self.bouncing = conns
        now = MONO()
        for c in conns[::2]:
            c.fire(now, now)
        return {"pairs": len(conns) // 2}

    async def collect_closed(self, drain: float) -> dict[str, Any]:
        """Stop the bouncing and wait (at most ``drain`` s) for the messages still in flight."""
        for c in self.bouncing:
            c.bounce = False
        self.bouncing = []
        return await self._drained(drain)

    # The storm (tools/benchmark/genstorm.py).
    async def storm_connect(self, **kwargs: Any) -> dict[str, Any]:
        from tools.benchmark.genstorm import storm_connect
        return await storm_connect(self, **kwargs)

    async def storm_status(self, **kwargs: Any) -> dict[str, Any]:
        from tools.benchmark.genstorm import storm_status
        return await storm_status(self, **kwargs)

    async def chat_start(self, **kwargs: Any) -> dict[str, Any]:
        from tools.benchmark.genstorm import chat_start
        return await chat_start(self, **kwargs)

    async def chat_stop(self, **kwargs: Any) -> dict[str, Any]:
        from tools.benchmark.genstorm import chat_stop
        return await chat_stop(self, **kwargs)

    async def collect_step(self, drain: float) -> dict[str, Any]:
        if self._sched is not None:
            await self._sched
        return await self._drained(drain)

    async def _drained(self, drain: float) -> dict[str, Any]:
        """The step's results once every message sent has arrived, or after ``drain`` s."""
        st = self.stats
        assert st is not None
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline:
            if sum(len(v) for v in st.lat.values()) >= sum(st.sent.values()):
                break
            await asyncio.sleep(0.02)
        self.stats = None
        return st.result()

    async def drain_quiet(self, quiet: float = 0.5, limit: float = 15.0) -> dict[str, Any]:
        """Wait until no message arrived for ``quiet`` seconds (after an overloaded step)."""
        deadline = time.monotonic() + limit
        last = -1
        while time.monotonic() < deadline:
            total = sum(c.got for g in self.groups.values() for c in g)
            if total == last:
                break
            last = total
            await asyncio.sleep(quiet)
        return {"quiet": time.monotonic() < deadline}

    async def counters(self, group: str) -> dict[str, Any]:
        conns = self.groups.get(group, [])
        return {"heartbeats": sum(c.hb for c in conns), "open": sum(1 for c in conns if not c.closed),
                "disconnects": self.disconnects, "retries": self.retries, "errors": dict(self.errors)}

    async def close_group(self, group: str) -> dict[str, Any]:
        if group.startswith("storm") and self.storm_task is not None:
            self.storm_task.cancel()
            self.storm_task = None
        conns = self.groups.pop(group, [])
        for c in conns:
            c.close()
        gone = set(conns)
        self.senders = [c for c in self.senders if c not in gone]
        await asyncio.sleep(0.2)
        return {"closed": len(conns)}

    async def usage(self) -> dict[str, Any]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"cpu": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss}


async def gather_limited(coros: list[Any], limit: int, return_exceptions: bool = False) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with sem:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=return_exceptions)


# -- connections --------------------------------------------------------------------------

class Conn:
    """One client connection (a WebSocket or a long-poll tab) of one user."""

    transport = "?"

    def __init__(self, worker: Worker, target: dict[str, Any], spec: list[Any]) -> None:
        self.worker = worker
        self.host = target["host"]
        self.port = target["port"]
        self.prefix = target.get("prefix", "/gchat")
        self.uid = int(spec[0])
        self.token = str(spec[1])
        self.peer: Conn = self
        self.conv = 0
        self.seq = 0
        self.last_in = 0
        self.got = 0
        self.hb = 0
        self.closed = False
        self.bounce = False  # closed loop: answer each message of the peer at once
        self.answer = False  # storm pair: answer each message at once, with its send time
        self.label_in = self.label_out = "-"
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._setup: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._setup_n = 0

    # receiving ----------------------------------------------------------------------------
    def on_message(self, intended: int, sender: int, seq: int) -> None:
        if sender == self.uid:
            self.worker.echoes += 1
            return
        now = MONO()
        self.got += 1
        st = self.worker.stats
        fresh = seq > self.last_in
        if not fresh:
            if st is not None:
                st.dups += 1
        else:
            self.last_in = seq
        if st is not None:
            if st.w0 <= now < st.w1:
                st.arrivals += 1
            if st.w0 <= intended < st.w1:
                st.lat[self.label_in].append(now - intended)
        if self.bounce and fresh:  # a repeat is not answered twice
            self.fire(now, now)
        elif self.answer and fresh:
            self.fire(intended, now)

    def on_reply(self, ok: bool, raw: bytes) -> None:
        if ok:
            if self.worker.stats is not None:
                self.worker.stats.ok += 1
            return
        try:
            code = json.loads(raw)["error"]["code"]
        except Exception:
            code = "unparsed_reply"
        self.worker.error(code)

    def reset(self) -> None:
        """Before another connection attempt."""
        self.closed = False
        self.ready = asyncio.get_running_loop().create_future()

    def set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(True)

    def fail_ready(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))

    def lost(self) -> None:
        if not self.closed:
            self.closed = True
            self.worker.disconnects += 1
        self.fail_ready("connection lost")

    # sending ------------------------------------------------------------------------------
    def fire(self, intended: int, now: int) -> None:
        self.seq += 1
        text = b"b:%d:%d:%d:" % (intended, self.uid, self.seq)
        text += PAD[:TEXT_SIZE - len(text)]
        st = self.worker.stats
        if st is not None and st.w0 <= intended < st.w1:
            st.sent[self.label_out] += 1
            st.lag.append(now - intended)
        self.send_text(text)

    def send_text(self, text: bytes) -> None:
        raise NotImplementedError

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    async def connect(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True


class NativeWS(Conn):
    """gchat's protocol (also spoken by the bare Tornado relay) over a WebSocket."""

    transport = "ws"

    async def connect(self) -> None:
        path = f"{self.prefix}/ws?token={quote(self.token)}"
        self.ws = await ws_connect(self.host, self.port, path, self._frame, on_close=self.lost, on_ping=self._ping)
        await asyncio.wait_for(self.ready, 60)

    def _ping(self) -> None:
        self.hb += 1

    def _frame(self, p: bytes) -> None:
        if b'"type":"reply"' in p:
            if b'"ref":"s' in p:
                reply = json.loads(p)
                future = self._setup.pop(reply.get("ref"), None)
                if future is not None and not future.done():
                    future.set_result(reply)
            else:
                self.on_reply(b'"ok":true' in p, p)
            return
        i = p.find(b'"text":"b:')
        if i >= 0 and b'"type":"message"' in p:
            j = i + 10
            a = p.index(b":", j)
            b = p.index(b":", a + 1)
            c = p.index(b":", b + 1)
            self.on_message(int(p[j:a]), int(p[a + 1:b]), int(p[b + 1:c]))
        elif b'"type":"ready"' in p:
            self.set_ready()
        elif b'"type":"error"' in p:
            try:
                self.worker.error("event:" + json.loads(p).get("code", "?"))
            except ValueError:
                self.worker.error("event:unparsed")

    def send_text(self, text: bytes) -> None:
        self.ws.send(b'{"type":"send","ref":%d,"conversation":%d,"text":"%s","client_id":"c%d-%d"}'
                     % (self.seq, self.conv, text, self.uid, self.seq))

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self._setup_n += 1
        ref = f"s{self._setup_n}"
        future = self._setup[ref] = asyncio.get_running_loop().create_future()
        self.ws.send(json.dumps({**cmd, "ref": ref}).encode())
        return await asyncio.wait_for(future, 30)

    def close(self) -> None:
        self.closed = True
        if hasattr(self, "ws"):
            self.ws.on_close = None
            self.ws.close()


class NativePoll(Conn):
    """gchat's protocol over long-poll: one connection for the waiting GET, one for POSTs."""

    transport = "poll"

    async def connect(self) -> None:
        self.tab = secrets.token_hex(6)
        self.cursor: str | None = None
        self.headers = b"X-Gchat-Token: " + self.token.encode() + b"\r\n"
        self.poll_http = HTTPClient(self.host, self.port)
        self.send_http = HTTPClient(self.host, self.port)
        self.outq: deque[bytes] = deque()
        self.pumping = False
        self.task = asyncio.get_running_loop().create_task(self._poll_loop())
        await asyncio.wait_for(self.ready, 60)

    async def _poll_loop(self) -> None:
        base = f"{self.prefix}/api/poll?tab={self.tab}"
        failures = 0
        while not self.closed:
            path = base if self.cursor is None else f"{base}&cursor={quote(self.cursor)}"
            try:
                status, body = await self.poll_http.request(b"GET", path.encode(), self.headers)
            except (TimeoutError, ConnectionError, OSError) as exc:
                if self.closed:
                    return
                failures += 1
                self.worker.disconnects += 1
                if failures > 20:
                    self.fail_ready(f"poll failed: {exc!r}")
                    self.closed = True
                    return
                await asyncio.sleep(0.2)
                continue
            if status != 200:
                try:
                    code = json.loads(body)["error"]["code"]
                except Exception:
                    code = f"http_{status}"
                self.worker.error("poll:" + code)
                self.fail_ready(f"poll answered {status} {code}")
                self.closed = True
                return
            failures = 0
            data = json.loads(body)
            self.cursor = data["cursor"]
            events = data["events"]
            if not events:
                self.hb += 1
            for ev in events:
                kind = ev.get("type")
                if kind == "message":
                    text = ev["message"]["text"]
                    if text.startswith("b:"):
                        parts = text.split(":", 4)
                        self.on_message(int(parts[1]), int(parts[2]), int(parts[3]))
                elif kind == "ready":
                    self.set_ready()
                elif kind == "error":
                    self.worker.error("event:" + str(ev.get("code")))

    def send_text(self, text: bytes) -> None:
        self._post(b'{"type":"send","ref":%d,"conversation":%d,"text":"%s","client_id":"c%d-%d"}'
                   % (self.seq, self.conv, text, self.uid, self.seq))

    def _post(self, body: bytes) -> None:
        self.outq.append(body)
        if not self.pumping:
            self.pumping = True
            asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        headers = self.headers + b"Content-Type: application/json\r\n"
        path = f"{self.prefix}/api/send".encode()
        try:
            while self.outq and not self.closed:
                body = self.outq.popleft()
                try:
                    status, reply = await self.send_http.request(b"POST", path, headers, body)
                except (TimeoutError, ConnectionError, OSError):
                    self.worker.error("send:connection")
                    continue
                if b'"ref":"s' in reply:
                    data = json.loads(reply)
                    future = self._setup.pop(data.get("ref"), None)
                    if future is not None and not future.done():
                        future.set_result(data)
                else:
                    self.on_reply(status == 200 and b'"ok":true' in reply, reply)
        finally:
            self.pumping = False

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self._setup_n += 1
        ref = f"s{self._setup_n}"
        future = self._setup[ref] = asyncio.get_running_loop().create_future()
        self._post(json.dumps({**cmd, "ref": ref}).encode())
        return await asyncio.wait_for(future, 30)

    def close(self) -> None:
        self.closed = True
        if hasattr(self, "task"):
            self.task.cancel()
            self.poll_http.close()
            self.send_http.close()


class SioMixin(Conn):
    """Socket.IO v5 over Engine.IO v4 packets, shared by both transports."""

    def _out(self, packet: bytes) -> None:
        raise NotImplementedError

    def _packet(self, p: bytes) -> None:
        c = p[:1]
        if c == b"4":
            kind = p[1:2]
            if kind == b"2":  # EVENT
                i = p.find(b'"text":"b:')
                if i >= 0 and b'"type":"message"' in p:
                    j = i + 10
                    a = p.index(b":", j)
                    b = p.index(b":", a + 1)
                    cc = p.index(b":", b + 1)
                    self.on_message(int(p[j:a]), int(p[a + 1:b]), int(p[b + 1:cc]))
            elif kind == b"3":  # ACK
                k = p.index(b"[")
                ack = int(p[2:k])
                if ack >= SETUP_ACK:
                    future = self._setup.pop(ack, None)
                    if future is not None and not future.done():
                        future.set_result(json.loads(p[k:])[0])
                else:
                    self.on_reply(b'"ok":true' in p, p[k + 1:-1])
            elif kind == b"0":  # CONNECT acknowledged
                self.set_ready()
            elif kind == b"4":
                self.fail_ready("socket.io CONNECT_ERROR " + p.decode(errors="replace"))
            elif kind == b"1":
                self.lost()
        elif c == b"2":  # engine.io ping
            self.hb += 1
            self._out(b"3")
        elif c == b"0":  # engine.io open
            self._out(b'40{"token":"%s"}' % self.token.encode())
        elif c == b"1":
            self.lost()

    def send_text(self, text: bytes) -> None:
        self._out(b'42%d["cmd",{"type":"send","ref":%d,"conversation":%d,"text":"%s","client_id":"c%d-%d"}]'
                  % (self.seq, self.seq, self.conv, text, self.uid, self.seq))

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self._setup_n += 1
        ack = SETUP_ACK + self._setup_n
        future = self._setup[ack] = asyncio.get_running_loop().create_future()
        self._out(b'42%d["cmd",%s]' % (ack, json.dumps({**cmd, "ref": f"s{self._setup_n}"}).encode()))
        return await asyncio.wait_for(future, 30)


class SioWS(SioMixin):
    transport = "ws"

    async def connect(self) -> None:
        self._early: list[bytes] = []
        self.ws = await ws_connect(self.host, self.port, "/socket.io/?EIO=4&transport=websocket", self._packet,
                                   on_close=self.lost)
        for packet in self._early:  # answered before ws_connect returned (open packet with the 101)
            self.ws.send(packet)
        await asyncio.wait_for(self.ready, 60)

    def _out(self, packet: bytes) -> None:
        ws = getattr(self, "ws", None)
        if ws is None:
            self._early.append(packet)
        else:
            ws.send(packet)

    def reset(self) -> None:
        super().reset()
        if hasattr(self, "ws"):
            del self.ws

    def close(self) -> None:
        self.closed = True
        if hasattr(self, "ws"):
            self.ws.on_close = None
            self.ws.close()


class SioPoll(SioMixin):
    """Engine.IO long-polling: a waiting GET, and POSTs carrying every queued packet at once
    (``\\x1e``-separated), as the Engine.IO client does."""

    transport = "poll"

    async def connect(self) -> None:
        self.poll_http = HTTPClient(self.host, self.port)
        self.send_http = HTTPClient(self.host, self.port)
        self.outq: deque[bytes] = deque()
        self.pumping = False
        status, body = await self.poll_http.request(b"GET", b"/socket.io/?EIO=4&transport=polling")
        if status != 200 or not body.startswith(b"0"):
            raise ConnectionError(f"engine.io handshake answered {status} {body[:80]!r}")
        sid = json.loads(body[1:])["sid"]
        self.path = f"/socket.io/?EIO=4&transport=polling&sid={sid}".encode()
        self._out(b'40{"token":"%s"}' % self.token.encode())
        self.task = asyncio.get_running_loop().create_task(self._poll_loop())
        await asyncio.wait_for(self.ready, 60)

    async def _poll_loop(self) -> None:
        while not self.closed:
            try:
                status, body = await self.poll_http.request(b"GET", self.path)
            except (TimeoutError, ConnectionError, OSError) as exc:
                if not self.closed:
                    self.lost()
                    self.fail_ready(repr(exc))
                return
            if status != 200:
                self.worker.error(f"poll:http_{status}")
                self.lost()
                return
            for packet in body.split(b"\x1e"):
                if packet:
                    self._packet(packet)

    def _out(self, packet: bytes) -> None:
        self.outq.append(packet)
        if not self.pumping:
            self.pumping = True
            asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        headers = b"Content-Type: text/plain;charset=UTF-8\r\n"
        try:
            while self.outq and not self.closed:
                packets = list(self.outq)
                self.outq.clear()
                try:
                    status, _ = await self.send_http.request(b"POST", self.path, headers, b"\x1e".join(packets))
                except (TimeoutError, ConnectionError, OSError):
                    self.worker.error("send:connection")
                    continue
                if status != 200:
                    self.worker.error(f"send:http_{status}")
        finally:
            self.pumping = False

    def close(self) -> None:
        self.closed = True
        if hasattr(self, "task"):
            self.task.cancel()
        if hasattr(self, "poll_http"):
            self.poll_http.close()
            self.send_http.close()


def make_conn(worker: Worker, target: dict[str, Any], spec: list[Any]) -> Conn:
    transport = spec[2]
    if target["kind"] == "socketio":
        return (SioWS if transport == "ws" else SioPoll)(worker, target, spec)
    return (NativeWS if transport == "ws" else NativePoll)(worker, target, spec)


# -- process entry ------------------------------------------------------------------------

async def _serve(pipe: Any) -> None:
    worker = Worker()
    loop = asyncio.get_running_loop()
    while True:
        message = await loop.run_in_executor(None, pipe.recv)
        op, kwargs = message
        if op == "quit":
            for group in list(worker.groups):
                await worker.close_group(group)
            pipe.send(("ok", {}))
            return
        try:
            result = await getattr(worker, op)(**kwargs)
            pipe.send(("ok", result))
        except Exception:
            pipe.send(("error", traceback.format_exc()))


def worker_main(pipe: Any, cpu: int | None, use_uvloop: bool) -> None:
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    raise_nofile()
    if use_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    asyncio.run(_serve(pipe))
