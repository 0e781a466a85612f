"""Start gchat for the benchmark: ``python -m tools.benchmark.serve_gchat serve --setting=value ...``.

The same program as ``python gchat/main.py`` (``gchat.main.main``), with what the benchmark adds
through gchat's own seam for programs that embed its server (``gchat.main.Embedding``), none of
which touches a request path of gchat:

* the open-files limit is raised first (10,000 idle connections need more than the usual 1,024);
* one extra route, ``GET /bench/stats[?gc=1]``, reports the database statement counter
  (``Database.queries``), the router's counts and client count, and collects garbage on
  request so that RSS is read after ``gc.collect()``;
* what-if runs (``BENCH_EXPERIMENTS=noping``) that measure a proposed change before anyone
  writes it into gchat; the report says so. ``noping``: the DBUtils pool neither pings a
  connection when it leaves the pool (``ping=0``) nor rolls it back when it returns
  (``reset=False``); gchat commits or rolls back every unit of work itself.

``BENCH_SWITCH_INTERVAL=0.0005`` (what-if): Python's GIL switch interval, to hand the GIL to the
database threads sooner (measured: no gain, docs/performance.md). ``BENCH_GC_LOG=1``: every
garbage collection that holds the server longer than 5 ms is written to the server's log.

With ``BENCH_TRACEMALLOC=1`` in the environment, Python's allocations are traced (slow:
for finding *where* per-connection memory goes, never for the figures themselves):
``/bench/stats?tm=baseline`` takes a snapshot and ``/bench/stats?tm=diff&top=N`` answers the
source lines whose allocations grew most since then.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

import tornado.web

from gchat.app import Route, Services
from gchat.main import Embedding, main
from tools.benchmark.procfs import raise_nofile

EXPERIMENTS: dict[str, dict[str, Any]] = {"noping": {"ping": 0, "reset": False}, "noreset": {"reset": False}}


class StatsHandler(tornado.web.RequestHandler):
    def initialize(self, services: Services, baseline: list[tracemalloc.Snapshot]) -> None:
        self.services = services
        self.baseline = baseline

    def get(self) -> None:
        if self.get_query_argument("gc", None):
            gc.collect()
        tm = self.get_query_argument("tm", None)
        if tm and tracemalloc.is_tracing():
            self.finish(self._traced(tm))
            return
        router = self.services.router
        self.finish({"queries": self.services.db.queries, "query_seconds": self.services.db.query_seconds,
                     "stats": router.counts, "errors_by_code": router.errors_by_code,
                     "clients": router.client_count})

    def _traced(self, tm: str) -> dict[str, Any]:
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        if tm == "baseline":
            self.baseline[:] = [snapshot]
            return {"baseline": True}
        top = int(self.get_query_argument("top", "25"))
        key = "filename" if self.get_query_argument("key", "lineno") == "filename" else "lineno"
        stats: Sequence[Any] = (snapshot.compare_to(self.baseline[0], key) if self.baseline
                                else snapshot.statistics(key))
        return {"top": [{"where": str(st.traceback[0]), "bytes": getattr(st, "size_diff", st.size),
                         "count": getattr(st, "count_diff", st.count)} for st in stats[:top]],
                "total_bytes": sum(getattr(st, "size_diff", st.size) for st in stats)}


def stats_routes(services: Services) -> list[Route]:
    return [(r"/bench/stats", StatsHandler, {"services": services, "baseline": []})]


def pool_options(names: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name in filter(None, names):
        if name not in EXPERIMENTS:
            raise SystemExit(f"serve_gchat: unknown experiment {name!r} ({', '.join(EXPERIMENTS)})")
        options.update(EXPERIMENTS[name])
    return options


def log_slow_collections(over_s: float = 0.005) -> None:
    """What-if support: log every garbage collection that holds the loop longer than ``over_s``."""
    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif (took := time.perf_counter() - started[0]) > over_s:
            print(f"bench: gc generation {info['generation']} took {took * 1000:.1f} ms "
                  f"({info['collected']} collected)", file=sys.stderr, flush=True)

    gc.callbacks.append(callback)


if __name__ == "__main__":
    raise_nofile()
    if os.environ.get("BENCH_SWITCH_INTERVAL"):  # what-if: the GIL handed to the database threads sooner
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
    if os.environ.get("BENCH_GC_LOG") == "1":
        log_slow_collections()
    if os.environ.get("BENCH_TRACEMALLOC") == "1":
        tracemalloc.start(1)
    experiments = os.environ.get("BENCH_EXPERIMENTS", "").split(",")
    main(sys.argv[1:], Embedding(routes=stats_routes, pool_options=pool_options(experiments)))
