"""A throwaway Moodle 2.2 site in MariaDB or PostgreSQL for the benchmark: schema, users,
courses, sessions (``--db``).

Rows are written in bulk (multi-row INSERTs), as Moodle would have them: every user confirmed,
manual auth, enrolled in a visible course; one valid session per user.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from tests.moodle_site import create_database, drop_database, moodle22_statements
from tests.services import db_connect, is_postgresql, with_database

PREFIX = "mdl_"
GUEST_ID = 1
FIRST_USER = 10


@dataclass
class BenchUser:
    id: int
    sid: str


class BenchSite:
    def __init__(self, server_url: str, name: str) -> None:
        self.server_url = server_url
        self.engine = "postgresql" if is_postgresql(server_url) else "mariadb"
        self.name = name
        self.url = with_database(server_url, name)
        self.conn: Any = None
        self._next_user = FIRST_USER
        self._next_course = 2

    def create(self, root: str, python: str) -> None:
        drop_database(self.server_url, self.name)
        create_database(self.server_url, self.name)
        self.conn = db_connect(self.server_url, self.name)
        with self.conn.cursor() as cur:
            for statement in moodle22_statements(PREFIX, self.engine):
                cur.execute(statement)
            for name, value in (("sessiontimeout", "86400"), ("siteguest", str(GUEST_ID)), ("sessioncookie", ""),
                                ("dbsessions", "1"), ("release", "2.2.9 (Build: 20130114)")):
                cur.execute(f"DELETE FROM {PREFIX}config WHERE name = %s", (name,))
                cur.execute(f"INSERT INTO {PREFIX}config (name, value) VALUES (%s, %s)", (name, value))
            cur.execute(f"INSERT INTO {PREFIX}user (id, auth, confirmed, mnethostid, username, firstname, lastname) "
                        "VALUES (%s, 'manual', 1, 1, 'guest', 'Guest user', ' ')", (GUEST_ID,))
            cur.execute(f"INSERT INTO {PREFIX}course (id, category, fullname, shortname) "
                        "VALUES (1, 0, 'Front page', 'site')")
        # gchat's own tables, created the way an admin does: gchat initdb
        subprocess.run([python, os.path.join(root, "gchat", "main.py"), "initdb", f"--db_url={self.url}",
                        f"--db_prefix={PREFIX}", "--log_level=warning"], check=True, stdout=subprocess.DEVNULL,
                       timeout=60)

    def add_groups(self, group_sizes: list[int]) -> list[list[BenchUser]]:
        """One visible course per group, every member enrolled; returns the users by group."""
        assert self.conn is not None
        groups: list[list[BenchUser]] = []
        users, courses, enrols, enrolments, sessions = [], [], [], [], []
        now = int(time.time())
        for size in group_sizes:
            course = self._next_course
            self._next_course += 1
            courses.append((course, 1, f"Bench course {course}", f"B{course}", 1))
            enrols.append((course, "manual", 0, course))  # enrol id = course id
            members = []
            for _ in range(size):
                uid = self._next_user
                self._next_user += 1
                sid = secrets.token_hex(13)
                users.append((uid, "manual", 1, 1, f"bench{uid}", f"User{uid}", "Bench", f"u{uid}@bench.invalid",
                              "en"))
                enrolments.append((0, course, uid, 0, 0))
                sessions.append((0, sid, uid, now, now, "127.0.0.1", "127.0.0.1"))
                members.append(BenchUser(uid, sid))
            groups.append(members)
        with self.conn.cursor() as cur:
            self._bulk(cur, "user", "id, auth, confirmed, mnethostid, username, firstname, lastname, email, lang",
                       users)
            self._bulk(cur, "course", "id, category, fullname, shortname, visible", courses)
            self._bulk(cur, "enrol", "id, enrol, status, courseid", enrols)
            self._bulk(cur, "user_enrolments", "status, enrolid, userid, timestart, timeend", enrolments)
            self._bulk(cur, "sessions", "state, sid, userid, timecreated, timemodified, firstip, lastip", sessions)
        self.follow_ids()
        self.analyze()
        return groups

    def analyze(self) -> None:
        """Statistics for the tables just filled, as a live site's have (autovacuum and InnoDB's
        own statistics would get there later): without them PostgreSQL planned the session
        re-check's join of 10,000 users as a nested loop, 5.9 s instead of 6 ms."""
        with self.conn.cursor() as cur:
            if self.engine == "postgresql":
                cur.execute("ANALYZE")
            else:
                tables = ", ".join(PREFIX + t for t in ("user", "course", "enrol", "user_enrolments", "sessions"))
                cur.execute(f"ANALYZE TABLE {tables}")
                cur.fetchall()

    @staticmethod
    def _bulk(cur, table: str, columns: str, rows: list[tuple], chunk: int = 2000) -> None:  # type: ignore[no-untyped-def]
        if not rows:
            return
        marks = "(" + ", ".join(["%s"] * len(rows[0])) + ")"
        for i in range(0, len(rows), chunk):
            part = rows[i:i + chunk]
            cur.execute(f"INSERT INTO {PREFIX}{table} ({columns}) VALUES " + ", ".join([marks] * len(part)),
                        [v for row in part for v in row])

    def follow_ids(self) -> None:
        """PostgreSQL: sequences after rows written with explicit ids (MariaDB's AUTO_INCREMENT follows)."""
        if self.engine != "postgresql":
            return
        with self.conn.cursor() as cur:
            for table in ("user", "course", "enrol"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{PREFIX}{table}', 'id'), "
                            f"(SELECT GREATEST(MAX(id), 1) FROM {PREFIX}{table}))")

    def questions(self) -> int | None:
        """MariaDB's global statement counter (every client of the server counts); None on PostgreSQL."""
        if self.engine == "postgresql":
            return None
        with self.conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            return int(cur.fetchone()[1])

    def drop(self) -> None:
        try:
            if self.conn is not None:
                self.conn.close()
            drop_database(self.server_url, self.name)
        except Exception as exc:  # a failed cleanup must not hide the results
            print(f"bench: could not drop database {self.name}: {exc}", file=sys.stderr)
