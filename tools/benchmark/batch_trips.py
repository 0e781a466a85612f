"""What one batch of sends costs the client side of the database connection, by driver and by
round trips: ``python tools/benchmark/batch_trips.py [--batches N] [--size B] [--mysql URL]``.

A batch here is what gchat's writer sends for B messages to open windows on MariaDB/MySQL
(gchat/message_writer.py ``_store_batch``): a multi-row INSERT (its ids follow from LAST_INSERT_ID),
a read of the peers' windows, an upsert of their unread counts, and the COMMIT — four round trips. The script
times, on the calling thread, the CPU (user and system) and the wall time per batch:

* PyMySQL, four round trips (what gchat does);
* PyMySQL, one round trip (the three statements and the COMMIT sent as one multi-statement);
* mysqlclient (a C driver), four round trips, when it is installed (``pip install mysqlclient``
  compiles it: a C compiler, pkg-config and the MariaDB client headers, libmariadb-dev on Debian).

It answers "would a C driver, or fewer round trips, take the database work off the server's
core?" with numbers: docs/performance.md §4 has them. The tables are scratch ones shaped like
gchat's, in a database of their own that is dropped at the end; run the script pinned to one core
(``taskset -c 0``) for figures comparable with the server's.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pymysql
from pymysql.constants import CLIENT

SCRATCH = "gchat_batch_trips"
TEXT = "x" * 100  # the benchmark's message length

Connect = Callable[..., Any]


def insert_messages(size: int) -> str:
    return ("INSERT INTO messages (conversation, sender, text, client_id, time) VALUES "
            + ", ".join(["(%s, %s, %s, %s, %s)"] * size))


def read_windows(size: int) -> str:
    return ("SELECT conversation, userid, is_open FROM members WHERE (conversation, userid) IN ("
            + ", ".join(["(%s, %s)"] * size) + ")")


def add_unread(size: int) -> str:
    return ("INSERT INTO members (conversation, userid, is_open, unread, timemodified) VALUES "
            + ", ".join(["(%s, %s, 1, %s, %s)"] * size)
            + " ON DUPLICATE KEY UPDATE is_open = 1, unread = unread + VALUES(unread), "
              "timemodified = VALUES(timemodified)")


def parameters(size: int, batch: int) -> tuple[list[Any], list[Any], list[Any]]:
    messages = [v for i in range(size) for v in (i + 1, 1000 + i, TEXT, f"{batch}-{i}", 1_700_000_000_000)]
    windows = [v for i in range(size) for v in (i + 1, 2000 + i)]
    unread = [v for i in range(size) for v in (i + 1, 2000 + i, 1, 1_700_000_000_000)]
    return messages, windows, unread


def four_trips(conn: Any, size: int, batch: int) -> None:
    messages, windows, unread = parameters(size, batch)
    cur = conn.cursor()
    cur.execute(insert_messages(size), messages)
    assert cur.lastrowid
    cur.execute(read_windows(size), windows)
    cur.fetchall()
    cur.execute(add_unread(size), unread)
    conn.commit()


def one_trip(conn: Any, size: int, batch: int) -> None:
    messages, windows, unread = parameters(size, batch)
    cur = conn.cursor()
    cur.execute(f"{insert_messages(size)}; {read_windows(size)}; {add_unread(size)}; COMMIT",
                messages + windows + unread)
    assert cur.lastrowid
    while cur.nextset():
        cur.fetchall()


def prepare(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute(f"CREATE DATABASE IF NOT EXISTS {SCRATCH}")
    cur.execute(f"USE {SCRATCH}")
    cur.execute("DROP TABLE IF EXISTS messages, members")
    cur.execute("CREATE TABLE messages (id BIGINT AUTO_INCREMENT PRIMARY KEY, conversation BIGINT NOT NULL, "
                "sender BIGINT NOT NULL, text TEXT NOT NULL, client_id VARCHAR(64), time BIGINT NOT NULL, "
                "UNIQUE KEY (sender, client_id), KEY (conversation, id))")
    cur.execute("CREATE TABLE members (conversation BIGINT NOT NULL, userid BIGINT NOT NULL, "
                "is_open TINYINT NOT NULL, unread INT NOT NULL, timemodified BIGINT NOT NULL, "
                "PRIMARY KEY (conversation, userid))")
    conn.commit()


def measure(name: str, connect: Connect, batch: Callable[[Any, int, int], None], batches: int, size: int,
            first: int) -> None:
    conn = connect()
    try:
        prepare(conn)
        before, started = os.times(), time.perf_counter()
        for number in range(first, first + batches):
            batch(conn, size, number)
        wall, after = time.perf_counter() - started, os.times()
    finally:
        conn.close()
    user, system = (after.user - before.user) / batches * 1e6, (after.system - before.system) / batches * 1e6
    print(f"{name:<34} {user:7.0f} {system:7.0f} {user + system:7.0f} {(user + system) / size:9.1f} "
          f"{wall / batches * 1e6:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--size", type=int, default=11, help="messages per batch (the closed loop's: about 11)")
    parser.add_argument("--rounds", type=int, default=2, help="each variant this many times, interleaved")
    parser.add_argument("--mysql", default=os.environ.get("GCHAT_TEST_MYSQL", "mysql://root@127.0.0.1:3306"))
    args = parser.parse_args()
    url = urlsplit(args.mysql)
    where: dict[str, Any] = {"host": url.hostname or "127.0.0.1", "port": url.port or 3306,
                             "user": url.username or "root", "password": url.password or "",
                             "charset": "utf8mb4", "autocommit": False}
    variants: list[tuple[str, Connect, Callable[[Any, int, int], None]]] = [
        ("PyMySQL, 4 round trips (gchat)", lambda: pymysql.connect(**where), four_trips),
        ("PyMySQL, 1 round trip", lambda: pymysql.connect(client_flag=CLIENT.MULTI_STATEMENTS, **where), one_trip),
    ]
    try:
        import MySQLdb  # type: ignore[import-untyped]  # optional: mysqlclient needs a compiler
    except ImportError:
        print("mysqlclient is not installed: only PyMySQL is measured")
    else:
        variants.append(("mysqlclient, 4 round trips", lambda: MySQLdb.connect(**where), four_trips))
    print(f"{args.batches} batches of {args.size} messages; µs per batch, on this thread")
    print(f"{'':<34} {'user':>7} {'system':>7} {'CPU':>7} {'CPU/msg':>9} {'wall':>8}")
    for round_number in range(args.rounds):
        for number, (name, connect, batch) in enumerate(variants):
            first = (round_number * len(variants) + number) * args.batches  # client_ids never repeat
            measure(name, connect, batch, args.batches, args.size, first)
    cleanup = pymysql.connect(**where)
    try:
        cleanup.cursor().execute(f"DROP DATABASE IF EXISTS {SCRATCH}")
    finally:
        cleanup.close()


if __name__ == "__main__":
    main()
