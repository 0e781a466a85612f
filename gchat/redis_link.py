"""The Redis broker's connection to Redis: clients, scripts, health, and the wake-up channel.

:class:`RedisLink` knows whether Redis answers and says so once in the log (a warning when it is
lost, an info line when it is back); every script call goes through :meth:`RedisLink.call`,
which turns Redis trouble into :class:`~gchat.errors.Unavailable` at once. The broker's
keep-alive loop waits on :attr:`RedisLink.probe`, which any failed call sets so that a lost
Redis is noticed now rather than at the next heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import urllib.parse
from collections.abc import Callable
from typing import Any

from gchat.config import ConfigError
from gchat.errors import Unavailable
from gchat.redis_scripts import SCRIPTS, Keys

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # pragma: no cover - the optional dependency is missing
    aioredis = None  # type: ignore[assignment]

log = logging.getLogger("gchat.redis")

BACKOFF_MIN_SECS = 0.1
BACKOFF_MAX_SECS = 5.0
DEFAULT_PRESENCE_TTL_SECS = 15.0
DEFAULT_OP_TIMEOUT_SECS = 2.0
MAX_CONNECTIONS = 64  # per process, for commands (plus one for the wake-up channel)
_OWN_URL_PARAMS = ("key_prefix", "presence_ttl")
UNREACHABLE = "the chat broker (Redis) is not reachable; try again"


def raise_if_cancelled() -> None:
    """End a background loop whose task was cancelled even if something inside swallowed the
    CancelledError (Python 3.11's ``asyncio.wait_for`` can, when the cancellation arrives as its
    awaitable finishes; so can a library): without this, the loop would outlive ``close()``."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def why(error: object) -> str:
    return str(error) or type(error).__name__


def split_url(url: str) -> tuple[str, dict[str, str], str]:
    """``broker_url`` → (URL for redis-py, gchat's own parameters, the URL without secrets)."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("broker_url: expected redis://host:6379/0, rediss://… or unix:///path/redis.sock")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in query if k in _OWN_URL_PARAMS}
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k not in _OWN_URL_PARAMS])
    # Not urlunsplit: it shortens unix:///path (no host) to unix:/path, which redis-py refuses.
    clean = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else "")
    where = parts.hostname or ""
    if parts.port:
        where += f":{parts.port}"
    redacted = f"{parts.scheme}://{where}{parts.path}"
    return clean, own, redacted


def _presence_ttl(given: float | None, own: dict[str, str]) -> float:
    try:
        ttl = float(given if given is not None else own.get("presence_ttl", DEFAULT_PRESENCE_TTL_SECS))
    except ValueError:
        raise ConfigError("broker_url: presence_ttl must be a number of seconds") from None
    if ttl <= 0:
        raise ConfigError("broker_url: presence_ttl must be greater than 0")
    return ttl


class RedisLink:
    """Two Redis clients (commands through a bounded pool; the wake-up channel on its own
    connection), the registered scripts, and whether Redis answers."""

    def __init__(self, url: str, *, key_prefix: str | None, presence_ttl: float | None,
                 process_id: str | None, op_timeout: float) -> None:
        if aioredis is None:
            raise ConfigError("broker_url: the Redis broker needs the redis package (pip install gchat[redis])")
        clean, own, self.where = split_url(url)
        self.presence_ttl = _presence_ttl(presence_ttl, own)
        self.ttl_ms = int(self.presence_ttl * 1000)
        process_id = process_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        if "|" in process_id:
            raise ValueError("a process id cannot contain '|'")
        self.keys = Keys(key_prefix if key_prefix is not None else own.get("key_prefix", "gchat:"), process_id)
        self.op_timeout = op_timeout
        options: dict[str, Any] = dict(decode_responses=True, socket_connect_timeout=1.0,
                                       socket_timeout=op_timeout, retry=Retry(NoBackoff(), 1))
        try:
            # Commands: one retry on a fresh connection (a pooled one may predate a Redis restart);
            # a burst waits for one of a bounded number of connections instead of failing.
            pool = aioredis.BlockingConnectionPool.from_url(clean, max_connections=MAX_CONNECTIONS,
                                                            timeout=op_timeout, **options)
            self.redis = aioredis.Redis.from_pool(pool)
            # Pub/sub on its own client: its connection is held by the listener for good.
            self.sub = aioredis.Redis.from_url(clean, health_check_interval=5, **options)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"broker_url: {exc}") from None
        self.scripts = {name: self.redis.register_script(src) for name, src in SCRIPTS.items()}
        self.healthy = True
        self.closed = False
        self.outages = 0
        self.probe = asyncio.Event()  # set: the keep-alive loop should check Redis now

    def set_down(self, exc: BaseException) -> None:
        if self.healthy:
            log.warning("Redis at %s lost (%s); reconnecting with backoff up to %.0fs", self.where,
                        why(exc), BACKOFF_MAX_SECS)
            self.outages += 1
        self.healthy = False

    def set_up(self) -> None:
        if not self.healthy:
            log.info("Redis at %s is back", self.where)
        self.healthy = True

    def check_open(self) -> None:
        if not self.healthy or self.closed:
            raise Unavailable(UNREACHABLE)

    async def call(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        """Run one script; Redis down or too slow → Unavailable (the client retries later)."""
        self.check_open()
        try:
            return await asyncio.wait_for(self.scripts[name](keys=keys, args=args), self.op_timeout)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self.probe.set()  # let the keep-alive loop find out now whether Redis is gone
            raise Unavailable(UNREACHABLE) from exc
        except RedisError as exc:
            log.error("Redis script %s failed: %s", name, exc)
            raise Unavailable("the chat broker (Redis) failed; try again") from exc

    async def mget(self, keys: list[str]) -> list[Any]:
        self.check_open()
        try:
            return list(await asyncio.wait_for(self.redis.mget(keys), self.op_timeout))
        except (RedisError, OSError) as exc:
            self.probe.set()
            raise Unavailable(UNREACHABLE) from exc

    async def listen(self, dispatch: Callable[[Any], None], subscribed: Callable[[], None]) -> None:
        """Receive the wake-ups of other processes (one bad message never stops the loop);
        ``subscribed()`` runs after every (re)subscription."""
        backoff = BACKOFF_MIN_SECS
        while not self.closed:
            raise_if_cancelled()
            pubsub = self.sub.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self.op_timeout):  # not wait_for: see raise_if_cancelled
                    await pubsub.subscribe(self.keys.channel)
                backoff = BACKOFF_MIN_SECS
                subscribed()
                self.probe.set()
                while not self.closed:
                    raise_if_cancelled()
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        dispatch(message.get("data"))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.healthy:
                    log.warning("Redis wake-up channel lost (%s); resubscribing", why(exc))
                self.probe.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECS)
            except Exception:
                log.exception("Redis wake-up listener failed; restarting it")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECS)
            finally:
                try:
                    await asyncio.wait_for(pubsub.aclose(), 1.0)
                except (Exception, asyncio.CancelledError):
                    pass  # the connection is being dropped anyway

    async def aclose(self) -> None:
        for client in (self.redis, self.sub):
            try:
                await client.aclose()
            except (RedisError, OSError):
                pass
