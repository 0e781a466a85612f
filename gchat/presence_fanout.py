"""Presence changes to the course-mates who should hear of them, coalesced.

When a whole course arrives at once (an exam morning, a site-wide course), every arrival is news
to every online course-mate: one event per change would be N²/2 frames for N arrivals, and chat
messages would queue behind them. So changes are gathered and delivered at most once per
``presence_interval`` (a first change after a quiet spell goes out at once).

At each delivery, a change still true (the user's presence did not flip back meanwhile) goes to
the users allowed to see it (its *audience*, decided when it happened) who are online *now*.
Each recipient gets its changes in order in one ``presence_batch`` event, or a plain
``presence`` event when it has only one. A batch also carries the recipient's own change when it
has one in the same delivery (clients ignore news of themselves): that way the users of a
course who all arrive together get one and the same event, encoded once and kept once in memory
however many logs hold it. A large fan-out is written in slices with the event loop free between
them (gchat/feed.py), so commands and messages that arrive meanwhile are served first.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from gchat.broker import Broker
from gchat.coursemates import MateSet
from gchat.errors import Unavailable
from gchat.tasks import Background

log = logging.getLogger("gchat.presence")

Publish = Callable[[Iterable[int], dict[str, Any]], Awaitable[None]]
RETRY_SECS = 2.0  # after the broker failed a delivery
ATTEMPTS = 4
# A delivery to many users costs the event loop about this much per recipient (its event into
# the log, its connection woken, the frame written); the next delivery waits this long per
# recipient of the last one at least, so that presence takes a bounded share of a busy loop
# (1,000 recipients: 0.6 s) and chat goes first.
SECS_PER_RECIPIENT = 0.0006
MAX_GAP = 2.0


@dataclass(frozen=True, slots=True)
class Change:
    uid: int
    user: dict[str, Any]  # the user object of the protocol
    status: str  # "online" or "offline"
    audience: AbstractSet[int]  # who may see it (gchat.moodle.Moodle.audience)


class PresenceFanout:
    """Gathers presence changes and delivers them in coalesced events."""

    def __init__(self, publish: Publish, broker: Broker, background: Background, interval: float) -> None:
        self._publish = publish
        self._broker = broker
        self._background = background
        self._interval = interval
        self._pending: list[Change] = []
        self._running = False
        self._task: asyncio.Task[Any] | None = None
        self._closed = False
        self._last = float("-inf")  # loop time of the last delivery
        self._gap = interval  # the least time between two deliveries, after the last one
        self.changes = 0
        self.events = 0

    def add(self, change: Change) -> None:
        if self._closed:
            return
        self._pending.append(change)
        self.changes += 1
        if not self._running:
            self._running = True
            self._background.spawn(self._run())

    def close(self) -> None:
        """Shutting down: nothing more is delivered (clients are told to reconnect)."""
        self._closed = True
        self._pending.clear()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        attempt = 0
        try:
            while self._pending:
                # The changes of this same turn of the loop go together even when nothing was
                # delivered for a while; then at most one delivery per interval.
                await asyncio.sleep(max(0.0, self._last + self._gap - loop.time()))
                changes, self._pending = self._pending, []
                self._last = loop.time()
                try:
                    await self._deliver(changes)
                    attempt = 0
                except Unavailable:
                    attempt += 1
                    if attempt >= ATTEMPTS:
                        log.warning("%d presence changes not delivered: broker unavailable", len(changes))
                        attempt = 0
                        continue
                    self._pending[:0] = changes  # in front of what came meanwhile: order is kept
                    self._last = loop.time() + RETRY_SECS * attempt - self._gap
                except Exception:  # one failed delivery must not stop presence for good
                    log.exception("presence delivery of %d changes failed", len(changes))
        finally:
            self._running = False
            self._task = None

    async def _deliver(self, changes: list[Change]) -> None:
        # A late change never overtakes a newer one: only what is still true goes out (with
        # several processes the newer one may have happened elsewhere), once per user.
        now_online = await self._broker.online({c.uid for c in changes})
        latest: dict[int, int] = {}
        for index, change in enumerate(changes):
            if (change.uid in now_online) == (change.status == "online"):
                latest[change.uid] = index
        kept = [changes[i] for i in sorted(latest.values())]
        # Who hears of each change: its audience, online now. Audiences that are a whole shared
        # course (gchat/coursemates.py; in a course arriving at once, all of them) share one look
        # at who is online and one set of recipients: the work grows with the recipients, not
        # with recipients × changes.
        looked: dict[int, frozenset[int]] = {}  # who is online, by shared course (or by change)
        keys: list[int] = []
        for index, change in enumerate(kept):
            audience = change.audience
            whole = audience.whole if isinstance(audience, MateSet) else None
            key = id(whole) if whole is not None else -1 - index
            if key not in looked:
                looked[key] = frozenset(await self._broker.online(whole if whole is not None else audience))
            keys.append(key)
        sharing = Counter(keys)
        by_recipients: dict[frozenset[int], list[int]] = {}
        for index, (change, key) in enumerate(zip(kept, keys)):
            online: frozenset[int] = looked[key]
            uid = change.uid
            # A user who hears of others in this delivery also gets its own change, so that all
            # of them share one event (its own course's set holds it when it is online).
            elsewhere = (sharing[key] > 1 and uid in online) or any(uid in other for k, other in looked.items()
                                                                     if k != key)
            if key >= 0 and uid in online:
                told = online if elsewhere else online - {uid}
            else:
                told = online | {uid} if elsewhere else online
            by_recipients.setdefault(told, []).append(index)
        everyone = set().union(*by_recipients)
        groups: dict[tuple[int, ...], list[int]] = {}
        if len(by_recipients) == 1:
            [(told, indexes)] = by_recipients.items()
            groups[tuple(indexes)] = list(told)
        else:
            mine: dict[int, list[int]] = {}
            for told, indexes in by_recipients.items():
                for uid in told:
                    got = mine.get(uid)
                    if got is None:
                        mine[uid] = list(indexes)
                    else:
                        got.extend(indexes)
            for uid, got in mine.items():
                groups.setdefault(tuple(sorted(got)), []).append(uid)
        self._gap = min(MAX_GAP, max(self._interval, len(everyone) * SECS_PER_RECIPIENT))
        for group, uids in groups.items():
            if len(group) == 1:
                change = kept[group[0]]
                event: dict[str, Any] = {"type": "presence", "user": change.user, "status": change.status}
            else:
                event = {"type": "presence_batch",
                         "changes": [{"user": kept[i].user, "status": kept[i].status} for i in group]}
            self.events += 1
            await self._publish(uids, event)
