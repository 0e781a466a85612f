"""The closed-loop phase: N pairs each bounce one message back and forth as fast as the server
delivers it (docs/performance.md, method). Beside the open-loop ladder: that one asks how much
load a server takes before it falls over; this one asks how fast a message goes through when
every client waits for the last one, which is where a write path that makes a message wait
behind an unrelated batch shows (a closed loop cannot hide queueing behind a lower rate).

Each run is a warm-up plus a measured window; the rate is messages delivered in the window per
second, the latency each hop's send → receipt by the peer. Several runs in a row give a range.
"""

from __future__ import annotations

import math
import statistics
import time
from array import array
from typing import TYPE_CHECKING, Any

from tools.benchmark.config import GEN_CPU_BOUND, OTHER_LOAD_LIMIT, log
from tools.benchmark.procfs import busy_pct
from tools.benchmark.stats import summarise

if TYPE_CHECKING:
    from tools.benchmark.run import Bench


class ClosedPhase:
    """Closed-loop runs of one target over WebSocket or long-poll pairs."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    def one_run(self, group: str) -> dict[str, Any]:
        assert self.bench.gens is not None
        cfg = self.bench.cfg
        start = time.monotonic_ns()
        w0 = start + int(cfg.closed_warmup * 1e9)
        w1 = w0 + int(cfg.closed_measure * 1e9)
        self.bench.gens.call_all("start_closed", group=group, w0=w0, w1=w1)
        time.sleep(max(0.0, (w0 - time.monotonic_ns()) / 1e9))
        before = self.bench.sample()
        time.sleep(max(0.0, (w1 - time.monotonic_ns()) / 1e9))
        after = self.bench.sample()
        parts = self.bench.gens.call_all("collect_closed", drain=cfg.drain)
        lat = array("q")
        sent = arrivals = 0
        for part in parts:
            for raw in part["lat"].values():
                values = array("q")
                values.frombytes(raw)
                lat.extend(values)
            sent += sum(part["sent"].values())
            arrivals += part["arrivals"]
        window = (after.t - before.t) or cfg.closed_measure
        overall = summarise(lat)
        server_cpu = (after.server_cpu - before.server_cpu) / window * 100
        gen_cpu = (after.gen_cpu - before.gen_cpu) / window * 100
        db_cpu = (after.db_cpu - before.db_cpu) / window * 100
        foreign = max(0.0, busy_pct(before.cpus, after.cpus, self.bench.args.server_cpu) - server_cpu) \
            + max(0.0, busy_pct(before.cpus, after.cpus, self.bench.args.gen_cpu) - gen_cpu)
        others = foreign - (db_cpu if not math.isnan(db_cpu) else 0.0)
        result: dict[str, Any] = {
            "delivered_per_s": arrivals / cfg.closed_measure, "sent": sent, "received": overall["n"],
            "lost": sent - overall["n"], "latency": overall, "server_cpu": server_cpu, "gen_cpu": gen_cpu,
            "db_cpu": db_cpu, "other_load": others,
            "gen_saturated": gen_cpu >= GEN_CPU_BOUND,
            "disturbed": others > OTHER_LOAD_LIMIT,
        }
        if arrivals:
            result["server_cpu_us_per_msg"] = (after.server_cpu - before.server_cpu) / arrivals * 1e6
        if before.queries is not None and after.queries is not None:
            result["queries_per_msg"] = (after.queries - before.queries) / max(1, arrivals)
        log(f"  closed loop {group}: {result['delivered_per_s']:8.0f} msgs/s  p50 {overall['p50']:6.1f} "
            f"p99 {overall['p99']:6.1f} p99.9 {overall['p999']:6.1f} ms  lost {result['lost']}  cpu server "
            f"{server_cpu:5.1f}% gen {gen_cpu:5.1f}% db {db_cpu:5.1f}%  other load {others:3.0f}%"
            + (f"  q/msg {result['queries_per_msg']:.2f}" if "queries_per_msg" in result else "")
            + ("  (generator saturated)" if result["gen_saturated"] else "")
            + ("  (disturbed by other load)" if result["disturbed"] else ""))
        return result

    def run(self, target: str, transport: str) -> dict[str, Any]:
        """``runs`` closed-loop windows over ``closed_pairs`` pairs of ``transport``; a run
        disturbed by other processes is repeated (at most three times in all)."""
        cfg = self.bench.cfg
        group = f"closed_{transport}"
        log(f"{target}: closed loop over {cfg.closed_pairs} {transport} pairs, {cfg.closed_runs} runs")
        self.bench.load.connect_pairs(target, group)
        runs: list[dict[str, Any]] = []
        profiled: dict[str, Any] | None = None
        retries = 3 if cfg.retry_disturbed else 0
        try:
            while len([r for r in runs if not r["disturbed"]]) < cfg.closed_runs:
                result = self.one_run(group)
                runs.append(result)
                if result["disturbed"]:
                    if retries == 0:
                        self.bench.warn(f"{target}: closed-loop {transport} runs disturbed by other load")
                        break
                    retries -= 1
                    time.sleep(2)
                time.sleep(0.3)
            if self.bench.args.profile:
                log(f"{target}: profiling the closed loop over {transport} for {self.bench.args.profile:g} s")
                saved = cfg.closed_measure
                cfg.closed_measure = self.bench.args.profile
                try:
                    profiled = self.bench.load.profiled(f"{target}-closed-{transport}", lambda: self.one_run(group))
                finally:
                    cfg.closed_measure = saved
        finally:
            self.bench.load.close_group(group)
        good = [r for r in runs if not r["disturbed"]] or runs
        rates = [r["delivered_per_s"] for r in good]
        return {"runs": runs, "pairs": cfg.closed_pairs, "profile": profiled,
                "rate_median": statistics.median(rates), "rate_min": min(rates), "rate_max": max(rates),
                "p50_median": statistics.median(r["latency"]["p50"] for r in good),
                "p99_median": statistics.median(r["latency"]["p99"] for r in good),
                "p99_max": max(r["latency"]["p99"] for r in good),
                "lost": sum(r["lost"] for r in runs),
                "server_cpu": statistics.median(r["server_cpu"] for r in good),
                "server_cpu_us_per_msg": statistics.median(r.get("server_cpu_us_per_msg", float("nan"))
                                                           for r in good),
                "generator_bound": any(r["gen_saturated"] for r in good)}
