"""Database access: a DBUtils pool over PyMySQL (MySQL/MariaDB), psycopg 3 (PostgreSQL) or
sqlite3 (the demo), used off the IOLoop.

Every query runs in a bounded thread pool (``Database.run``), one unit of work per call, inside
one transaction that is committed or rolled back before the connection returns to the pool (a
pooled MySQL connection left inside a REPEATABLE READ transaction would keep seeing an old
snapshot). SQL is written once, with ``%s`` parameters and ``{table}`` names; ``Database.sql``
applies the table prefix, quoting and the driver's parameter style in this one place, and
gchat/dialect.py knows every other difference between the engines. Nothing from a client ever
reaches SQL except as a parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from collections.abc import Callable, Iterator, Sequence

import psycopg
import pymysql
from dbutils.pooled_db import PooledDB

from gchat.config import DbUrl
from gchat.dialect import Dialect, dialect_for
from gchat.errors import Unavailable

log = logging.getLogger("gchat.db")
T = TypeVar("T")

# Errors that mean "the database is not there or not answering" rather than "this query is wrong".
# On PostgreSQL, OperationalError covers a refused or lost connection (class 08), an
# administrator's shutdown (57P01), a statement cancelled by statement_timeout (57014) and the
# deadlock and serialization failures (class 40) that _is_deadlock picks out.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    pymysql.err.OperationalError,
    pymysql.err.InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    ConnectionError,
    TimeoutError,
    sqlite3.OperationalError,
)
_ER_LOCK_DEADLOCK = 1213  # MySQL/MariaDB: "Deadlock found when trying to get lock; try restarting transaction"
_DEADLOCK_ATTEMPTS = 4


class _Deadlock(Exception):
    """This unit of work was rolled back as a deadlock victim and may simply be run again."""


def _is_deadlock(exc: BaseException) -> bool:
    """A transaction the server rolled back so that another could go on: run it again."""
    if isinstance(exc, pymysql.err.OperationalError):
        return bool(exc.args) and exc.args[0] == _ER_LOCK_DEADLOCK
    # 40P01 deadlock_detected, 40001 serialization_failure
    return isinstance(exc, (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure))


INTEGRITY_ERRORS: tuple[type[BaseException], ...] = (pymysql.err.IntegrityError, psycopg.IntegrityError,
                                                     sqlite3.IntegrityError)


class _PgConnection(psycopg.Connection[Any]):
    """A psycopg connection DBUtils can ping when it leaves the pool, as it pings PyMySQL's."""

    def ping(self, reconnect: bool = False) -> bool:
        if self.closed or self.broken:
            return False
        # An empty query: one round trip, and no transaction is opened by it.
        return self.pgconn.exec_(b"").status == psycopg.pq.ExecStatus.EMPTY_QUERY


class _PostgreSQLDriver:
    """What DBUtils needs to pool psycopg connections: the module and a connect function."""

    dbapi = psycopg
    threadsafety = psycopg.threadsafety

    @staticmethod
    def connect(**kwargs: Any) -> psycopg.Connection[Any]:
        return _PgConnection.connect(**kwargs)


class _NoFailover(Exception):
    """Never raised. Given to DBUtils as the only error it may fail over on: DBUtils would
    otherwise run a statement that failed (a statement_timeout, say) once more on a new
    connection, in a new transaction without the statements before it, and that half unit of
    work would then be committed. A connection is checked when it leaves the pool instead."""


