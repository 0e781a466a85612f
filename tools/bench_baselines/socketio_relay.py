"""The same chat relay written with python-socketio in Tornado mode, for tools/bench.py.

What a team would write instead of gchat with python-socketio: no database, no authentication
(the ``auth`` token *is* the user id), one room per user. The payloads are gchat's: a client
emits ``cmd`` with a gchat command (``open``, ``send``) and gets gchat's ``reply`` object as the
acknowledgement; events reach every client of the sender and of the peer as ``event`` with
gchat's ``{"cursor", "type": "message", "message": {...}}`` shape.

Engine.IO defaults are kept (pingInterval 25 s, pingTimeout 20 s; both transports, polling and
WebSocket). ``GET /bench/stats[?gc=1]`` serves counters and collects garbage on request.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import signal
import time
from typing import Any

import socketio
import tornado.httpserver
import tornado.web

PAIR = 1_000_000


def user_dict(uid: int) -> dict[str, Any]:
    return {"id": uid, "name": f"User {uid}", "picture": f"http://relay.invalid/user/pix.php/{uid}/f2.jpg"}


def build(ping_interval: float, ping_timeout: float) -> tuple[socketio.AsyncServer, dict[str, Any]]:
    sio = socketio.AsyncServer(async_mode="tornado", ping_interval=ping_interval, ping_timeout=ping_timeout,
                               cors_allowed_origins="*", logger=False, engineio_logger=False)
    users: dict[str, int] = {}
    seqs: dict[int, int] = {}
    stats = {"commands": 0, "messages": 0, "connected": 0, "next_message": 0}

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> bool:
        uid = int((auth or {}).get("token"))
        users[sid] = uid
        seqs.setdefault(uid, 0)
        stats["connected"] += 1
        await sio.enter_room(sid, f"u{uid}")
        return True

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        users.pop(sid, None)
        stats["connected"] -= 1

    async def publish(uids: list[int], event: dict[str, Any]) -> None:
        for uid in uids:
            seq = seqs.get(uid)
            if seq is None:
                continue
            seqs[uid] = seq + 1
            await sio.emit("event", {"cursor": f"e:{seq + 1}", **event}, to=f"u{uid}")

    @sio.on("cmd")
    async def cmd(sid: str, command: Any) -> dict[str, Any]:
        stats["commands"] += 1
        uid = users[sid]
        ref = command.get("ref")
        kind = command.get("type")
        if kind == "send":
            conv = int(command["conversation"])
            low, high = divmod(conv, PAIR)
            if uid not in (low, high):
                return {"type": "reply", "ref": ref, "ok": False, "error": {"code": "not_allowed", "message": "-"}}
            peer = high if uid == low else low
            stats["next_message"] += 1
            stats["messages"] += 1
            message = {"id": stats["next_message"], "conversation": conv, "from": uid, "text": command["text"],
                       "time": int(time.time() * 1000), "client_id": command.get("client_id")}
            await publish([uid, peer], {"type": "message", "message": message})
            return {"type": "reply", "ref": ref, "ok": True, "message": message}
        if kind == "open":
            peer = int(command["user"])
            conv = min(uid, peer) * PAIR + max(uid, peer)
            return {"type": "reply", "ref": ref, "ok": True,
                    "conversation": {"id": conv, "with": user_dict(peer), "open": True, "minimized": False,
                                     "unread": 0, "messages": []}}
        return {"type": "reply", "ref": ref, "ok": True}

    return sio, stats


class StatsHandler(tornado.web.RequestHandler):
    def initialize(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def get(self) -> None:
        if self.get_query_argument("gc", None):
            gc.collect()
        self.finish({"queries": 0, "stats": self.stats})


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200_000, 200_000))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8891)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--ping-interval", type=float, default=25.0)
    parser.add_argument("--ping-timeout", type=float, default=20.0)
    args = parser.parse_args()
    raise_nofile()
    sio, stats = build(args.ping_interval, args.ping_timeout)
    app = tornado.web.Application([
        (r"/socket.io/", socketio.get_tornado_handler(sio)),
        (r"/bench/stats", StatsHandler, {"stats": stats}),
    ])
    server = tornado.httpserver.HTTPServer(app)
    server.listen(args.port, args.address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"python-socketio relay listening on {args.address}:{args.port}", flush=True)
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    asyncio.run(main())
