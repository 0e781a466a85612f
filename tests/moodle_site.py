"""A Moodle site in a real MariaDB or PostgreSQL database, and a small factory to fill it: the
hand-made Moodle 2.2 tables (tests/fixtures/moodle22*.sql) or those of a real install.xml
(tests/xmldb.py). Rows are written so that they fit every schema: what a newer Moodle requires
(NOT NULL columns without a default) is always given, and what moved is written where the
schema keeps it (blocks: message_contacts.blocked up to 3.5, message_users_blocked from 3.6)."""

from __future__ import annotations

import os
import re
import secrets
import time
from typing import Any

from tests.services import db_connect, is_postgresql
from tests.xmldb import schema_release, schema_version_number

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CHAT_TABLES = ("gchat_conversations", "gchat_members", "gchat_messages")
GUEST_ID = 1
HANDMADE_RELEASE = "2.2.9 (Build: 20130114)"
_INSERT = re.compile(r"\s*INSERT\s+INTO\s+(\S+)", re.IGNORECASE)


def moodle22_statements(prefix: str, engine: str = "mariadb") -> list[str]:
    """Moodle 2.2's tables as XMLDB creates them on ``engine`` (mariadb or postgresql)."""
    name = "moodle22.pg.sql" if engine == "postgresql" else "moodle22.sql"
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as handle:
        text = "\n".join(line for line in handle.read().splitlines() if not line.startswith("--"))
    return [s.strip().replace("{prefix}", prefix) for s in text.split(";\n") if s.strip()]


