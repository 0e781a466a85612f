"""Per-user limits: token buckets for sends, opens and typing, a sliding window for new
conversations, and :class:`RateLimits`, the one table of them the commands consult."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from gchat.config import Settings
from gchat.errors import GchatError

# Per-user limiters are dropped when idle once a table holds this many users: a bound on
# memory however many users pass through, without a sweep on every command.
MAX_TRACKED_USERS = 50_000
OPENS_WINDOW_SECS = 60.0
SEARCH_RATE = 3.0  # searches per second per user, on average (typed ahead)
SEARCH_BURST = 10


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

    def allow(self) -> bool:
        return self.take()

    @property
    def full(self) -> bool:
        return self.tokens + (self._clock() - self.stamp) * self.rate >= self.burst

    @property
    def idle(self) -> bool:
        """Full again: forgetting it changes nothing."""
        return self.full


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


class Allowance(Protocol):
    def allow(self) -> bool: ...

    @property
    def idle(self) -> bool: ...


A = TypeVar("A", bound=Allowance)


class PerUser(Generic[A]):
    """One limiter of a kind per user, made on first use by ``make``."""

    def __init__(self, make: Callable[[], A], max_users: int = MAX_TRACKED_USERS) -> None:
        self._make = make
        self._max_users = max_users
        self._by_user: dict[int, A] = {}

    def allow(self, user_id: int) -> bool:
        limiter = self._by_user.get(user_id)
        if limiter is None:
            if len(self._by_user) > self._max_users:
                self._by_user = {k: v for k, v in self._by_user.items() if not v.idle}
            limiter = self._by_user[user_id] = self._make()
        return limiter.allow()

    def __len__(self) -> int:
        return len(self._by_user)


class RateLimits:
    """The per-user rate limits of the commands, by kind. ``check(kind, user)`` spends one unit
    or raises ``rate_limited`` with the kind's message.

    * ``send``: sends and opens share a token bucket (``send_rate`` per second, ``send_burst``);
    * ``open``: new conversations, ``opens_per_minute`` in any minute;
    * ``typing``: typing notices, a bucket of the same size as sends but of their own (the
      widget sends at most one per conversation every few seconds);
    * ``search``: course-mate searches, typed ahead: a few per second, in bursts.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        rate, burst = settings.send_rate, settings.send_burst
        self._kinds: dict[str, tuple[PerUser[TokenBucket] | PerUser[WindowCounter], str]] = {
            "send": (PerUser(lambda: TokenBucket(rate, burst, clock)), "too many messages; slow down"),
            "open": (PerUser(lambda: WindowCounter(settings.opens_per_minute, OPENS_WINDOW_SECS, clock)),
                     "too many conversations opened in the last minute"),
            "typing": (PerUser(lambda: TokenBucket(rate, burst, clock)), "too many typing notices; slow down"),
            "search": (PerUser(lambda: TokenBucket(SEARCH_RATE, SEARCH_BURST, clock)),
                       "too many searches; slow down"),
        }

    def check(self, kind: str, user_id: int) -> None:
        limiter, message = self._kinds[kind]
        if not limiter.allow(user_id):
            raise GchatError("rate_limited", message)
