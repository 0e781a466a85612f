"""The operator's commands as real processes: exit status, the one-line errors, start and stop,
initdb (on MariaDB and PostgreSQL, and bringing an older gchat's table up to date), the console
script and a real ``pip install .``."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import secrets
import shutil
import site as site_module
import subprocess
import sys

import psycopg
import pymysql
import pytest

from gchat.check import run_check
from gchat.config import Settings, parse_db_url
from gchat.db import Database
from gchat.store import ChatStore, Pair
from tests.moodle_site import create_database, drop_database, moodle22_statements
from tests.services import db_connect, with_database
from tests.support.process import GCHAT_MAIN as MAIN
from tests.support.process import ROOT, GchatProcess, http_get
from tests.support.process import clean_env as support_env

ENGINES = ("mariadb", "postgresql")

PYTHON = sys.executable
START_SECONDS = 10  # a healthy start takes well under a second; room for a loaded CI machine
STOP_SECONDS = 5


def clean_env(**extra: str) -> dict[str, str]:
    """No GCHAT_* settings and no PYTHONPATH: gchat must be found the way an admin runs it."""
    env = {k: v for k, v in support_env().items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def run(args: list[str], cwd: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def get(url: str, timeout: float = 2) -> tuple[int, bytes]:
    return http_get(url, timeout)


@pytest.fixture
def servers(tmp_path):
    """``servers(program + args)`` starts gchat on a free port and returns once /gchat/health
    answers 200 (polled, no fixed sleep); every server is stopped after the test."""
    started: list[GchatProcess] = []

    def start(args: list[str], cwd: str | None = None, **env: str) -> GchatProcess:
        server = GchatProcess([], command=args, workdir=str(tmp_path), cwd=cwd or str(tmp_path),
                              name=f"server-{len(started) + 1}", env=clean_env(**env))
        started.append(server)
        server.start_healthy(START_SECONDS)
        return server

    yield start
    for server in started:
        server.stop()


def serves_and_stops(server: GchatProcess) -> None:
    status, body = get(server.base_url + "/gchat/health")
    assert status == 200, body
    assert get(server.base_url + "/gchat/demo")[0] == 200
    assert server.terminate(STOP_SECONDS) == 0, server.output()
    assert "Traceback" not in server.output(tail=None)


# -- one-line errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["mysql://nobody@127.0.0.1:1/x", "postgresql://nobody@127.0.0.1:1/x"])
def test_unreachable_database_exits_2_with_one_line(tmp_path, url):
    result = run([PYTHON, MAIN, f"--db_url={url}"], cwd=str(tmp_path))
    assert_one_line_error(result, "db_url")
    assert result.stdout == ""


def test_unknown_setting_exits_2_with_one_line(tmp_path):
    assert_one_line_error(run([PYTHON, MAIN, "--colour=red"], cwd=str(tmp_path)), "colour")
    assert_one_line_error(run([PYTHON, MAIN], cwd=str(tmp_path), GCHAT_COLOUR="red"), "GCHAT_COLOUR")
    assert_one_line_error(run([PYTHON, MAIN, "--port=http"], cwd=str(tmp_path)), "port")
    assert_one_line_error(run([PYTHON, MAIN, "frobnicate"], cwd=str(tmp_path)), "frobnicate")


def test_wrong_prefix_names_the_missing_moodle_tables(tmp_path, test_db_url):
    result = run([PYTHON, MAIN, f"--db_url={test_db_url}", "--db_prefix=zz_", f"--data_dir={tmp_path}"],
                 cwd=str(tmp_path))
    assert_one_line_error(result, "zz_sessions", "zz_user", "db_prefix")


CLI = "cli_"


@pytest.fixture(scope="module")
def moodle_without_chat_tables(test_db_url, engine):
    """Moodle's tables under prefix cli_ in the run's database, and none of gchat's."""
    database = test_db_url.split("?")[0].rsplit("/", 1)[1]
    conn = db_connect(test_db_url, database)
    with conn.cursor() as cur:
        for statement in moodle22_statements(CLI, engine):
            cur.execute(statement)
        cur.execute(f"INSERT INTO {CLI}config (name, value) VALUES ('siteguest', '1'), ('sessiontimeout', '7200')")
    yield conn
    conn.close()


def chat_tables(conn) -> set[str]:
    schema = "current_schema()" if isinstance(conn, psycopg.Connection) else "DATABASE()"
    with conn.cursor() as cur:
        cur.execute(f"SELECT table_name FROM information_schema.tables WHERE table_schema = {schema} "
                    "AND table_name LIKE %s", (CLI.replace("_", "\\_") + "gchat\\_%",))
        return {row[0] for row in cur.fetchall()}


def chat_indexes(conn) -> set[tuple[str, str]]:
    """(table, column list) of every index on the cli_gchat_ tables, the primary key included."""
    with conn.cursor() as cur:
        if isinstance(conn, psycopg.Connection):
            cur.execute("SELECT t.relname, i.indisunique, "
                        "array_to_string(array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(n, o) "
                        "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.n ORDER BY k.o), ',') "
                        "FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid "
                        "WHERE t.relname LIKE %s", (CLI + "gchat%",))
        else:
            cur.execute("SELECT table_name, non_unique = 0, GROUP_CONCAT(column_name ORDER BY seq_in_index) "
                        "FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name LIKE %s "
                        "GROUP BY table_name, index_name, non_unique", (CLI + "gchat%",))
        return {(table, ("unique " if unique else "") + columns) for table, unique, columns in cur.fetchall()}


