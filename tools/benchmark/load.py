"""The load phases: open-loop steps at rising rates until the knee, half the knee, a mixed run,
and py-spy profiles of the server meanwhile (docs/performance.md, method)."""

from __future__ import annotations

import math
import os
import subprocess
import time
from array import array
from typing import TYPE_CHECKING, Any

from tools.benchmark import profile
from tools.benchmark.config import DISTURBED_RETRIES, GEN_CPU_BOUND, GEN_CPU_WARN, LAG_BOUND_MS, OTHER_LOAD_LIMIT, \
    P99_LIMIT_MS, SETTLE_MAX_S, SETTLE_WINDOW_S, SETTLED_CPU, log
from tools.benchmark.procfs import busy_pct, proc_rss_kb
from tools.benchmark.stats import PAIRING, summarise

if TYPE_CHECKING:
    from tools.benchmark.run import Bench


class LoadPhase:
    """Throughput and latency of one target, over pairs of users."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    # -- one open-loop step -----------------------------------------------------------------
    def step(self, rate: float, measure: float) -> dict[str, Any]:
        assert self.bench.gens is not None and self.bench.server is not None
        cfg = self.bench.cfg
        total_senders = sum(self.bench.gens.senders)
        t0 = time.monotonic_ns() + 300_000_000
        w0 = t0 + int(cfg.warmup * 1e9)
        w1 = w0 + int(measure * 1e9)
        kwargs = [{"rate": rate * n / total_senders, "t0": t0, "w0": w0, "w1": w1} for n in self.bench.gens.senders]
        self.bench.gens.call("start_step", kwargs)
        time.sleep(max(0.0, (w0 - time.monotonic_ns()) / 1e9))
        before = self.bench.sample()
        time.sleep(max(0.0, (w1 - time.monotonic_ns()) / 1e9))
        after = self.bench.sample()
        parts = self.bench.gens.call_all("collect_step", drain=cfg.drain)
        lat: dict[str, array] = {}
        sent: dict[str, int] = {}
        errors: dict[str, int] = {}
        lag = array("q")
        arrivals = dups = ok = 0
        for part in parts:
            for label, raw in part["lat"].items():
                values = array("q")
                values.frombytes(raw)
                lat.setdefault(PAIRING.get(label, label), array("q")).extend(values)
            for label, n in part["sent"].items():
                key = PAIRING.get(label, label)
                sent[key] = sent.get(key, 0) + n
            for code, n in part["errors"].items():
                errors[code] = errors.get(code, 0) + n
            values = array("q")
            values.frombytes(part["lag"])
            lag.extend(values)
            arrivals += part["arrivals"]
            dups += part["dups"]
            ok += part["ok"]
        window = (after.t - before.t) or measure
        all_lat = array("q")
        for values in lat.values():
            all_lat.extend(values)
        overall = summarise(all_lat)
        pairings = {label: summarise(values) for label, values in lat.items()}
        total_sent = sum(sent.values())
        lost = total_sent - overall["n"]
        lag_summary = summarise(lag)
        result: dict[str, Any] = {
            "rate": rate, "sent": total_sent, "received": overall["n"], "lost": lost, "dups": dups,
            "errors": errors, "replies_ok": ok,
            "delivered_per_s": arrivals / measure, "latency": overall, "pairings": pairings,
            "server_cpu": (after.server_cpu - before.server_cpu) / window * 100,
            "gen_cpu": (after.gen_cpu - before.gen_cpu) / window * 100,
            "db_cpu": (after.db_cpu - before.db_cpu) / window * 100,
            "server_rss_kb": proc_rss_kb(self.bench.server.pid),
            # What else ran on the two cores: busy % of the core minus our own process on it.
            "foreign_server_core": busy_pct(before.cpus, after.cpus, self.bench.args.server_cpu)
            - (after.server_cpu - before.server_cpu) / window * 100,
            "foreign_gen_core": busy_pct(before.cpus, after.cpus, self.bench.args.gen_cpu)
            - (after.gen_cpu - before.gen_cpu) / window * 100,
            "gen_lag_p99_ms": lag_summary["p99"],
        }
        if before.queries is not None and after.queries is not None:
            result["queries"] = after.queries - before.queries
            result["queries_per_msg"] = result["queries"] / max(1, total_sent)
        if before.questions is not None and after.questions is not None:
            result["questions_per_msg"] = (after.questions - before.questions - 1) / max(1, total_sent)
        if arrivals:
            result["server_cpu_us_per_msg"] = (after.server_cpu - before.server_cpu) / arrivals * 1e6
        result["passed"] = bool(overall["n"]) and overall["p99"] <= P99_LIMIT_MS and lost == 0 and not errors
        # Saturated: our generator used (nearly) its whole core. Disturbed: it was late although it
        # had CPU to spare, or other processes of the machine (not MariaDB) took a large share of
        # the two cores: the step measured the neighbours, not the server.
        others = max(0.0, result["foreign_server_core"]) + max(0.0, result["foreign_gen_core"]) \
            - (result["db_cpu"] if not math.isnan(result["db_cpu"]) else 0.0)
        result["other_load"] = others
        result["gen_saturated"] = result["gen_cpu"] >= GEN_CPU_BOUND
        result["disturbed"] = not result["gen_saturated"] and (lag_summary["p99"] > LAG_BOUND_MS
                                                               or others > OTHER_LOAD_LIMIT)
        result["gen_bound"] = result["gen_saturated"]
        flag = "pass" if result["passed"] else "FAIL"
        if result["gen_saturated"]:
            flag += " (generator saturated)"
        elif result["disturbed"]:
            flag += " (disturbed by other load)"
        log(f"  {rate:8.0f}/s target → {result['delivered_per_s']:8.0f}/s delivered  p50 {overall['p50']:7.1f} "
            f"p99 {overall['p99']:7.1f} p99.9 {overall['p999']:7.1f} ms  lost {lost} err {sum(errors.values())}  "
            f"cpu server {result['server_cpu']:5.1f}% gen {result['gen_cpu']:5.1f}% db {result['db_cpu']:5.1f}%  "
            f"lag {lag_summary['p99']:.1f} ms  other load cpu{self.bench.args.server_cpu} "
            f"{max(0.0, result['foreign_server_core']):3.0f}% cpu{self.bench.args.gen_cpu} "
            f"{max(0.0, result['foreign_gen_core']):3.0f}%  "
            + (f"q/msg {result['queries_per_msg']:.2f}  " if "queries_per_msg" in result else "") + flag)
        if result["gen_cpu"] >= GEN_CPU_WARN:
            self.bench.warn(f"{self.bench.server.target}: load generator at {result['gen_cpu']:.0f}% of its core at "
                      f"{rate:.0f} msgs/s (≥ {GEN_CPU_WARN:.0f}%: latency figures may include generator delay)")
        return result

    def connect_pairs(self, target: str, key: str) -> None:
        assert self.bench.gens is not None
        pairs = self.bench.users["pairs"][key]
        users = [u for (a, b), _ in pairs for u in (a, b)]
        tokens = self.bench.tokens(target, users, bootstrap=True)
        per_worker: list[list[Any]] = [[] for _ in range(len(self.bench.gens))]
        for i, ((a, b), (ta, tb)) in enumerate(pairs):
            per_worker[i % len(self.bench.gens)].append([[a.id, tokens[a.id], ta], [b.id, tokens[b.id], tb]])
        spec = self.bench.target_spec(target)
        started = time.monotonic()
        results = self.bench.gens.call("connect_pairs",
                                       [{"target": spec, "group": key, "pairs": p} for p in per_worker])
        self.bench.gens.senders = [2 * len(p) for p in per_worker]
        missing = sum(r["warm_missing"] for r in results)
        log(f"{target}: {len(users)} clients of {len(pairs)} {key} pairs connected and warmed in "
            f"{time.monotonic() - started:.1f} s" + (f" ({missing} warm-up messages missing)" if missing else ""))

    def close_group(self, key: str) -> None:
        assert self.bench.gens is not None
        self.bench.gens.call_all("close_group", group=key)

    def recover(self) -> None:
        """After an overloaded step: let the backlog drain before the next measurement, then
        let the server and the database settle (they share the two cores, and the database works
        on after a burst of commits: InnoDB's purge and page flushing, PostgreSQL's autovacuum).
        It did not remove the spread of the p99 at half the knee, the step that follows the
        overloaded ones (docs/performance.md, issue 14 continued)."""
        assert self.bench.gens is not None
        self.bench.gens.call_all("drain_quiet", timeout=60)
        time.sleep(0.5)
        deadline = time.monotonic() + SETTLE_MAX_S
        while time.monotonic() < deadline:
            before = self.bench.sample()
            time.sleep(SETTLE_WINDOW_S)
            after = self.bench.sample()
            busy = (after.server_cpu - before.server_cpu + after.db_cpu - before.db_cpu) / (after.t - before.t)
            if busy < SETTLED_CPU:
                break

    # -- phases -----------------------------------------------------------------------------
    def knee(self, target: str, key: str) -> dict[str, Any]:
        cfg = self.bench.cfg
        log(f"{target}: knee search over {key} pairs")
        self.connect_pairs(target, key)
        steps = []
        rate = cfg.start_rate
        last_pass: dict[str, Any] | None = None
        first_fail: dict[str, Any] | None = None
        retries = DISTURBED_RETRIES
        for _ in range(cfg.max_steps):
            result = self.step(rate, cfg.measure)
            steps.append(result)
            while not result["passed"] and result["disturbed"] and retries > 0:
                retries -= 1
                log("  disturbed by other processes: again after a pause")
                self.recover()
                time.sleep(2)
                result = self.step(rate, cfg.measure)
                steps.append(result)
            if result["passed"] and not result["gen_bound"]:
                last_pass = result
                rate *= cfg.factor
                continue
            if result["passed"]:  # passed, but the generator is the limit now: stop climbing
                last_pass = result
            else:
                first_fail = result
            break
        for _ in range(cfg.refine):
            if last_pass is None or first_fail is None or first_fail["gen_bound"]:
                break
            self.recover()
            mid = math.sqrt(last_pass["rate"] * first_fail["rate"])
            result = self.step(mid, cfg.measure)
            steps.append(result)
            if result["passed"] and not result["gen_bound"]:
                last_pass = result
            else:
                first_fail = result
        if first_fail is not None:
            self.recover()
        half = None
        if last_pass is not None:
            log(f"{target}: {key} at half the knee ({last_pass['rate'] / 2:.0f} msgs/s)")
            half = self.step(last_pass["rate"] / 2, cfg.half_measure)
        prof = None
        if self.bench.args.profile and last_pass is not None:
            rate = last_pass["rate"] * 0.8
            log(f"{target}: profiling {key} at {rate:.0f} msgs/s (80% of the knee) for {self.bench.args.profile:g} s")
            prof = self.profiled(f"{target}-{key}-load", lambda: self.step(rate, self.bench.args.profile))
        self.close_group(key)
        return {"steps": steps, "knee": last_pass, "first_fail": first_fail, "half": half, "profile": prof,
                "generator_bound": bool(last_pass and last_pass["gen_bound"]) or
                bool(first_fail and first_fail["gen_bound"])}

    def profiled(self, name: str, work: Any, seconds: float | None = None) -> dict[str, Any] | None:
        """Run ``work()`` while py-spy samples the server; summary and raw stacks in the run folder."""
        assert self.bench.server is not None
        path = os.path.join(self.bench.run_dir, f"profile-{name}.txt")
        spy = profile.record(self.bench.server.pid,
                             (seconds or self.bench.args.profile) + self.bench.cfg.warmup + 0.3, path,
                             self.bench.args.gen_cpu)
        if spy is None:
            self.bench.warn("py-spy is not installed: no profile (pip install py-spy)")
            work()
            return None
        step = work()
        try:
            _, err = spy.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            spy.kill()
            err = b"timeout"
        if not os.path.exists(path):
            self.bench.warn(f"py-spy wrote no profile: {err.decode(errors='replace')[-300:]}")
            return None
        summary = profile.summarise(path)
        text = profile.render(summary, name)
        with open(os.path.join(self.bench.run_dir, f"profile-{name}.md"), "w") as handle:
            handle.write(text + "\n")
        log(f"profile {name}: {path} ({summary['samples']} samples)")
        return {"summary": summary, "step": step, "raw": path}

    def mixed(self, target: str, rate: float) -> dict[str, Any]:
        log(f"{target}: mixed pairings at {rate:.0f} msgs/s")
        self.connect_pairs(target, "mixed")
        result = self.step(rate, self.bench.cfg.half_measure)
        self.close_group("mixed")
        return result
