"""The Redis broker: event logs, wake-ups and presence shared by any number of gchat processes.

Selected by ``broker_url`` (``redis://host:6379/0``, ``rediss://…``, ``unix:///path?db=0``). Any
process serves any request of any user, so no sticky sessions are needed. Redis is a cache of
recent events and of who is connected; the database stays the source of truth (DESIGN.md).

Keys, all under the key prefix (``gchat:`` unless the URL says ``?key_prefix=…``)::

    log:<uid>       hash {epoch, seq}: the live log of a user; no key = no log
    events:<uid>    stream of that log, entry id "<seq>-0", field "e" = the event's JSON
    on:<uid>        "1" while the user is online (set once by the offline → online transition)
    conns:<uid>     set of "<process id>|<connection id>", the user's connections everywhere
    procs           sorted set: process id → its last heartbeat (Redis clock, ms)
    proc:<pid>      set of user ids a process has had connections for (to clean up after it)
    wake            pub/sub channel: "<process id>|<uid>,<uid>,…" after every batch of publishes
                    (every process hears every wake-up and wakes its own clients of those users)

Each log has a random **epoch**: a flushed or restarted Redis, or a dropped log, means a new
epoch, so an old cursor is never trusted (``CursorGone`` → ``ready`` with ``reset: true``). Every
change that must be atomic (append only to a live log, offline → online exactly once, online →
offline exactly once, reaping a dead process) is one Lua script.

A connection counts only while its process keeps beating (every ``presence_ttl / 3``); the
connections of a process that has not beaten for ``presence_ttl`` seconds (crashed, or stuck)
stop counting, and the first process to notice reaps them and reports the users left with no
connection through :attr:`RedisBroker.on_orphan`.

Redis faults: reconnection with capped exponential backoff (0.1 s doubling to 5 s), a warning
when Redis is lost and an info line when it is back. While Redis is down, :meth:`publish` never
raises (the message is committed already); it remembers whose events were lost and, when Redis
answers again, drops those logs and wakes their clients, who then get a ``reset`` instead of a
silent gap. Other calls raise :class:`~gchat.errors.Unavailable` at once.

Running Redis for gchat: no persistence is needed, and none is better (``save ""``,
``appendonly no``): a restart is then a clean reset, while a restore from an older snapshot could
hand out again sequence numbers that clients have already seen. Presence keys must not be
evicted: ``maxmemory-policy noeviction`` or ``volatile-lru`` (only event logs carry a TTL).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
import urllib.parse
from typing import Any, Callable, Iterable

from gchat.broker import Broker, CursorGone, parse_cursor, with_cursor
from gchat.config import ConfigError
from gchat.errors import Unavailable

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
DEFAULT_PUBLISH_TIMEOUT_SECS = 0.5
MAX_CONNECTIONS = 64  # per process, for commands (plus one for the wake-up channel)
PUBLISH_BATCH = 500  # publishes per pipeline
# A log untouched (no event, no client attaching) this long expires: a reset for a very idle
# client, and no garbage left behind when every process died without cleaning up.
LOG_TTL_SECS = 24 * 3600
_OWN_URL_PARAMS = ("key_prefix", "presence_ttl")

# -- Lua ------------------------------------------------------------------------------------

_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Live connections of one user: members "<pid>|<conn>" whose process beat since `cutoff`.
# Members of processes that stopped beating are removed on the way.
_LIVE = _NOW + """
local function live(conns, procs, cutoff)
  local n = 0
  for _, m in ipairs(redis.call('SMEMBERS', conns)) do
    local pid = string.match(m, '^(.*)|')
    local beat = pid and redis.call('ZSCORE', procs, pid)
    if beat and tonumber(beat) >= cutoff then
      n = n + 1
    else
      redis.call('SREM', conns, m)
    end
  end
  return n
