"""Moodle's real schemas (install.xml subsets of 2.8, 4.4 and 5.2) created on a real MariaDB and
a real PostgreSQL by tests/xmldb.py, and checked against what gchat reads.

Each schema × engine gets a throwaway database, created here and dropped at the end, on the
servers of tests/services.py (the ones already running, or throwaway instances it starts).
gchat's own Moodle lookups (session rules, course-mates, blocks, profiles) also run over each
real schema on both engines; tests/test_moodle_rules.py runs every rule there.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import textwrap
import time
from typing import Any
from collections.abc import Iterator

import pytest

from gchat.config import parse_db_url
from gchat.db import Database
from gchat.moodle import Moodle
from tests.services import mysql_connect, pg_connect, with_database
from tests.xmldb import (XmldbError, moodle_schema_statements, mysql_type, parse, postgres_type, schema_path,
                         schema_release, schema_statements, schema_versions)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "mdl_"
VERSIONS = schema_versions()

# What gchat reads (gchat/moodle.py, gchat/check.py, gchat/demo.py and the session/messaging
# rules of shared/moodle-today.md): table -> column -> kind. A table or column marked with a
# version range exists only there.
INT, CHAR, TEXT, CHAR_OR_TEXT = "int", "char", "text", "char|text"
READS: dict[str, dict[str, str]] = {
    "config": {"name": CHAR, "value": TEXT},
    "config_plugins": {"plugin": CHAR, "name": CHAR, "value": TEXT},
    "sessions": {"sid": CHAR, "state": INT, "userid": INT, "timemodified": INT, "sessdata": TEXT},
    "user": {"id": INT, "auth": CHAR, "confirmed": INT, "deleted": INT, "suspended": INT, "username": CHAR,
             "firstname": CHAR, "lastname": CHAR, "lang": CHAR},
    # value: char(1333) up to 4.4, text in 5.x
    "user_preferences": {"userid": INT, "name": CHAR, "value": CHAR_OR_TEXT},
    "course": {"id": INT, "visible": INT, "shortname": CHAR, "fullname": CHAR},
    "enrol": {"id": INT, "courseid": INT, "status": INT},
    "user_enrolments": {"userid": INT, "enrolid": INT, "status": INT, "timestart": INT, "timeend": INT},
    "context": {"id": INT, "contextlevel": INT, "instanceid": INT},
    "role": {"id": INT, "shortname": CHAR},
    "role_assignments": {"roleid": INT, "contextid": INT, "userid": INT},
    "role_capabilities": {"roleid": INT, "contextid": INT, "capability": CHAR, "permission": INT},
    "message_contacts": {"userid": INT, "contactid": INT},
}
BLOCKS_2X = {"message_contacts": {"blocked": INT}}  # Moodle 2.x-3.5
BLOCKS_36 = {"message_users_blocked": {"userid": INT, "blockeduserid": INT},  # Moodle 3.6+
             "message_contact_requests": {"userid": INT, "requesteduserid": INT}}
TYPES = {
    "mysql": {INT: {"bigint", "int", "mediumint", "smallint", "tinyint"}, CHAR: {"varchar"},
              TEXT: {"longtext", "mediumtext", "text"}},
    "postgresql": {INT: {"bigint", "integer", "smallint"}, CHAR: {"character varying"}, TEXT: {"text"}},
}


def major(version: str) -> int:
    return int(version.split(".")[0])


def expected_reads(version: str) -> dict[str, dict[str, str]]:
    reads = {table: dict(columns) for table, columns in READS.items()}
    extra = BLOCKS_2X if major(version) < 3 else BLOCKS_36
    for table, columns in extra.items():
        reads.setdefault(table, {}).update(columns)
    return reads


# -- engines --------------------------------------------------------------------------------------

class Engine:
    """One throwaway database on a real server: run statements, look at its columns."""

    name = "?"

    def execute(self, sql: str, params: tuple = ()) -> None:
        raise NotImplementedError

    def all(self, sql: str, params: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def columns(self, table: str) -> dict[str, tuple[str, bool, Any]]:
        """column -> (data type, nullable, default) from information_schema."""
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError


class MariaDB(Engine):
    name = "mysql"

    def __init__(self, server_url: str) -> None:
        self.db = f"gchat_xmldb_{os.getpid()}_{secrets.token_hex(3)}"
        self.admin = mysql_connect(server_url)
        with self.admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{self.db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        self.url = with_database(server_url, self.db)
        self.conn = mysql_connect(server_url, self.db)

    def execute(self, sql: str, params: tuple = ()) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), params)

    def all(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), params)
            return list(cur.fetchall())

    def columns(self, table: str) -> dict[str, tuple[str, bool, Any]]:
        rows = self.all("SELECT COLUMN_NAME, DATA_TYPE, IS_NULLABLE, COLUMN_DEFAULT FROM information_schema.COLUMNS "
                        "WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?", (self.db, table))
        return {r[0]: (r[1].lower(), r[2] == "YES", r[3]) for r in rows}

    def drop(self) -> None:
        self.conn.close()
        with self.admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{self.db}`")
        self.admin.close()


class PostgreSQL(Engine):
    name = "postgresql"

    def __init__(self, server_url: str) -> None:
        self.db = f"gchat_xmldb_{os.getpid()}_{secrets.token_hex(3)}"
        self.admin = pg_connect(server_url)
        self.admin.execute(f'CREATE DATABASE "{self.db}" ENCODING \'UTF8\' TEMPLATE template0')
        self.url = with_database(server_url, self.db)
        self.conn = pg_connect(server_url, self.db)

    def execute(self, sql: str, params: tuple = ()) -> None:
        self.conn.execute(sql.replace("?", "%s"), params)

    def all(self, sql: str, params: tuple = ()) -> list[tuple]:
        return list(self.conn.execute(sql.replace("?", "%s"), params).fetchall())

    def columns(self, table: str) -> dict[str, tuple[str, bool, Any]]:
        rows = self.all("SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
                        "WHERE table_schema = 'public' AND table_name = ?", (table,))
        return {r[0]: (r[1].lower(), r[2] == "YES", r[3]) for r in rows}

    def drop(self) -> None:
        self.conn.close()
        self.admin.execute(f'DROP DATABASE IF EXISTS "{self.db}"')
        self.admin.close()


def _engine(name: str, request: pytest.FixtureRequest) -> Engine:
    """A throwaway database on the MariaDB or PostgreSQL of tests/services.py (conftest's fixtures)."""
    if name == "mysql":
        return MariaDB(request.getfixturevalue("mariadb_url"))
    return PostgreSQL(request.getfixturevalue("postgresql_url"))


BOTH = [(v, e) for v in VERSIONS for e in ("mysql", "postgresql")]


@pytest.fixture(scope="module", params=BOTH, ids=lambda p: f"moodle{p[0]}-{p[1]}")
def created_schema(request) -> Iterator[tuple[str, Engine]]:
    """One Moodle schema created on one engine, in a database of its own."""
    version, engine_name = request.param
    yield from _created(version, _engine(engine_name, request))


@pytest.fixture(params=BOTH, ids=lambda p: f"moodle{p[0]}-{p[1]}")
def fresh_schema(request) -> Iterator[tuple[str, Engine]]:
    """A fresh database per test, for gchat's own lookups."""
    version, engine_name = request.param
    yield from _created(version, _engine(engine_name, request))


def _created(version: str, engine: Engine) -> Iterator[tuple[str, Engine]]:
    try:
        for statement in moodle_schema_statements(version, engine.name, PREFIX):
            engine.execute(statement)
        yield version, engine
    finally:
        engine.drop()


# -- the fixtures are Moodle's own files ------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_each_fixture_names_its_source_revision_and_holds_the_tables_gchat_reads(version):
    with open(schema_path(version), encoding="utf-8") as handle:
        text = handle.read()
    assert re.search(r"lib/db/install\.xml at commit [0-9a-f]{40}", text), "the fixture must name its source"
    tables = {t.name for t in parse(schema_path(version))}
    assert set(expected_reads(version)) <= tables
    # The release the tests' sites carry in {config} (what gchat check reports) is this revision's.
    assert schema_release(version).startswith(version), schema_release(version)


def test_there_is_a_2x_a_4x_and_a_5x_schema():
    assert {major(v) for v in VERSIONS} >= {2, 4, 5}


# -- the type mapping of Moodle's generators ---------------------------------------------------------

LEGACY = textwrap.dedent("""\
    <?xml version="1.0" encoding="UTF-8" ?>
    <XMLDB PATH="x" VERSION="20100706">
      <TABLES>
        <TABLE NAME="sample" COMMENT="It's a sample">
          <FIELDS>
            <FIELD NAME="id" TYPE="int" LENGTH="10" NOTNULL="true" UNSIGNED="true" SEQUENCE="true"/>
            <FIELD NAME="flag" TYPE="int" LENGTH="1" NOTNULL="true" UNSIGNED="true" DEFAULT="0" SEQUENCE="false"/>
            <FIELD NAME="small" TYPE="int" LENGTH="4" NOTNULL="false" UNSIGNED="false" SEQUENCE="false"/>
            <FIELD NAME="medium" TYPE="int" LENGTH="5" NOTNULL="false" SEQUENCE="false"/>
            <FIELD NAME="normal" TYPE="int" LENGTH="7" NOTNULL="false" SEQUENCE="false"/>
            <FIELD NAME="grade" TYPE="number" LENGTH="10" DECIMALS="5" NOTNULL="true" DEFAULT="0" SEQUENCE="false"/>
            <FIELD NAME="ratio" TYPE="float" LENGTH="10" DECIMALS="2" NOTNULL="false" SEQUENCE="false"/>
            <FIELD NAME="precise" TYPE="float" NOTNULL="false" SEQUENCE="false"/>
            <FIELD NAME="label" TYPE="char" LENGTH="30" NOTNULL="true" SEQUENCE="false"/>
            <FIELD NAME="kind" TYPE="char" LENGTH="20" NOTNULL="true" DEFAULT="it's" SEQUENCE="false"/>
            <FIELD NAME="note" TYPE="text" LENGTH="small" NOTNULL="false" SEQUENCE="false"/>
            <FIELD NAME="body" TYPE="text" LENGTH="big" NOTNULL="true" SEQUENCE="false"/>
            <FIELD NAME="blob" TYPE="binary" NOTNULL="false" SEQUENCE="false"/>
          </FIELDS>
          <KEYS>
            <KEY NAME="primary" TYPE="primary" FIELDS="id"/>
            <KEY NAME="label" TYPE="unique" FIELDS="label"/>
            <KEY NAME="small" TYPE="foreign" FIELDS="small" REFTABLE="other" REFFIELDS="id"/>
          </KEYS>
          <INDEXES>
            <INDEX NAME="kind" UNIQUE="false" FIELDS="kind" HINTS="varchar_pattern_ops"/>
          </INDEXES>
        </TABLE>
      </TABLES>
    </XMLDB>
    """)


@pytest.fixture
def legacy_xml(tmp_path) -> str:
    path = tmp_path / "install.xml"
    path.write_text(LEGACY, encoding="utf-8")
    return str(path)


def test_type_mapping_follows_moodles_generators(legacy_xml):
    [table] = parse(legacy_xml)
    fields = {f.name: f for f in table.fields}
    mysql = {name: mysql_type(f).split(" COLLATE")[0] for name, f in fields.items()}
    assert mysql == {"id": "BIGINT(10) UNSIGNED", "flag": "TINYINT(1) UNSIGNED", "small": "SMALLINT(4)",
                     "medium": "MEDIUMINT(5)", "normal": "INT(7)", "grade": "NUMERIC(10,5)",
                     "ratio": "FLOAT(10,2)", "precise": "DOUBLE", "label": "VARCHAR(30)", "kind": "VARCHAR(20)",
                     "note": "TEXT", "body": "LONGTEXT", "blob": "LONGBLOB"}
    postgres = {name: postgres_type(f) for name, f in fields.items()}
    assert postgres == {"id": "BIGINT", "flag": "SMALLINT", "small": "SMALLINT", "medium": "INTEGER",
                        "normal": "INTEGER", "grade": "NUMERIC(10,5)", "ratio": "REAL",
                        "precise": "DOUBLE PRECISION", "label": "VARCHAR(30)", "kind": "VARCHAR(20)",
                        "note": "TEXT", "body": "TEXT", "blob": "BYTEA"}


def test_statements_for_both_engines(legacy_xml):
    mysql = schema_statements(legacy_xml, "mysql", "pre_")
    create = mysql[0]
    assert create.startswith("CREATE TABLE `pre_sample` (")
    assert "`id` BIGINT(10) UNSIGNED NOT NULL auto_increment" in create
    assert "`label` VARCHAR(30) COLLATE utf8mb4_unicode_ci NOT NULL DEFAULT ''" in create  # NOT NULL char: ''
    assert "`kind` VARCHAR(20) COLLATE utf8mb4_unicode_ci NOT NULL DEFAULT 'it''s'" in create
    assert "`body` LONGTEXT COLLATE utf8mb4_unicode_ci NOT NULL," in create  # no default on text
    assert "CONSTRAINT PRIMARY KEY (`id`)" in create and "COMMENT='It''s a sample'" in create
    assert mysql[1:] == ["CREATE INDEX pre_samp_kin_ix ON `pre_sample` (`kind`)",
                         "CREATE UNIQUE INDEX pre_samp_lab_uix ON `pre_sample` (`label`)",
                         "CREATE INDEX pre_samp_sma_ix ON `pre_sample` (`small`)"]
    postgres = schema_statements(legacy_xml, "postgresql", "pre_")
    assert '"id" BIGSERIAL,' in postgres[0] and 'CONSTRAINT pre_samp_id_pk PRIMARY KEY ("id")' in postgres[0]
    assert postgres[1] == "COMMENT ON TABLE \"pre_sample\" IS 'It''s a sample'"
    assert 'CREATE INDEX pre_samp_kin_ix_pattern ON "pre_sample" USING btree ("kind" varchar_pattern_ops)' in postgres


def test_names_stay_within_30_characters_and_unique():
    names = [re.search(r"INDEX (\S+) ON", s).group(1) for s in moodle_schema_statements("5.2", "postgresql", "mdl_")
             if " INDEX " in s]
    assert names and all(len(n) <= 30 for n in names) and len(names) == len(set(names))


def test_a_broken_definition_is_refused(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text(LEGACY.replace('FIELDS="label"/>', 'FIELDS="nosuchfield"/>'), encoding="utf-8")
    with pytest.raises(XmldbError, match="nosuchfield"):
        parse(str(path))
    with pytest.raises(XmldbError, match="engine"):
        moodle_schema_statements("5.2", "sqlite", "mdl_")
    with pytest.raises(XmldbError, match="no Moodle schema"):
        moodle_schema_statements("1.9", "mysql", "mdl_")


# -- the schemas on the real engines ------------------------------------------------------------------

def test_every_column_gchat_reads_exists_with_a_sensible_type(created_schema):
    version, engine = created_schema
    kinds = TYPES[engine.name]
    for table, columns in expected_reads(version).items():
        found = engine.columns(PREFIX + table)
        assert found, f"Moodle {version} on {engine.name}: no table {PREFIX}{table}"
        for column, kind in columns.items():
            assert column in found, f"Moodle {version} on {engine.name}: no column {table}.{column}"
            allowed = set().union(*(kinds[k] for k in kind.split("|")))
            assert found[column][0] in allowed, f"{table}.{column} is {found[column][0]}, expected {kind}"


def test_block_tables_are_the_ones_gchat_detects(created_schema):
    version, engine = created_schema
    has_users_blocked = bool(engine.columns(PREFIX + "message_users_blocked"))
    has_blocked_column = "blocked" in engine.columns(PREFIX + "message_contacts")
    assert (has_users_blocked, has_blocked_column) == ((False, True) if major(version) < 3 else (True, False))


def test_moodle_defaults_and_constraints_hold(created_schema):
    """What gchat's rules lean on: ids are assigned by the database, a NOT NULL char column
    defaults to '', an enrolment without an end has timeend 2147483647, and a sid is unique."""
    version, engine = created_schema
    engine.execute(f"INSERT INTO {PREFIX}user (username, firstname, lastname) VALUES (?, ?, ?)", ("ana", "Ana", "A"))
    engine.execute(f"INSERT INTO {PREFIX}user (username, firstname, lastname) VALUES (?, ?, ?)", ("ben", "Ben", "B"))
    rows = engine.all(f"SELECT id, auth, email, lang, deleted, confirmed FROM {PREFIX}user ORDER BY id")
    assert [r[0] for r in rows] == [1, 2]
    assert rows[0][1:] == ("manual", "", "en", 0, 0)
    engine.execute(f"INSERT INTO {PREFIX}user_enrolments (enrolid, userid) VALUES (?, ?)", (1, 1))
    assert engine.all(f"SELECT status, timestart, timeend FROM {PREFIX}user_enrolments") == [(0, 0, 2147483647)]
    now = int(time.time())
    insert = f"INSERT INTO {PREFIX}sessions (sid, userid, timecreated, timemodified) VALUES (?, ?, ?, ?)"
    engine.execute(insert, ("abc", 1, now, now))
    with pytest.raises(Exception, match="(?i)duplicate|unique"):
        engine.execute(insert, ("abc", 2, now, now))


# -- gchat's own lookups over each real schema, on both engines -------------------------------------------

def _gchat_site(engine: Engine) -> None:
    """A tiny site in Moodle's own tables: a guest, three students, a hidden course, blocks."""
    now = int(time.time())
    run = engine.execute
    run(f"INSERT INTO {PREFIX}config (name, value) VALUES ('siteguest', '1'), ('sessiontimeout', '7200')")
    for user, auth, suspended in (("guest", "manual", 0), ("ana", "manual", 0), ("ben", "manual", 0),
                                  ("cy", "manual", 0), ("dee", "manual", 1)):
        run(f"INSERT INTO {PREFIX}user (username, firstname, lastname, auth, confirmed, suspended, mnethostid) "
            "VALUES (?, ?, 'Doe', ?, 1, ?, 1)", (user, user.title(), auth, suspended))
    run(f"INSERT INTO {PREFIX}course (fullname, shortname, visible) VALUES ('Site', 'site', 1), "
        "('Physics', 'PHY', 1), ('Hidden', 'HID', 0)")
    for course in (1, 2, 3):
        run(f"INSERT INTO {PREFIX}enrol (enrol, courseid) VALUES ('manual', ?)", (course,))
    for userid in (2, 3, 4, 5):  # everyone shares Physics (enrol 2) and the hidden course (enrol 3)
        for enrolid in (2, 3):
            run(f"INSERT INTO {PREFIX}user_enrolments (enrolid, userid, timecreated) VALUES (?, ?, ?)",
                (enrolid, userid, now))
    for sid, userid in (("sidana", 2), ("sidguest", 1), ("siddee", 5)):
        run(f"INSERT INTO {PREFIX}sessions (sid, userid, timecreated, timemodified) VALUES (?, ?, ?, ?)",
            (sid, userid, now, now))


def _moodle_for(engine: Engine) -> tuple[Database, Moodle]:
    db = Database(parse_db_url(engine.url), prefix=PREFIX, pool_size=1, timeout=5)
    return db, Moodle(db, wwwroot="http://moodle.test")


def test_gchat_lookups_on_the_real_schema(fresh_schema):
    version, engine = fresh_schema
    _gchat_site(engine)
    if major(version) < 3:
        engine.execute(f"INSERT INTO {PREFIX}message_contacts (userid, contactid, blocked) VALUES (4, 2, 1)")
    else:
        engine.execute(f"INSERT INTO {PREFIX}message_users_blocked (userid, blockeduserid) VALUES (4, 2)")
    db, moodle = _moodle_for(engine)
    try:
        async def lookups() -> tuple:
            return (await moodle.check_session("sidana"), await moodle.check_session("sidguest"),
                    await moodle.check_session("siddee"), await moodle.coursemates(2), await moodle.block_mode(),
                    await moodle.user(2))

        ana, guest, dee, mates, mode, profile = asyncio.run(lookups())
    finally:
        db.close()
    assert ana.user_id == 2
    assert (guest.ok, guest.reason) == (False, "guest")
    assert (dee.ok, dee.reason) == (False, "user suspended")
    # Ben shares Physics; Cy blocks Ana; Dee is suspended; the hidden course adds no one.
    assert mates == frozenset({3})
    assert mode == ("contacts" if major(version) < 3 else "users_blocked")
    assert profile.name == "Ana Doe"


def test_every_column_gchat_sql_names_is_in_the_list_checked_here():
    """gchat/moodle.py's SQL, read for ``alias.column`` under ``{table} alias``: keeps READS honest
    when the lookups change."""
    with open(os.path.join(REPO, "gchat", "moodle.py"), encoding="utf-8") as handle:
        # Only the string literals: the SQL, not the Python around it.
        source = " ".join(re.findall(r'"([^"\n]*)"', handle.read()))
    aliases = dict((alias, table) for table, alias in re.findall(r"\{\{?(\w+)\}?\} (\w+)\b", source)
                   if alias.upper() not in {"WHERE", "ON", "JOIN", "LEFT", "UNION", "ORDER", "GROUP", "LIMIT"})
    named: set[tuple[str, str]] = set()
    for alias, column in re.findall(r"\b(\w+)\.(\w+)\b", source):
        if alias in aliases:
            named.add((aliases[alias], column))
    assert named, "no aliased columns found: has gchat/moodle.py's SQL moved?"
    every = {(t, c) for version in VERSIONS for t, cols in expected_reads(version).items() for c in cols}
    assert named <= every, f"gchat reads columns this test does not check: {sorted(named - every)}"
