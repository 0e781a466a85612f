"""The benchmark's numbers: limits that decide a step, the targets, and the run's sizes."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

P99_LIMIT_MS = 250.0
GEN_CPU_WARN = 70.0     # % of one core: the generator may start to distort latency
GEN_CPU_BOUND = 85.0    # % of one core: the step measures the generator, not the server
LAG_BOUND_MS = 25.0     # p99 of how late the generator issued its sends
OTHER_LOAD_LIMIT = 40.0  # % of a core taken by other processes (MariaDB excepted) during a step
DISTURBED_RETRIES = 3    # a step disturbed by other load is run again, at most this often per phase
SETTLED_CPU = 0.10       # after an overloaded step: server + database CPU (cores) below which they are settled
SETTLE_WINDOW_S = 1.0    # ... over this window,
SETTLE_MAX_S = 20.0      # waited for at most this long
MIN_HEARTBEATS = 50      # fewer in an idle window: no per-heartbeat cost is derived
# Real heartbeat intervals, seconds (what the idle CPU figure is scaled to).
REAL_HB = {("gchat", "ws"): 25.0, ("gchat", "poll"): 50.0, ("tornado", "ws"): 25.0, ("tornado", "poll"): 50.0,
           ("socketio", "ws"): 25.0, ("socketio", "poll"): 25.0}
TARGETS = ("gchat", "tornado", "socketio")
NAMES = {"gchat": "gchat", "tornado": "bare Tornado relay", "socketio": "python-socketio relay"}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Config:
    ws_pairs: int = 100
    poll_pairs: int = 100
    mixed_pairs: int = 30          # of each pairing
    start_rate: float = 400.0      # messages/s, all senders together
    factor: float = 1.5
    max_steps: int = 12
    refine: int = 1                # bisection steps between the last pass and the first failure
    warmup: float = 0.7
    measure: float = 3.0
    half_measure: float = 6.0
    drain: float = 2.0
    idle_levels: tuple[int, ...] = (1000, 5000, 10000)
    idle_group: int = 25           # users per course among the idle users (presence fan-out)
    idle_settle: float = 2.0
    idle_window: float = 4.0       # seconds of CPU measurement per idle level (8-24 s at the top one)
    idle_connect_limit: float = 90.0  # seconds allowed to open one idle level's connections
    # Heartbeat interval (s) while measuring idle CPU, instead of the real 25 s / 45-55 s: the
    # top level's window lasts 1.2 intervals, so every connection beats about once in it even
    # when all were opened just before. Not shorter: 10,000 connections would then beat so often
    # that the slower servers (Engine.IO polling: three requests per beat) saturate. The cost
    # per beat is scaled back to the real interval.
    idle_hb_ws: float = 10.0
    idle_hb_poll: float = 10.0
    idle_hb_socketio_poll: float = 20.0
    quiet_wait: float = 120.0      # seconds to wait, before each target, for the machine to calm down
    # Closed loop: pairs that each bounce one message back and forth (tools/benchmark/closed.py).
    closed_pairs: int = 40
    closed_warmup: float = 1.0
    closed_measure: float = 4.0
    closed_runs: int = 3
    retry_disturbed: bool = True   # run a closed-loop window again when other load disturbed it
    # Storm: N users of one course connect while a pair chats (tools/benchmark/storm.py; gchat only).
    storm_levels: tuple[int, ...] = (1000, 1500)
    storm_concurrency: int = 100   # connections being opened at once
    storm_chat_interval: float = 0.2
    storm_quiet: float = 2.0       # seconds without a presence frame that end the storm
    storm_limit: float = 300.0
    storm_rtt_timeout: float = 10.0  # a round trip not answered by then is counted as unanswered

    @classmethod
    def quick(cls) -> Config:
        return cls(ws_pairs=10, poll_pairs=10, mixed_pairs=4, start_rate=100.0, factor=2.0, max_steps=3, refine=0,
                   warmup=0.3, measure=1.2, half_measure=1.5, drain=1.5, idle_levels=(300,), idle_settle=0.5,
                   idle_window=1.5, idle_hb_ws=1.0, idle_hb_poll=1.0, idle_hb_socketio_poll=1.0, quiet_wait=0.0,
                   closed_pairs=5, closed_warmup=0.3, closed_measure=1.0, closed_runs=1, retry_disturbed=False,
                   storm_levels=(100,),
                   storm_concurrency=50, storm_quiet=1.0, storm_limit=60.0, storm_rtt_timeout=3.0)
