"""The machine the run happened on, and the report: one markdown table of gchat's figures with
its ratio to each baseline, then the steps."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
from collections.abc import Callable
from typing import Any

from tests.support.process import ROOT
from tools.benchmark.config import NAMES

RECHECK_INTERVAL_S = 2.0  # gchat's default session_check_interval (the benchmark keeps it)
RECHECK_STATEMENTS = 2  # at most, per re-check with the database store (gchat/session_digest.py)


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    probe = ("import sys, tornado\ntry:\n import tornado.speedups; s = True\nexcept ImportError:\n s = False\n"
             "try:\n from importlib.metadata import version; sio = version('python-socketio')\n"
             "except Exception:\n sio = None\n"
             "try:\n import uvloop; uv = uvloop.__version__\nexcept Exception:\n uv = None\n"
             "import json; print(json.dumps({'python': sys.version.split()[0], 'tornado': tornado.version, "
             "'speedups': s, 'socketio': sio, 'uvloop': uv}))")
    try:
        versions = json.loads(subprocess.run([args.python, "-c", probe], capture_output=True, text=True,
                                             timeout=30).stdout)
    except Exception:
        versions = {}
    database = None
    try:
        from tests.services import db_connect, is_postgresql

        conn = db_connect(args.db)
        with conn.cursor() as cur:
            if is_postgresql(args.db):
                cur.execute("SELECT 'PostgreSQL ' || current_setting('server_version') || ', synchronous_commit=' "
                            "|| current_setting('synchronous_commit') || ', fsync=' || current_setting('fsync')")
            else:
                cur.execute("SELECT CONCAT('MariaDB ', VERSION(), ', innodb_flush_log_at_trx_commit=', "
                            "@@innodb_flush_log_at_trx_commit)")
            row = cur.fetchone()
            database = row[0] if row else None
        conn.close()
    except Exception:
        pass
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "gchat"], capture_output=True, text=True,
                                    cwd=ROOT, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "database": database,
            "commit": commit, "gchat_dirty": dirty,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "server_cpu": args.server_cpu, "gen_cpu": args.gen_cpu, "gen_procs": args.gen_procs, **versions,
            **({"uvloop": None} if args.no_uvloop else {})}


# -- the report ----------------------------------------------------------------------------

def fmt(value: Any, digits: int = 0, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}{unit}"


def ratio(a: Any, b: Any) -> str:
    if a is None or b is None or not b or (isinstance(a, float) and math.isnan(a)) or \
            (isinstance(b, float) and math.isnan(b)):
        return "–"
    return f"{a / b:.2f}×"


def knee_rate(phase: dict[str, Any] | None) -> float | None:
    if not phase or not phase.get("knee"):
        return None
    return phase["knee"]["delivered_per_s"]


def half_lat(phase: dict[str, Any] | None, key: str) -> float | None:
    if not phase or not phase.get("half"):
        return None
    return phase["half"]["latency"][key]


def idle_at(out: dict[str, Any], kind: str, n: int, key: str) -> float | None:
    for entry in (out.get(kind) or {}).get("levels", []):
        if entry["n"] == n and not entry.get("failed"):
            return entry.get(key)
    return None


def report(results: dict[str, Any], elapsed: float) -> str:
    targets = results["targets"]
    g = targets.get("gchat", {})
    bases = [t for t in ("tornado", "socketio") if t in targets]
    header = "| | " + " | ".join(["gchat"] + [x for t in bases for x in (NAMES[t], f"gchat ÷ {t}")]) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(bases))]

    def row(label: str, getter: Any, digits: int = 0, unit: str = "") -> None:
        mine = getter(g) if g else None
        cells = [fmt(mine, digits, unit)]
        for t in bases:
            theirs = getter(targets[t])
            cells += [fmt(theirs, digits, unit), ratio(mine, theirs)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for transport, name in (("ws", "WS"), ("poll", "long-poll")):
        pairs = results["config"]["closed_pairs"]
        row(f"closed loop, {pairs} {name} pairs: msgs/s (median of runs)",
            lambda o, t=transport: (o.get(f"closed_{t}") or {}).get("rate_median"))
        row(f"closed loop, {pairs} {name} pairs: p50 (ms)",
            lambda o, t=transport: (o.get(f"closed_{t}") or {}).get("p50_median"), 1)
        row(f"closed loop, {pairs} {name} pairs: p99 (ms)",
            lambda o, t=transport: (o.get(f"closed_{t}") or {}).get("p99_median"), 1)
        row(f"closed loop, {pairs} {name} pairs: server CPU per message (µs)",
            lambda o, t=transport: (o.get(f"closed_{t}") or {}).get("server_cpu_us_per_msg"), 0)
    row("WS knee: delivered msgs/s (p99 ≤ 250 ms, no loss)", lambda o: knee_rate(o.get("ws")))
    row("long-poll knee: delivered msgs/s", lambda o: knee_rate(o.get("poll")))
    for transport, name in (("ws", "WS"), ("poll", "long-poll")):
        for key, label in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")):
            row(f"{name} {label} at half the knee (ms)", lambda o, t=transport, k=key: half_lat(o.get(t), k), 1)
    for pairing in ("WS↔WS", "WS↔poll", "poll↔poll"):
        row(f"mixed run, {pairing} p99 (ms)",
            lambda o, p=pairing: (o.get("mixed") or {}).get("pairings", {}).get(p, {}).get("p99"), 1)
    row("mixed run rate (msgs/s, ½ the lower knee)", lambda o: (o.get("mixed") or {}).get("rate"))
    row("server CPU per delivered WS message at the knee (µs)",
        lambda o: ((o.get("ws") or {}).get("knee") or {}).get("server_cpu_us_per_msg"), 0)
    row("server CPU at the WS knee (% of a core)",
        lambda o: ((o.get("ws") or {}).get("knee") or {}).get("server_cpu"), 0)
    row("database CPU at the WS knee (% of a core)", lambda o: ((o.get("ws") or {}).get("knee") or {}).get("db_cpu"), 0)
    levels = results["config"]["idle_levels"]
    for kind, name in (("idle_ws", "idle WebSocket"), ("idle_poll", "idle long-poll")):
        for n in levels:
            row(f"KB per {name} at {n:,}", lambda o, k=kind, n=n: idle_at(o, k, n, "kb_per_conn"), 1)
        top = max(levels)
        row(f"CPU of {top:,} {name} heartbeats (% of a core, real interval)",
            lambda o, k=kind, n=top: idle_at(o, k, n, "cpu_real_pct"), 2)
        row(f"CPU per {name} heartbeat (µs)", lambda o, k=kind, n=top: idle_at(o, k, n, "cpu_us_per_hb"), 0)
    row("server RSS after the load phases (MiB)", lambda o: (o.get("after_load_rss_kb") or 0) / 1024 or None, 0)
    lines.append("")
    if g:
        ws_half = (g.get("ws") or {}).get("half") or {}
        q_msg = ws_half.get("queries_per_msg")
        idle_q = [(kind, e.get("queries_per_hb"), e.get("queries")) for kind in ("idle_ws", "idle_poll")
                  for e in (g.get(kind) or {}).get("levels", []) if e["n"] == max(levels)]
        lines.append(f"gchat database statements per message (WS, half the knee, gchat's own counter): "
                     f"{fmt(q_msg, 2)}; MariaDB 'Questions' per message (whole server, MariaDB only): "
                     f"{fmt(ws_half.get('questions_per_msg'), 2)}")
        for kind, per_hb, total in idle_q:
            lines.append(f"gchat statements during the {kind.replace('_', ' ')} window at {max(levels):,}: "
                         f"{fmt(total)} ({fmt(per_hb, 3)} per heartbeat)")
        lines.append("")
    storms = g.get("storm") if g else None
    if storms:
        lines += storm_table(storms), ""
    goals = goal_table(results)
    if goals:
        lines += ["Goals of issue 14 (this run):", "", goals, ""]
    m = results["machine"]
    dirty = " with uncommitted changes in gchat/" if m.get("gchat_dirty") else ""
    lines.append(f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB, "
                 f"Linux {m.get('kernel')}; "
                 f"Python {m.get('python')}, Tornado {m.get('tornado')} (speedups "
                 f"{'built' if m.get('speedups') else 'NOT built'}), python-socketio {m.get('socketio') or '–'}, "
                 f"{m.get('database') or m.get('mariadb') or '–'}; server on CPU {m.get('server_cpu')}, "
                 f"{m.get('gen_procs')} "
                 f"generator process(es) on CPU {m.get('gen_cpu')} (uvloop {m.get('uvloop') or 'off'}); "
                 f"gchat at commit {m.get('commit') or '?'}{dirty}. "
                 f"Run took {elapsed:.0f} s.")
    for target, out in targets.items():
        for key in ("ws", "poll"):
            phase = out.get(key) or {}
            if phase.get("generator_bound"):
                lines.append(f"**Warning:** {target} {key} knee is generator-bound: the server may go further; "
                             "treat it as a lower bound (and gchat's ratio to it as an upper bound).")
            if phase and not phase.get("knee"):
                lines.append(f"**Warning:** {target} {key}: even the first step failed (no knee).")
    if results.get("experiments"):
        lines.append(f"**gchat ran with what-if patches: {results['experiments']}** (not gchat's behaviour).")
    for warning in results["warnings"]:
        lines.append(f"- {warning}")
    return "\n".join(lines)


def steps_table(results: dict[str, Any]) -> str:
    lines = ["| target | pairs | target msgs/s | delivered/s | p50 ms | p99 ms | p99.9 ms | lost | errors | "
             "server CPU % | generator CPU % | database CPU % | q/msg | |", "|" + "---|" * 14]
    for target, out in results["targets"].items():
        for key in ("ws", "poll"):
            phase = out.get(key) or {}
            for s in phase.get("steps", []) + ([phase["half"]] if phase.get("half") else []):
                lat = s["latency"]
                lines.append(f"| {target} | {key} | {s['rate']:.0f} | {s['delivered_per_s']:.0f} | "
                             f"{fmt(lat['p50'], 1)} | {fmt(lat['p99'], 1)} | {fmt(lat['p999'], 1)} | {s['lost']} | "
                             f"{sum(s['errors'].values())} | "
                             f"{s['server_cpu']:.0f} | {s['gen_cpu']:.0f} | {fmt(s['db_cpu'])} | "
                             f"{fmt(s.get('queries_per_msg'), 2)} | {'pass' if s['passed'] else 'FAIL'}"
                             f"{' gen-bound' if s['gen_bound'] else ''} |")
    return "\n".join(lines)


def storm_table(storms: list[dict[str, Any]]) -> str:
    """gchat's storms: one column per size."""
    lines = ["| storm: N users of one course connect, 100 at a time, while a pair chats | "
             + " | ".join(f"N = {s['n']:,}" for s in storms) + " |", "|---|" + "---|" * len(storms)]
    rows: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
        ("all connected (s)", lambda s: fmt(s["all_connected_s"], 1)),
        ("all connected and every presence delivered (s)", lambda s: fmt(s["absorbed_s"], 1)),
        ("clients that know every course-mate online", lambda s: f"{s['informed']:,} of {s['n']:,}"),
        ("pair round trip p50 / p99 / max (ms)",
         lambda s: f"{fmt(s['pair_rtt']['p50'], 0)} / {fmt(s['pair_rtt']['p99'], 0)} / {fmt(s['pair_rtt']['max'], 0)}"),
        ("pair round trips unanswered within 10 s", lambda s: f"{s['pair_unanswered']} of {s['pair_sent']}"),
        ("presence frames per recipient (max / mean)",
         lambda s: f"{s['frames_per_recipient_max']:,} / {s['frames_per_recipient_mean']:,.0f}"),
        ("presence changes per recipient (mean)", lambda s: fmt(s["changes_per_recipient_mean"])),
        ("server CPU during the storm (% of a core)", lambda s: fmt(s["server_cpu_pct"])),
        ("server RSS before / peak (MiB)", lambda s: f"{s['rss_start_mib']:.0f} / {s['rss_peak_mib']:.0f}"),
        ("gchat statements per arrival", lambda s: fmt(s.get("queries_per_arrival"), 1)),
    )
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(s) for s in storms) + " |")
    return "\n".join(lines)


