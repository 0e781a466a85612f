"""A Moodle 5.x site as large sites run it today: the tables Moodle 5.x's own install.xml creates
(tests/xmldb.py), on PostgreSQL (and on MariaDB), with its sessions in Moodle's Redis store (4.5+,
``$CFG->session_handler_class = '\\core\\session\\redis'``), the records written by real PHP
and phpredis (tests/php/moodle_session.php) — ``{sessions}`` stays empty, as on such a site.

* A whole chat, WebSocket to long-poll: bootstrap, presence, messages both ways, history, and a
  Moodle logout (the Redis key deleted) ending the chat.
* ``gchat check`` run as the admin runs it (a real process, its printed lines): it names the
  engine and its version, the Moodle release, the Redis store and the live session it saw; and
  on the same 5.x site with ``moodle_sessions = database`` it says the site probably uses the
  Redis store, and how to set it.
"""

from __future__ import annotations

import subprocess

import pytest
import redis

from gchat.sessions import parse_moodle_sessions
from tests.conftest import ALL_SCHEMAS, PREFIX
from tests.services import db_connect
from tests.session_stores import RedisSessions, php  # noqa: F401
from tests.support.clients import bootstrap, send_and_receive, websocket_meets_longpoll
from tests.support.process import clean_env, gchat_command

MOODLE5 = [version for version in ALL_SCHEMAS if version.startswith("5.")][-1]  # the newest 5.x schema
ENGINES = ("postgresql", "mariadb")
SCHEMAS = (MOODLE5,)


@pytest.fixture
def sessions(php, redis_url, redis_prefix) -> RedisSessions:
    """Moodle's Redis store with Moodle's defaults (PHP serializer, no compression), under this
    test's own key prefix ($CFG->session_redis_prefix)."""
    return RedisSessions(php, prefix=redis_prefix, url=redis_url)


@pytest.fixture
def settings(settings, sessions):
    return settings.replace(moodle_sessions=parse_moodle_sessions(sessions.setting))


@pytest.fixture
def services(services, io_loop):
    yield services
    io_loop.run_sync(services.moodle.close)


def redis_keys(redis_url: str, prefix: str) -> set[str]:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        return {key.decode() for key in client.scan_iter(match=prefix + "*")}
    finally:
        client.close()


def assert_moodle5_site_without_session_rows(site) -> None:
    assert site.release.startswith("5."), site.release
    assert site.has_table("message_users_blocked") and site.has_table("config_plugins")
    assert site.rows("SELECT COUNT(*) FROM {p}sessions") == [(0,)], "the Redis store writes no sessions rows"


@pytest.mark.gen_test(timeout=60)
async def test_chat_on_moodle5_with_redis_sessions_written_by_php(
        http_server, base_url, site, services, sessions, redis_url, redis_prefix):
    ana, ben = site.classmates("Ana", "Ben")
    ana_sid, ben_sid = sessions.login(ana), sessions.login(ben)
    assert_moodle5_site_without_session_rows(site)
    assert f"{redis_prefix}session_{ana_sid}" in redis_keys(redis_url, redis_prefix)

    a, b, boot = await websocket_meets_longpoll(base_url, ana, ana_sid, ben, ben_sid)
    assert boot["user"] == {"id": ana, "name": "Ana Tester",
                            "picture": f"http://moodle.test/user/pix.php/{ana}/f2.jpg"}, boot

    conv = (await a.command("open", user=ben))["conversation"]["id"]
    sent = await send_and_receive(a, b, conv, [(f"Olá Ben {i} — 😀", f"a{i}") for i in range(3)])
    back = (await b.send_text(conv, "Hi Ana", client_id="b0"))["message"]
    got = await a.wait_for(lambda e: e.get("type") == "message" and e["message"]["id"] == back["id"])
    assert got["message"]["text"] == "Hi Ana" and got["message"]["from"] == ben

    everything = [*sent, back]
    for client in (a, b):  # history pages backwards, the same on both transports
        page = await client.command("history", conversation=conv, before=back["id"], limit=2)
        assert page["ok"] and page["messages"] == sent[1:]
        page = await client.command("history", conversation=conv, before=sent[1]["id"], limit=50)
        assert page["messages"] == sent[:1]
    assert site.rows("SELECT COUNT(*) FROM {p}gchat_messages WHERE conversation = %s", (conv,)) == \
        [(len(everything),)]

    # Ana logs out of Moodle: redis.php's destroy() deletes her key; the re-check ends her chat.
    sessions.logout(ana_sid)
    assert f"{redis_prefix}session_{ana_sid}" not in redis_keys(redis_url, redis_prefix)
    assert await services.router.check_sessions() == 1
    assert await a.wait_closed() == 4000 and a.closed_error["code"] == "session_ended"
    offline = await b.wait_type("presence", status="offline")
    assert offline["user"]["id"] == ana
    assert (await b.command("ping"))["ok"]
    code, refused = await bootstrap(base_url, ana_sid)
    assert code == 401, refused
    assert site.rows("SELECT COUNT(*) FROM {p}sessions") == [(0,)]
    await b.close()


