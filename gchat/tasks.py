"""Background work of the router's parts: tasks kept referenced until they end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class Background:
    """Runs coroutines in the background for one router. The event loop keeps only weak
    references to tasks, so an unreferenced task can vanish mid-flight: this keeps them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def later(self, delay_secs: float, work: Callable[[], Coroutine[Any, Any, Any]]) -> asyncio.TimerHandle:
        """Spawn ``work()`` after ``delay_secs`` seconds (cancel the handle to call it off)."""
        return asyncio.get_running_loop().call_later(delay_secs, lambda: self.spawn(work()))

    def __len__(self) -> int:
        return len(self._tasks)
