"""Database access: a DBUtils pool over PyMySQL (or sqlite3 for the demo), used off the IOLoop.

Every query runs in a bounded thread pool (``Database.run``), one unit of work per call, inside
one transaction that is committed or rolled back before the connection returns to the pool (a
pooled MySQL connection left inside a REPEATABLE READ transaction would keep seeing an old
snapshot). SQL is written once, with ``%s`` parameters and ``{table}`` names; ``Database.sql``
applies the table prefix and the driver's parameter style in this one place. Nothing from a
client ever reaches SQL except as a parameter.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

import pymysql
from dbutils.pooled_db import PooledDB

from gchat.config import DbUrl
from gchat.errors import Unavailable

log = logging.getLogger("gchat.db")
T = TypeVar("T")

_TABLE = re.compile(r"\{(\w+)\}")

# Errors that mean "the database is not there or not answering" rather than "this query is wrong".
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    pymysql.err.OperationalError,
    pymysql.err.InterfaceError,
    ConnectionError,
    TimeoutError,
    sqlite3.OperationalError,
)
_ER_LOCK_DEADLOCK = 1213  # MySQL/MariaDB: "Deadlock found when trying to get lock; try restarting transaction"
_DEADLOCK_ATTEMPTS = 4


class _Deadlock(Exception):
    """This unit of work was rolled back as a deadlock victim and may simply be run again."""


INTEGRITY_ERRORS: tuple[type[BaseException], ...] = (pymysql.err.IntegrityError, sqlite3.IntegrityError)


class Query:
    """What a unit of work sees: a cursor with the prefix and parameter style applied."""

    def __init__(self, db: "Database", conn: Any) -> None:
        self._db = db
        self._cursor = conn.cursor()
        self.count = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.count += 1
        self._cursor.execute(self._db.sql(sql), tuple(params))
        return self._cursor.rowcount

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.execute(sql, params)
        return [tuple(row) for row in self._cursor.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self.execute(sql, params)
        row = self._cursor.fetchone()
        return tuple(row) if row is not None else None

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.one(sql, params)
        return row[0] if row else None

    @property
    def lastrowid(self) -> int:
        return int(self._cursor.lastrowid)

    def table_exists(self, name: str) -> bool:
        """True when ``{name}`` can be read; the check runs in a savepoint-free way per dialect."""
        if self._db.dialect == "sqlite":
            return self.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %s",
                            (self._db.prefix + name,)) is not None
        return self.one("SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() "
                        "AND table_name = %s", (self._db.prefix + name,)) is not None

    def column_exists(self, table: str, column: str) -> bool:
        if self._db.dialect == "sqlite":
            return any(row[1] == column for row in self.all(f"PRAGMA table_info({{{table}}})"))
        return self.one("SELECT 1 FROM information_schema.columns WHERE table_schema = DATABASE() "
                        "AND table_name = %s AND column_name = %s",
                        (self._db.prefix + table, column)) is not None


class Database:
    """A connection pool plus the thread pool its queries run in."""

    def __init__(self, url: DbUrl | None, *, prefix: str, pool_size: int, timeout: float,
                 sqlite_path: str | None = None, **pool_options: Any) -> None:
        self.prefix = prefix
        self.url = url
        self.dialect = "sqlite" if url is None else "mysql"
        self.queries = 0  # total statements run; read by metrics and query-budget tests
        self.query_seconds = 0.0
        self._count_lock = threading.Lock()
        self._sql_cache: dict[str, str] = {}  # statement as written → with prefix and paramstyle
        self._timeout = timeout
        self._down_until = 0.0
        # One log line when the database goes away and one when it is back. Before it ever
        # answered there is nothing to say: start-up reports an unreachable database itself.
        self._down = False
        self._answered = False
        size = pool_size
        if url is None:
            if sqlite_path is None:
                raise ValueError("the demo database needs a file path")
            self.where = sqlite_path
            # SQLite serialises writers anyway; a small pool avoids "database is locked" storms.
            size = min(pool_size, 4)
            self._pool = PooledDB(sqlite3, maxconnections=size, blocking=True, ping=0,
                                  database=sqlite_path, check_same_thread=False, timeout=timeout,
                                  setsession=["PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=5000"])
        else:
            self.where = url.redacted()
            connect: dict[str, Any] = dict(user=url.user, password=url.password, database=url.database,
                                           charset=url.charset, connect_timeout=max(1, int(timeout)),
                                           read_timeout=max(1, int(timeout)), write_timeout=max(1, int(timeout)),
                                           autocommit=False)
            if url.unix_socket:
                connect["unix_socket"] = url.unix_socket
            else:
                connect.update(host=url.host, port=url.port)
            # ping=1: check a connection whenever it leaves the pool, so a MariaDB restart costs one
            # failed unit of work per stale connection at most, and no gchat restart.
            # pool_options: DBUtils options a benchmark's what-if run overrides (ping, reset).
            self._pool = PooledDB(pymysql, maxconnections=size, blocking=True, **{"ping": 1, **pool_options}, **connect)
        self.pool_size = size
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="gchat-db")
        self._in_flight = 0

    def sql(self, text: str) -> str:
        done = self._sql_cache.get(text)
        if done is None:
            done = _TABLE.sub(lambda m: self.prefix + m.group(1), text)
            if self.dialect == "sqlite":
                done = done.replace("%s", "?")
            if len(self._sql_cache) < 4096:  # statements are a small, fixed set (batches vary in length)
                self._sql_cache[text] = done
        return done

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def run_sync(self, work: Callable[[Query], T]) -> T:
        """Run one unit of work in one transaction on the calling thread.

        A transaction InnoDB picked as a deadlock victim was rolled back whole; it is run again
        (a unit of work only touches the database, so running it again is safe). A deadlock is
        not an outage: it must not trip the "database unreachable" fuse.
        """
        for attempt in range(1, _DEADLOCK_ATTEMPTS + 1):
            try:
                return self._run_once(work)
            except _Deadlock as exc:
                if attempt == _DEADLOCK_ATTEMPTS:
                    raise Unavailable(f"database {self.where}: deadlock, try again") from exc.__cause__
                time.sleep(0.005 * attempt)
        raise AssertionError("unreachable")

    def _run_once(self, work: Callable[[Query], T]) -> T:
        started = time.monotonic()
        try:
            conn = self._pool.connection()
        except _UNAVAILABLE_ERRORS as exc:
            self._mark_down(exc)
            raise Unavailable(f"database {self.where} is not reachable: {exc}") from exc
        query = Query(self, conn)
        try:
            result = work(query)
            conn.commit()
            self._answered = True
            if self._down:
                self._down = False
                log.info("database %s is back", self.where)
            return result
        except _UNAVAILABLE_ERRORS as exc:
            _quiet_rollback(conn)
            if isinstance(exc, pymysql.err.OperationalError) and exc.args and exc.args[0] == _ER_LOCK_DEADLOCK:
                raise _Deadlock() from exc
            self._mark_down(exc)
            raise Unavailable(f"database {self.where} failed: {exc}") from exc
        except BaseException:
            _quiet_rollback(conn)
            raise
        finally:
            _quiet_close(conn)
            with self._count_lock:
                self.queries += query.count
                self.query_seconds += time.monotonic() - started

    async def run(self, work: Callable[[Query], T]) -> T:
        """Run ``work`` in the thread pool; never blocks the IOLoop.

        Right after a connection failure, and while more work is queued than the pool can take
        in a few seconds, refuse at once with Unavailable instead of letting requests hang.

        The caller waits at most ``timeout`` seconds in all (queueing included): a server that
        accepts connections but answers nothing (hung, frozen, lost on the network) would
        otherwise hold a request for several timeouts in a row (DBUtils pings, then reconnects,
        then reconnects again for the query), and every request queued behind it as long. A
        unit of work still running then is not stopped and may yet commit: callers that must
        not apply a command twice make it idempotent (``send`` does, by ``client_id``).
        """
        if time.monotonic() < self._down_until:
            raise Unavailable(f"database {self.where} is not reachable")
        # Queued work waits at most `timeout` anyway; this bound only keeps a storm from
        # queueing without limit (a reconnect storm of a few thousand users must fit).
        if self._in_flight >= self.pool_size * 256:
            raise Unavailable("the database is overloaded; try again")
        self._in_flight += 1
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, self.run_sync, work)
            try:
                return await asyncio.wait_for(future, self._timeout)
            except asyncio.TimeoutError:
                self._mark_down(f"no answer within {self._timeout:g}s")
                raise Unavailable(f"database {self.where} did not answer within {self._timeout:g}s") from None
        finally:
            self._in_flight -= 1

    def _mark_down(self, reason: object) -> None:
        """Refuse new work at once for a second (no request hangs on a dead database)."""
        self._down_until = time.monotonic() + 1.0
        if not self._down and self._answered:
            self._down = True
            log.warning("database %s unavailable (%s); commands get 'unavailable' until it is back",
                        self.where, " ".join(str(reason).split()))

    async def ping(self) -> bool:
        try:
            await self.run(lambda q: q.scalar("SELECT 1"))
            return True
        except Unavailable:
            return False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        try:
            self._pool.close()
        except Exception:  # closing a pool whose server is gone must not stop a shutdown
            log.debug("closing the pool failed", exc_info=True)


def _quiet_rollback(conn: Any) -> None:
    try:
        conn.rollback()
    except Exception:
        pass


def _quiet_close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        pass
