"""What differs between the database engines gchat runs on; the one place that knows it.

* ``mysql``: MySQL and MariaDB through PyMySQL (the default; most Moodle sites);
* ``postgresql``: PostgreSQL through psycopg 3 (Moodle's other main engine);
* ``sqlite``: the embedded demo.

SQL elsewhere is written once, with ``%s`` parameters and ``{table}`` names, in the common
subset of the three. What cannot be written that way is asked of the dialect here: parameter
markers, identifier quoting, the catalog probes (``information_schema`` of the current
database or schema), the server's version, getting the id of a new row, "insert unless it is
there", upserts, locking reads, and how a ``client_id`` is stored so that it compares exactly.

Differences that matter to gchat and are handled here:

* A failed statement (a duplicate key) aborts the whole transaction on PostgreSQL, not on
  MySQL or SQLite: "insert unless it is there" is ``ON CONFLICT DO NOTHING`` on PostgreSQL and
  a caught IntegrityError elsewhere; a statement that may fail runs inside a savepoint there.
* PostgreSQL has no ``LAST_INSERT_ID()``: ids come back through ``RETURNING id``.
* MariaDB's ``utf8mb4_bin`` (and MySQL 5.7's) is a PAD SPACE collation, so ``'pad'`` and
  ``'pad '`` are equal there, in comparisons and in unique keys alike; a ``_ci`` collation would
  also make ``'A'`` equal ``'a'``. ``client_id`` is therefore stored as its UTF-8 bytes
  (``VARBINARY``/``BYTEA``/``BLOB``), which every engine compares byte for byte.
"""

from __future__ import annotations

import re
from typing import Any, Protocol
from collections.abc import Mapping, Sequence

_TABLE = re.compile(r"\{(\w+)\}")
_OLD_NEW = re.compile(r"\b(OLD|NEW)\.(\w+)")


class Rows(Protocol):
    """The part of db.Query the catalog probes use."""

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


class Dialect:
    """The MySQL/MariaDB flavour; the other engines override what differs."""

    name = "mysql"
    placeholder = "%s"
    # Appended to a SELECT that must see rows committed after this transaction's snapshot
    # (InnoDB's REPEATABLE READ reads an old snapshot; a locking read sees the latest rows).
    locking_read = " LOCK IN SHARE MODE"
    # Whether a failed statement spoils the rest of its transaction (PostgreSQL: "current
    # transaction is aborted"), so that a statement allowed to fail needs a savepoint.
    failed_statement_aborts_transaction = False
    # Whether a new row's id comes back through RETURNING (else the cursor's lastrowid).
    returning_ids = False
    version_sql = "SELECT VERSION()"
    schema_sql = "DATABASE()"

    # -- statements ------------------------------------------------------------------------------

    def quote(self, name: str) -> str:
        return f"`{name}`"

    def sql(self, text: str, prefix: str) -> str:
        """``{name}`` → the quoted, prefixed table (or index) name; ``%s`` → the driver's marker.

        Quoted, so that a table Moodle names with a reserved word (``user``, ``role``) works
        whatever the prefix is, on every engine."""
        done = _TABLE.sub(lambda m: self.quote(self.table_name(prefix, m.group(1))), text)
        if self.placeholder != "%s":
            done = done.replace("%s", self.placeholder)
        return done

    def table_name(self, prefix: str, name: str) -> str:
        return prefix + name

    def returning_id(self, insert_sql: str) -> str:
        """The INSERT of one row, made to give its new id back (see ``Query.insert``)."""
        return insert_sql

    def insert_new(self, insert_sql: str) -> str | None:
        """The INSERT, made not to fail when a unique key already holds the row; None where it
        is left to fail with IntegrityError, which ``Query.insert_new`` catches (a failed
        statement costs nothing more on MySQL and SQLite)."""
        return None

    def multi_row_ids(self, q: Rows) -> bool:
        """Whether one multi-row INSERT can tell the ids of its rows: on MySQL/MariaDB when
        ``innodb_autoinc_lock_mode`` is 0 or 1 (the default), which makes them consecutive from
        LAST_INSERT_ID()."""
        rows = q.all("SELECT @@innodb_autoinc_lock_mode")
        return bool(rows) and rows[0][0] is not None and int(rows[0][0]) in (0, 1)

    def upsert(self, insert_sql: str, key: Sequence[str], table: str, assignments: Mapping[str, str]) -> str:
        """``insert_sql`` plus what to do when the row with this ``key`` exists: ``assignments``
        maps a column to an expression where ``OLD.col`` is the stored value and ``NEW.col``
        the value the INSERT brought."""
        sets = ", ".join(f"{column} = {_OLD_NEW.sub(self._mysql_ref, expr)}" for column, expr in assignments.items())
        return f"{insert_sql} ON DUPLICATE KEY UPDATE {sets}"

    @staticmethod
    def _mysql_ref(match: re.Match[str]) -> str:
        return match.group(2) if match.group(1) == "OLD" else f"VALUES({match.group(2)})"

    # -- client_id: compared byte for byte on every engine ----------------------------------------

    @staticmethod
    def client_id_param(client_id: str | None) -> bytes | None:
        # surrogatepass: a lone surrogate (from a broken JSON escape) is still a distinct id.
        return None if client_id is None else client_id.encode("utf-8", "surrogatepass")

    @staticmethod
    def client_id_value(stored: Any) -> str | None:
        if stored is None:
            return None
        if isinstance(stored, (bytes, bytearray, memoryview)):
            return bytes(stored).decode("utf-8", "surrogatepass")
        return str(stored)  # a row written before client_id was bytes (the SQLite demo)

    # -- the catalog ----------------------------------------------------------------------------

    def table_names(self, q: Rows, names: Sequence[str] | None = None) -> set[str]:
        """Tables of the current database (MySQL) or schema (PostgreSQL); only ``names`` if given."""
        sql = f"SELECT table_name FROM information_schema.tables WHERE table_schema = {self.schema_sql}"
        if names is not None:
            if not names:
                return set()
            sql += f" AND table_name IN ({', '.join(['%s'] * len(names))})"
        return {str(row[0]) for row in q.all(sql, tuple(names or ()))}

    def column_types(self, q: Rows, table: str) -> dict[str, str]:
        """Column name → lower-case type name (``varchar``, ``varbinary``, ``bytea``, ...)."""
        rows = q.all("SELECT column_name, data_type FROM information_schema.columns "
                     f"WHERE table_schema = {self.schema_sql} AND table_name = %s", (table,))
        return {str(name): str(kind).lower() for name, kind in rows}

    def server_name(self, version: str) -> str:
        """``SELECT VERSION()`` as people say it: 'MariaDB 10.11.6-MariaDB-0+deb12u1'."""
        version = " ".join(str(version).split())
        return f"MariaDB {version}" if "mariadb" in version.lower() else f"MySQL {version}"