def goal_table(results: dict[str, Any]) -> str:
    """The table of issue 14 filled with this run's figures (what the run measured)."""
    t = results["targets"]
    g, relay, sio = t.get("gchat") or {}, t.get("tornado") or {}, t.get("socketio") or {}

    def closed(o: dict[str, Any], key: str = "rate_median") -> Any:
        return (o.get("closed_ws") or {}).get(key)

    def div(a: Any, b: Any) -> float | None:
        return a / b if a is not None and b else None

    def idle(kind: str, key: str) -> Any:
        """At the largest idle level this run could fill (a level that failed to open is skipped)."""
        filled = [e["n"] for e in (g.get(kind) or {}).get("levels", []) if not e.get("failed")]
        return idle_at(g, kind, max(filled), key) if filled else None

    def per_heartbeat(kind: str) -> Any:
        """Statements per heartbeat, less the session re-checks the window holds (one per
        session_check_interval whatever the heartbeats: gchat's default of 2 s, ±10 %; each at
        most two statements: the digest, and the rows of the users whose digest changed)."""
        queries, heartbeats, window = idle(kind, "queries"), idle(kind, "heartbeats"), idle(kind, "window_s")
        if queries is None or not heartbeats or window is None:
            return None
        rechecks = math.floor(window / (RECHECK_INTERVAL_S * 0.9)) + 1
        return max(0, queries - RECHECK_STATEMENTS * rechecks) / heartbeats

    storm = max(g.get("storm") or [], key=lambda s: s["n"], default=None)
    half = (g.get("ws") or {}).get("half") or {}
    rows: list[tuple[str, Any, str, bool | None]] = [
        ("closed loop, WS pairs: gchat ÷ bare relay", div(closed(g), closed(relay)), "≥ 0.6", None),
        ("closed loop, WS pairs: gchat ÷ python-socketio", div(closed(g), closed(sio)), "≥ 1.5", None),
        ("closed loop p99, WS pairs (ms)", closed(g, "p99_median"), "≤ 15", None),
        ("open-loop WS knee ÷ bare relay", div(knee_rate(g.get("ws")), knee_rate(relay.get("ws"))), "≥ 0.8", None),
        ("open-loop WS p99 at half the knee (ms)", half.get("latency", {}).get("p99"), "≤ 10", None),
        ("KB per idle WebSocket", idle("idle_ws", "kb_per_conn"), "≤ 16", None),
        ("KB per idle long-poll tab", idle("idle_poll", "kb_per_conn"), "≤ 16", None),
        ("CPU of the idle WebSockets (% of a core)", idle("idle_ws", "cpu_real_pct"), "≤ 3", None),
        ("statements per heartbeat (idle WS window, the session re-checks aside)", per_heartbeat("idle_ws"), "0",
         None),
        ("statements per idle poll (idle long-poll window, the session re-checks aside)", per_heartbeat("idle_poll"),
         "0", None),
        (f"storm, {storm['n']:,} in one course: all connected and presence delivered (s)" if storm else "storm",
         storm and storm["absorbed_s"], "≤ 15", None),
        ("storm: chatting pair's p99 round trip (ms)", storm and storm["pair_rtt"]["p99"], "≤ 250", None),
        ("storm: presence frames per recipient (max)", storm and storm["frames_per_recipient_max"],
         f"≤ {storm['n'] // 20:,} (N / 20)" if storm else "≤ N / 20", None),
    ]
    limits = {"≥ 0.6": (0.6, 1), "≥ 1.5": (1.5, 1), "≤ 15": (15, -1), "≥ 0.8": (0.8, 1), "≤ 10": (10, -1),
              "≤ 16": (16, -1), "≤ 3": (3, -1), "0": (0, -1), "≤ 250": (250, -1)}
    lines = ["| metric | this run | goal | met |", "|---|---|---|---|"]
    for label, value, goal, _ in rows:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            lines.append(f"| {label} | – | {goal} | – |")
            continue
        bound, sign = limits.get(goal, (storm["n"] / 20 if storm else 0, -1))
        met = value >= bound if sign > 0 else value <= bound
        shown = f"{value:.2f}" if abs(value) < 10 else f"{value:,.0f}"
        lines.append(f"| {label} | {shown} | {goal} | {'yes' if met else 'no'} |")
    return "\n".join(lines)
