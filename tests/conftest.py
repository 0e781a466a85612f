"""Fixtures: a real MariaDB and a real PostgreSQL (shared or throwaway), a Moodle 2.2-shaped site
in a throwaway database per run and engine, and the settings of gchat over it. The application
fixtures (``services``, ``app``, ``people``) are in tests/support/fixtures.py, Redis's in
tests/support/redis.py.

The database fixtures are parametrised by ``engine``: a test module that sets
``ENGINES = ("mariadb", "postgresql")`` runs each of its database tests on both; every other
module runs on MariaDB only.
"""

from __future__ import annotations

import os
import secrets
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gchat.config import Settings, parse_db_url  # noqa: E402
from gchat.db import Database  # noqa: E402
from gchat.store import ChatStore  # noqa: E402
from tests.moodle_site import MoodleSite, create_database, drop_database, moodle22_statements  # noqa: E402
from tests.services import (MariaDBInstance, PostgreSQLInstance, db_connect, shared_mariadb_url,  # noqa: E402
                            shared_postgresql_url, with_database)

pytest_plugins = ["tests.support.fixtures", "tests.support.redis"]

PREFIX = "mdl_"
ENGINES = ("mariadb", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        engines = getattr(metafunc.module, "ENGINES", ("mariadb",))
        metafunc.parametrize("engine", engines, indirect=True, scope="session")


@pytest.fixture(scope="session")
def engine(request):
    """mariadb or postgresql: the engine of test_db_url (see pytest_generate_tests)."""
    return getattr(request, "param", "mariadb")


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
def test_db_url(server_url, engine):
    """A throwaway database holding the Moodle 2.2 tables and gchat's, for this run only."""
    name = f"gchat_test_{os.getpid()}_{secrets.token_hex(3)}"
    create_database(server_url, name)
    url = with_database(server_url, name)
    try:
        conn = db_connect(url, name)
        with conn.cursor() as cur:
            for statement in moodle22_statements(PREFIX, engine):
                cur.execute(statement)
        conn.close()
        db = Database(parse_db_url(url), prefix=PREFIX, pool_size=1, timeout=5)
        db.run_sync(ChatStore(db).create_tables)
        db.close()
        yield url
    finally:
        drop_database(server_url, name)


@pytest.fixture
def site(test_db_url):
    """An empty Moodle site (config, guest, front page) in the run's database."""
    parts = test_db_url.split("?")[0].rsplit("/", 1)
    moodle_site = MoodleSite(test_db_url, parts[1], PREFIX)
    moodle_site.reset()
    yield moodle_site
    moodle_site.close()


@pytest.fixture
def settings(test_db_url, tmp_path):
    return Settings(db_url=parse_db_url(test_db_url), db_prefix=PREFIX, db_pool_size=4, data_dir=str(tmp_path),
                    secret_key="test-secret-key", presence_grace=0.3, longpoll_idle=1.0, session_check_interval=3600,
                    moodle_wwwroot="http://moodle.test", longpoll_timeout=(5.0, 5.0), demo=False)