end
"""

# KEYS log, events | ARGV fresh epoch, ttl → {epoch, seq}; creates the log when there is none.
_ENSURE = """
local e = redis.call('HGET', KEYS[1], 'epoch')
if not e then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', 0)
  e = ARGV[1]
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {e, redis.call('HGET', KEYS[1], 'seq')}
"""

# KEYS log1, events1, log2, events2, … | ARGV body, maxlen, ttl, uid1, uid2, …
# Appends only to live logs: a dropped log is never resurrected without an epoch. (The wake-up
# that follows goes to every listed user, even one without a log: its clients find their
# cursor gone and reset.)
_PUBLISH = """
local body, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3]
local appended = 0
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local seq = redis.call('HINCRBY', KEYS[i], 'seq', 1)
    local ok = redis.pcall('XADD', KEYS[i + 1], 'MAXLEN', '~', maxlen, seq .. '-0', 'e', body)
    if type(ok) == 'table' and ok.err then
      redis.call('DEL', KEYS[i], KEYS[i + 1])  -- an inconsistent log: drop it, its clients reset
    else
      redis.call('EXPIRE', KEYS[i], ttl)
      redis.call('EXPIRE', KEYS[i + 1], ttl)
      appended = appended + 1
    end
  end
end
return appended
"""

# KEYS log, events | ARGV epoch, seq → {1, last, id1, body1, …} or {0, reason}. Never partial:
# the entries returned must be exactly seq+1 … last.
_READ = """
local m = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
if not m[1] then return {0, 'no log'} end
if m[1] ~= ARGV[1] then return {0, 'another epoch'} end
local last, cur = tonumber(m[2]), tonumber(ARGV[2])
if cur > last then return {0, 'cursor from the future'} end
if cur == last then return {1, last} end
local entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2] .. '-0', '+')
if #entries ~= last - cur or entries[1][1] ~= (cur + 1) .. '-0' then return {0, 'trimmed'} end
local out = {1, last}
for _, entry in ipairs(entries) do
  out[#out + 1] = entry[1]
  out[#out + 1] = entry[2][2]
end
return out
"""

# KEYS log, events, conns, procs | ARGV ttl_ms → 1 dropped, 0 kept (the user has connections).
_DROP = _LIVE + """
if live(KEYS[3], KEYS[4], now_ms() - tonumber(ARGV[1])) > 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""

# KEYS log1, events1, … → drops those logs unconditionally (their events were lost).
_FORGET = """
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
return #KEYS
"""

# KEYS conns, on, proc users | ARGV member, uid → 1 when the user just came online.
_ADD = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
if redis.call('SET', KEYS[2], '1', 'NX') then return 1 end
return 0
"""

# KEYS conns, procs | ARGV member, ttl_ms → live connections left.
_REMOVE = _LIVE + """
redis.call('SREM', KEYS[1], ARGV[1])
return live(KEYS[1], KEYS[2], now_ms() - tonumber(ARGV[2]))
"""

# KEYS conns, procs | ARGV ttl_ms → live connections.
_COUNT = _LIVE + """
return live(KEYS[1], KEYS[2], now_ms() - tonumber(ARGV[1]))
"""

# KEYS conns, on, procs | ARGV ttl_ms, uid, prefix → 1 for the one caller that took the user
# from online to offline, 0 when it still has live connections or someone else did it.
_OFFLINE = _LIVE + """
if live(KEYS[1], KEYS[3], now_ms() - tonumber(ARGV[1])) > 0 then return 0 end
if redis.call('DEL', KEYS[2]) == 0 then return 0 end
for _, pid in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  redis.call('SREM', ARGV[3] .. 'proc:' .. pid, ARGV[2])
end
return 1
"""

# KEYS procs | ARGV pid, ttl_ms → 1 when this process was alive already, 0 when it is new,
# was late (its connections may have been dropped) or was reaped: it must re-register them.
_BEAT = _NOW + """
local now = now_ms()
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
if old and tonumber(old) >= now - tonumber(ARGV[2]) then return 1 end
return 0
"""

# KEYS procs | ARGV prefix, pid, uid1, conn1, uid2, conn2, … (re-registration after a gap)
_ADD_MANY = """
local prefix, pid = ARGV[1], ARGV[2]
for i = 3, #ARGV, 2 do
  redis.call('SADD', prefix .. 'conns:' .. ARGV[i], pid .. '|' .. ARGV[i + 1])
  redis.call('SADD', prefix .. 'proc:' .. pid, ARGV[i])
  redis.call('SET', prefix .. 'on:' .. ARGV[i], '1', 'NX')
end
return 1
"""

# KEYS procs | ARGV ttl_ms, prefix → user ids left online with no live connection by processes
# that stopped beating. Each dead process is reaped by exactly one caller.
_REAP = _LIVE + """
local cutoff = now_ms() - tonumber(ARGV[1])
local prefix = ARGV[2]
local orphans = {}
for _, pid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. cutoff, 'LIMIT', 0, 20)) do
  redis.call('ZREM', KEYS[1], pid)
  local users = prefix .. 'proc:' .. pid
  for _, uid in ipairs(redis.call('SMEMBERS', users)) do
    if live(prefix .. 'conns:' .. uid, KEYS[1], cutoff) == 0 and redis.call('EXISTS', prefix .. 'on:' .. uid) == 1 then
      orphans[#orphans + 1] = uid
    end
  end
  redis.call('DEL', users)
end
return orphans
"""

# KEYS procs | ARGV pid, prefix, uid1, member1, … : a clean shutdown. The connections stop
# counting now; the process is marked dead so that another one reaps its users (and reports
# those left with no connection) at its next heartbeat.
_CLOSE = """
redis.call('ZADD', KEYS[1], 0, ARGV[1])
for i = 3, #ARGV, 2 do redis.call('SREM', ARGV[2] .. 'conns:' .. ARGV[i], ARGV[i + 1]) end
return 1
"""

_SCRIPTS = {"ensure": _ENSURE, "publish": _PUBLISH, "read": _READ, "drop": _DROP, "forget": _FORGET,
            "add": _ADD, "remove": _REMOVE, "count": _COUNT, "offline": _OFFLINE, "beat": _BEAT,
            "add_many": _ADD_MANY, "reap": _REAP, "close": _CLOSE}


def _why(error: object) -> str:
    return str(error) or type(error).__name__


def _split_url(url: str) -> tuple[str, dict[str, str], str]:
    """``broker_url`` → (URL for redis-py, gchat's own parameters, the URL without secrets)."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("broker_url: expected redis://host:6379/0, rediss://… or unix:///path/redis.sock")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in query if k in _OWN_URL_PARAMS}
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k not in _OWN_URL_PARAMS])
    # Not urlunsplit: it shortens "unix:///path" to "unix:/path", which redis-py refuses.
    clean = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else "")
    where = parts.hostname or ""
    if parts.port:
        where += f":{parts.port}"
    redacted = f"{parts.scheme}://{where}{parts.path}"
    return clean, own, redacted