def create_database(server_url: str, name: str) -> None:
    conn = db_connect(server_url)
    with conn.cursor() as cur:
        if is_postgresql(server_url):
            # UTF8 whatever the cluster's default, as Moodle's installer requires.
            cur.execute(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0')
        else:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    conn.close()


def drop_database(server_url: str, name: str) -> None:
    conn = db_connect(server_url)
    with conn.cursor() as cur:
        if is_postgresql(server_url):
            # A pool that a failed test left open must not keep the database: end its sessions.
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                        "AND pid <> pg_backend_pid()", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        else:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


class MoodleSite:
    """Rows in Moodle's tables, written the way Moodle writes them (for tests only: gchat itself
    never writes Moodle's tables). The same SQL serves MariaDB and PostgreSQL: ``execute`` of an
    INSERT returns the new id on both."""

    def __init__(self, url: str, database: str, prefix: str = "mdl_", *, schema: str = "2.2") -> None:
        self.engine = "postgresql" if is_postgresql(url) else "mariadb"
        self.url, self.database = url, database
        self.conn = db_connect(url, database)
        self.prefix = prefix
        self.schema = schema
        # What the site's config says it is: the hand-made fixture is a 2.2.9, an XMLDB schema
        # the release of the revision it came from.
        self.release = HANDMADE_RELEASE if schema == "2.2" else schema_release(schema)
        self.version_number = None if schema == "2.2" else schema_version_number(schema)
        self._next_user = 10
        self._has_id: dict[str, bool] = {}
        self._tables: list[str] | None = None

    def reconnect_if_lost(self) -> None:
        """One site serves a run's tests (a new connection costs tens of milliseconds on a
        MariaDB that resolves client names); a test that lost the connection loses nobody else's."""
        try:
            self.rows("SELECT 1")
        except Exception:  # whatever the driver says, a fresh connection follows
            try:
                self.conn.close()
            except Exception:  # already broken
                pass
            self.conn = db_connect(self.url, self.database)

    def tables(self) -> list[str]:
        """This site's tables (Moodle's and gchat's, by prefix), looked up once, with whether
        each has an ``id`` column (what an INSERT … RETURNING id needs on PostgreSQL)."""
        if self._tables is None:
            pattern = self.prefix.replace("_", "\\_") + "%"
            if self.engine == "postgresql":
                found = self.rows("SELECT t.table_name, EXISTS (SELECT 1 FROM information_schema.columns c "
                                  "WHERE c.table_schema = t.table_schema AND c.table_name = t.table_name "
                                  "AND c.column_name = 'id') FROM information_schema.tables t "
                                  "WHERE t.table_schema = current_schema() AND t.table_name LIKE %s", (pattern,))
                self._has_id.update((str(row[0]), bool(row[1])) for row in found)
            else:  # MariaDB gives the new id without RETURNING (and reads information_schema.columns slowly)
                found = self.rows("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
                                  "AND table_name LIKE %s", (pattern,))
            self._tables = sorted(str(row[0]) for row in found)
        return self._tables

    def forget_tables(self) -> None:
        """After a test created a table: the next reset() empties it too."""
        self._tables = None

    def has_table(self, name: str) -> bool:
        return self.prefix + name in self.tables()

    @property
    def blocks_36(self) -> bool:
        """Moodle 3.6+ (MDL-63211): blocks in message_users_blocked, contacts either way."""
        return self.has_table("message_users_blocked")

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int | None:
        sql = sql.replace("{p}", self.prefix)
        with self.conn.cursor() as cur:
            if self.engine == "postgresql":
                insert = _INSERT.match(sql)
                if insert and "RETURNING" not in sql.upper() and self._table_has_id(insert.group(1)):
                    cur.execute(sql + " RETURNING id", params)
                    return int(cur.fetchone()[0])
                cur.execute(sql, params)
                return None
            cur.execute(sql, params)
            return int(cur.lastrowid)

    def insert(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """An INSERT into a table with an id column; returns the new row's id."""
        row_id = self.execute(sql, params)
        assert row_id, f"no id from {sql!r}"
        return row_id

    def _table_has_id(self, table: str) -> bool:
        if table not in self._has_id:
            with self.conn.cursor() as cur:
                cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                            "AND table_name = %s AND column_name = 'id'", (table,))
                self._has_id[table] = cur.fetchone() is not None
        return self._has_id[table]

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql.replace("{p}", self.prefix), params)
            return [tuple(row) for row in cur.fetchall()]

    def reset(self) -> None:
        tables = self.tables()
        if self.engine == "postgresql":
            # DELETE and restarting the sequences, in one round trip: on tables this small it is
            # many times faster than TRUNCATE, which gives each table new files.
            statements = [f"DELETE FROM {table}" for table in tables]
            statements += [f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 1, false)" for table in tables
                           if self._table_has_id(table)]
            with self.conn.cursor() as cur:
                cur.execute("; ".join(statements))
        else:
            # DELETE, not TRUNCATE: on InnoDB a TRUNCATE rebuilds the table (about 25 times
            # slower over a schema's tables). Moodle's ids go on counting (rows get explicit
            # ids or the returned one); gchat's start at 1 again where rows were deleted, as
            # after a TRUNCATE (tests count on the first conversation being 1).
            chat = self.prefix + "gchat_"
            with self.conn.cursor() as cur:
                for table in tables:
                    if cur.execute(f"DELETE FROM {table}") and table.startswith(chat):
                        cur.execute(f"ALTER TABLE {table} AUTO_INCREMENT = 1")
        for name, value in (("sessiontimeout", "7200"), ("siteguest", str(GUEST_ID)), ("sessioncookie", ""),
                            ("dbsessions", "1"), ("release", self.release)):
            self.set_config(name, value)
        if self.version_number:
            self.set_config("version", self.version_number)
        self.execute("INSERT INTO {p}user (id, auth, confirmed, mnethostid, username, firstname, lastname) "
                     "VALUES (%s, 'manual', 1, 1, 'guest', 'Guest user', ' ')", (GUEST_ID,))
        self.execute("INSERT INTO {p}course (id, category, fullname, shortname) VALUES (1, 0, 'Front page', 'site')")
        self.follow_explicit_ids("course")

    def follow_explicit_ids(self, table: str) -> None:
        """After rows were inserted with explicit ids: the next generated id comes after them
        (MySQL's AUTO_INCREMENT does that by itself; a PostgreSQL sequence does not)."""
        if self.engine == "postgresql":
            self.execute(f"SELECT setval(pg_get_serial_sequence('{{p}}{table}', 'id'), "
                         f"(SELECT GREATEST(MAX(id), 1) FROM {{p}}{table}))")

    def set_config(self, name: str, value: str) -> None:
        self.execute("DELETE FROM {p}config WHERE name = %s", (name,))
        self.execute("INSERT INTO {p}config (name, value) VALUES (%s, %s)", (name, value))

    def add_user(self, first: str = "Test", last: str = "User", *, auth: str = "manual", confirmed: int = 1,
                 deleted: int = 0, suspended: int = 0, lang: str = "en") -> int:
        self._next_user += 1
        uid = self._next_user
        self.execute("INSERT INTO {p}user (id, auth, confirmed, deleted, suspended, mnethostid, username, firstname, "
                     "lastname, email, lang) VALUES (%s, %s, %s, %s, %s, 1, %s, %s, %s, %s, %s)",
                     (uid, auth, confirmed, deleted, suspended, f"user{uid}", first, last, f"u{uid}@example.invalid",
                      lang))
        return uid

    def add_course(self, name: str = "Course", *, visible: int = 1, enrol_status: int = 0) -> int:
        cid = self.insert("INSERT INTO {p}course (category, fullname, shortname, visible) VALUES (1, %s, %s, %s)",
                           (name, name[:20], visible))
        self.execute("INSERT INTO {p}enrol (enrol, status, courseid) VALUES ('manual', %s, %s)", (enrol_status, cid))
        return cid

    def enrol(self, user: int, course: int, *, status: int = 0, timestart: int = 0, timeend: int = 0) -> None:
        enrolid = self.rows("SELECT id FROM {p}enrol WHERE courseid = %s ORDER BY id LIMIT 1", (course,))[0][0]
        self.execute("INSERT INTO {p}user_enrolments (status, enrolid, userid, timestart, timeend) "
                     "VALUES (%s, %s, %s, %s, %s)", (status, enrolid, user, timestart, timeend))

    def login(self, user: int, *, state: int = 0, age: int = 0, sid: str | None = None) -> str:
        """Insert a session row as Moodle does at login; ``age`` seconds since it was last touched."""
        sid = sid or secrets.token_hex(13)
        now = int(time.time())
        self.execute("INSERT INTO {p}sessions (state, sid, userid, timecreated, timemodified, firstip, lastip) "
                     "VALUES (%s, %s, %s, %s, %s, '127.0.0.1', '127.0.0.1')", (state, sid, user, now - age, now - age))
        return sid

    def logout(self, sid: str) -> None:
        self.execute("DELETE FROM {p}sessions WHERE sid = %s", (sid,))

    def block(self, blocker: int, blocked: int) -> None:
        """Moodle 2.x-3.5: blocker's contact entry for blocked, with blocked = 1; 3.6+: a
        message_users_blocked row (core_message\\api::block_user)."""
        if self.blocks_36:
            self.execute("INSERT INTO {p}message_users_blocked (userid, blockeduserid, timecreated) "
                         "VALUES (%s, %s, %s)", (blocker, blocked, int(time.time())))
        else:
            self.execute("INSERT INTO {p}message_contacts (userid, contactid, blocked) VALUES (%s, %s, 1)",
                         (blocker, blocked))

    def classmates(self, *names: str) -> list[int]:
        """Users who share one visible course (the common case)."""
        course = self.add_course("Shared course")
        ids = []
        for name in names:
            uid = self.add_user(name, "Tester")
            self.enrol(uid, course)
            ids.append(uid)
        return ids

    # -- messaging privacy (appended; see gchat/moodle.py "messaging privacy") ----------------------

    ROLE_TABLES = ("role", "role_assignments", "role_capabilities")

    def install_roles(self) -> dict[str, int]:
        """The system context, Moodle's eight standard roles (lib/db/install.php) and
        moodle/site:sendmessage allowed for the manager and user archetypes (lib/db/access.php),
        with ``defaultuserroleid`` = the "user" (authenticated user) role, as an install leaves
        them. Returns the role ids by shortname."""
        for table in self.ROLE_TABLES:
            self.execute(f"DELETE FROM {{p}}{table}")
        context = self.insert("INSERT INTO {p}context (contextlevel, instanceid, path, depth) VALUES (10, 0, '', 1)")
        self.execute("UPDATE {p}context SET path = %s WHERE id = %s", (f"/{context}", context))
        self.system_context = context
        roles = {}
        for order, name in enumerate(("manager", "coursecreator", "editingteacher", "teacher", "student", "guest",
                                      "user", "frontpage"), 1):
            roles[name] = self.insert("INSERT INTO {p}role (name, shortname, description, sortorder, archetype) "
                                      "VALUES (%s, %s, '', %s, %s)", (name.title(), name, order, name))
        for name in ("manager", "user"):
            self.set_permission(roles[name], "moodle/site:sendmessage", 1)
        self.set_config("defaultuserroleid", str(roles["user"]))
        return roles

    def set_permission(self, role: int, capability: str, permission: int) -> None:
        """A role's permission at the system context (1 allow, -1 prevent, -1000 prohibit)."""
        self.execute("DELETE FROM {p}role_capabilities WHERE contextid = %s AND roleid = %s AND capability = %s",
                     (self.system_context, role, capability))
        self.execute("INSERT INTO {p}role_capabilities (contextid, roleid, capability, permission, timemodified) "
                     "VALUES (%s, %s, %s, %s, %s)", (self.system_context, role, capability, permission,
                                                     int(time.time())))

    def assign_system_role(self, user: int, role: int) -> None:
        self.execute("INSERT INTO {p}role_assignments (roleid, contextid, userid, component) VALUES (%s, %s, %s, '')",
                     (role, self.system_context, user))

    def set_preference(self, user: int, name: str, value: str) -> None:
        self.execute("DELETE FROM {p}user_preferences WHERE userid = %s AND name = %s", (user, name))
        self.execute("INSERT INTO {p}user_preferences (userid, name, value) VALUES (%s, %s, %s)", (user, name, value))

    def add_contact(self, user: int, contact: int) -> None:
        """``user``'s contact entry for ``contact`` (2.x: blocked = 0 by default; 3.6+: one row
        per accepted contact request, with its time)."""
        if self.blocks_36:
            self.execute("INSERT INTO {p}message_contacts (userid, contactid, timecreated) VALUES (%s, %s, %s)",
                         (user, contact, int(time.time())))
        else:
            self.execute("INSERT INTO {p}message_contacts (userid, contactid) VALUES (%s, %s)", (user, contact))

    def delete_user(self, user: int) -> None:
        """What Moodle's delete_user() leaves: the row, marked deleted."""
        self.execute("UPDATE {p}user SET deleted = 1 WHERE id = %s", (user,))
