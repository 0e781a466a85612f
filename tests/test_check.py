"""``gchat check``: one line per check, and the specific advice for each misconfiguration, on
MariaDB and on PostgreSQL."""

from __future__ import annotations

import os
import secrets

import pytest

from gchat.check import moodle_cookie_path, run_check
from gchat.config import Settings, parse_db_url
from gchat.db import Database
from gchat.main import main
from tests.moodle_site import create_database, drop_database, moodle22_statements
from tests.services import db_connect, with_database

ENGINES = ("mariadb", "postgresql")
OTHER = "zchk_"  # Moodle's tables without gchat's, beside the run's mdl_ site


def check(settings: Settings) -> tuple[bool, list[str]]:
    lines: list[str] = []
    db = Database(settings.db_url, prefix=settings.db_prefix, pool_size=1, timeout=3,
                  sqlite_path=f"{settings.data_dir}/demo.sqlite3" if settings.db_url is None else None)
    try:
        ok = run_check(settings, db, lines.append)
    finally:
        db.close()
    for line in lines:
        assert line.split()[0] in ("OK", "WARN", "FAIL"), line
        assert "\n" not in line
    return ok, lines


def line_of(lines: list[str], topic: str) -> str:
    found = [line for line in lines if line.split(None, 1)[1].startswith(topic + ":")]
    assert len(found) == 1, f"no single {topic!r} line in {lines}"
    return found[0]


@pytest.fixture
def clean(site, settings):
    """A healthy Moodle 2.2 site at the web root, someone logged in."""
    site.login(site.add_user())
    return settings


def test_clean_site_is_all_ok(clean, engine, server_url):
    ok, lines = check(clean)
    assert ok, lines
    assert all(line.startswith("OK ") for line in lines), lines
    for topic in ("database", "moodle tables", "moodle version", "blocks", "dbsessions", "sessions",
                  "session cookie", "cookie path", "gchat tables", "allowed_origins"):
        line_of(lines, topic)
    # The engine and its version, as the server itself reports them.
    conn = db_connect(server_url)
    with conn.cursor() as cur:
        cur.execute("SHOW server_version" if engine == "postgresql" else "SELECT VERSION()")
        version = cur.fetchone()[0]
    conn.close()
    database = line_of(lines, "database")
    name = "PostgreSQL" if engine == "postgresql" else "MariaDB"
    assert f"({name} {version})" in database, database
    assert database.split()[2].startswith("postgresql://" if engine == "postgresql" else "mysql://")
    assert "2.2.9" in line_of(lines, "moodle version")
    assert "MoodleSession" in line_of(lines, "session cookie")
    assert "http://moodle.test" in line_of(lines, "allowed_origins")


# -- cookie path -------------------------------------------------------------------------------------

ADVICE = "proxy gchat under /moodle/gchat (url_prefix = /moodle/gchat) or set sessioncookiepath = /"


def test_cookie_path_not_covering_the_prefix(clean):
    ok, lines = check(clean.replace(moodle_wwwroot="http://moodle.test/moodle"))
    assert not ok
    line = line_of(lines, "cookie path")
    assert line.startswith("FAIL")
    assert ADVICE in line
    assert "/moodle/" in line and "/gchat" in line


def test_cookie_path_with_an_ignored_sessioncookiepath(clean, site):
    site.set_config("sessioncookiepath", "/elsewhere/")
    ok, lines = check(clean.replace(moodle_wwwroot="http://moodle.test/moodle"))
    line = line_of(lines, "cookie path")
    assert not ok and line.startswith("FAIL")
    assert ADVICE in line
    assert "sessioncookiepath = /elsewhere/ is ignored" in line


