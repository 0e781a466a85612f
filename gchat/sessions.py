"""Where Moodle keeps its sessions: the ``moodle_sessions`` setting and one small store interface.

A store answers two questions, read-only:

* ``lookup(sid)``: the record of one session (user id, state, timemodified, and its PHP session
  data when asked for, for multi-factor authentication), or None when there is none;
* ``lookup_many(pairs)``: the records behind many (user id, sid hash) pairs at once, for the
  periodic re-check: one round trip (one query, one pipeline) however many users.

gchat.moodle applies Moodle's rules to the records (state, user id, guest, timeout, the user's
row, MFA); the stores only read. The stores, from Moodle's source (public/lib/classes/session/):

``database`` (default)
    ``{prefix}sessions``: every handler keeps a row there up to Moodle 4.4, and the database,
    file and memcached handlers still do in 4.5+ (``handler::add_session``). Only the database
    handler also keeps the session data there: ``sessdata`` is base64 of PHP's session encoding.
``files:<dir>``
    Moodle's file handler (``$CFG->dataroot/sessions``, or ``$CFG->session_file_save_path``):
    PHP's ``files`` handler writes ``sess_<sid>``. Moodle 2.6+ still keeps the rows in
    ``{sessions}`` (they decide), the data is in the file; Moodle 2.2-2.5 with ``dbsessions = 0``
    has no rows at all, so the file decides (its modification time is ``timemodified``).
``redis://host:port/db?prefix=…``
    Moodle 4.5+ ``\\core\\session\\redis`` (MDL-66151): no rows; the hash ``session_<sid>`` (fields
    id, state, sid, userid, sessdata, timecreated, timemodified, firstip, lastip, each serialized
    by phpredis's serializer, ``sessdata`` compressed first) and the hash ``user_<userid>``
    (sid → time), both under phpredis's key prefix ``$CFG->session_redis_prefix``. A comma list of
    hosts is a Redis Cluster, as in ``$CFG->session_redis_host``.

Memcached keeps the data where gchat cannot read it: its rows in ``{sessions}`` still work with
``database``, but multi-factor authentication cannot be verified there (gchat then refuses).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import zlib
from dataclasses import dataclass
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from gchat.errors import Unavailable
from gchat.session_spec import SessionsSpec, parse_moodle_sessions  # noqa: F401 (part of this module's interface)
from gchat.php_session import (PhpFormatError, igbinary_unserialize, parse_session, read_session_bytes,
                               session_ids, session_user_id, unserialize)

if TYPE_CHECKING:
    from gchat.db import Database, Query

log = logging.getLogger("gchat.sessions")
T = TypeVar("T")

MAX_SESSION_DATA = 16 << 20  # a decompressed session larger than this is not a Moodle session
SESSION_KEY = "session_"  # redis.php: $sessionkeyprefix
USER_KEY = "user_"        # redis.php: $userkeyprefix


def sid_hash(sid: str) -> str:
    """What a token carries instead of the sid itself (tokens travel in URLs and JS)."""
    return hashlib.sha256(sid.encode("utf-8")).hexdigest()[:32]


# -- records ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class SessionRecord:
    """One Moodle session as a store holds it.

    ``user`` is ``(id, deleted, suspended, confirmed, auth)`` when the store read the user's row
    together with the session (the database stores do, in the same query), else None and the
    caller reads it from the database. ``data`` is PHP's session encoding when it was asked for
    and could be read, ``data_problem`` says why not. ``problem``: the record itself could not be
    read (the session is refused with that reason). ``id``: the row's ``{sessions}.id`` (0 where
    there is no row: files of Moodle 2.2-2.5, Redis).
    """

    sid: str
    userid: int
    state: int
    timemodified: int
    user: tuple[Any, ...] | None = None
    data: bytes | None = None
    data_problem: str = ""
    problem: str = ""
    id: int = 0


def _int(value: Any) -> int:
    if type(value) is int:  # the database's columns: the re-check reads thousands per round
        return value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        return int(str(value).strip()) if value is not None and value is not False else 0
    except ValueError:
        return 0


class SessionStore:
    """The interface; see the module docstring."""

    kind = "database"

    def describe(self) -> str:
        raise NotImplementedError

    async def lookup(self, db: Database, sid: str, *, with_data: bool) -> SessionRecord | None:
        raise NotImplementedError

    async def lookup_many(self, db: Database, pairs: set[tuple[int, str]],
                          known: Mapping[str, str]) -> list[SessionRecord]:
        """Records for the sessions behind ``pairs`` (more may come back; the caller keeps
        only its pairs). ``known`` maps sid hashes to the sids seen at bootstrap."""
        raise NotImplementedError

    async def close(self) -> None:
        return None


_ROW_COLUMNS = "s.sid, s.userid, s.state, s.timemodified, u.id, u.deleted, u.suspended, u.confirmed, u.auth, s.id"


def _row_record(row: tuple[Any, ...]) -> SessionRecord:
    return SessionRecord(sid=str(row[0]), userid=_int(row[1]), state=_int(row[2]), timemodified=_int(row[3]),
                         user=tuple(row[4:9]), id=_int(row[9]))


def _rows_by_sid(q: Query, sid: str, with_sessdata: bool) -> tuple[Any, ...] | None:
    extra = ", s.sessdata" if with_sessdata else ""
    return q.one(f"SELECT {_ROW_COLUMNS}{extra} FROM {{sessions}} s LEFT JOIN {{user}} u ON u.id = s.userid "
                 "WHERE s.sid = %s", (sid,))


def _rows_of_users(q: Query, user_ids: list[int]) -> list[tuple[Any, ...]]:
    marks = ", ".join(["%s"] * len(user_ids))
    return q.all(f"SELECT {_ROW_COLUMNS} FROM {{sessions}} s JOIN {{user}} u ON u.id = s.userid "
                 f"WHERE s.userid IN ({marks})", user_ids)


class DatabaseStore(SessionStore):
    """``{prefix}sessions`` (Moodle's database handler keeps the data in ``sessdata`` too)."""

    kind = "database"

    def describe(self) -> str:
        return "the sessions table"

    async def lookup(self, db: Database, sid: str, *, with_data: bool) -> SessionRecord | None:
        def work(q: Query) -> SessionRecord | None:
            row = _rows_by_sid(q, sid, with_data)
            if row is None:
                return None
            record = _row_record(row)
            if with_data:
                record.data, record.data_problem = _decode_sessdata(row[10], db.prefix)
            return record

        return await db.run(work)

    async def lookup_many(self, db: Database, pairs: set[tuple[int, str]],
                          known: Mapping[str, str]) -> list[SessionRecord]:
        user_ids = sorted({uid for uid, _ in pairs})
        return await db.run(lambda q: [_row_record(row) for row in _rows_of_users(q, user_ids)])  # off the loop


def _decode_sessdata(value: Any, prefix: str) -> tuple[bytes | None, str]:
    if value is None or value == "" or value == b"":
        return None, (f"the session data is not in {prefix}sessions.sessdata (Moodle keeps it elsewhere: its file "
                      "or memcached session handler; for files set moodle_sessions = files:<dataroot>/sessions)")
    try:
        return base64.b64decode(value, validate=False), ""
    except (ValueError, TypeError):
        return None, f"{prefix}sessions.sessdata is not base64"


class FileStore(SessionStore):
    """Moodle's file handler: rows in ``{sessions}`` (2.6+) or none (2.2-2.5, ``dbsessions = 0``),
    the data in ``<dir>/sess_<sid>``. Files are read in the database's thread pool, never on the
    IOLoop."""

    kind = "files"

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def describe(self) -> str:
        return f"files in {self.directory}"

    def _file_record(self, sid: str) -> SessionRecord | None:
        found = read_session_bytes(self.directory, sid)
        if found is None:
            return None
        data, mtime = found
        try:
            parsed = parse_session(data)
        except PhpFormatError as exc:
            return SessionRecord(sid, 0, 0, mtime, problem=f"cannot parse sess_{sid}: {exc}")
        return SessionRecord(sid, session_user_id(parsed), 0, mtime, data=data)

    async def lookup(self, db: Database, sid: str, *, with_data: bool) -> SessionRecord | None:
        def work(q: Query) -> SessionRecord | None:
            row = _rows_by_sid(q, sid, False)
            if row is None:  # Moodle 2.2-2.5 with dbsessions = 0: the file alone (state is always 0 there)
                return self._file_record(sid)
            record = _row_record(row)
            if with_data:
                found = read_session_bytes(self.directory, sid)
                if found is None:
                    record.data_problem = f"cannot read sess_{sid} in {self.directory}"
                else:
                    record.data = found[0]
            return record

        return await db.run(work)

    async def lookup_many(self, db: Database, pairs: set[tuple[int, str]],
                          known: Mapping[str, str]) -> list[SessionRecord]:
        user_ids = sorted({uid for uid, _ in pairs})
        # A copy made here, on the IOLoop: the worker thread must not read a dict the loop changes.
        seen = {hashed: known[hashed] for _, hashed in pairs if hashed in known}

        def work(q: Query) -> list[SessionRecord]:
            records = [_row_record(row) for row in _rows_of_users(q, user_ids)]
            found = {sid_hash(r.sid) for r in records}
            wanted = {hashed for _, hashed in pairs} - found
            if not wanted:
                return records
            # No row: 2.2-2.5 file sessions. The sids seen at bootstrap first; a folder listing
            # only for sessions this process has not seen (a token issued by another process).
            sids = [seen[h] for h in wanted if h in seen]
            if len(sids) < len(wanted):
                sids += [sid for sid in session_ids(self.directory)
                         if sid_hash(sid) in wanted and sid_hash(sid) not in seen]
            for sid in sids:
                record = self._file_record(sid)
                if record is not None:
                    records.append(record)
            return records

        return await db.run(work)


# -- Redis (Moodle 4.5+) ------------------------------------------------------------------------------


class RedisStore(SessionStore):
    """Moodle 4.5+'s Redis session store, read with redis-py's asyncio client (single server or
    Redis Cluster). Asyncio rather than the database's thread pool: a slow Redis must not take
    the threads that every database query needs, and the client multiplexes on the IOLoop
    without blocking it."""

    kind = "redis"
    FIELDS = ("userid", "state", "timemodified")

    def __init__(self, spec: SessionsSpec, *, timeout: float = 5.0) -> None:
        self.spec = spec
        self.timeout = timeout
        self._client: Any = None
        self._decode = igbinary_unserialize if spec.serializer == "igbinary" else unserialize

    def describe(self) -> str:
        return self.spec.describe()

    def _connect(self) -> Any:
        if self._client is None:
            self._client = make_async_client(self.spec, self.timeout)
        return self._client

    def key(self, kind: str, name: str) -> str:
        return f"{self.spec.prefix}{kind}{name}"

    def _value(self, raw: bytes | None) -> Any:
        """A hash field as phpredis stored it (None: no such field)."""
        if raw is None:
            return None
        return self._decode(raw, text=False)

    def decode(self, sid: str, values: list[bytes | None], with_data: bool) -> SessionRecord | None:
        """A record from HMGET's answer for ``FIELDS`` (+ ``sessdata``); None: no such key."""
        if all(v is None for v in values):
            return None  # no such key: never was, logged out (destroy), or expired
        try:
            userid, state, modified = (self._value(v) for v in values[:3])
        except PhpFormatError as exc:
            hint = "igbinary" if self.spec.serializer == "php" else "php"
            return SessionRecord(sid, 0, 0, 0, problem=f"cannot decode the Redis session record with serializer="
                                 f"{self.spec.serializer} ({exc}); does Moodle use {hint}?")
        record = SessionRecord(sid, _int(userid), _int(state), _int(modified))
        if with_data:
            record.data, record.data_problem = self._sessdata(values[3])
        return record

    def _sessdata(self, raw: bytes | None) -> tuple[bytes | None, str]:
        try:
            value = self._value(raw)
        except PhpFormatError as exc:
            return None, f"cannot decode sessdata with serializer={self.spec.serializer}: {exc}"
        if value is None or value is False or value == b"":
            return None, "the session has no data yet"
        if not isinstance(value, bytes):
            return None, "sessdata is not a string"
        try:
            return decompress(value, self.spec.compressor), ""
        except ValueError as exc:
            return None, f"cannot uncompress sessdata with compressor={self.spec.compressor}: {exc}"

    async def lookup(self, db: Database, sid: str, *, with_data: bool) -> SessionRecord | None:
        fields = self.FIELDS + (("sessdata",) if with_data else ())
        values = await self._call(lambda c: c.hmget(self.key(SESSION_KEY, sid), fields))
        return self.decode(sid, list(values), with_data)

    async def lookup_many(self, db: Database, pairs: set[tuple[int, str]],
                          known: Mapping[str, str]) -> list[SessionRecord]:
        sids = {known[h] for _, h in pairs if h in known}
        unknown_users = sorted({uid for uid, h in pairs if h not in known})
        wanted = {h for _, h in pairs}

        async def one_round(client: Any) -> tuple[list[SessionRecord], set[str]]:
            pipe = client.pipeline(transaction=False)
            ordered = sorted(sids)
            for sid in ordered:
                pipe.hmget(self.key(SESSION_KEY, sid), self.FIELDS)
            for uid in unknown_users:
                pipe.hkeys(self.key(USER_KEY, str(uid)))
            results = await pipe.execute()
            records = [r for sid, values in zip(ordered, results) if (r := self.decode(sid, list(values), False))]
            more: set[str] = set()
            for names in results[len(ordered):]:
                for name in names:
                    sid = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
                    if sid_hash(sid) in wanted and sid not in sids:
                        more.add(sid)
            return records, more

        async def work(client: Any) -> list[SessionRecord]:
            records, more = await one_round(client)
            if more:  # sessions this process did not bootstrap: found through user_<id>, read now
                pipe = client.pipeline(transaction=False)
                ordered = sorted(more)
                for sid in ordered:
                    pipe.hmget(self.key(SESSION_KEY, sid), self.FIELDS)
                for sid, values in zip(ordered, await pipe.execute()):
                    record = self.decode(sid, list(values), False)
                    if record is not None:
                        records.append(record)
            return records

        return await self._call(work)

    async def _call(self, work: Callable[[Any], Awaitable[T]]) -> T:
        from redis.exceptions import RedisError

        try:
            return await asyncio.wait_for(work(self._connect()), self.timeout * 2)
        except (TimeoutError, RedisError, OSError) as exc:
            raise Unavailable(f"Moodle's session store {self.spec.where()} did not answer: "
                              f"{' '.join(str(exc).split()) or type(exc).__name__}") from None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception:  # closing a client whose server is gone must not stop a shutdown
                log.debug("closing the session store's Redis client failed", exc_info=True)


def _client_options(spec: SessionsSpec, timeout: float) -> dict[str, Any]:
    options: dict[str, Any] = dict(username=spec.username, password=spec.password, socket_timeout=timeout,
                                   socket_connect_timeout=timeout)
    if spec.tls:
        options.update(ssl=True, ssl_cert_reqs=spec.ssl_cert_reqs, ssl_ca_certs=spec.ssl_ca_certs)
    return options


def make_async_client(spec: SessionsSpec, timeout: float) -> Any:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    options = _client_options(spec, timeout)
    if spec.socket:
        return aioredis.Redis(unix_socket_path=spec.socket, db=spec.db, **options)
    if spec.cluster:
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in spec.hosts], **options)
    host, port = spec.hosts[0]
    return aioredis.Redis(host=host, port=port, db=spec.db, **options)


