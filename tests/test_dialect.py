"""The database engines: ``postgresql://`` URLs, the dialect's SQL, and PostgreSQL's errors mapped
as PyMySQL's are (a real server: refused, terminated and timed-out connections)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import pytest

from gchat.config import parse_db_url
from gchat.db import Database
from gchat.dialect import Dialect, dialect_for
from gchat.errors import Unavailable
from tests.moodle_site import create_database, drop_database
from tests.services import db_connect, with_database

# -- db_url ----------------------------------------------------------------------------------------


def test_postgresql_url_parts_and_redaction():
    url = parse_db_url("postgresql://moodle:p%40ss%3Aw%2Frd%25@db.example:6432/moodle45?sslmode=require")
    assert url is not None
    assert (url.engine, url.user, url.password, url.host, url.port, url.database, url.unix_socket, url.sslmode) == \
        ("postgresql", "moodle", "p@ss:w/rd%", "db.example", 6432, "moodle45", None, "require")
    assert url.redacted() == "postgresql://moodle@db.example:6432/moodle45"
    assert "p@ss" not in url.redacted() and "p%40ss" not in url.redacted()


def test_postgresql_url_defaults_and_scheme_spellings():
    url = parse_db_url("postgres://db.example/moodle")
    assert url is not None
    assert (url.engine, url.user, url.password, url.port) == ("postgresql", "postgres", "", 5432)
    assert parse_db_url("mysql://db.example/moodle").engine == "mysql"
    assert parse_db_url("mariadb://db.example/moodle").engine == "mysql"


def test_postgresql_unix_socket_folder():
    url = parse_db_url("postgresql://moodle:secret@localhost/moodle?host=/var/run/postgresql")
    assert url is not None
    assert url.unix_socket == "/var/run/postgresql"
    assert url.redacted() == "postgresql://moodle@localhost/moodle (socket /var/run/postgresql)"
    assert "secret" not in url.redacted()


@pytest.mark.parametrize("text,words", [
    ("postgresql://h", "name a database"),
    ("postgresql://h:x/m", "port"),
    ("postgresql://h/m?unix_socket=/run/x", "unix_socket"),  # MySQL's name: PostgreSQL's is host=
    ("postgresql://h/m?host=relative/dir", "absolute"),
    ("mysql://h/m?host=/run/x", "host"),
    ("oracle://h/m", "postgresql://"),
])
def test_malformed_postgresql_urls(text, words):
    with pytest.raises(ValueError, match=words):
        parse_db_url(text)


# -- the dialect's SQL ----------------------------------------------------------------------------


def test_one_statement_in_each_dialect():
    sql = "SELECT id FROM {user} WHERE id = %s"
    assert dialect_for("mysql").sql(sql, "mdl_") == "SELECT id FROM `mdl_user` WHERE id = %s"
    assert dialect_for("postgresql").sql(sql, "MDL_") == 'SELECT id FROM "mdl_user" WHERE id = %s'
    assert dialect_for("sqlite").sql(sql, "mdl_") == 'SELECT id FROM "mdl_user" WHERE id = ?'
    with pytest.raises(ValueError):
        dialect_for("oracle")


def test_upsert_in_each_dialect():
    insert = "INSERT INTO {t} (k, n) VALUES (%s, %s)"
    sets = {"n": "OLD.n + NEW.n"}
    assert dialect_for("mysql").upsert(insert, ("k",), "t", sets).endswith(
        "ON DUPLICATE KEY UPDATE n = n + VALUES(n)")
    assert dialect_for("postgresql").upsert(insert, ("k",), "t", sets).endswith(
        "ON CONFLICT (k) DO UPDATE SET n = {t}.n + EXCLUDED.n")
    assert dialect_for("sqlite").upsert(insert, ("k",), "t", sets).endswith(
        "ON CONFLICT (k) DO UPDATE SET n = n + excluded.n")


@pytest.mark.parametrize("client_id", ["pad", "pad ", "PAD", "é", "e\u0301", "\x00", "\ud800", "😀" * 64])
def test_client_ids_round_trip_as_bytes(client_id):
    stored = Dialect.client_id_param(client_id)
    assert isinstance(stored, bytes)
    assert Dialect.client_id_value(stored) == client_id
    assert Dialect.client_id_value(memoryview(stored)) == client_id
    assert Dialect.client_id_param(None) is None and Dialect.client_id_value(None) is None


@pytest.mark.parametrize("version,name", [
    ("10.11.6-MariaDB-0+deb12u1", "MariaDB 10.11.6-MariaDB-0+deb12u1"), ("8.0.36", "MySQL 8.0.36")])
def test_mysql_server_names(version, name):
    assert dialect_for("mysql").server_name(version) == name


# -- PostgreSQL errors, on a real server -----------------------------------------------------------------


def scratch_database(server_url: str) -> Iterator[str]:
    """A database of its own on ``server_url`` for one module, dropped afterwards."""
    name = f"gchat_dialect_{secrets.token_hex(4)}"
    create_database(server_url, name)
    yield with_database(server_url, name)
    drop_database(server_url, name)


@pytest.fixture(scope="module")
def pg_url(postgresql_url):
    yield from scratch_database(postgresql_url)


def terminate(pg_url: str, pid: int) -> None:
    """What an administrator's pg_terminate_backend or a server restart does to one connection."""
    admin = db_connect(pg_url)
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert cur.fetchone()[0] is True
    admin.close()


