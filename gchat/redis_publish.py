"""The Redis broker's publish path: queued publishes written as pipelines, and the users whose
events were lost while Redis was away (they get a reset when it is back)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gchat.redis_link import RedisLink, why

try:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # pragma: no cover - RedisLink refuses to start without redis
    pass

log = logging.getLogger("gchat.redis")

PUBLISH_BATCH = 500  # publishes per pipeline
LOSS_LOG_EVERY_SECS = 5.0
# A log untouched (no event, no client attaching) this long expires: a reset for a very idle
# client, and no garbage left behind when every process died without cleaning up.
LOG_TTL_SECS = 24 * 3600

_Pending = tuple[list[int], str, "asyncio.Future[None]"]


class RedisPublisher:
    """Appends events to live logs, one pipeline per batch, and remembers what it lost."""

    def __init__(self, link: RedisLink, *, log_size: int, publish_timeout: float,
                 wake: Callable[[int], None]) -> None:
        self._link = link
        self._log_size = log_size
        self._publish_timeout = publish_timeout
        self._wake = wake
        self._outbox: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self.lost: set[int] = set()  # users whose events could not be stored: reset them
        self.published = 0
        self.losses = 0
        self._last_loss_log = 0.0

    async def publish(self, user_ids: list[int], body: str) -> None:
        """Append to the live logs and wake every process. Never raises for Redis trouble and
        never waits for Redis much longer than ``publish_timeout`` (at most the batch on the wire,
        then its own): the event is then lost and its users get a reset when Redis is back (the
        message itself is in the database already).

        Publishes are queued and written by one task, as pipelines: whatever arrived while the
        previous batch was on the wire goes in the next one, in order, with one wake-up message
        per batch. That is faster than a connection per publish and keeps this process's events
        in the order they were published."""
        if not user_ids or self._link.closed:
            return
        if not self._link.healthy:
            self.lose(user_ids, "Redis is away")
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((user_ids, body, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())
        try:
            # Bounded by the writer: a batch answers within publish_timeout or fails, and then
            # everything queued behind it fails at once.
            await done
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._link.probe.set()
            self.lose(user_ids, exc)
            return
        except RedisError as exc:
            log.error("Redis publish failed: %s", exc)
            self.lose(user_ids, exc)
            return
        self.published += 1
        for uid in user_ids:
            self._wake(uid)

    async def _write(self) -> None:
        keys_of = self._link.keys
        while self._outbox:
            batch = self._outbox[:PUBLISH_BATCH]
            del self._outbox[:PUBLISH_BATCH]
            woken: dict[int, None] = {}
            try:
                pipe = self._link.redis.pipeline(transaction=False)
                for uids, body, _ in batch:
                    keys = [k for uid in uids for k in keys_of.log(uid)]
                    await self._link.scripts["publish"](keys=keys, args=[body, self._log_size, LOG_TTL_SECS, *uids],
                                                        client=pipe)
                    woken.update(dict.fromkeys(uids))
                pipe.publish(keys_of.channel, f"{keys_of.process_id}|{','.join(map(str, woken))}")
                results = await asyncio.wait_for(pipe.execute(raise_on_error=False), self._publish_timeout)
            except asyncio.CancelledError:
                self._fail(batch, RedisConnectionError("the broker is closing"))
                raise
            except Exception as exc:
                # Redis is gone or too slow: fail this batch and everything queued behind it now
                # rather than one timeout after another.
                if isinstance(exc, asyncio.TimeoutError):
                    exc = RedisTimeoutError(f"no answer in {self._publish_timeout}s")
                self._fail(batch, exc)
                continue
            for (_, _, done), result in zip(batch, results, strict=False):
                if done.done():
                    continue
                if isinstance(result, Exception):
                    done.set_exception(result)
                else:
                    done.set_result(None)

    def _fail(self, batch: list[_Pending], error: Exception) -> None:
        failed = batch + self._outbox
        self._outbox = []
        for _, _, done in failed:
            if not done.done():
                done.set_exception(error)

    def lose(self, uids: list[int], reason: object) -> None:
        self.lost.update(uids)
        self.losses += 1
        now = time.monotonic()
        if now - self._last_loss_log > LOSS_LOG_EVERY_SECS:
            self._last_loss_log = now
            log.warning("events not stored in Redis (%s): %d users will be reset when it is back",
                        why(reason), len(self.lost))

    async def drain(self) -> None:
        """Let the batch on the wire finish (bounded by publish_timeout), then stop writing."""
        if self._writer is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), self._publish_timeout)
        except (TimeoutError, Exception):
            self._writer.cancel()