@pytest.mark.parametrize("wwwroot,url_prefix,cookiepath", [
    ("http://moodle.test/moodle", "/moodle/gchat", ""),     # proxied under Moodle's path
    ("http://moodle.test/moodle", "/gchat", "/"),           # the admin set sessioncookiepath = /
    ("http://moodle.test/moodle/", "/moodle/gchat", "/moodle"),
    ("http://moodle.test", "/gchat", ""),                   # Moodle at the web root
    ("https://moodle.test/", "/chat/gchat", "/"),
])
def test_cookie_path_covering_the_prefix(clean, site, wwwroot, url_prefix, cookiepath):
    site.set_config("sessioncookiepath", cookiepath)
    ok, lines = check(clean.replace(moodle_wwwroot=wwwroot.rstrip("/"), url_prefix=url_prefix))
    assert ok, lines
    assert line_of(lines, "cookie path").startswith("OK")


@pytest.mark.parametrize("wwwroot,configured,path", [
    ("http://h", "", "/"), ("http://h/", "", "/"), ("http://h/moodle", "", "/moodle/"),
    ("http://h/moodle", "/", "/"), ("http://h/moodle", "/moodle", "/moodle/"), ("http://h/a/b", "/a/", "/a/"),
    ("http://h/moodle", "/other/", "/moodle/"), ("http://h/moodle", "/moo", "/moodle/"),
])
def test_moodle_cookie_path(wwwroot, configured, path):
    assert moodle_cookie_path(wwwroot, configured) == path


def test_unset_wwwroot_is_a_warning(clean):
    ok, lines = check(clean.replace(moodle_wwwroot=""))
    assert ok
    assert line_of(lines, "moodle_wwwroot").startswith("WARN")
    assert "set moodle_wwwroot" in line_of(lines, "moodle_wwwroot")


# -- dbsessions --------------------------------------------------------------------------------------


def test_dbsessions_0_on_moodle_22(clean, site):
    site.set_config("dbsessions", "0")
    ok, lines = check(clean)
    assert not ok
    line = line_of(lines, "dbsessions")
    assert line.startswith("FAIL")
    assert "dbsessions = 0" in line and "files" in line and "cannot see" in line
    assert "set dbsessions = 1" in line and "Site administration › Server › Session handling" in line


def test_dbsessions_0_does_not_matter_from_moodle_26(clean, site):
    site.set_config("dbsessions", "0")
    site.set_config("release", "2.6.1 (Build: 20140113)")
    ok, lines = check(clean)
    assert ok, lines
    assert "2.6+" in line_of(lines, "dbsessions")


def test_dbsessions_unset_means_database_sessions(clean, site):
    site.execute("DELETE FROM {p}config WHERE name = 'dbsessions'")
    ok, lines = check(clean)
    assert ok, lines
    assert line_of(lines, "dbsessions").startswith("OK")


def test_no_logged_in_session_is_a_warning(site, settings):
    site.login(0)  # a visitor, not logged in
    ok, lines = check(settings)
    assert ok
    assert line_of(lines, "sessions").startswith("WARN")


# -- prefixes and tables -----------------------------------------------------------------------------


def test_wrong_prefix_names_the_right_one(clean):
    ok, lines = check(clean.replace(db_prefix="x_"))
    assert not ok
    line = line_of(lines, "moodle tables")
    assert line.startswith("FAIL")
    assert "db_prefix is 'x_' but the database has tables like 'mdl_user' — set db_prefix = mdl_" in line


def test_wrong_prefix_prefers_mdl_and_names_the_others(clean, moodle_without_chat_tables):
    ok, lines = check(clean.replace(db_prefix="x_"))
    line = line_of(lines, "moodle tables")
    assert "— set db_prefix = mdl_ (also found: " in line
    assert OTHER in line


@pytest.fixture(scope="module")
def moodle_without_chat_tables(test_db_url, engine):
    database = test_db_url.split("?")[0].rsplit("/", 1)[1]
    conn = db_connect(test_db_url, database)
    with conn.cursor() as cur:
        for statement in moodle22_statements(OTHER, engine):
            cur.execute(statement)
        for name, value in (("release", "2.2.9 (Build: 20130114)"), ("dbsessions", "1")):
            cur.execute(f"INSERT INTO {OTHER}config (name, value) VALUES (%s, %s)", (name, value))
        cur.execute(f"INSERT INTO {OTHER}sessions (state, sid, userid, timecreated, timemodified) "
                    "VALUES (0, 'abc', 5, 0, 0)")
    conn.close()
    return OTHER


