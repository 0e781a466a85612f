"""A bare Tornado chat relay: the limit of gchat's stack, for tools/bench.py.

No database, no authentication (the token *is* the user id), no presence, no resume across
restarts. It speaks the same wire shapes as gchat (docs/protocol.md) so the same load generator
drives both: the same paths, the same ``send``/``open`` commands and ``reply`` frames, the same
``{"cursor", "type": "message", "message": {...}}`` events, each message published to the
sender's own clients and to the peer (as gchat does), encoded once and spliced per recipient.

* WebSocket ``/gchat/ws?token=UID``: a dict user → handlers, ``write_message``; pings every
  ``--ping-interval`` seconds.
* Long-poll ``GET /gchat/api/poll?tab=T&cursor=C`` (header X-Gchat-Token: UID) and
  ``POST /gchat/api/send``: a per-user deque of events with integer cursors and a set of
  waiting futures; an idle poll is answered with no events after ``--poll-timeout`` seconds
  (a randomised range like 45-55).
* ``GET /bench/stats[?gc=1]``: counters and RSS for the benchmark (``gc=1`` collects first).

Conversation ids encode their two members (``low * 1_000_000 + high``), so nothing is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import resource
import signal
import time
from collections import deque
from typing import Any

import tornado.httpserver
import tornado.web
import tornado.websocket

PAIR = 1_000_000
LOG_SIZE = 1000


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def user_dict(uid: int) -> dict[str, Any]:
    return {"id": uid, "name": f"User {uid}", "picture": f"http://relay.invalid/user/pix.php/{uid}/f2.jpg"}


class UserState:
    __slots__ = ("seq", "log", "waiters", "sockets")

    def __init__(self) -> None:
        self.seq = 0
        self.log: deque[tuple[int, str]] | None = None  # only once a poll client appears
        self.waiters: set[asyncio.Future[None]] = set()
        self.sockets: set[RelaySocket] = set()


class Hub:
    def __init__(self) -> None:
        self.users: dict[int, UserState] = {}
        self.next_message = 0
        self.stats = {"commands": 0, "messages": 0, "events": 0}

    def user(self, uid: int) -> UserState:
        state = self.users.get(uid)
        if state is None:
            state = self.users[uid] = UserState()
        return state

    def publish(self, uids: list[int], body: str) -> None:
        """``body`` is an encoded event starting with ``{"type"``; a cursor is spliced in per user."""
        self.stats["events"] += 1
        for uid in uids:
            state = self.users.get(uid)
            if state is None:
                continue
            state.seq += 1
            wire = f'{{"cursor":"e:{state.seq}",{body[1:]}'
            for sock in state.sockets:
                sock.write_message(wire)
            if state.log is not None:
                state.log.append((state.seq, wire))
                if state.waiters:
                    waiters, state.waiters = state.waiters, set()
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)

    def handle(self, uid: int, command: Any) -> dict[str, Any]:
        self.stats["commands"] += 1
        ref = command.get("ref") if isinstance(command, dict) else None
        kind = command.get("type") if isinstance(command, dict) else None
        if kind == "send":
            conv = int(command["conversation"])
            low, high = divmod(conv, PAIR)
            if uid not in (low, high):
                return {"type": "reply", "ref": ref, "ok": False, "error": {"code": "not_allowed", "message": "-"}}
            peer = high if uid == low else low
            self.next_message += 1
            self.stats["messages"] += 1
            message = {"id": self.next_message, "conversation": conv, "from": uid, "text": command["text"],
                       "time": int(time.time() * 1000), "client_id": command.get("client_id")}
            self.publish([uid, peer], dumps({"type": "message", "message": message}))
            return {"type": "reply", "ref": ref, "ok": True, "message": message}
        if kind == "open":
            peer = int(command["user"])
            conv = min(uid, peer) * PAIR + max(uid, peer)
            return {"type": "reply", "ref": ref, "ok": True,
                    "conversation": {"id": conv, "with": user_dict(peer), "open": True, "minimized": False,
                                     "unread": 0, "messages": []}}
        if kind in ("ping", "typing", "seen", "close", "minimize"):
            return {"type": "reply", "ref": ref, "ok": True}
        return {"type": "reply", "ref": ref, "ok": False, "error": {"code": "bad_command", "message": "-"}}

    def ready(self, uid: int) -> str:
        state = self.user(uid)
        return dumps({"cursor": f"e:{state.seq}", "type": "ready", "me": user_dict(uid), "online": [],
                      "conversations": [], "reset": False})


class RelaySocket(tornado.websocket.WebSocketHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub
        self.uid: int | None = None

    def check_origin(self, origin: str) -> bool:
        return True

    def open(self) -> None:
        if self.settings.get("relay_nodelay"):
            self.set_nodelay(True)
        self.uid = int(self.get_query_argument("token"))
        self.hub.user(self.uid).sockets.add(self)
        self.write_message(self.hub.ready(self.uid))

    def on_message(self, message: str | bytes) -> None:
        assert self.uid is not None
        self.write_message(dumps(self.hub.handle(self.uid, json.loads(message))))

    def on_close(self) -> None:
        if self.uid is not None:
            state = self.hub.users.get(self.uid)
            if state is not None:
                state.sockets.discard(self)


class PollHandler(tornado.web.RequestHandler):
    def initialize(self, hub: Hub, timeout: tuple[float, float]) -> None:
        self.hub = hub
        self.timeout = timeout
        self.waiter: asyncio.Future[None] | None = None

    async def get(self) -> None:
        uid = int(self.request.headers["X-Gchat-Token"])
        state = self.hub.user(uid)
        if state.log is None:
            state.log = deque(maxlen=LOG_SIZE)
        cursor = self.get_query_argument("cursor", None)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        if not cursor:
            self.finish(f'{{"events":[{self.hub.ready(uid)}],"cursor":"e:{state.seq}"}}')
            return
        after = int(cursor.partition(":")[2])
        if after >= state.seq:
            self.waiter = asyncio.get_running_loop().create_future()
            state.waiters.add(self.waiter)
            try:
                await asyncio.wait_for(asyncio.shield(self.waiter), random.uniform(*self.timeout))
            except TimeoutError:
                pass
            state.waiters.discard(self.waiter)
            if self.request.connection.stream.closed():  # type: ignore[union-attr]
                return
        events = [wire for seq, wire in state.log if seq > after]
        self.finish('{"events":[' + ",".join(events) + f'],"cursor":"e:{state.seq}"}}')

    def on_connection_close(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class SendHandler(tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    def post(self) -> None:
        uid = int(self.request.headers["X-Gchat-Token"])
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(dumps(self.hub.handle(uid, json.loads(self.request.body))))


class StatsHandler(tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    def get(self) -> None:
        if self.get_query_argument("gc", None):
            gc.collect()
        connections = sum(len(s.sockets) for s in self.hub.users.values())
        self.finish({"queries": 0, "stats": self.hub.stats, "websockets": connections,
                     "waiting_polls": sum(len(s.waiters) for s in self.hub.users.values())})


def parse_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    return float(low), float(high or low)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200_000, 200_000))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8890)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--ping-interval", type=float, default=25.0)
    parser.add_argument("--poll-timeout", type=parse_range, default=(45.0, 55.0))
    parser.add_argument("--nodelay", action="store_true",
                        help="TCP_NODELAY on WebSockets (Tornado leaves Nagle's algorithm on after the handshake)")
    args = parser.parse_args()
    raise_nofile()
    hub = Hub()
    app = tornado.web.Application([
        (r"/gchat/ws", RelaySocket, {"hub": hub}),
        (r"/gchat/api/poll", PollHandler, {"hub": hub, "timeout": args.poll_timeout}),
        (r"/gchat/api/send", SendHandler, {"hub": hub}),
        (r"/bench/stats", StatsHandler, {"hub": hub}),
    ], relay_nodelay=args.nodelay, websocket_ping_interval=args.ping_interval or None,
        websocket_ping_timeout=max(args.ping_interval, 10) if args.ping_interval else None)
    server = tornado.httpserver.HTTPServer(app)
    server.listen(args.port, args.address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"tornado relay listening on {args.address}:{args.port}", flush=True)
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    asyncio.run(main())