class Query:
    """What a unit of work sees: a cursor with the prefix and parameter style applied."""

    def __init__(self, db: Database, conn: Any) -> None:
        self._db = db
        self._cursor = conn.cursor()
        self.dialect: Dialect = db.sql_dialect
        self.count = 0
        self._no_failover: contextlib.AbstractContextManager[Any] | None = None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.count += 1
        if self.count == 2:
            # DBUtils runs a statement that failed on a lost connection once more on a new one.
            # Right for the first statement of a unit of work (nothing came before it in its
            # transaction); for a later one the new connection would lack the statements before
            # it and the half unit would be committed. From the second statement on, a lost
            # connection fails the unit (PostgreSQL's pool never fails over: _NoFailover).
            no_failover = getattr(self._cursor, "no_failover", None)
            if no_failover is not None:
                self._no_failover = no_failover()  # held (and left) with the cursor
                self._no_failover.__enter__()
        self._cursor.execute(self._db.sql(sql), tuple(params))
        return int(self._cursor.rowcount)

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

    def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Insert one row into a table with an ``id`` column; returns the new id."""
        if self.dialect.returning_ids:
            return int(self.scalar(self.dialect.returning_id(sql), params))
        self.execute(sql, params)
        return int(self._cursor.lastrowid)

    def insert_new(self, sql: str, params: Sequence[Any] = ()) -> bool:
        """Insert one row unless a unique key already holds it; True when it was inserted.
        Either way the transaction goes on (on PostgreSQL a failed INSERT would end it)."""
        unless_there = self.dialect.insert_new(sql)
        if unless_there is not None:
            return self.execute(unless_there, params) > 0
        try:
            self.execute(sql, params)
            return True
        except INTEGRITY_ERRORS:
            return False

    def insert_new_id(self, sql: str, params: Sequence[Any] = ()) -> int | None:
        """``insert_new`` for a table with an ``id`` column: the new id, or None."""
        unless_there = self.dialect.insert_new(sql)
        if unless_there is not None:
            row = self.one(self.dialect.returning_id(unless_there), params)
            return int(row[0]) if row is not None else None
        try:
            return self.insert(sql, params)
        except INTEGRITY_ERRORS:
            return None

    def multi_row_ids(self) -> bool:
        """Whether ``insert_many`` can tell the ids of the rows one INSERT adds (see the dialect)."""
        return self.dialect.multi_row_ids(self)

    def insert_many(self, sql: str, params: Sequence[Any], rows: int) -> list[int]:
        """Run a multi-row INSERT into a table with an ``id`` column; the new ids, in the order
        of the rows (only where ``multi_row_ids`` says it can)."""
        if self.dialect.returning_ids:
            # The sequence gives ids in the order the VALUES rows are inserted, but RETURNING
            # promises no order of its own: sort them.
            ids = sorted(int(row[0]) for row in self.all(self.dialect.returning_id(sql), params))
            if len(ids) != rows:
                raise AssertionError(f"{rows} rows inserted, {len(ids)} ids returned")
            return ids
        self.execute(sql, params)
        first = int(self._cursor.lastrowid)  # LAST_INSERT_ID(): the first row's id
        return list(range(first, first + rows))

    @contextlib.contextmanager
    def may_fail(self) -> Iterator[None]:
        """Run statements that may fail (IntegrityError) without losing the rest of the unit
        of work: a savepoint on PostgreSQL, where a failed statement aborts the transaction;
        nothing elsewhere, where only the failed statement is undone."""
        if not self.dialect.failed_statement_aborts_transaction:
            yield
            return
        self.execute("SAVEPOINT gchat_may_fail")
        try:
            yield
        except BaseException:
            self.execute("ROLLBACK TO SAVEPOINT gchat_may_fail")
            raise
        self.execute("RELEASE SAVEPOINT gchat_may_fail")

    def table_exists(self, name: str) -> bool:
        """True when the table ``{name}`` exists in the current database (or schema)."""
        table = self.dialect.table_name(self._db.prefix, name)
        return table in self.dialect.table_names(self, [table])

    def table_names(self) -> set[str]:
        """Every table of the current database (or schema), prefix and all."""
        return self.dialect.table_names(self)

    def column_types(self, table: str) -> dict[str, str]:
        """The columns of ``{table}``: name → lower-case type (empty when there is no such table)."""
        return self.dialect.column_types(self, self.dialect.table_name(self._db.prefix, table))

    def column_exists(self, table: str, column: str) -> bool:
        return column in self.column_types(table)


class Database:
    """A connection pool plus the thread pool its queries run in."""

    def __init__(self, url: DbUrl | None, *, prefix: str, pool_size: int, timeout: float,
                 sqlite_path: str | None = None, **pool_options: Any) -> None:
        self.prefix = prefix
        self.url = url
        # The engine's name (mysql, postgresql, sqlite) and what differs in its SQL.
        self.dialect = "sqlite" if url is None else url.engine
        self.sql_dialect = dialect_for(self.dialect)
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
        elif url.engine == "postgresql":
            self.where = url.redacted()
            self._pool = PooledDB(_PostgreSQLDriver, maxconnections=size, blocking=True, ping=1,
                                  failures=(_NoFailover,), **_postgresql_connect_args(url, timeout))
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
            # A connection leaving the pool is checked (COM_PING) when it was idle for a while, so
            # a MariaDB restart or wait_timeout costs no failed unit of work and no gchat restart.
            # One in constant use is not: a round trip less per unit of work under load, and a
            # connection lost meanwhile fails its unit's first statement, which DBUtils runs again
            # on a new connection (see Query.execute).
            # reset=False: no ROLLBACK as a connection goes back to the pool; every unit of work
            # ends with its own COMMIT or ROLLBACK (_run_once).
            # pool_options: DBUtils options a benchmark's what-if run overrides (ping, reset).
            self._pool = PooledDB(pymysql, maxconnections=size, blocking=True,
                                  **{"ping": (1, _ping_after_idle), "reset": False, **pool_options}, **connect)
        self.pool_size = size
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="gchat-db")
        self._in_flight = 0
        self._closed = False

    def sql(self, text: str) -> str:
        done = self._sql_cache.get(text)
        if done is None:
            done = self.sql_dialect.sql(text, self.prefix)
            # Statements are a small, fixed set (batches vary in length); a long one carries a list
            # of values (the session re-check's user ids) and is not kept.
            if len(self._sql_cache) < 4096 and len(text) <= 4096:
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
            if _is_deadlock(exc):
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
        if self._closed:
            # Shutting down: a request still being answered gets "unavailable" (the client
            # retries elsewhere or later), not a 500 and a traceback per request in the log.
            raise Unavailable("gchat is shutting down; try again")
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
            except TimeoutError:
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
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        try:
            self._pool.close()
        except Exception:  # closing a pool whose server is gone must not stop a shutdown
            log.debug("closing the pool failed", exc_info=True)


def _postgresql_connect_args(url: DbUrl, timeout: float) -> dict[str, Any]:
    """psycopg's connection parameters (libpq's names) for ``url``."""
    args: dict[str, Any] = dict(
        user=url.user, password=url.password, dbname=url.database, port=url.port,
        # A unix_socket is libpq's host=/folder; otherwise a host name or address.
        host=url.unix_socket or url.host,
        connect_timeout=max(2, int(timeout)),  # libpq takes whole seconds, and treats 1 as 2
        application_name="gchat", client_encoding="UTF8", autocommit=False,
        # The server gives up on a statement after db_timeout, as Database.run does: a slow
        # query then frees its connection too (QueryCanceled, mapped to Unavailable).
        options=f"-c statement_timeout={max(1, int(timeout * 1000))}",
    )
    if url.sslmode:
        args["sslmode"] = url.sslmode
    return args


PING_AFTER_IDLE_SECS = 1.0  # a MySQL connection idle this long is pinged when it leaves the pool


def _ping_after_idle(con: Any) -> bool:
    """DBUtils' check of a PyMySQL connection leaving the pool (see Database.__init__); a
    failed ping raises, and DBUtils then opens a new connection."""
    now = time.monotonic()
    last = getattr(con, "_gchat_taken", None)
    con._gchat_taken = now
    if last is None or now - last >= PING_AFTER_IDLE_SECS:
        con.ping(False)
    return True


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
