"""WebSocket heartbeats for the whole process from one timer.

Tornado's own pings (``websocket_ping_interval``) run a task per connection that sleeps on a
timer of its own: with 10,000 idle sockets that is 10,000 tasks and a timer heap of 10,000 entries,
each waking twice per interval. Here the connections sit on a ring of ``SLOTS`` slots, dealt out
in turn (a thousand that log in within the same second still fill every slot alike); one timer
visits a slot every ``interval / SLOTS`` seconds, so each connection is visited once per interval
and the pings are spread evenly over it. The rule is Tornado's: a connection is pinged, and if no
pong came back by the next visit (one interval later) it is closed. The first ping comes within
one interval of connecting.
"""

from __future__ import annotations

import logging
from typing import Protocol

import tornado.ioloop

log = logging.getLogger("gchat.websocket")

SLOTS = 100


class Beating(Protocol):
    """A connection the pinger looks after: ``heartbeat()`` is called once per interval and
    answers False when it closed the connection for a missing pong (it leaves the ring then);
    the ring's slot is kept on the connection itself (no table of connections besides the ring)."""

    ping_slot: int

    def heartbeat(self) -> bool: ...


class Pinger:
    """The ring of connections and the one timer that walks it. The timer runs only while the
    ring holds a connection. ``timeouts``: connections closed for a missing pong (/metrics)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.timeouts = 0
        self._ring: list[set[Beating]] = [set() for _ in range(SLOTS)]
        self._hand = 0  # the slot the next tick visits
        self._deal = 0  # the slot the next connection joins
        self._count = 0
        self._timer: tornado.ioloop.PeriodicCallback | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def running(self) -> bool:
        return self._timer is not None

    def add(self, conn: Beating) -> None:
        slot = conn.ping_slot = self._deal
        self._deal = (slot + 1) % SLOTS
        self._ring[slot].add(conn)
        self._count += 1
        if self._timer is None:
            self._timer = tornado.ioloop.PeriodicCallback(self.tick, self.interval * 1000 / SLOTS)
            self._timer.start()

    def discard(self, conn: Beating) -> None:
        members = self._ring[conn.ping_slot]
        if conn in members:
            members.remove(conn)
            self._count -= 1
            if not self._count:
                self.stop()

    def tick(self) -> None:
        """Visit one slot: each of its connections gets its heartbeat."""
        slot = self._ring[self._hand]
        self._hand = (self._hand + 1) % SLOTS
        for conn in list(slot):  # a heartbeat may end its connection, which leaves the slot
            try:
                if not conn.heartbeat():
                    self.timeouts += 1
                    self.discard(conn)  # counted once, not again while its close completes
            except Exception:
                log.exception("a WebSocket heartbeat failed")

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
