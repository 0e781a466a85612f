"""The Lua scripts of the Redis broker, and the names of its keys (gchat/redis_broker.py
explains the data model). Every change that must be atomic is one script.

Keys, all under the key prefix::

    log:<uid>       hash {epoch, seq}: the live log of a user; no key = no log
    events:<uid>    stream of that log, entry id "<seq>-0", field "e" = the event's JSON
    on:<uid>        "1" while the user is online (set once by the offline → online transition)
    conns:<uid>     set of "<process id>|<connection id>", the user's connections everywhere
    procs           sorted set: process id → its last heartbeat (Redis clock, ms)
    proc:<pid>      set of user ids a process has had connections for (to clean up after it)
    wake            pub/sub channel: "<process id>|<uid>,<uid>,…" after every batch of publishes
"""

from __future__ import annotations


class Keys:
    """The key names of one site (key prefix) as seen by one process."""

    __slots__ = ("prefix", "process_id", "procs", "channel", "proc_users")

    def __init__(self, prefix: str, process_id: str) -> None:
        self.prefix = prefix
        self.process_id = process_id
        self.procs = prefix + "procs"
        self.channel = prefix + "wake"
        self.proc_users = f"{prefix}proc:{process_id}"

    def log(self, uid: int) -> list[str]:
        """The log hash and its stream."""
        return [f"{self.prefix}log:{uid}", f"{self.prefix}events:{uid}"]

    def conns(self, uid: int) -> str:
        return f"{self.prefix}conns:{uid}"

    def on(self, uid: int) -> str:
        return f"{self.prefix}on:{uid}"

    def member(self, conn_id: str) -> str:
        """A connection of this process, as it appears in ``conns:<uid>``."""
        return f"{self.process_id}|{conn_id}"


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

SCRIPTS = {"ensure": _ENSURE, "publish": _PUBLISH, "read": _READ, "drop": _DROP, "forget": _FORGET,
           "add": _ADD, "remove": _REMOVE, "count": _COUNT, "offline": _OFFLINE, "beat": _BEAT,
           "add_many": _ADD_MANY, "reap": _REAP, "close": _CLOSE}