class PostgreSQLDialect(Dialect):
    name = "postgresql"
    # READ COMMITTED (PostgreSQL's default) gives every statement a fresh snapshot; the lock
    # also waits for a writer of the row that has not committed yet.
    locking_read = " FOR SHARE"
    failed_statement_aborts_transaction = True
    returning_ids = True
    version_sql = "SHOW server_version"
    schema_sql = "current_schema()"

    def quote(self, name: str) -> str:
        return f'"{name}"'

    def table_name(self, prefix: str, name: str) -> str:
        # Moodle creates its tables unquoted, and PostgreSQL folds unquoted names to lower case.
        return (prefix + name).lower()

    def returning_id(self, insert_sql: str) -> str:
        return insert_sql + " RETURNING id"

    def insert_new(self, insert_sql: str) -> str | None:
        return insert_sql + " ON CONFLICT DO NOTHING"

    def multi_row_ids(self, q: Rows) -> bool:
        return True  # RETURNING id

    def upsert(self, insert_sql: str, key: Sequence[str], table: str, assignments: Mapping[str, str]) -> str:
        # In DO UPDATE a bare column name is ambiguous between the stored row and EXCLUDED.
        def ref(match: re.Match[str]) -> str:
            return f"{{{table}}}.{match.group(2)}" if match.group(1) == "OLD" else f"EXCLUDED.{match.group(2)}"

        sets = ", ".join(f"{column} = {_OLD_NEW.sub(ref, expr)}" for column, expr in assignments.items())
        return f"{insert_sql} ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"

    def server_name(self, version: str) -> str:
        return f"PostgreSQL {' '.join(str(version).split())}"


class SQLiteDialect(Dialect):
    name = "sqlite"
    placeholder = "?"
    locking_read = ""  # a writer holds the database's write lock: no snapshot older than it
    version_sql = "SELECT sqlite_version()"

    def multi_row_ids(self, q: Rows) -> bool:
        return False  # one statement per row costs little in-process

    def quote(self, name: str) -> str:
        return f'"{name}"'

    def upsert(self, insert_sql: str, key: Sequence[str], table: str, assignments: Mapping[str, str]) -> str:
        def ref(match: re.Match[str]) -> str:
            return match.group(2) if match.group(1) == "OLD" else f"excluded.{match.group(2)}"

        sets = ", ".join(f"{column} = {_OLD_NEW.sub(ref, expr)}" for column, expr in assignments.items())
        return f"{insert_sql} ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"

    def table_names(self, q: Rows, names: Sequence[str] | None = None) -> set[str]:
        found = {str(row[0]) for row in q.all("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return found if names is None else found & set(names)

    def column_types(self, q: Rows, table: str) -> dict[str, str]:
        return {str(row[1]): str(row[2]).lower() for row in q.all(f'PRAGMA table_info("{table}")')}

    def server_name(self, version: str) -> str:
        return f"SQLite {version}"


def dialect_for(engine: str) -> Dialect:
    """The dialect of ``engine``: mysql, postgresql or sqlite."""
    dialects: dict[str, type[Dialect]] = {"mysql": Dialect, "postgresql": PostgreSQLDialect,
                                          "sqlite": SQLiteDialect}
    try:
        return dialects[engine]()
    except KeyError:
        raise ValueError(f"unknown database engine {engine!r}") from None
