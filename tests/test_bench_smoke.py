"""Smoke test of the load benchmark (tools/bench.py): a tiny gchat-only run of every phase (the
open-loop ladder, the closed loop, the storm, idle connections) finishes in bounded time, prints
its tables, delivers messages and loses none, and every storm client hears of every arrival. It
asserts nothing about speed: the figures of a shared test machine mean nothing;
docs/performance.md has a real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.services import db_connect, mysql_connect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_gchat(mariadb_url, tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "bench.py"), "--quick", "--target", "gchat",
           "--mysql", mariadb_url, "--out", str(out), "--max-steps", "2", "--idle", "100"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    # The table, with gchat's column filled in.
    assert "| WS knee: delivered msgs/s" in proc.stdout, proc.stdout
    assert "| KB per idle WebSocket at 100 |" in proc.stdout, proc.stdout
    assert "| closed loop, 5 WS pairs: msgs/s (median of runs) |" in proc.stdout, proc.stdout
    assert "| storm: N users of one course connect" in proc.stdout and "Goals of issue 14" in proc.stdout
    assert "Machine:" in proc.stdout

    results = json.loads((out / "results.json").read_text())
    gchat = results["targets"]["gchat"]
    steps = gchat["ws"]["steps"] + gchat["poll"]["steps"]
    steps += [phase["half"] for phase in (gchat["ws"], gchat["poll"]) if phase["half"]]
    if gchat.get("mixed"):
        steps.append(gchat["mixed"])
    assert steps
    delivered = {}
    for step in steps:
        assert step["lost"] == 0, step
        assert step["sent"] > 0 and step["received"] == step["sent"], step
        for pairing, lat in step["pairings"].items():
            delivered[pairing] = delivered.get(pairing, 0) + lat["n"]
    # Both transports carried messages (and the mixed run all three pairings when it ran).
    assert delivered.get("WS↔WS", 0) > 0 and delivered.get("poll↔poll", 0) > 0, delivered
    for transport in ("ws", "poll"):  # the closed loop bounced messages and lost none
        closed = gchat[f"closed_{transport}"]
        assert closed["lost"] == 0 and all(run["received"] > 0 for run in closed["runs"]), closed
    [storm] = gchat["storm"]
    assert storm["n"] == 100 and storm["connected"] == 100 and storm["informed"] == 100, storm
    assert storm["pair_unanswered"] == 0 and storm["pair_sent"] > 0, storm
    for kind in ("idle_ws", "idle_poll"):
        level = gchat[kind]["levels"][0]
        assert level["n"] == 100 and level["open"] >= 100, level
    # The benchmark dropped its database.
    admin = mysql_connect(mariadb_url)
    try:
        with admin.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE %s", (results["database"],))
            assert cur.fetchall() == ()
    finally:
        admin.close()


def test_bench_quick_gchat_on_postgresql(postgresql_url, tmp_path):
    """``--db postgresql://…``: the same benchmark with gchat's and Moodle's tables on PostgreSQL
    (the closed loop and the storm; the ladder and idle phases do not depend on the engine)."""
    out = tmp_path / "bench"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "bench.py"), "--quick", "--target", "gchat",
           "--db", postgresql_url, "--phases", "closed,storm", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "PostgreSQL" in proc.stdout.split("Machine:")[1], proc.stdout
    results = json.loads((out / "results.json").read_text())
    gchat = results["targets"]["gchat"]
    for transport in ("ws", "poll"):
        closed = gchat[f"closed_{transport}"]
        assert closed["lost"] == 0 and all(run["received"] > 0 for run in closed["runs"]), closed
    [storm] = gchat["storm"]
    assert storm["connected"] == storm["informed"] == 100 and storm["pair_unanswered"] == 0, storm
    admin = db_connect(postgresql_url)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname = %s", (results["database"],))
            assert cur.fetchall() == []
    finally:
        admin.close()