def test_missing_gchat_tables_then_initdb_twice_then_it_serves(tmp_path, test_db_url, moodle_without_chat_tables,
                                                               servers):
    settings = [f"--db_url={test_db_url}", f"--db_prefix={CLI}", f"--data_dir={tmp_path}"]
    assert chat_tables(moodle_without_chat_tables) == set()
    line = assert_one_line_error(run([PYTHON, MAIN, *settings], cwd=str(tmp_path)), "gchat initdb")
    assert f"{CLI}gchat_messages" in line

    for _ in range(2):  # safe to run twice
        result = run([PYTHON, MAIN, "initdb", *settings], cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert chat_tables(moodle_without_chat_tables) == {f"{CLI}gchat_conversations", f"{CLI}gchat_members",
                                                           f"{CLI}gchat_messages"}
    # The same keys on every engine: what the store's queries and its duplicate detection rely on.
    c, m, g = (f"{CLI}gchat_{t}" for t in ("conversations", "members", "messages"))
    assert chat_indexes(moodle_without_chat_tables) == {
        (c, "unique id"), (c, "unique user_low,user_high"),
        (m, "unique conversation,userid"), (m, "userid,is_open"),
        (g, "unique id"), (g, "unique sender,client_id"), (g, "conversation,id")}

    server = servers([PYTHON, MAIN, *settings])
    assert get(server.base_url + "/gchat/demo")[0] == 404, "no demo pages on a real database"
    assert server.terminate(STOP_SECONDS) == 0


# -- the demo starts and stops -------------------------------------------------------------------------


def test_demo_from_the_script(tmp_path, servers):
    serves_and_stops(servers([PYTHON, MAIN, f"--data_dir={tmp_path / 'data'}"]))


def test_demo_as_a_module_from_the_checkout(tmp_path, servers):
    serves_and_stops(servers([PYTHON, "-m", "gchat", f"--data_dir={tmp_path / 'data'}"], PYTHONPATH=ROOT))


def test_demo_from_the_console_script(tmp_path, servers):
    script = os.path.join(os.path.dirname(PYTHON), "gchat")
    assert os.access(script, os.X_OK), f"{script} is missing: tools/bootstrap-venv installs it"
    serves_and_stops(servers([script, "serve", f"--data_dir={tmp_path / 'data'}"]))
    result = run([script, "--help"], cwd=str(tmp_path))
    assert result.returncode == 0 and "initdb" in result.stdout


# -- pip install . ---------------------------------------------------------------------------------------

MARKER = "installed-copy-8f3c"


def _can_build_offline() -> bool:
    """Whether this environment can build a wheel without fetching build tools."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    import setuptools

    return tuple(int(p) for p in setuptools.__version__.split(".")[:2]) >= (70, 1)


def test_pip_install_serves_static_and_templates_from_the_installed_package(tmp_path, servers):
    # Install from a copy, so that the build's droppings never land in the shared checkout.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "_data",
        "data", "node_modules"))
    venv = tmp_path / "venv"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True, timeout=30).stdout.strip()
    # The runtime dependencies (and pip) come from the test environment, like --system-site-packages
    # would give them; gchat itself only from the new venv (its site-packages comes first).
    with open(os.path.join(purelib, "_gchat_test_deps.pth"), "w") as handle:
        handle.write("\n".join(site_module.getsitepackages()) + "\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--quiet"]
    if _can_build_offline():
        pip.append("--no-build-isolation")
    result = subprocess.run(pip + [str(source)], capture_output=True, text=True, timeout=180, env=clean_env())
    assert result.returncode == 0, result.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import gchat, gchat.paths; print(gchat.__file__); print(gchat.paths.static_dir()); "
                            "print(gchat.paths.template_dir())"],
                           cwd=elsewhere, env=clean_env(), capture_output=True, text=True, timeout=30, check=True)
    for path in where.stdout.split():
        assert path.startswith(purelib), f"{path} is not in the installed package"
        assert not path.startswith(ROOT)

    # Mark the installed copies: what is served must be them, not the checkout's files.
    data = os.path.join(purelib, "gchat", "_data")
    with open(os.path.join(data, "static", "gchat.js"), "a") as handle:
        handle.write(f"\n/* {MARKER} */\n")
    with open(os.path.join(data, "templates", "demo_login.html"), "a") as handle:
        handle.write(f"\n<!-- {MARKER} -->\n")

    server = servers([str(venv / "bin" / "gchat"), f"--data_dir={tmp_path / 'data'}"], cwd=str(elsewhere))
    status, script = get(server.base_url + "/gchat/static/gchat.js")
    assert status == 200
    assert MARKER.encode() in script
    with open(os.path.join(ROOT, "static", "gchat.js"), "rb") as handle:
        assert script.startswith(handle.read()[:200])
    status, page = get(server.base_url + "/gchat/demo")
    assert status == 200
    assert MARKER.encode() in page
    assert server.terminate(STOP_SECONDS) == 0


# -- initdb brings an older gchat's table up to date (MariaDB) ---------------------------------------

OLD = "old_"
# gchat's tables as gchat created them before client_id was kept as bytes: utf8mb4_bin is a PAD
# SPACE collation, so the unique key of gchat_messages took "pad " for "pad" (issue 12, hole 5).
OLD_DDL = ("""CREATE TABLE {p}gchat_conversations (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        user_low BIGINT NOT NULL,
        user_high BIGINT NOT NULL,
        timecreated BIGINT NOT NULL,
        UNIQUE KEY gchat_pair (user_low, user_high)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""", """CREATE TABLE {p}gchat_members (
        conversation BIGINT NOT NULL,
        userid BIGINT NOT NULL,
        is_open TINYINT NOT NULL DEFAULT 0,
        minimized TINYINT NOT NULL DEFAULT 0,
        unread INT NOT NULL DEFAULT 0,
        last_read BIGINT NOT NULL DEFAULT 0,
        timemodified BIGINT NOT NULL,
        PRIMARY KEY (conversation, userid),
        KEY gchat_user_open (userid, is_open)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""", """CREATE TABLE {p}gchat_messages (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        conversation BIGINT NOT NULL,
        sender BIGINT NOT NULL,
        text VARCHAR(1333) NOT NULL,
        client_id VARCHAR(64) NULL,
        time BIGINT NOT NULL,
        UNIQUE KEY gchat_sender_client (sender, client_id),
        KEY gchat_conversation_id (conversation, id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""")


@pytest.fixture
def older_gchat(mariadb_url):
    """A Moodle site whose gchat tables an older gchat made, with one message in them."""
    name = f"gchat_old_{secrets.token_hex(4)}"
    create_database(mariadb_url, name)
    url = with_database(mariadb_url, name)
    try:
        conn = db_connect(url, name)
        with conn.cursor() as cur:
            for statement in moodle22_statements(OLD):
                cur.execute(statement)
            cur.execute(f"INSERT INTO {OLD}config (name, value) VALUES ('release', '2.2.9'), ('dbsessions', '1')")
            for ddl in OLD_DDL:
                cur.execute(ddl.replace("{p}", OLD))
            cur.execute(f"INSERT INTO {OLD}gchat_messages (conversation, sender, text, client_id, time) "
                        "VALUES (1, 11, 'from before', 'pad', 1000)")
            with pytest.raises(pymysql.err.IntegrityError):  # the flaw itself
                cur.execute(f"INSERT INTO {OLD}gchat_messages (conversation, sender, text, client_id, time) "
                            "VALUES (1, 11, 'lost', 'pad ', 2000)")
        conn.close()
        yield url
    finally:
        drop_database(mariadb_url, name)


def gchat_tables_line(url: str, tmp_path) -> str:
    lines: list[str] = []
    settings = Settings(db_url=parse_db_url(url), db_prefix=OLD, data_dir=str(tmp_path),
                        moodle_wwwroot="http://moodle.test")
    db = Database(settings.db_url, prefix=OLD, pool_size=1, timeout=5)
    try:
        run_check(settings, db, lines.append)
    finally:
        db.close()
    [line] = [line for line in lines if " gchat tables:" in line]
    return line


def test_initdb_converts_the_client_id_of_an_older_gchat(tmp_path, older_gchat):
    # The older tables also lack the read-receipt column: gchat cannot serve until initdb ran.
    line = gchat_tables_line(older_gchat, tmp_path)
    assert line.startswith("FAIL") and "gchat_members.last_read_time" in line and "gchat initdb" in line, line
    db = Database(parse_db_url(older_gchat), prefix=OLD, pool_size=1, timeout=5)
    try:
        [outdated] = db.run_sync(ChatStore(db).outdated)
    finally:
        db.close()
    assert "client_id is VARCHAR" in outdated, outdated

    for _ in range(2):  # safe to run twice
        result = run([PYTHON, MAIN, "initdb", f"--db_url={older_gchat}", f"--db_prefix={OLD}",
                      f"--data_dir={tmp_path}"], cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr
    assert gchat_tables_line(older_gchat, tmp_path).startswith("OK"), "initdb left the table outdated"

    async def sends() -> tuple:
        db = Database(parse_db_url(older_gchat), prefix=OLD, pool_size=2, timeout=5)
        try:
            store = ChatStore(db)
            pair = Pair(1, 11, 12)
            padded = await store.add_message(pair, 11, "now kept", "pad ", 10)
            retried = await store.add_message(pair, 11, "a retry", "pad", 10)
            return padded, retried, await store.history(1, None, 10)
        finally:
            db.close()

    padded, retried, history = asyncio.run(sends())
    assert not padded.duplicate, "pad and 'pad ' are still one id"
    assert retried.duplicate and retried.message.text == "from before" and retried.message.client_id == "pad"
    assert [(m.text, m.client_id) for m in history] == [("from before", "pad"), ("now kept", "pad ")]
