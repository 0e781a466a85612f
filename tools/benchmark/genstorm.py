"""The load generator's side of the storm (tools/benchmark/storm.py): many clients of one course
connect at a bounded concurrency while a pair chats.

Each storm client keeps what a widget keeps of presence: the course-mates it knows online (the
``ready`` list, then every ``presence`` change, a ``presence_batch`` applied change by change)
and how many more ``ready`` said were online without listing them (``online_total``). It counts
the presence frames and changes it received and when the last one arrived.

The pair: the first user sends a message every ``interval`` seconds (open loop); the second
answers each one at once with the first's send time in its text, so the first measures round
trips: time from its send to the answer's arrival, everything in between included.
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from typing import TYPE_CHECKING, Any

from tools.benchmark.gen import MONO, NativeWS, StepStats, gather_limited

if TYPE_CHECKING:
    from tools.benchmark.gen import Worker


class StormWS(NativeWS):
    """A WebSocket of a storm user: presence kept, frames counted."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.known: set[int] = set()
        self.hidden = 0
        self.frames = 0
        self.changes = 0
        self.last_presence = 0
        self.ready_at = 0

    def _frame(self, p: bytes) -> None:
        if b'"type":"presence' in p[:60]:
            self.frames += 1
            self.last_presence = MONO()
            event = json.loads(p)
            changes = event["changes"] if event["type"] == "presence_batch" else [event]
            self.changes += len(changes)
            for change in changes:
                uid = change["user"]["id"]
                if change["status"] == "online":
                    self.known.add(uid)
                else:
                    self.known.discard(uid)
        elif b'"type":"ready"' in p[:60]:
            event = json.loads(p)
            listed = {u["id"] for u in event["online"]}
            self.known |= listed
            self.hidden = max(0, int(event.get("online_total", len(listed))) - len(listed))
            self.ready_at = MONO()
            self.set_ready()
        else:
            super()._frame(p)

    def informed(self, expected: int) -> bool:
        """Whether it knows (listed, announced, or counted in ``online_total``) ``expected``
        course-mates online."""
        return len(self.known - {self.uid}) + self.hidden >= expected


async def storm_connect(worker: Worker, target: dict[str, Any], group: str, clients: list[list[Any]],
                        concurrency: int) -> dict[str, Any]:
    conns = [StormWS(worker, target, spec) for spec in clients]
    worker.groups.setdefault(group, []).extend(conns)

    async def connect_all() -> None:
        await gather_limited([c.connect() for c in conns], concurrency, return_exceptions=True)

    worker.storm_task = asyncio.get_running_loop().create_task(connect_all())
    return {"started": len(conns)}


async def storm_status(worker: Worker, group: str, expected: int) -> dict[str, Any]:
    conns = [c for c in worker.groups.get(group, []) if isinstance(c, StormWS)]
    ready = [c for c in conns if c.ready_at]
    return {"clients": len(conns), "connected": len(ready),
            "failed": sum(1 for c in conns if c.ready.done() and not c.ready.cancelled()
                          and c.ready.exception() is not None),
            "informed": sum(1 for c in ready if c.informed(expected)),
            "last_ready": max((c.ready_at for c in ready), default=0),
            "last_presence": max((c.last_presence for c in conns), default=0),
            "frames": [c.frames for c in conns], "changes": [c.changes for c in conns]}


async def chat_start(worker: Worker, group: str, interval: float) -> dict[str, Any]:
    sender, answerer = worker.groups[group][:2]
    sender.label_in = sender.label_out = "rtt"
    answerer.label_in, answerer.label_out = "oneway", "answer"
    answerer.answer = True
    worker.stats = StepStats(MONO(), MONO() + 10**15)
    for label in ("rtt", "oneway", "answer"):
        worker.stats.sent.setdefault(label, 0)
        worker.stats.lat.setdefault(label, array("q"))

    worker.rtt_log = []
    plain = sender.on_message

    def on_message(intended: int, from_uid: int, seq: int) -> None:  # the round trips, when they ended
        if from_uid != sender.uid:
            now = MONO()
            worker.rtt_log.append((now, now - intended))
        plain(intended, from_uid, seq)

    sender.on_message = on_message  # type: ignore[method-assign,assignment]

    async def chat() -> None:
        while True:
            now = MONO()
            sender.fire(now, now)
            await asyncio.sleep(interval)

    worker.chat_task = asyncio.get_running_loop().create_task(chat())
    return {"pair": [sender.uid, answerer.uid]}


async def chat_stop(worker: Worker, drain: float) -> dict[str, Any]:
    if worker.chat_task is not None:
        worker.chat_task.cancel()
        worker.chat_task = None
    st = worker.stats
    assert st is not None
    deadline = time.monotonic() + drain
    while time.monotonic() < deadline and len(st.lat["rtt"]) < st.sent["rtt"]:
        await asyncio.sleep(0.05)
    worker.stats = None
    return {**st.result(), "rtt_log": worker.rtt_log}
