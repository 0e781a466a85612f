"""Fixtures: a real MariaDB and a real PostgreSQL (shared or throwaway), a Moodle site in a
throwaway database per run, engine and schema, and the settings of gchat over it. The application
fixtures (``services``, ``app``, ``people``) are in tests/support/fixtures.py, Redis's in
tests/support/redis.py.

The database fixtures are parametrised by ``engine`` and by ``schema``:

* a test module that sets ``ENGINES = ("mariadb", "postgresql")`` runs each of its database
  tests on both engines; every other module runs on MariaDB only;
* a module that sets ``SCHEMAS`` (e.g. ``ALL_SCHEMAS``) runs them on each of those Moodle
  schemas: "2.2" is the hand-made Moodle 2.2 fixture (tests/fixtures/moodle22*.sql), the others
  are created from Moodle's own install.xml by tests/xmldb.py (tests/fixtures/xmldb/). Every
  other module gets the 2.2 fixture. A test marked ``@pytest.mark.moodle_schemas(since="3.6")``
  (or ``before="3.6"``) runs only on the schemas of those versions: no skips, the other
  combinations are simply not generated. A module's ``COVERED_ELSEWHERE`` set of (engine,
  schema) pairs leaves out what another module already runs.
"""

from __future__ import annotations

import os
import secrets
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gchat.config import Settings, parse_db_url
from gchat.db import Database
from gchat.store import ChatStore
from tests.moodle_site import MoodleSite, create_database, drop_database, moodle22_statements
from tests.services import (MariaDBInstance, PostgreSQLInstance, db_connect, shared_mariadb_url,
                            shared_postgresql_url, with_database)
from tests.xmldb import moodle_schema_statements, schema_versions

pytest_plugins = ["tests.support.fixtures", "tests.support.redis"]

PREFIX = "mdl_"
ENGINES = ("mariadb", "postgresql")
HANDMADE = "2.2"  # the hand-made Moodle 2.2 fixture, the schema of every module without SCHEMAS
ALL_SCHEMAS = (HANDMADE, *schema_versions())  # "2.2", then each XMLDB fixture, oldest first


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def schemas_for(metafunc: pytest.Metafunc, schemas: tuple[str, ...]) -> list[str]:
    """``schemas`` less those a ``moodle_schemas(since=…, before=…)`` marker rules out."""
    marker = metafunc.definition.get_closest_marker("moodle_schemas")
    if marker is None:
        return list(schemas)
    since, before = marker.kwargs.get("since"), marker.kwargs.get("before")
    return [s for s in schemas if (since is None or version_key(s) >= version_key(since))
            and (before is None or version_key(s) < version_key(before))]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "moodle_schemas(since=None, before=None): run only on the Moodle schemas "
                                       "of those versions (see tests/conftest.py)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" not in metafunc.fixturenames:
        return
    engines = getattr(metafunc.module, "ENGINES", ("mariadb",))
    schemas = getattr(metafunc.module, "SCHEMAS", None)
    if schemas is None:
        metafunc.parametrize("engine", engines, indirect=True, scope="session")
        return
    # A module may leave out combinations another module already runs (COVERED_ELSEWHERE).
    elsewhere = set(getattr(metafunc.module, "COVERED_ELSEWHERE", ()))
    combos = [(engine, schema) for engine in engines for schema in schemas_for(metafunc, tuple(schemas))
              if (engine, schema) not in elsewhere]
    metafunc.parametrize(("engine", "schema"), combos, indirect=True, scope="session",
                         ids=[f"{engine}-moodle{schema}" for engine, schema in combos])


@pytest.fixture(scope="session")
def engine(request):
    """mariadb or postgresql: the engine of test_db_url (see pytest_generate_tests)."""
    return getattr(request, "param", "mariadb")


@pytest.fixture(scope="session")
def schema(request) -> str:
    """The Moodle version whose tables test_db_url holds: "2.2" (hand-made) or an XMLDB fixture's."""
    return getattr(request, "param", HANDMADE)


def moodle_statements(schema: str, engine: str, prefix: str) -> list[str]:
    """The DDL of Moodle ``schema``'s tables on ``engine``."""
    if schema == HANDMADE:
        return moodle22_statements(prefix, engine)
    return moodle_schema_statements(schema, "postgresql" if engine == "postgresql" else "mysql", prefix)


@pytest.fixture(scope="session")
def mariadb_url():
    url = shared_mariadb_url()
    if url:
        yield url
        return
    instance = MariaDBInstance()
    instance.start()
    try:
        yield instance.url
    finally:
        instance.destroy()


@pytest.fixture(scope="session")
def postgresql_url():
    url = shared_postgresql_url()
    if url:
        yield url
        return
    instance = PostgreSQLInstance()
    instance.start()
    try:
        yield instance.url
    finally:
        instance.destroy()


@pytest.fixture(scope="session")
def server_url(request, engine):
    """The database server of ``engine`` (without a database name)."""
    return request.getfixturevalue("postgresql_url" if engine == "postgresql" else "mariadb_url")


@pytest.fixture(scope="session")
def test_db_url(server_url, engine, schema):
    """A throwaway database holding Moodle ``schema``'s tables and gchat's, for this run only."""
    name = f"gchat_test_{os.getpid()}_{secrets.token_hex(3)}"
    create_database(server_url, name)
    url = with_database(server_url, name)
    try:
        conn = db_connect(url, name)
        with conn.cursor() as cur:
            for statement in moodle_statements(schema, engine, PREFIX):
                cur.execute(statement)
        conn.close()
        db = Database(parse_db_url(url), prefix=PREFIX, pool_size=1, timeout=5)
        db.run_sync(ChatStore(db).create_tables)
        db.close()
        yield url
    finally:
        drop_database(server_url, name)


@pytest.fixture(scope="session")
def shared_site(test_db_url, schema):
    """The run's Moodle site on one connection, reset for each test by ``site``."""
    parts = test_db_url.split("?")[0].rsplit("/", 1)
    moodle_site = MoodleSite(test_db_url, parts[1], PREFIX, schema=schema)
    yield moodle_site
    moodle_site.close()


@pytest.fixture
def site(shared_site):
    """An empty Moodle site (config, guest, front page) in the run's database."""
    shared_site.reconnect_if_lost()
    shared_site.reset()
    return shared_site


@pytest.fixture
def settings(test_db_url, tmp_path):
    return Settings(db_url=parse_db_url(test_db_url), db_prefix=PREFIX, db_pool_size=4, data_dir=str(tmp_path),
                    secret_key="test-secret-key", presence_grace=0.3, longpoll_idle=1.0, session_check_interval=3600,
                    moodle_wwwroot="http://moodle.test", longpoll_timeout=(5.0, 5.0), demo=False)
