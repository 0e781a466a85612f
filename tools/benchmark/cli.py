"""Command line of the benchmark: ``python tools/bench.py`` or ``python -m tools.benchmark``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from typing import Any

from tools.benchmark.config import TARGETS, Config
from tools.benchmark.procfs import raise_nofile
from tools.benchmark.report import report, steps_table
from tools.benchmark.run import Bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gchat load benchmark against a bare Tornado relay and "
                                                 "python-socketio (see docs/performance.md)")
    parser.add_argument("--quick", action="store_true", help="≈1 minute smoke run with small numbers")
    parser.add_argument("--target", default="all", help="gchat, tornado, socketio, all, or a comma-separated list")
    parser.add_argument("--db", "--mysql", dest="db",
                        default=os.environ.get("GCHAT_TEST_MYSQL", "mysql://root@127.0.0.1:3306"),
                        help="database server for gchat: mysql://root@127.0.0.1:3306 (MariaDB, the default) or "
                             "postgresql://postgres@127.0.0.1:5432 (a database gchat_bench_<pid> is created and "
                             "dropped)")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the server is pinned to (-1: no pinning)")
    parser.add_argument("--gen-cpu", type=int, default=1, help="CPU the load generator is pinned to (-1: none)")
    parser.add_argument("--gen-procs", type=int, default=1, help="load generator processes")
    parser.add_argument("--connect-concurrency", type=int, default=50,
                        help="connections opened at once when filling the idle levels")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio loop in the generator")
    parser.add_argument("--phases", default="load,closed,idle,storm",
                        help="comma-separated: load (open-loop ladder), closed (closed loop), idle, storm (gchat)")
    parser.add_argument("--idle", default=None, help="idle levels, e.g. 1000,5000,10000")
    parser.add_argument("--pairs", type=int, default=None, help="WS pairs and long-poll pairs per knee search")
    parser.add_argument("--storm", default=None, help="storm sizes (users of one course), e.g. 1000,1500")
    parser.add_argument("--closed-pairs", type=int, default=None, help="pairs of the closed loop (40)")
    parser.add_argument("--closed-runs", type=int, default=None, help="closed-loop windows per transport (3)")
    parser.add_argument("--start-rate", type=float, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--measure", type=float, default=None, help="seconds measured per step")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="sample the server with py-spy for SECONDS at 80%% of each knee and during the largest "
                             "idle window; summaries in the output folder")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace gchat's allocations in the idle phases (slow; memory figures are then inflated)")
    parser.add_argument("--gchat-experiment", default="",
                        help="what-if options of gchat for this run (tools/benchmark/serve_gchat.py): noping")
    parser.add_argument("--gchat-arg", action="append", help="extra gchat setting, e.g. --gchat-arg=--db_pool_size=16")
    parser.add_argument("--relay-arg", action="append", help="extra tornado_relay.py flag")
    parser.add_argument("--relay-nagle", action="store_true",
                        help="leave Nagle's algorithm on in the bare relay's WebSockets (Tornado's default; gchat "
                             "turns it off, and so does the relay unless this is given)")
    parser.add_argument("--python", default=sys.executable, help="Python that runs the servers")
    parser.add_argument("--out", default=None, help="folder for report.md, results.json and server logs")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the benchmark database")
    args = parser.parse_args(argv)

    cfg = Config.quick() if args.quick else Config()
    if args.idle:
        cfg.idle_levels = tuple(int(x) for x in args.idle.split(","))
    if args.pairs:
        cfg.ws_pairs = cfg.poll_pairs = args.pairs
        cfg.mixed_pairs = max(1, args.pairs // 3)
    if args.start_rate:
        cfg.start_rate = args.start_rate
    if args.max_steps:
        cfg.max_steps = args.max_steps
    if args.measure:
        cfg.measure = args.measure
    if args.storm:
        cfg.storm_levels = tuple(int(x) for x in args.storm.split(","))
    if args.closed_pairs:
        cfg.closed_pairs = args.closed_pairs
    if args.closed_runs:
        cfg.closed_runs = args.closed_runs
    args.cfg = cfg
    targets = list(TARGETS) if args.target == "all" else [t.strip() for t in args.target.split(",") if t.strip()]
    for t in targets:
        if t not in TARGETS:
            parser.error(f"unknown target {t!r}")
    if args.out is None:
        args.out = os.path.join(tempfile.gettempdir(), "gchat-bench", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(args.out, exist_ok=True)

    raise_nofile()
    if args.gen_cpu >= 0:
        try:
            os.sched_setaffinity(0, {args.gen_cpu})  # the orchestrator mostly sleeps; keep it off the server's core
        except OSError:
            pass

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # so that servers, generators and the database are cleaned up
    started = time.monotonic()
    bench = Bench(args)
    if args.gchat_experiment:
        bench.results["experiments"] = args.gchat_experiment
    results = bench.run(targets)
    elapsed = time.monotonic() - started
    text = report(results, elapsed)
    details = steps_table(results)
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=1, default=str)
    with open(os.path.join(args.out, "report.md"), "w") as handle:
        handle.write(text + "\n\n## Steps\n\n" + details + "\n")
    print(text)
    print()
    print(details)
    print(f"\n(report and raw results in {args.out})")
    return 0
