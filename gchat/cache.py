"""A small asyncio TTL cache with single-flight loading.

Hot Moodle lookups (session → user, course-mates, profiles) are read far more often than they
change; a short TTL bounds how stale an answer can be (a logged-out session is served for at
most ``ttl`` seconds). Concurrent misses for one key share one load, so a burst of reconnects
costs one query, not one per connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def get_many(self, keys: Iterable[K]) -> tuple[dict[K, V], list[K]]:
        """The fresh entries of ``keys`` and the keys missing (one look at the clock for all)."""
        now = self._clock()
        entries = self._entries
        found: dict[K, V] = {}
        missing: list[K] = []
        for key in keys:
            entry = entries.get(key)
            if entry is not None and entry[0] > now:
                found[key] = entry[1]
            else:
                missing.append(key)
        return found, missing

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._evict()
        self._entries[key] = (self._clock() + self.ttl, value)

    def invalidate(self, key: K) -> None:
        self._entries.pop(key, None)

    def invalidate_where(self, predicate: Callable[[K, V], bool]) -> None:
        for key in [k for k, (_, v) in self._entries.items() if predicate(k, v)]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V]], *,
                          cache_if: Callable[[V], bool] | None = None) -> V:
        hit = self.get(key)
        if hit is not None:
            return hit
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(value)
            if cache_if is None or cache_if(value):
                self.put(key, value)
            return value
        finally:
            del self._loading[key]

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[key]
        while len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
