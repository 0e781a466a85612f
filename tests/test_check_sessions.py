"""``gchat check`` on session stores and multi-factor authentication: it names the store, says
whether it sees sessions there, and never claims what it did not look at. Sessions are written by
real PHP (tests/php_moodle.py)."""

from __future__ import annotations

import os

import pytest

from gchat.check import run_check
from gchat.db import Database
from gchat.sessions import parse_moodle_sessions
from tests.session_stores import (DatabaseSessions, FileSessions, RedisSessions, disable_mfa,  # noqa: F401
                                  enable_mfa, php, redis_cluster, spare_ports)

OLD_CLAIM = "keeps a mdl_sessions row for every session handler"


def check(settings, moodle_sessions: str = "database") -> tuple[bool, dict[str, str]]:
    lines: list[str] = []
    settings = settings.replace(moodle_sessions=parse_moodle_sessions(moodle_sessions))
    db = Database(settings.db_url, prefix=settings.db_prefix, pool_size=1, timeout=3)
    try:
        ok = run_check(settings, db, lines.append)
    finally:
        db.close()
    assert not any(OLD_CLAIM in line for line in lines), lines
    by_topic: dict[str, str] = {}
    for line in lines:
        topic = line.split(None, 1)[1].split(":", 1)[0]
        by_topic[topic] = by_topic.get(topic, "") + line  # a topic may warn once and report once
    return ok, by_topic


@pytest.fixture
def mfa(site):
    yield lambda **kw: enable_mfa(site, **kw)
    disable_mfa(site)


@pytest.fixture
def moodle45(site):
    site.set_config("release", "4.5.2 (Build: 20250210)")
    return site


def redis_sessions(php, request, **options) -> RedisSessions:
    return RedisSessions(php, prefix=request.getfixturevalue("redis_prefix"), url=request.getfixturevalue("redis_url"),
                         **options)


# -- the database store --------------------------------------------------------------------------------


def test_an_empty_sessions_table_on_moodle_45_points_at_the_redis_store(moodle45, settings):
    ok, lines = check(settings)
    assert ok
    store = lines["session store"]
    assert store.startswith("OK") and "moodle_sessions = database: mdl_sessions" in store
    line = lines["sessions"]
    assert line.startswith("WARN")
    assert "probably uses the Redis session store" in line and "$CFG->session_handler_class" in line
    assert "set moodle_sessions = redis://" in line and "prefix=<$CFG->session_redis_prefix>" in line


def test_logged_in_rows_on_moodle_45_are_fine(moodle45, settings, php):
    DatabaseSessions(php, moodle45).login(moodle45.add_user())
    ok, lines = check(settings)
    assert ok and lines["sessions"].startswith("OK") and "1 logged-in session(s)" in lines["sessions"]
    assert "except Moodle 4.5+'s Redis store" in lines["dbsessions"]


def test_an_empty_sessions_table_before_45_gives_the_old_advice(site, settings):
    site.set_config("release", "4.4.1 (Build: 20240610)")
    ok, lines = check(settings)
    assert ok and lines["sessions"].startswith("WARN") and "Redis" not in lines["sessions"]


def test_an_unreadable_session_folder_fails(site, settings, tmp_path):
    ok, lines = check(settings, f"files:{tmp_path / 'missing'}")
    assert not ok and lines["dbsessions"].startswith("FAIL") and "not a folder gchat can read" in lines["dbsessions"]


# -- the Redis store ------------------------------------------------------------------------------------------


def test_redis_store_sees_a_live_session(moodle45, settings, php, request):
    sessions = redis_sessions(php, request, serializer="igbinary", compressor="gzip")
    sessions.login(moodle45.add_user())
    sessions.login(0)  # a visitor: a record, not a logged-in one
    ok, lines = check(settings, sessions.setting)
    assert ok, lines
    assert "Moodle's Redis store" in lines["session store"] and "serializer igbinary" in lines["session store"]
    assert lines["sessions"].startswith("OK") and "1 logged-in session(s) of 2 session record(s)" in lines["sessions"]
    assert "dbsessions" not in lines  # nothing said about a table gchat does not read


