"""The storm phase (gchat only): a whole course opens Moodle at once while two of its students
chat (docs/performance.md, method).

N users of one course each open one WebSocket, ``storm_concurrency`` (100) at a time, while two
other students of the course exchange a message every ``storm_chat_interval`` (0.2 s) and
measure its round trip. Reported: the time until every storm client is connected and the last
presence change has reached everyone (no presence frame for ``storm_quiet`` seconds after the
last connection), how many clients then know every course-mate online, the pair's round trips
meanwhile (p50, p99, worst, and those not answered within ``storm_rtt_timeout``), presence
frames and changes per recipient, the server's CPU and memory, and gchat's statements.
"""

from __future__ import annotations

import statistics
import time
from array import array
from typing import TYPE_CHECKING, Any

from tools.benchmark.config import log
from tools.benchmark.procfs import proc_cpu, proc_rss_kb
from tools.benchmark.stats import summarise

if TYPE_CHECKING:
    from tools.benchmark.run import Bench

NS = 1e9


class StormPhase:
    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    def status(self, expected: int) -> dict[str, Any]:
        assert self.bench.gens is not None
        parts = self.bench.gens.call_all("storm_status", group="storm", expected=expected)
        return {"clients": sum(p["clients"] for p in parts), "connected": sum(p["connected"] for p in parts),
                "failed": sum(p["failed"] for p in parts), "informed": sum(p["informed"] for p in parts),
                "last_ready": max(p["last_ready"] for p in parts),
                "last_presence": max(p["last_presence"] for p in parts),
                "frames": [f for p in parts for f in p["frames"]], "changes": [c for p in parts for c in p["changes"]]}

    def run(self, target: str, n: int, course: list[Any]) -> dict[str, Any]:
        bench, cfg = self.bench, self.bench.cfg
        assert bench.gens is not None
        pair, crowd = course[:2], course[2:2 + n]
        server = bench.start_server(target)
        try:
            log(f"{target}: storm of {n} users of one course (+ a chatting pair), {cfg.storm_concurrency} at a time")
            tokens = bench.tokens(target, pair, bootstrap=True)
            spec = bench.target_spec(target)
            # The pair lives in the first generator process; the crowd is spread over all of them.
            bench.gens.call_one(0, "connect_pairs", target=spec, group="storm_pair",
                                pairs=[[[user.id, tokens[user.id], "ws"] for user in pair]])
            crowd_tokens = bench.tokens(target, crowd, bootstrap=False)
            bench.gens.call_one(0, "chat_start", group="storm_pair", interval=cfg.storm_chat_interval)
            time.sleep(1.0)
            server.stats(collect=True)
            rss0 = proc_rss_kb(server.pid)
            q0 = server.queries()
            cpu0 = proc_cpu(server.pid)
            t0 = time.monotonic()
            t0_ns = time.monotonic_ns()
            clients = [[u.id, crowd_tokens[u.id], "ws"] for u in crowd]
            gens = bench.gens
            gens.call("storm_connect", [{"target": spec, "group": "storm", "clients": clients[i::len(gens)],
                                         "concurrency": max(1, cfg.storm_concurrency // len(gens))}
                                        for i in range(len(gens))])
            expected = n + 1  # every other member of the course: the crowd and the pair
            peak_rss = rss0
            all_connected = all_informed = None
            timeline = []
            while True:
                time.sleep(0.5)
                now = time.monotonic()
                st = self.status(expected)
                rss = proc_rss_kb(server.pid)
                peak_rss = max(peak_rss, rss)
                timeline.append((round(now - t0, 1), st["connected"], st["informed"], round(rss / 1024)))
                if all_connected is None and st["connected"] + st["failed"] >= n:
                    all_connected = (st["last_ready"] - t0_ns) / NS
                if all_informed is None and st["informed"] >= n:
                    all_informed = now - t0
                last = max(st["last_presence"], st["last_ready"])
                quiet = last and time.monotonic_ns() - last > cfg.storm_quiet * NS
                if all_connected is not None and (all_informed is not None or quiet):
                    break
                if now - t0 > cfg.storm_limit:
                    bench.warn(f"{target}: storm of {n} not absorbed within {cfg.storm_limit:.0f} s "
                               f"({st['connected']} connected, {st['informed']} informed)")
                    break
            absorbed = (max(st["last_presence"], st["last_ready"]) - t0_ns) / NS
            cpu = proc_cpu(server.pid) - cpu0
            elapsed = time.monotonic() - t0
            q1 = server.queries()
            raw = bench.gens.call_one(0, "chat_stop", drain=cfg.storm_rtt_timeout)
            rtt = array("q")
            rtt.frombytes(raw["lat"]["rtt"])
            sent = raw["sent"]["rtt"]
            frames, changes = st["frames"], st["changes"]
            result = {
                "n": n, "connected": st["connected"], "failed": st["failed"], "informed": st["informed"],
                "all_connected_s": all_connected, "all_informed_s": all_informed, "absorbed_s": absorbed,
                "pair_rtt": summarise(rtt), "pair_sent": sent, "pair_unanswered": sent - len(rtt),
                "frames_per_recipient_max": max(frames), "frames_per_recipient_mean": statistics.mean(frames),
                "changes_per_recipient_mean": statistics.mean(changes),
                "server_cpu_pct": cpu / elapsed * 100, "rss_start_mib": rss0 / 1024, "rss_peak_mib": peak_rss / 1024,
                "rss_after_mib": proc_rss_kb(server.pid) / 1024,
                "queries": (q1 - q0) if q0 is not None and q1 is not None else None, "timeline": timeline,
                "pair_rtt_series": [(round((when - t0_ns) / NS, 2), round(took / 1e6, 1))
                                    for when, took in raw["rtt_log"]],
            }
            if result["queries"] is not None:
                result["queries_per_arrival"] = result["queries"] / n
            lat = result["pair_rtt"]
            log(f"{target}: storm of {n}: all connected after {all_connected or float('nan'):.1f} s, presence absorbed "
                f"after {absorbed:.1f} s, {st['informed']}/{n} informed; pair round trip p50 {lat['p50']:.0f} "
                f"p99 {lat['p99']:.0f} max {lat['max']:.0f} ms, {sent - len(rtt)}/{sent} unanswered; presence frames "
                f"per recipient max {max(frames)} (mean {statistics.mean(frames):.0f}, changes "
                f"{statistics.mean(changes):.0f}); server {result['server_cpu_pct']:.0f}% CPU, RSS "
                f"{rss0 / 1024:.0f} → peak {peak_rss / 1024:.0f} MiB; "
                + (f"{result['queries']} statements ({result['queries_per_arrival']:.1f} per arrival)"
                   if result["queries"] is not None else ""))
            return result
        finally:
            bench.gens.call_all("close_group", group="storm", timeout=120)
            bench.gens.call_one(0, "close_group", group="storm_pair")
            bench.stop_server()
