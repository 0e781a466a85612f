"""Fixtures: a real MariaDB (shared or throwaway), a Moodle 2.2-shaped site in a throwaway
database per run, and the settings of gchat over it. The application fixtures (``services``,
``app``, ``people``) are in tests/support/fixtures.py, Redis's in tests/support/redis.py."""

from __future__ import annotations

import os
import secrets
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gchat.config import Settings, parse_db_url  # noqa: E402
from gchat.db import Database  # noqa: E402
from gchat.store import ChatStore  # noqa: E402
from tests.moodle_site import MoodleSite, moodle22_statements  # noqa: E402
from tests.services import MariaDBInstance, mysql_connect, shared_mariadb_url, with_database  # noqa: E402

PREFIX = "mdl_"

pytest_plugins = ["tests.support.fixtures", "tests.support.redis"]


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
def test_db_url(mariadb_url):
    """A throwaway database holding the Moodle 2.2 tables and gchat's, for this run only."""
    name = f"gchat_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = mysql_connect(mariadb_url)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    url = with_database(mariadb_url, name)
    conn = mysql_connect(mariadb_url, name)
    with conn.cursor() as cur:
        for statement in moodle22_statements(PREFIX):
            cur.execute(statement)
    conn.close()
    db = Database(parse_db_url(url), prefix=PREFIX, pool_size=1, timeout=5)
    db.run_sync(ChatStore(db).create_tables)
    db.close()
    try:
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


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