def test_a_statement_over_db_timeout_is_unavailable(pg_url):
    db = Database(parse_db_url(pg_url), prefix="mdl_", pool_size=1, timeout=1)
    try:
        with pytest.raises(Unavailable, match="statement timeout"):
            db.run_sync(lambda q: q.scalar("SELECT pg_sleep(3)"))
        assert db.run_sync(lambda q: q.scalar("SELECT 1")) == 1  # the connection is still good
    finally:
        db.close()


def test_a_terminated_connection_is_replaced_when_it_leaves_the_pool(pg_url):
    db = Database(parse_db_url(pg_url), prefix="mdl_", pool_size=1, timeout=5)
    try:
        first = db.run_sync(lambda q: q.scalar("SELECT pg_backend_pid()"))
        terminate(pg_url, first)
        second = db.run_sync(lambda q: q.scalar("SELECT pg_backend_pid()"))  # no failed unit of work
        assert second != first
    finally:
        db.close()


def test_a_real_deadlock_victim_is_run_again(pg_url):
    """Two units of work lock two rows in opposite orders; PostgreSQL cancels one (40P01) after
    deadlock_timeout, and it is run again without any error reaching the caller."""
    db = Database(parse_db_url(pg_url), prefix="mdl_", pool_size=2, timeout=10)
    try:
        db.run_sync(lambda q: (q.execute("DROP TABLE IF EXISTS {rows}"),
                               q.execute("CREATE TABLE {rows} (id INT PRIMARY KEY, n INT NOT NULL)"),
                               q.execute("INSERT INTO {rows} VALUES (1, 0), (2, 0)")))
        both_hold_one = threading.Barrier(2, timeout=10)
        attempts = {1: 0, 2: 0}

        def work(first: int, second: int):
            def unit(q):
                attempts[first] += 1
                q.execute("UPDATE {rows} SET n = n + 1 WHERE id = %s", (first,))
                if attempts[first] == 1:
                    both_hold_one.wait()
                q.execute("UPDATE {rows} SET n = n + 1 WHERE id = %s", (second,))
            return unit

        outcomes: list[object] = []

        def run(unit) -> None:
            try:
                outcomes.append(db.run_sync(unit))
            except Exception as exc:  # reported below: the caller must never see the deadlock
                outcomes.append(exc)

        threads = [threading.Thread(target=run, args=(work(1, 2),)), threading.Thread(target=run, args=(work(2, 1),))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert outcomes == [None, None]
        # A victim was run again (a retry can meet the other transaction once more: PostgreSQL's
        # row locks are not handed out in queue order, so the count is not always exactly 3).
        assert sum(attempts.values()) >= 3, attempts
        # Each unit of work committed exactly once, whole.
        assert db.run_sync(lambda q: q.all("SELECT id, n FROM {rows} ORDER BY id")) == [(1, 2), (2, 2)]
    finally:
        db.close()


# -- MariaDB: lost connections, on a real server ---------------------------------------------------


@pytest.fixture(scope="module")
def my_url(mariadb_url):
    yield from scratch_database(mariadb_url)


def kill(my_url: str, connection_id: int) -> None:
    """What an administrator's KILL, wait_timeout or a server restart does to one connection."""
    admin = db_connect(my_url)
    with admin.cursor() as cur:
        cur.execute("KILL %s", (connection_id,))
    admin.close()


@pytest.mark.parametrize("idle", [False, True], ids=["just used", "idle"])
def test_a_killed_mariadb_connection_costs_no_failed_unit_of_work(my_url, monkeypatch, idle):
    """Idle: the ping as it leaves the pool finds it dead. Just used (no ping): its first
    statement fails and runs again on a new connection."""
    if idle:
        monkeypatch.setattr("gchat.db.PING_AFTER_IDLE_SECS", 0.0)
    db = Database(parse_db_url(my_url), prefix="mdl_", pool_size=1, timeout=5)
    try:
        first = db.run_sync(lambda q: q.scalar("SELECT CONNECTION_ID()"))
        kill(my_url, first)
        second = db.run_sync(lambda q: q.scalar("SELECT CONNECTION_ID()"))
        assert second != first
    finally:
        db.close()


# How to find a connection's server-side id and cut it, by engine.
CUTTERS = {"postgresql": ("SELECT pg_backend_pid()", terminate), "mariadb": ("SELECT CONNECTION_ID()", kill)}


@pytest.mark.parametrize("engine_name", sorted(CUTTERS))
def test_a_connection_lost_during_a_unit_of_work_is_unavailable_and_not_half_committed(request, engine_name):
    url = request.getfixturevalue("pg_url" if engine_name == "postgresql" else "my_url")
    backend_id, cut = CUTTERS[engine_name]
    db = Database(parse_db_url(url), prefix="mdl_", pool_size=1, timeout=5)
    try:
        db.run_sync(lambda q: q.execute("CREATE TABLE IF NOT EXISTS {lost} (n INT)"))

        def work(q):
            q.execute("INSERT INTO {lost} (n) VALUES (1)")
            cut(url, q.scalar(backend_id))
            q.execute("INSERT INTO {lost} (n) VALUES (2)")

        with pytest.raises(Unavailable):
            db.run_sync(work)
        # Neither row: the second INSERT was not run again alone on a new connection.
        assert db.run_sync(lambda q: q.all("SELECT n FROM {lost}")) == []
    finally:
        db.close()
