"""The idle phases: thousands of idle connections, the memory each costs (RSS after
``gc.collect()`` in the server) and the CPU their heartbeats cost, scaled to the real intervals."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from tools.benchmark import profile
from tools.benchmark.config import MIN_HEARTBEATS, REAL_HB, log
from tools.benchmark.procfs import proc_rss_kb
from tools.benchmark.servers import http_get_json

if TYPE_CHECKING:
    from tools.benchmark.run import Bench


class IdlePhase:
    """Idle WebSockets or long-poll tabs of one target, level by level."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    def run(self, target: str, transport: str) -> dict[str, Any]:
        assert self.bench.gens is not None
        cfg = self.bench.cfg
        interval = cfg.idle_hb_ws if transport == "ws" else \
            cfg.idle_hb_socketio_poll if target == "socketio" else cfg.idle_hb_poll
        scale = REAL_HB[(target, transport)] / interval
        server = self.bench.start_server(target, hb_scale=scale)
        try:
            spec = self.bench.target_spec(target)
            idle_users = self.bench.users["idle"]
            tokens = self.bench.tokens(target, idle_users, bootstrap=False)
            clients = [[u.id, tokens[u.id], transport] for u in idle_users]
            warm, rest = clients[:20], clients[20:]
            gens = self.bench.gens
            gens.call("connect_idle", [{"target": spec, "group": "idle", "clients": warm[i::len(gens)],
                                        "concurrency": self.bench.args.connect_concurrency}
                                       for i in range(len(gens))])
            time.sleep(cfg.idle_settle)
            server.stats(collect=True)
            base_rss = proc_rss_kb(server.pid)
            tracing = self.bench.args.tracemalloc and target == "gchat"
            if tracing:
                http_get_json(server.port, "/bench/stats?tm=baseline", timeout=120)
            levels = []
            connected = 0
            for level in cfg.idle_levels:
                batch = rest[connected:level]
                started = time.monotonic()
                try:
                    gens.call("connect_idle", [{"target": spec, "group": "idle", "clients": batch[i::len(gens)],
                                                "concurrency": self.bench.args.connect_concurrency,
                                                "limit": cfg.idle_connect_limit}
                                               for i in range(len(gens))], timeout=cfg.idle_connect_limit + 60)
                except RuntimeError as exc:
                    self.bench.warn(f"{target}: could not open {level:,} idle {transport} connections: "
                              f"{str(exc).strip().splitlines()[-1][:200]}")
                    levels.append({"n": level, "failed": True})
                    break
                connect_s = time.monotonic() - started
                connected = level
                time.sleep(cfg.idle_settle)
                server.stats(collect=True)
                rss = proc_rss_kb(server.pid)
                traced = None
                if tracing:
                    traced = {"by_line": http_get_json(server.port, "/bench/stats?tm=diff&top=40", timeout=300),
                              "by_file": http_get_json(server.port, "/bench/stats?tm=diff&top=25&key=filename",
                                                       timeout=300)}
                    traced_path = os.path.join(self.bench.run_dir, f"tracemalloc-{target}-{transport}-{level}.json")
                    with open(traced_path, "w") as fh:
                        json.dump(traced, fh, indent=1)
                hb0 = sum(c["heartbeats"] for c in self.bench.gens.call_all("counters", group="idle"))
                window = max(cfg.idle_window * 2, interval * 1.2) if level == max(cfg.idle_levels) \
                    else cfg.idle_window
                spy = None
                if self.bench.args.profile and level == max(cfg.idle_levels):
                    spy = profile.record(server.pid, window, os.path.join(
                        self.bench.run_dir, f"profile-{target}-idle-{transport}.txt"), self.bench.args.gen_cpu)
                before = self.bench.sample()
                time.sleep(window)
                after = self.bench.sample()
                prof = None
                if spy is not None:
                    spy.communicate(timeout=120)
                    path = os.path.join(self.bench.run_dir, f"profile-{target}-idle-{transport}.txt")
                    if os.path.exists(path):
                        prof = profile.summarise(path)
                        with open(path[:-4] + ".md", "w") as handle:
                            handle.write(profile.render(prof, f"{target} idle {transport}") + "\n")
                counters = self.bench.gens.call_all("counters", group="idle")
                hb = sum(c["heartbeats"] for c in counters) - hb0
                still_open = sum(c["open"] for c in counters)
                elapsed = after.t - before.t
                cpu_s = after.server_cpu - before.server_cpu
                real = REAL_HB[(target, transport)]
                per_hb_us = cpu_s / hb * 1e6 if hb >= MIN_HEARTBEATS else float("nan")
                entry = {
                    "n": level, "connect_s": connect_s, "connect_per_s": len(batch) / connect_s if connect_s else 0,
                    "rss_kb": rss, "kb_per_conn": (rss - base_rss) / level,
                    "cpu_measured_pct": cpu_s / elapsed * 100, "heartbeats": hb,
                    "hb_interval_s": real / scale, "cpu_us_per_hb": per_hb_us,
                    "cpu_real_pct": (per_hb_us * 1e-6 * level / real * 100) if hb >= MIN_HEARTBEATS else float("nan"),
                    "gen_cpu": (after.gen_cpu - before.gen_cpu) / elapsed * 100,
                    "open": still_open, "window_s": elapsed,
                }
                if traced is not None:
                    entry["tracemalloc"] = traced
                if prof is not None:
                    entry["profile"] = prof
                if before.queries is not None and after.queries is not None:
                    entry["queries"] = after.queries - before.queries
                    entry["queries_per_hb"] = entry["queries"] / max(1, hb)
                levels.append(entry)
                log(f"{target}: {level} idle {transport}: {entry['kb_per_conn']:.1f} KB each (RSS {rss / 1024:.0f} "
                    f"MiB), {hb} heartbeats in {elapsed:.1f} s cost {cpu_s:.2f} s CPU = {per_hb_us:.0f} µs each → "
                    f"{entry['cpu_real_pct']:.2f}% of a core at the real {real:g} s"
                    + (f", {entry['queries']} queries" if "queries" in entry else "")
                    + (f"; only {still_open} still open" if still_open < level + len(warm) else ""))
                if still_open < level + len(warm):
                    self.bench.warn(f"{target}: {level + len(warm) - still_open} idle {transport} connections dropped")
            self.bench.gens.call_all("close_group", group="idle", timeout=120)
            return {"base_rss_kb": base_rss, "levels": levels}
        finally:
            self.bench.stop_server()
