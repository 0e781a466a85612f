"""Start gchat for the benchmark: ``python tools/bench/serve_gchat.py serve --setting=value ...``.

The same program as ``python gchat/main.py`` with two additions, none of which touches a
request path of gchat:

* the open-files limit is raised first (10,000 idle connections need more than the usual 1,024);
* one extra route, ``GET /bench/stats[?gc=1]``, reports the database statement counter
  (``Database.queries``), the router's counters and client count, and collects garbage on
  request so that RSS is read after ``gc.collect()``.

With ``BENCH_TRACEMALLOC=1`` in the environment, Python's allocations are traced (slow:
for finding *where* per-connection memory goes, never for the figures themselves):
``/bench/stats?tm=baseline`` takes a snapshot and ``/bench/stats?tm=diff&top=N`` answers the
source lines whose allocations grew most since then.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200_000, 200_000))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


BASELINE: list[tracemalloc.Snapshot] = []


def apply_experiments(names: list[str]) -> None:
    """What-if patches (``BENCH_EXPERIMENTS=nodelay,noping``) that measure a proposed change
    before anyone writes it into gchat. They are not gchat's behaviour; the report says so.

    * ``nodelay``: TCP_NODELAY on every WebSocket (Tornado leaves Nagle's algorithm on after the
      handshake, so a second small frame waits for the ACK of the first);
    * ``noping``: the DBUtils pool neither pings a connection when it leaves the pool
      (``ping=0``) nor rolls it back when it returns (``reset=False``); gchat commits or rolls
      back every unit of work itself.
    """
    for name in names:
        if name == "nodelay":
            from gchat.transports import websocket

            original_open = websocket.WebSocketHandler.open

            async def open_nodelay(self, *args):  # type: ignore[no-untyped-def]
                self.set_nodelay(True)
                return await original_open(self, *args)

            websocket.WebSocketHandler.open = open_nodelay
        elif name == "noping":
            import gchat.db as gdb

            pooled = gdb.PooledDB

            def pooled_noping(*args, **kwargs):  # type: ignore[no-untyped-def]
                kwargs["ping"] = 0
                kwargs["reset"] = False
                return pooled(*args, **kwargs)

            gdb.PooledDB = pooled_noping
        elif name:
            raise SystemExit(f"serve_gchat: unknown experiment {name!r} (nodelay, noping)")


def install_stats_route() -> None:
    import tornado.web

    import gchat.main as gchat_main

    original = gchat_main.make_app

    class StatsHandler(tornado.web.RequestHandler):
        def initialize(self, services) -> None:  # type: ignore[no-untyped-def]
            self.services = services

        def get(self) -> None:
            if self.get_query_argument("gc", None):
                gc.collect()
            tm = self.get_query_argument("tm", None)
            if tm and tracemalloc.is_tracing():
                gc.collect()
                snapshot = tracemalloc.take_snapshot()
                if tm == "baseline":
                    BASELINE[:] = [snapshot]
                    self.finish({"baseline": True})
                    return
                top = int(self.get_query_argument("top", "25"))
                key = "filename" if self.get_query_argument("key", "lineno") == "filename" else "lineno"
                stats = snapshot.compare_to(BASELINE[0], key) if BASELINE else snapshot.statistics(key)
                self.finish({"top": [{"where": str(st.traceback[0]), "bytes": getattr(st, "size_diff", st.size),
                                      "count": getattr(st, "count_diff", st.count)} for st in stats[:top]],
                             "total_bytes": sum(getattr(st, "size_diff", st.size) for st in stats)})
                return
            services = self.services
            db = getattr(services, "db", None)
            router = getattr(services, "router", None)
            body = {
                "queries": getattr(db, "queries", None),
                "query_seconds": getattr(db, "query_seconds", None),
                "stats": dict(getattr(router, "stats", {}) or {}),
                "errors_by_code": dict(getattr(router, "errors_by_code", {}) or {}),
                "clients": getattr(router, "client_count", None),
            }
            self.finish(body)

    def make_app(services, **app_settings):  # type: ignore[no-untyped-def]
        app = original(services, **app_settings)
        app.add_handlers(r".*", [(r"/bench/stats", StatsHandler, {"services": services})])
        return app

    gchat_main.make_app = make_app


if __name__ == "__main__":
    raise_nofile()
    if os.environ.get("BENCH_TRACEMALLOC") == "1":
        tracemalloc.start(1)
    install_stats_route()
    apply_experiments(os.environ.get("BENCH_EXPERIMENTS", "").split(","))
    from gchat.main import main

    main(sys.argv[1:])
