"""Moodle 2.2-2.5 with dbsessions = 0: sessions in PHP session files (the old setting
moodle_session_dir, now moodle_sessions = files:<dir>). The users are real rows in MariaDB; the
session files are written by PHP's own files handler (tests/php/moodle_session.php)."""

from __future__ import annotations

import os

import pytest

from gchat.config import parse_db_url
from gchat.db import Database
from gchat.moodle import Moodle, sid_hash
from gchat.sessions import FileStore
from tests.php_moodle import Php
from tests.support.clients import bootstrap


@pytest.fixture(scope="module")
def php():
    return Php()


@pytest.fixture
def session_dir(tmp_path):
    path = tmp_path / "sessions"
    path.mkdir()
    return str(path)


@pytest.fixture
def moodle(test_db_url, site, session_dir):
    db = Database(parse_db_url(test_db_url), prefix="mdl_", pool_size=2, timeout=5)
    yield Moodle(db, wwwroot="http://moodle.test", session_cache_ttl=0, session_dir=session_dir)
    db.close()


def test_the_old_setting_builds_the_file_store(moodle, session_dir):
    assert isinstance(moodle.sessions, FileStore) and moodle.sessions.directory == session_dir


@pytest.mark.gen_test
async def test_file_session_rules(moodle, site, session_dir, php):
    ana = site.add_user("Ana", "Files")
    gone = site.add_user("Del", "Eted", deleted=1)
    ok = php.file_login(session_dir, ana)
    old = php.file_login(session_dir, ana, age=7200 + 60)  # past sessiontimeout
    guest = php.file_login(session_dir, 1)
    nobody = php.file_login(session_dir, 0)
    deleted = php.file_login(session_dir, gone)
    assert (await moodle.check_session(ok)).user_id == ana
    for sid, reason in ((old, "timed out"), (guest, "guest"), (nobody, "not logged in"),
                        (deleted, "deleted"), ("missing001", "no such session")):
        check = await moodle.check_session(sid)
        assert not check.ok and reason in check.reason, (sid, check)
    # The periodic re-check finds file sessions by the hash a token carries.
    live = await moodle.live_sessions({(ana, sid_hash(ok)), (ana, sid_hash(old))})
    assert live == {(ana, sid_hash(ok))}
    php.file_logout(session_dir, ok)  # Moodle's logout: PHP's files handler deletes the file
    assert not os.path.exists(os.path.join(session_dir, "sess_" + ok))
    assert await moodle.live_sessions({(ana, sid_hash(ok))}) == set()


@pytest.mark.gen_test
async def test_a_file_that_is_not_a_php_session_is_refused(moodle, site, session_dir):
    ana = site.add_user()
    with open(os.path.join(session_dir, "sess_garbage01"), "wb") as handle:
        handle.write(b"USER|O:8:\"stdClass\":1:{s:2:\"id\";")  # cut short, as a crashed write leaves it
    check = await moodle.check_session("garbage01")
    assert not check.ok and "cannot parse" in check.reason
    assert await moodle.live_sessions({(ana, sid_hash("garbage01"))}) == set()


@pytest.mark.gen_test
async def test_login_as_belongs_to_the_real_user(moodle, site, session_dir, php):
    admin = site.add_user("Admin", "Real")
    student = site.add_user("Stu", "Dent")
    sid = php.file_login(session_dir, admin, loginas=student)
    assert (await moodle.check_session(sid)).user_id == admin


@pytest.fixture
def settings(settings, session_dir):
    return settings.replace(moodle_session_dir=session_dir)


@pytest.mark.gen_test
async def test_bootstrap_with_a_file_session(http_server, base_url, site, session_dir, php):
    (ana,) = site.classmates("Ana")
    sid = php.file_login(session_dir, ana)
    code, boot = await bootstrap(base_url, sid)
    assert code == 200 and boot["user"]["id"] == ana
    code, _ = await bootstrap(base_url, "../../etc/passwd")
    assert code == 401