class RedisBroker(Broker):
    """Event logs, wake-ups and presence in Redis, shared by several gchat processes.

    :param url: ``redis://``, ``rediss://`` or ``unix://`` URL; gchat reads two parameters of
        its own from it: ``key_prefix`` (default ``gchat:``) and ``presence_ttl`` (seconds).
    :param log_size: events kept per user (approximately: ``XADD MAXLEN ~``, never fewer).
    :param presence_ttl: seconds after which the connections of a process that stopped beating
        no longer count; it beats every third of that.
    :param process_id: this process's name in Redis (default host:pid:random); no ``|``.
    """

    name = "redis"

    def __init__(self, url: str, *, log_size: int = 1000, key_prefix: str | None = None,
                 presence_ttl: float | None = None, process_id: str | None = None,
                 op_timeout: float = DEFAULT_OP_TIMEOUT_SECS,
                 publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT_SECS) -> None:
        super().__init__()
        if aioredis is None:
            raise ConfigError("broker_url: the Redis broker needs the redis package (pip install gchat[redis])")
        clean, own, self.where = _split_url(url)
        try:
            ttl = float(presence_ttl if presence_ttl is not None
                        else own.get("presence_ttl", DEFAULT_PRESENCE_TTL_SECS))
        except ValueError:
            raise ConfigError("broker_url: presence_ttl must be a number of seconds") from None
        if ttl <= 0:
            raise ConfigError("broker_url: presence_ttl must be greater than 0")
        self.prefix = key_prefix if key_prefix is not None else own.get("key_prefix", "gchat:")
        self.process_id = process_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        if "|" in self.process_id:
            raise ValueError("a process id cannot contain '|'")
        self.presence_ttl = ttl
        self._ttl_ms = int(ttl * 1000)
        self._beat_every = ttl / 3
        self._log_size = log_size
        self._op_timeout = op_timeout
        self._publish_timeout = publish_timeout
        self._channel = self.prefix + "wake"
        options: dict[str, Any] = dict(decode_responses=True, socket_connect_timeout=1.0,
                                       socket_timeout=op_timeout, retry=Retry(NoBackoff(), 1))
        try:
            # Commands: one retry on a fresh connection (a pooled one may predate a Redis restart);
            # a burst waits for one of a bounded number of connections instead of failing.
            pool = aioredis.BlockingConnectionPool.from_url(clean, max_connections=MAX_CONNECTIONS,
                                                            timeout=op_timeout, **options)
            self._redis = aioredis.Redis.from_pool(pool)
            # Pub/sub on its own client: its connection is held by the listener for good.
            self._sub = aioredis.Redis.from_url(clean, health_check_interval=5, **options)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"broker_url: {exc}") from None
        self._scripts = {name: self._redis.register_script(src) for name, src in _SCRIPTS.items()}
        self._local: dict[int, set[str]] = {}  # this process's connections, for re-registration
        self._lost: set[int] = set()  # users whose events could not be stored: reset them
        self._unremoved: set[tuple[int, str]] = set()  # connections to remove when Redis is back
        self._outbox: list[tuple[list[int], str, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._healthy = True
        self._closed = False
        self._resync = False
        self._probe = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_loss_log = 0.0
        self._counts = {"published": 0, "lost": 0, "outages": 0}
        #: Called with a user id left online with no live connection (its process crashed or
        #: shut down, or its connection could not be removed while Redis was down). The router
        #: should treat it like a last connection closing: grace period, then ``mark_offline``.
        #: Unset, the broker takes the user offline itself (no presence event is sent).
        self.on_orphan: Callable[[int], None] | None = None

    # -- keys ---------------------------------------------------------------------------------

    def _log_keys(self, uid: int) -> list[str]:
        return [f"{self.prefix}log:{uid}", f"{self.prefix}events:{uid}"]

    def _conns(self, uid: int) -> str:
        return f"{self.prefix}conns:{uid}"

    def _on(self, uid: int) -> str:
        return f"{self.prefix}on:{uid}"

    @property
    def _procs(self) -> str:
        return self.prefix + "procs"

    def _member(self, conn_id: str) -> str:
        return f"{self.process_id}|{conn_id}"

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Register this process, then keep beating and listening in the background. Redis
        being down at start is not fatal: the process keeps trying and says so."""
        self._closed = False
        try:
            orphans = await asyncio.wait_for(self._beat(), self._op_timeout)
            self._set_up()
        except (RedisError, OSError) as exc:
            self._set_down(exc)
            orphans = []
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keepalive()), loop.create_task(self._listen())]
        await self._orphaned(orphans)

    async def close(self) -> None:
        """Stop the background work and withdraw this process's connections."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        if self._writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), self._publish_timeout)
            except (asyncio.TimeoutError, Exception):
                self._writer.cancel()
        args: list[Any] = [self.process_id, self.prefix]
        for uid, conns in self._local.items():
            for conn_id in conns:
                args += [uid, self._member(conn_id)]
        try:
            await asyncio.wait_for(self._scripts["close"](keys=[self._procs], args=args), self._op_timeout)
        except (RedisError, OSError) as exc:
            log.warning("could not withdraw this process's connections from Redis (%s); they expire in %.0fs",
                        exc, self.presence_ttl)
        self._local.clear()
        for client in (self._redis, self._sub):
            try:
                await client.aclose()
            except (RedisError, OSError):
                pass

    async def healthy(self) -> bool:
        return self._healthy and not self._closed

    def _set_down(self, exc: BaseException) -> None:
        if self._healthy:
            log.warning("Redis at %s lost (%s); reconnecting with backoff up to %.0fs", self.where,
                        _why(exc), BACKOFF_MAX_SECS)
            self._counts["outages"] += 1
        self._healthy = False

    def _set_up(self) -> None:
        if not self._healthy:
            log.info("Redis at %s is back", self.where)
        self._healthy = True

    async def _call(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        """Run one script; Redis down or too slow → Unavailable (the client retries later)."""
        if not self._healthy or self._closed:
            raise Unavailable("the chat broker (Redis) is not reachable; try again")
        try:
            return await asyncio.wait_for(self._scripts[name](keys=keys, args=args), self._op_timeout)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._probe.set()  # let the keep-alive loop find out now whether Redis is gone
            raise Unavailable("the chat broker (Redis) is not reachable; try again") from exc
        except RedisError as exc:
            log.error("Redis script %s failed: %s", name, exc)
            raise Unavailable("the chat broker (Redis) failed; try again") from exc

    async def _keepalive(self) -> None:
        """Beat every presence_ttl/3; on failure retry with capped exponential backoff."""
        backoff = BACKOFF_MIN_SECS
        while not self._closed:
            orphans: list[int] = []
            self._probe.clear()
            try:
                orphans = await asyncio.wait_for(self._beat(), self._op_timeout)
                self._set_up()
                await self._recover()
                delay, backoff = self._beat_every, BACKOFF_MIN_SECS
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._set_down(exc)
                delay, backoff = backoff, min(backoff * 2, BACKOFF_MAX_SECS)
            except Exception:  # a bug must not stop the heartbeat of a whole process
                log.exception("Redis keep-alive failed")
                delay = self._beat_every
            await self._orphaned(orphans)
            try:
                await asyncio.wait_for(self._probe.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _beat(self) -> list[int]:
        """Say this process is alive; re-register its connections if Redis forgot them; reap
        processes that stopped beating. Returns the users they left orphaned."""
        fresh = await self._scripts["beat"](keys=[self._procs], args=[self.process_id, self._ttl_ms])
        if not fresh and self._local:
            args: list[Any] = [self.prefix, self.process_id]
            for uid, conns in list(self._local.items()):
                for conn_id in conns:
                    args += [uid, conn_id]
            await self._scripts["add_many"](keys=[self._procs], args=args)
            log.info("re-registered %d connections of this process in Redis", (len(args) - 2) // 2)
        return [int(uid) for uid in await self._scripts["reap"](keys=[self._procs], args=[self._ttl_ms, self.prefix])]

    async def _recover(self) -> None:
        """After an outage: reset the users whose events were lost, remove the connections that
        closed meanwhile, and re-read every local client (wake-ups may have been missed)."""
        if self._lost:
            lost, self._lost = self._lost, set()
            keys = [k for uid in lost for k in self._log_keys(uid)]
            try:
                await self._scripts["forget"](keys=keys, args=[])
                await self._redis.publish(self._channel, f"{self.process_id}|{','.join(map(str, lost))}")
            except BaseException:
                self._lost |= lost
                raise
            log.info("reset the event logs of %d users whose events were lost while Redis was away", len(lost))
            for uid in lost:
                self._wake(uid)
        orphans = []
        while self._unremoved:
            uid, conn_id = self._unremoved.pop()
            try:
                left = await self._scripts["remove"](keys=[self._conns(uid), self._procs],
                                                     args=[self._member(conn_id), self._ttl_ms])
            except BaseException:
                self._unremoved.add((uid, conn_id))
                raise
            if left == 0 and uid not in self._local:
                orphans.append(uid)
        await self._orphaned(orphans)
        if self._resync:
            self._resync = False
            for uid in list(self._wakeups):
                self._wake(uid)

    async def _orphaned(self, uids: list[int]) -> None:
        for uid in uids:
            if uid in self._local:
                continue
            try:
                if self.on_orphan is not None:
                    self.on_orphan(uid)
                elif await self.mark_offline(uid):
                    await self.drop_log(uid)
            except Unavailable:
                log.warning("user %s left without connections, but Redis is away: still online", uid)
            except Exception:
                log.exception("handling user %s, left without connections, failed", uid)

    # -- wake-ups ----------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Receive the wake-ups of other processes (one bad message never stops the loop)."""
        backoff = BACKOFF_MIN_SECS
        while not self._closed:
            pubsub = self._sub.pubsub(ignore_subscribe_messages=True)
            try:
                await asyncio.wait_for(pubsub.subscribe(self._channel), self._op_timeout)
                backoff = BACKOFF_MIN_SECS
                # Wake-ups published while we were not listening are gone: once Redis answers
                # the keep-alive loop, every local client re-reads from its cursor.
                self._resync = True
                self._probe.set()
                while not self._closed:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message.get("data"))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._healthy:
                    log.warning("Redis wake-up channel lost (%s); resubscribing", _why(exc))
                self._probe.set()
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

    def _dispatch(self, data: Any) -> None:
        try:
            origin, sep, ids = str(data).partition("|")
            if not sep:
                raise ValueError("no '|'")
            if origin == self.process_id:
                return  # woken locally already
            for text in ids.split(","):
                if text:
                    self._wake(int(text))
        except Exception:
            log.exception("bad wake-up message on %s: %.200r", self._channel, data)

    # -- event logs --------------------------------------------------------------------------

    async def ensure_log(self, user_id: int) -> None:
        await self._call("ensure", self._log_keys(user_id), [secrets.token_hex(5), LOG_TTL_SECS])

    async def drop_log(self, user_id: int) -> None:
        """Forget the log, unless the user has live connections again (on any process): a user
        who came back between ``mark_offline`` and this call keeps the log their clients use."""
        await self._call("drop", self._log_keys(user_id) + [self._conns(user_id), self._procs], [self._ttl_ms])

    async def publish(self, user_ids: Iterable[int], body: str) -> None:
        """Append to the live logs and wake every process. Never raises for Redis trouble and
        never waits for Redis much longer than ``publish_timeout`` (at most the batch on the wire,
        then its own): the event is then lost and its users get a reset when Redis is back (the
        message itself is in the database already).

        Publishes are queued and written by one task, as pipelines: whatever arrived while the
        previous batch was on the wire goes in the next one, in order, with one wake-up message
        per batch. That is faster than a connection per publish and keeps this process's events
        in the order they were published."""
        uids = list(dict.fromkeys(int(u) for u in user_ids))
        if not uids or self._closed:
            return
        if not self._healthy:
            self._lose(uids, "Redis is away")
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((uids, body, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())
        try:
            # Bounded by the writer: a batch answers within publish_timeout or fails, and then
            # everything queued behind it fails at once.
            await done
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._probe.set()
            self._lose(uids, exc)
            return
        except RedisError as exc:
            log.error("Redis publish failed: %s", exc)
            self._lose(uids, exc)
            return
        self._counts["published"] += 1
        for uid in uids:
            self._wake(uid)

    async def _write(self) -> None:
        while self._outbox:
            batch = self._outbox[:PUBLISH_BATCH]
            del self._outbox[:PUBLISH_BATCH]
            woken: dict[int, None] = {}
            try:
                pipe = self._redis.pipeline(transaction=False)
                for uids, body, _ in batch:
                    keys = [k for uid in uids for k in self._log_keys(uid)]
                    await self._scripts["publish"](keys=keys, args=[body, self._log_size, LOG_TTL_SECS, *uids],
                                                   client=pipe)
                    woken.update(dict.fromkeys(uids))
                pipe.publish(self._channel, f"{self.process_id}|{','.join(map(str, woken))}")
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
            for (_, _, done), result in zip(batch, results):
                if done.done():
                    continue
                if isinstance(result, Exception):
                    done.set_exception(result)
                else:
                    done.set_result(None)

    def _fail(self, batch: list[tuple[list[int], str, asyncio.Future[None]]], error: Exception) -> None:
        failed = batch + self._outbox
        self._outbox = []
        for _, _, done in failed:
            if not done.done():
                done.set_exception(error)

    def _lose(self, uids: list[int], why: object) -> None:
        self._lost.update(uids)
        self._counts["lost"] += 1
        now = time.monotonic()
        if now - self._last_loss_log > 5:
            self._last_loss_log = now
            log.warning("events not stored in Redis (%s): %d users will be reset when it is back",
                        _why(why), len(self._lost))

    async def head(self, user_id: int) -> str:
        epoch, seq = await self._call("ensure", self._log_keys(user_id), [secrets.token_hex(5), LOG_TTL_SECS])
        return f"{epoch}:{seq}"

    async def read(self, user_id: int, cursor: str) -> tuple[list[str], str]:
        epoch, seq = parse_cursor(cursor)
        reply = await self._call("read", self._log_keys(user_id), [epoch, seq])
        if reply[0] == 0:
            raise CursorGone(reply[1])
        events = [with_cursor(f"{epoch}:{reply[i].partition('-')[0]}", reply[i + 1])
                  for i in range(2, len(reply), 2)]
        return events, f"{epoch}:{reply[1]}"

    # -- presence ----------------------------------------------------------------------------

    async def add_connection(self, user_id: int, conn_id: str) -> bool:
        member = self._member(conn_id)
        try:
            came_online = await self._call("add", [self._conns(user_id), self._on(user_id),
                                                   f"{self.prefix}proc:{self.process_id}"], [member, user_id])
        except Unavailable:
            self._unremoved.add((user_id, conn_id))  # it may have been added: take it back later
            raise
        self._local.setdefault(user_id, set()).add(conn_id)
        return bool(came_online)

    async def remove_connection(self, user_id: int, conn_id: str) -> int:
        conns = self._local.get(user_id)
        if conns is not None:
            conns.discard(conn_id)
            if not conns:
                del self._local[user_id]
        if self._closed:
            return 0
        try:
            return int(await self._call("remove", [self._conns(user_id), self._procs],
                                        [self._member(conn_id), self._ttl_ms]))
        except Unavailable:
            # Removed when Redis is back (then reported through on_orphan if it was the last).
            self._unremoved.add((user_id, conn_id))
            return len(self._local.get(user_id, ()))

    async def connection_count(self, user_id: int) -> int:
        return int(await self._call("count", [self._conns(user_id), self._procs], [self._ttl_ms]))

    async def mark_offline(self, user_id: int) -> bool:
        return bool(await self._call("offline", [self._conns(user_id), self._on(user_id), self._procs],
                                     [self._ttl_ms, user_id, self.prefix]))

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        uids = list(dict.fromkeys(int(u) for u in user_ids))
        if not uids:
            return set()
        if not self._healthy or self._closed:
            raise Unavailable("the chat broker (Redis) is not reachable; try again")
        try:
            flags = await asyncio.wait_for(self._redis.mget([self._on(uid) for uid in uids]), self._op_timeout)
        except (RedisError, OSError) as exc:
            self._probe.set()
            raise Unavailable("the chat broker (Redis) is not reachable; try again") from exc
        return {uid for uid, flag in zip(uids, flags) if flag}

    def stats(self) -> dict[str, int]:
        """This process's side (for /metrics): events published and lost, Redis outages seen,
        users awaiting a reset, local connections and subscribed users, and health."""
        return {"events_published": self._counts["published"], "events_lost": self._counts["lost"],
                "outages": self._counts["outages"], "resets_pending": len(self._lost),
                "connections": sum(len(c) for c in self._local.values()),
                "subscribed_users": len(self._wakeups), "healthy": int(self._healthy)}
