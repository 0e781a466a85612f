"""Latency statistics of a step, and one sample of the machine's counters."""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def summarise(values_ns: array) -> dict[str, float]:
    values = sorted(values_ns)
    ms = 1e-6
    return {"n": len(values), "p50": percentile(values, 0.50) * ms, "p99": percentile(values, 0.99) * ms,
            "p999": percentile(values, 0.999) * ms, "max": (values[-1] * ms) if values else float("nan")}


PAIRING = {"ws>ws": "WS↔WS", "ws>poll": "WS↔poll", "poll>ws": "WS↔poll", "poll>poll": "poll↔poll"}


@dataclass
class Sample:
    server_cpu: float
    gen_cpu: float
    db_cpu: float
    queries: int | None
    questions: int | None
    t: float
    cpus: dict[int, tuple[float, float]] = field(default_factory=dict)
