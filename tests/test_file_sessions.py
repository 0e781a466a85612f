"""Moodle 2.2-2.5 with dbsessions = 0: sessions in PHP session files (setting moodle_session_dir).
The users are real rows in MariaDB; the session files are written as PHP's files handler does."""

from __future__ import annotations

import os
import time

import pytest

from gchat.config import parse_db_url
from gchat.db import Database
from gchat.moodle import Moodle, sid_hash
from gchat.php_session import parse_session
from tests.support.clients import bootstrap


def php_string(text: str) -> str:
    return f's:{len(text.encode())}:"{text}";'


def session_file(directory, sid: str, user_id: int, *, age: int = 0, realuser: int | None = None) -> str:
    """A Moodle 2.2 session as PHP writes it: USER|O:8:"stdClass":…SESSION|O:8:"stdClass":…"""
    fields = [("id", f"s:{len(str(user_id))}:\"{user_id}\";"), ("auth", php_string("manual")),
              ("username", php_string(f"user{user_id}")), ("firstname", php_string("Zoë")),
              ("lastaccess", f"i:{int(time.time())};"), ("preference", "a:1:{s:4:\"lang\";s:2:\"en\";}")]
    if realuser is not None:
        fields.append(("realuser", f"s:{len(str(realuser))}:\"{realuser}\";"))
    body = "".join(php_string(k) + v for k, v in fields)
    data = (f'USER|O:8:"stdClass":{len(fields)}:{{{body}}}'
            'SESSION|O:8:"stdClass":2:{s:10:"logincount";i:0;s:7:"message";N;}')
    path = os.path.join(directory, "sess_" + sid)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(data)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


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


def test_php_session_format_is_parsed():
    data = (b'USER|O:8:"stdClass":3:{s:2:"id";s:2:"42";s:4:"auth";s:6:"manual";s:6:"access";'
            b'a:2:{i:0;b:1;s:2:"rw";d:0.5;}}SESSION|O:8:"stdClass":1:{s:4:"lang";N;}')
    parsed = parse_session(data)
    assert parsed["USER"]["id"] == "42" and parsed["USER"]["access"] == {0: True, "rw": 0.5}
    assert parsed["SESSION"] == {"lang": None}


@pytest.mark.gen_test
async def test_file_session_rules(moodle, site, session_dir):
    ana = site.add_user("Ana", "Files")
    gone = site.add_user("Del", "Eted", deleted=1)
    session_file(session_dir, "okfile123", ana)
    session_file(session_dir, "oldfile123", ana, age=7200 + 60)  # past sessiontimeout
    session_file(session_dir, "guestfile1", 1)  # the guest
    session_file(session_dir, "nobody0001", 0)  # not logged in
    session_file(session_dir, "deleted001", gone)
    assert (await moodle.check_session("okfile123")).user_id == ana
    for sid, reason in (("oldfile123", "timed out"), ("guestfile1", "guest"), ("nobody0001", "not logged in"),
                        ("deleted001", "deleted"), ("missing001", "no such session")):
        check = await moodle.check_session(sid)
        assert not check.ok and reason in check.reason, (sid, check)
    # The periodic re-check finds file sessions by the hash a token carries.
    live = await moodle.live_sessions({(ana, sid_hash("okfile123")), (ana, sid_hash("oldfile123"))})
    assert live == {(ana, sid_hash("okfile123"))}
    os.remove(os.path.join(session_dir, "sess_okfile123"))  # Moodle logout deletes the file
    assert await moodle.live_sessions({(ana, sid_hash("okfile123"))}) == set()


@pytest.mark.gen_test
async def test_login_as_belongs_to_the_real_user(moodle, site, session_dir):
    admin = site.add_user("Admin", "Real")
    student = site.add_user("Stu", "Dent")
    session_file(session_dir, "loginas001", student, realuser=admin)
    assert (await moodle.check_session("loginas001")).user_id == admin


@pytest.fixture
def settings(settings, session_dir):
    return settings.replace(moodle_session_dir=session_dir)


@pytest.mark.gen_test
async def test_bootstrap_with_a_file_session(http_server, base_url, site, session_dir):
    (ana,) = site.classmates("Ana")
    session_file(session_dir, "cookiefile1", ana)
    code, boot = await bootstrap(base_url, "cookiefile1")
    assert code == 200 and boot["user"]["id"] == ana
    code, _ = await bootstrap(base_url, "../../etc/passwd")
    assert code == 401
