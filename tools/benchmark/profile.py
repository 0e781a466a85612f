"""py-spy sampling of the server under test, and a plain-text summary of where its CPU goes.

``py-spy record --format raw`` writes collapsed stacks (``thread (tid): Name;frame;frame N``);
:func:`summarise` turns them into shares of samples: per thread, per function (self and
inclusive), and per *area* of the code (database driver, JSON, Tornado's WebSocket and HTTP
write paths, the event loop, gchat's own code, ...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from typing import Any

# Leaf-frame areas: the first rule whose text occurs in the frame's file part wins.
Rules = tuple[tuple[str, tuple[str, ...]], ...]

AREAS: Rules = (
    ("database driver (PyMySQL, DBUtils)", ("pymysql/", "dbutils/")),
    ("JSON encode/decode", ("json/",)),
    ("Tornado WebSocket framing", ("tornado/websocket.py", "tornado/speedups")),
    ("Tornado HTTP server and IOStream", ("tornado/iostream.py", "tornado/http1connection.py", "tornado/httputil.py",
                                          "tornado/web.py", "tornado/httpserver.py", "tornado/routing.py",
                                          "tornado/escape.py", "tornado/netutil.py", "tornado/tcpserver.py")),
    ("Tornado/asyncio glue (gen, concurrent)", ("tornado/gen.py", "tornado/concurrent.py", "tornado/ioloop.py",
                                                "tornado/platform/")),
    ("asyncio event loop", ("asyncio/",)),
    ("thread pool and locks", ("concurrent/futures", "threading.py", "queue.py")),
    ("socket and selectors", ("socket.py", "selectors.py", "ssl.py")),
    ("logging", ("logging/",)),
    ("tokens (itsdangerous, hmac)", ("itsdangerous/", "hmac.py", "hashlib")),
    ("gchat: router", ("gchat/router.py", "gchat/presence.py", "gchat/feed.py", "gchat/commands.py",
                       "gchat/session_watch.py", "gchat/limits.py", "gchat/wire.py", "gchat/tasks.py")),
    ("gchat: broker", ("gchat/broker.py", "gchat/redis_")),
    ("gchat: store", ("gchat/store.py",)),
    ("gchat: db", ("gchat/db.py",)),
    ("gchat: moodle lookups and caches", ("gchat/moodle.py", "gchat/cache.py")),
    ("gchat: transports", ("gchat/transports/",)),
    ("gchat: other", ("gchat/",)),
    ("python-socketio / engine.io", ("socketio/", "engineio/")),
)
# Inclusive markers: a sample counts when any frame of its stack matches.
INCLUSIVE: Rules = (
    ("inside a database unit of work (Database.run_sync)", ("run_sync (gchat/db.py)", "_run_once (gchat/db.py)")),
    ("JSON (any json.dumps/loads)", ("(json/",)),
    ("WebSocket writes (write_message)", ("write_message (tornado/websocket.py)",)),
    ("HTTP answers (RequestHandler.finish/flush)", ("RequestHandler.finish (tornado/web.py)",
                                                    "RequestHandler.flush (tornado/web.py)")),
    ("reading and parsing requests and frames", ("_read_to_buffer", "_receive_frame", "_read_message",
                                                 "HTTP1Connection._read_message", "_parse_headers")),
    ("router.handle (commands)", ("Router.handle (gchat/router.py)",)),
    ("router.catch_up / broker.read (delivery)", ("Router.catch_up (gchat/router.py)",)),
    ("broker.publish (fan-out)", ("publish (gchat/broker.py)", "publish (gchat/redis_broker.py)")),
    ("presence (attach/detach/announce)", ("Presence.attach", "Presence.detach", "Presence.announce")),
    ("Moodle lookups (users, course-mates, sessions)", ("(gchat/moodle.py)",)),
    ("WebSocket pings (Tornado)", ("periodic_ping", "_ping_loop", "ping (tornado/websocket.py)",
                                   "WebSocketProtocol13.write_ping")),
    ("garbage collection", ("<gc>",)),
)


def pyspy() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


def record(pid: int, seconds: float, path: str, cpu: int | None, rate: int = 100) -> subprocess.Popen[bytes] | None:
    exe = pyspy()
    if exe is None:
        return None
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", str(rate),
           "--format", "raw", "--output", path, "--threads", "--nolineno", "--nonblocking", "--gil"]
    if cpu is not None and cpu >= 0 and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu)] + cmd
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _file_of(frame: str) -> str:
    start = frame.rfind("(")
    return frame[start + 1:-1] if start >= 0 and frame.endswith(")") else frame


def summarise(path: str, top: int = 20) -> dict[str, Any]:
    threads: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with open(path, errors="replace") as handle:
        for line in handle:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            head, _, rest = stack.partition(";")
            name = head.split(":", 1)[1].strip() if ":" in head else head
            if name.startswith("gchat-db"):
                name = "gchat-db (thread pool)"
            frames = rest.split(";") if rest else []
            if not frames:
                continue
            total += count
            threads[name] += count
            leaf = frames[-1]
            self_fn[leaf] += count
            for frame in set(frames):
                incl_fn[frame] += count
            leaf_file = _file_of(leaf)
            for area, needles in AREAS:
                if any(n in leaf_file for n in needles):
                    areas[area] += count
                    break
            else:
                areas["other (" + leaf_file.split("/")[0] + ")"] += count
            for label, needles in INCLUSIVE:
                if any(n in f for f in frames for n in needles):
                    inclusive[label] += count

    def shares(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, v / total * 100) for k, v in counter.most_common(n)] if total else []

    return {"samples": total, "threads": shares(threads, 10), "areas": shares(areas, 30),
            "inclusive": shares(inclusive, 30), "self": shares(self_fn, top),
            "inclusive_functions": shares(incl_fn, top)}


def render(summary: dict[str, Any], title: str) -> str:
    lines = [f"### {title}", "", f"{summary['samples']} samples of the thread holding the GIL in the server "
             "(py-spy --gil, 100 Hz): where its Python CPU time goes.", ""]
    for key, heading in (("threads", "by thread"), ("areas", "self time by area (the leaf frame's module)"),
                         ("inclusive", "inclusive: samples with such a frame anywhere on the stack"),
                         ("self", "self time by function (top)"),
                         ("inclusive_functions", "inclusive by function (top)")):
        lines += [f"{heading}:", ""]
        lines += [f"- {share:5.1f}%  {name}" for name, share in summary[key]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(summarise(sys.argv[1]), os.path.basename(sys.argv[1])))
