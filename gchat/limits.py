"""Per-user limits: token buckets for sends and opens, a sliding window for new conversations."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take()`` is False when empty."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "_clock")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self._clock = clock
        self.stamp = clock()

    def take(self, cost: float = 1.0) -> bool:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    @property
    def full(self) -> bool:
        return self.tokens + (self._clock() - self.stamp) * self.rate >= self.burst


class WindowCounter:
    """At most ``limit`` events in any ``window`` seconds."""

    __slots__ = ("limit", "window", "stamps", "_clock")

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.stamps: deque[float] = deque()
        self._clock = clock

    def allow(self) -> bool:
        now = self._clock()
        while self.stamps and self.stamps[0] <= now - self.window:
            self.stamps.popleft()
        if len(self.stamps) >= self.limit:
            return False
        self.stamps.append(now)
        return True

    @property
    def idle(self) -> bool:
        return not self.stamps or self.stamps[-1] <= self._clock() - self.window