# -- gchat check, as the admin sees it ----------------------------------------------------------------


def gchat_check(test_db_url: str, tmp_path, moodle_sessions: str) -> tuple[int, dict[str, str]]:
    """``gchat check`` as a process with the admin's flags: its exit status and its printed lines
    by topic (``OK    database: …`` → ``{"database": "OK    database: …"}``)."""
    done = subprocess.run(gchat_command("check", f"--db_url={test_db_url}", f"--db_prefix={PREFIX}",
                                        f"--moodle_sessions={moodle_sessions}", "--moodle_wwwroot=http://moodle.test",
                                        f"--data_dir={tmp_path}"),
                          cwd=str(tmp_path), env=clean_env(), capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    lines: dict[str, str] = {}
    for line in done.stdout.splitlines():
        status, _, rest = line.partition(" ")
        assert status in ("OK", "WARN", "FAIL"), line
        topic = rest.strip().split(":", 1)[0]
        lines[topic] = (lines.get(topic, "") + "\n" + line).strip()  # a topic may warn, then report
    return done.returncode, lines


def server_version(server_url: str, engine: str) -> str:
    conn = db_connect(server_url)
    with conn.cursor() as cur:
        cur.execute("SHOW server_version" if engine == "postgresql" else "SELECT VERSION()")
        version = cur.fetchone()[0]
    conn.close()
    return str(version)


def test_gchat_check_names_the_engine_moodle5_and_the_redis_store(site, sessions, test_db_url, server_url, engine,
                                                                  redis_prefix, tmp_path):
    sessions.login(site.add_user("Ana"))
    sessions.login(0)  # a visitor's session: a record, not a logged-in one
    assert_moodle5_site_without_session_rows(site)
    code, lines = gchat_check(test_db_url, tmp_path, sessions.setting)
    assert code == 0, lines
    name, scheme = ("PostgreSQL", "postgresql://") if engine == "postgresql" else ("MariaDB", "mysql://")
    assert lines["database"].startswith("OK") and f"({name} {server_version(server_url, engine)})" in lines["database"]
    assert lines["database"].split()[2].startswith(scheme)
    assert lines["moodle version"] == f"OK    moodle version: Moodle {site.release} (version {site.version_number})"
    assert lines["blocks"].startswith("OK") and "message_users_blocked (Moodle 3.6+)" in lines["blocks"]
    store = lines["session store"]
    assert store.startswith("OK") and "WARN" not in store
    assert "Moodle's Redis store" in store and f"key prefix '{redis_prefix}'" in store
    assert "serializer php, compressor none" in store
    assert lines["sessions"].startswith("OK") and "1 logged-in session(s) of 2 session record(s)" in lines["sessions"]
    assert "dbsessions" not in lines  # nothing said about a table gchat does not read with this store
    assert lines["gchat tables"].startswith("OK")


def test_gchat_check_on_moodle5_with_an_empty_sessions_table_gives_the_redis_advice(site, sessions, test_db_url,
                                                                                    tmp_path):
    sessions.login(site.add_user("Ana"))  # the site's users log in, into Redis
    assert_moodle5_site_without_session_rows(site)
    code, lines = gchat_check(test_db_url, tmp_path, "database")
    assert code == 0, lines  # a warning, not a failure: gchat cannot know it for sure
    assert lines["moodle version"] == f"OK    moodle version: Moodle {site.release} (version {site.version_number})"
    assert lines["session store"] == f"OK    session store: moodle_sessions = database: {PREFIX}sessions"
    advice = lines["sessions"]
    assert advice.startswith(f"WARN  sessions: no logged-in sessions in {PREFIX}sessions on Moodle {site.release}")
    assert "probably uses the Redis session store" in advice
    assert "$CFG->session_handler_class = '\\core\\session\\redis'" in advice
    assert "set moodle_sessions = redis://<$CFG->session_redis_host>:6379/" in advice
    assert "prefix=<$CFG->session_redis_prefix>" in advice