def test_redis_store_with_the_wrong_prefix_or_serializer(moodle45, settings, php, request):
    sessions = redis_sessions(php, request, serializer="igbinary")
    sessions.login(moodle45.add_user())
    ok, lines = check(settings, sessions.setting.replace("prefix=", "prefix=nothing-here-"))
    assert ok and lines["sessions"].startswith("WARN") and "no session_* keys under the prefix" in lines["sessions"]
    ok, lines = check(settings, sessions.setting.replace("serializer=igbinary", "serializer=php"))
    assert not ok and lines["sessions"].startswith("FAIL") and "cannot be decoded" in lines["sessions"]
    assert "does Moodle use igbinary?" in lines["sessions"]


def test_redis_store_that_does_not_answer_fails(moodle45, settings):
    (port,) = spare_ports(1)
    ok, lines = check(settings, f"redis://127.0.0.1:{port}/0?prefix=mdl_")
    store = lines["session store"]
    assert not ok and store.count("FAIL") == 1 and "cannot read redis://127.0.0.1" in store


def test_redis_store_on_a_moodle_before_45_is_questioned(site, settings, php, request):
    site.set_config("release", "4.4.1 (Build: 20240610)")
    sessions = redis_sessions(php, request)
    sessions.login(site.add_user())
    ok, lines = check(settings, sessions.setting)
    assert "WARN" in lines["session store"] and "set moodle_sessions = database" in lines["session store"]


# -- multi-factor authentication -------------------------------------------------------------------------------


def test_mfa_off_is_said_plainly(site, settings):
    site.login(site.add_user())
    ok, lines = check(settings)
    assert ok and lines["mfa"].startswith("OK") and "multi-factor authentication is off" in lines["mfa"]


def test_mfa_with_session_data_in_the_table(site, settings, php, mfa):
    mfa()
    DatabaseSessions(php, site).login(site.add_user(), mfa=True)
    ok, lines = check(settings)
    assert ok and lines["mfa"].startswith("OK") and "sessions.sessdata" in lines["mfa"]


def test_mfa_with_rows_but_no_session_data_explains_the_refusals(site, settings, mfa):
    mfa()
    site.login(site.add_user())  # the file or memcached handler: rows without sessdata
    ok, lines = check(settings)
    assert not ok
    line = lines["mfa"]
    assert line.startswith("FAIL") and "gchat refuses every session" in line
    assert "moodle_sessions = files:<dataroot>/sessions" in line and "memcached" in line


def test_mfa_with_session_files(site, settings, php, mfa, tmp_path):
    mfa()
    FileSessions(php, site, str(tmp_path)).login(site.add_user(), mfa=True)
    ok, lines = check(settings, f"files:{tmp_path}")
    assert ok and lines["mfa"].startswith("OK") and f"the files in {tmp_path}" in lines["mfa"]
    for name in os.listdir(tmp_path):
        os.remove(tmp_path / name)
    ok, lines = check(settings, f"files:{tmp_path}")
    assert not ok and lines["mfa"].startswith("FAIL") and "readable file" in lines["mfa"]


def test_mfa_with_the_redis_store(moodle45, settings, php, mfa, request):
    mfa()
    sessions = redis_sessions(php, request, compressor="zstd")
    sessions.login(moodle45.add_user(), mfa=True)
    ok, lines = check(settings, sessions.setting)
    assert ok and lines["mfa"].startswith("OK") and "compressor zstd" in lines["mfa"]
    ok, lines = check(settings, sessions.setting.replace("compressor=zstd", "compressor=gzip"))
    assert not ok and lines["mfa"].startswith("FAIL") and "cannot uncompress sessdata" in lines["mfa"]


def test_redis_cluster_store(moodle45, settings, php, redis_cluster):
    sessions = RedisSessions(php, prefix="mdl_check_", seeds=redis_cluster.seeds)
    users = [moodle45.add_user(f"U{i}") for i in range(5)]
    for uid in users:  # keys on every node of the cluster
        sessions.login(uid)
    ok, lines = check(settings, sessions.setting)
    assert ok, lines
    assert "Redis Cluster of 3 seed nodes" in lines["session store"]
    assert "5 logged-in session(s)" in lines["sessions"]