def test_missing_gchat_tables(clean, moodle_without_chat_tables):
    ok, lines = check(clean.replace(db_prefix=moodle_without_chat_tables))
    assert not ok
    line = line_of(lines, "gchat tables")
    assert line.startswith("FAIL")
    assert "gchat initdb" in line and f"{OTHER}gchat_messages" in line
    assert line_of(lines, "moodle tables").startswith("OK")


@pytest.fixture
def empty_database(server_url):
    name = f"gchat_check_{secrets.token_hex(4)}"
    create_database(server_url, name)
    yield with_database(server_url, name)
    drop_database(server_url, name)


def test_database_without_moodle(settings, empty_database):
    ok, lines = check(settings.replace(db_url=parse_db_url(empty_database)))
    assert not ok
    line = line_of(lines, "moodle tables")
    assert line.startswith("FAIL") and "is db_url the Moodle database" in line


@pytest.mark.parametrize("url", ["mysql://nobody@127.0.0.1:1/moodle", "postgresql://nobody@127.0.0.1:1/moodle"])
def test_unreachable_database(settings, url):
    ok, lines = check(settings.replace(db_url=parse_db_url(url)))
    assert not ok
    assert lines == [line_of(lines, "database")]
    assert lines[0].startswith("FAIL") and "db_url" in lines[0]


def test_demo_database_is_a_warning(tmp_path):
    ok, lines = check(Settings(data_dir=str(tmp_path)))
    assert ok
    assert line_of(lines, "db_url").startswith("WARN")


# -- cookie name and origins -----------------------------------------------------------------------


def test_cookie_name_follows_sessioncookie(clean, site):
    site.set_config("sessioncookie", "abc")
    ok, lines = check(clean)
    assert ok
    assert "MoodleSessionabc" in line_of(lines, "session cookie")
    ok, lines = check(clean.replace(session_cookie="MoodleSession"))
    assert line_of(lines, "session cookie").startswith("WARN")
    assert "'MoodleSessionabc'" in line_of(lines, "session cookie")


def test_allowed_origins_without_the_wwwroot(clean):
    ok, lines = check(clean.replace(allowed_origins=("https://other.example",)))
    assert ok
    line = line_of(lines, "allowed_origins")
    assert line.startswith("WARN") and "add http://moodle.test" in line
    ok, lines = check(clean.replace(allowed_origins=("https://other.example", "http://moodle.test")))
    assert line_of(lines, "allowed_origins").startswith("OK")


# -- the command -------------------------------------------------------------------------------------


def test_check_command_exit_status(clean, test_db_url, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("GCHAT_")]:  # GCHAT_TEST_PG is no gchat setting
        monkeypatch.delenv(key)
    base = [f"--db_url={test_db_url}", "--moodle_wwwroot=http://moodle.test", f"--data_dir={tmp_path}"]
    with pytest.raises(SystemExit) as exc:
        main(["check", *base])
    assert exc.value.code == 0
    assert "OK    cookie path" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["check", *base, "--db_prefix=x_"])
    assert exc.value.code == 1
    assert "set db_prefix = mdl_" in capsys.readouterr().out


def test_file_sessions_with_a_readable_session_dir_are_fine(site, settings, tmp_path):
    from gchat.check import run_check
    from gchat.db import Database

    site.set_config("dbsessions", "0")
    lines = []
    db = Database(settings.db_url, prefix=settings.db_prefix, pool_size=1, timeout=5)
    try:
        run_check(settings.replace(moodle_session_dir=str(tmp_path)), db, lines.append)
    finally:
        db.close()
    text = "\n".join(lines)
    assert "sessions are read from the files in" in text and "moodle_session_dir" in text