def make_sync_client(spec: SessionsSpec, timeout: float) -> Any:
    """A blocking client, for ``gchat check`` (a command line tool, not the server)."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    options = _client_options(spec, timeout)
    if spec.socket:
        return redis.Redis(unix_socket_path=spec.socket, db=spec.db, **options)
    if spec.cluster:
        nodes = [ClusterNode(h, p) for h, p in spec.hosts]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, **options)
    host, port = spec.hosts[0]
    return redis.Redis(host=host, port=port, db=spec.db, **options)


def decompress(value: bytes, compressor: str) -> bytes:
    """``sessdata`` as redis.php compressed it: ``gzencode()`` (a gzip member) or
    ``zstd_compress()`` (a zstd frame); at most MAX_SESSION_DATA bytes come out."""
    if compressor == "none":
        return value
    if compressor == "gzip":
        inflater = zlib.decompressobj(wbits=31)
        try:
            out = inflater.decompress(value, MAX_SESSION_DATA + 1)
        except zlib.error as exc:
            raise ValueError(str(exc)) from None
        if len(out) > MAX_SESSION_DATA:
            raise ValueError("larger than any session")
        if not inflater.eof:
            raise ValueError("truncated gzip data")
        return out
    if compressor == "zstd":
        import io

        import zstandard

        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(value)) as reader:
                chunks, size = [], 0
                while size <= MAX_SESSION_DATA:
                    chunk = reader.read(1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
        except zstandard.ZstdError as exc:
            raise ValueError(str(exc)) from None
        if size > MAX_SESSION_DATA:
            raise ValueError("larger than any session")
        return b"".join(chunks)
    raise ValueError(f"unknown compressor {compressor!r}")


def make_store(spec: SessionsSpec, *, timeout: float = 5.0) -> SessionStore:
    if spec.kind == "files":
        return FileStore(spec.directory)
    if spec.kind == "redis":
        return RedisStore(spec, timeout=timeout)
    return DatabaseStore()


def iter_redis_sessions(client: Any, spec: SessionsSpec, limit: int) -> Iterable[str]:
    """Up to ``limit`` session ids found by SCAN (``gchat check`` only: never in the server)."""
    pattern = f"{spec.prefix}{SESSION_KEY}*"
    found = 0
    for key in client.scan_iter(match=pattern, count=500):
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        rest = name[len(spec.prefix) + len(SESSION_KEY):]
        if rest.endswith(".lock"):
            continue  # redis.php's session lock, "session_<sid>.lock"
        yield rest
        found += 1
        if found >= limit:
            return


def readable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK)
