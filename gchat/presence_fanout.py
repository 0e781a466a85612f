"""Presence changes to the course-mates who should hear of them, coalesced.

When a whole course arrives at once (an exam morning, a site-wide course), every arrival is news
to every online course-mate: one event per change would be N²/2 frames for N arrivals, and chat
messages would queue behind them. So changes are gathered and sent at most once per
``presence_interval`` (a first change after a quiet spell goes out at once): each recipient gets
the changes meant for it in one ``presence_batch`` event (``{"changes": [{user, status}, …]}``,
applied in order as separate ``presence`` events would be), or a plain ``presence`` event when
there is only one. Recipients with the same changes share one encoded event, and a large fan-out
is written in slices with the event loop free between them, so commands and messages that
arrive meanwhile are served before the rest of the fan-out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from gchat.tasks import Background

log = logging.getLogger("gchat.presence")

Publish = Callable[[Iterable[int], dict[str, Any]], Awaitable[None]]


class PresenceFanout:
    """Gathers (user, status, recipients) changes and delivers them in coalesced events."""

    def __init__(self, publish: Publish, background: Background, interval: float) -> None:
        self._publish = publish
        self._background = background
        self._interval = interval
        self._pending: list[tuple[dict[str, Any], Iterable[int]]] = []
        self._running = False
        self._last = float("-inf")  # loop time of the last delivery
        self.changes = 0
        self.events = 0

    def add(self, user: dict[str, Any], status: str, recipients: Iterable[int]) -> None:
        """Queue one change for ``recipients`` (decided by the caller when the change happened)."""
        self._pending.append(({"user": user, "status": status}, recipients))
        self.changes += 1
        if not self._running:
            self._running = True
            self._background.spawn(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                # The changes of this same turn of the loop go together even when nothing was
                # sent for a while; then at most one delivery per interval.
                await asyncio.sleep(max(0.0, self._last + self._interval - loop.time()))
                changes, self._pending = self._pending, []
                self._last = loop.time()
                try:
                    await self._deliver(changes)
                except Exception:  # one failed delivery must not stop presence for good
                    log.exception("presence delivery of %d changes failed", len(changes))
        finally:
            self._running = False

    async def _deliver(self, changes: list[tuple[dict[str, Any], Iterable[int]]]) -> None:
        """Each recipient gets its changes in order; recipients with the same changes, one event."""
        mine: dict[int, list[int]] = {}
        for index, (_, recipients) in enumerate(changes):
            for uid in recipients:
                got = mine.get(uid)
                if got is None:
                    mine[uid] = [index]
                else:
                    got.append(index)
        groups: dict[tuple[int, ...], list[int]] = {}
        for uid, indexes in mine.items():
            groups.setdefault(tuple(indexes), []).append(uid)
        for group, uids in groups.items():
            if len(group) == 1:
                event = {"type": "presence", **changes[group[0]][0]}
            else:
                event = {"type": "presence_batch", "changes": [changes[i][0] for i in group]}
            self.events += 1
            await self._publish(uids, event)
