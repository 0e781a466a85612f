"""``gchat import-block-gchat`` on a block_gchat fixture in the run's MariaDB and PostgreSQL databases.

The old tables are written the way Moodle 2.2's XMLDB would have created them from the plugin's
db/install.xml (on MariaDB: BIGINT(10) UNSIGNED ids, TINYINT flags, VARCHAR(1333) text, utf8
tables; on PostgreSQL: BIGSERIAL ids, BIGINT, SMALLINT flags, VARCHAR(1333)), filled
with a small but awkward history: a pair that had two sessions (one in each direction), an
unseen flag, a window left open, a message from someone who was not in the session, a message
whose session is gone, a session with one user only. Run twice: everything once.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gchat.config import parse_db_url
from gchat.db import Database
from gchat.dialect import Dialect
from gchat.import_block_gchat import ImportFailed, import_history, run_command
from tests.support.clients import WSClient, bootstrap

ENGINES = ("mariadb", "postgresql")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = 1_350_000_000  # October 2012, when block_gchat was current

OLD_DDL_WITH_PAIR = (
    """CREATE TABLE {p}block_gchat_users (
        id BIGINT(10) UNSIGNED NOT NULL AUTO_INCREMENT,
        status VARCHAR(10) NOT NULL DEFAULT 'online',
        userid BIGINT(10) UNSIGNED NOT NULL DEFAULT 0,
        PRIMARY KEY (id),
        UNIQUE KEY {p}blocgchause_use_uix (userid)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8 COLLATE=utf8_unicode_ci COMMENT='Table to store online users'""",
    """CREATE TABLE {p}block_gchat_sessions (
        id BIGINT(10) UNSIGNED NOT NULL AUTO_INCREMENT,
        userfrom BIGINT(10) UNSIGNED NOT NULL DEFAULT 0,
        userto BIGINT(10) UNSIGNED NOT NULL DEFAULT 0,
        PRIMARY KEY (id),
        UNIQUE KEY {p}blocgchasess_useuse_uix (userfrom, userto),
        KEY {p}blocgchasess_use_ix (userfrom),
        KEY {p}blocgchasess_use2_ix (userto)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8 COLLATE=utf8_unicode_ci COMMENT='Table to store global chat sessions.'""",
)
OLD_DDL_PAIRLESS = (
    # The other shape of the old plugin: a session row is only an id, its users are its user_sessions.
    """CREATE TABLE {p}block_gchat_sessions (
        id BIGINT(10) UNSIGNED NOT NULL AUTO_INCREMENT,
        PRIMARY KEY (id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8 COLLATE=utf8_unicode_ci""",
)
OLD_DDL_COMMON = (
    """CREATE TABLE {p}block_gchat_user_sessions (
        id BIGINT(10) UNSIGNED NOT NULL AUTO_INCREMENT,
        isopen TINYINT(1) UNSIGNED NOT NULL DEFAULT 1,
        unseen TINYINT(1) UNSIGNED NOT NULL DEFAULT 1,
        sessionid BIGINT(10) UNSIGNED NOT NULL DEFAULT 0,
        userid BIGINT(10) UNSIGNED NOT NULL DEFAULT 0,
        PRIMARY KEY (id),
        UNIQUE KEY {p}blocgchausersess_sesuse_uix (sessionid, userid),
        KEY {p}blocgchausersess_ses_ix (sessionid),
        KEY {p}blocgchausersess_use_ix (userid)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8 COLLATE=utf8_unicode_ci
      COMMENT='Table to store open sessions for each user.'""",
    """CREATE TABLE {p}block_gchat_messages (
        id BIGINT(10) UNSIGNED NOT NULL AUTO_INCREMENT,
        text VARCHAR(1333) NOT NULL DEFAULT '',
        timecreated BIGINT(10) NOT NULL DEFAULT 0,
        sessionid BIGINT(10) UNSIGNED NOT NULL DEFAULT 0,
        userid BIGINT(10) UNSIGNED NOT NULL DEFAULT 0,
        PRIMARY KEY (id),
        KEY {p}blocgchamess_ses_ix (sessionid),
        KEY {p}blocgchamess_use_ix (userid)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8 COLLATE=utf8_unicode_ci
      COMMENT='Table to store global chat messages for each session.'""",
)
# The same tables as Moodle's XMLDB makes them on PostgreSQL (lib/ddl/postgres_sql_generator.php).
PG_DDL_WITH_PAIR = (
    """CREATE TABLE {p}block_gchat_users (
        id BIGSERIAL,
        status VARCHAR(10) NOT NULL DEFAULT 'online',
        userid BIGINT NOT NULL DEFAULT 0,
        CONSTRAINT {p}blocgchause_id_pk PRIMARY KEY (id))""",
    "CREATE UNIQUE INDEX {p}blocgchause_use_uix ON {p}block_gchat_users (userid)",
    """CREATE TABLE {p}block_gchat_sessions (
        id BIGSERIAL,
        userfrom BIGINT NOT NULL DEFAULT 0,
        userto BIGINT NOT NULL DEFAULT 0,
        CONSTRAINT {p}blocgchasess_id_pk PRIMARY KEY (id))""",
    "CREATE UNIQUE INDEX {p}blocgchasess_useuse_uix ON {p}block_gchat_sessions (userfrom, userto)",
    "CREATE INDEX {p}blocgchasess_use_ix ON {p}block_gchat_sessions (userfrom)",
    "CREATE INDEX {p}blocgchasess_use2_ix ON {p}block_gchat_sessions (userto)",
)
PG_DDL_PAIRLESS = (
    """CREATE TABLE {p}block_gchat_sessions (
        id BIGSERIAL,
        CONSTRAINT {p}blocgchasess_id_pk PRIMARY KEY (id))""",
)
PG_DDL_COMMON = (
    """CREATE TABLE {p}block_gchat_user_sessions (
        id BIGSERIAL,
        isopen SMALLINT NOT NULL DEFAULT 1,
        unseen SMALLINT NOT NULL DEFAULT 1,
        sessionid BIGINT NOT NULL DEFAULT 0,
        userid BIGINT NOT NULL DEFAULT 0,
        CONSTRAINT {p}blocgchausersess_id_pk PRIMARY KEY (id))""",
    "CREATE UNIQUE INDEX {p}blocgchausersess_sesuse_uix ON {p}block_gchat_user_sessions (sessionid, userid)",
    "CREATE INDEX {p}blocgchausersess_ses_ix ON {p}block_gchat_user_sessions (sessionid)",
    "CREATE INDEX {p}blocgchausersess_use_ix ON {p}block_gchat_user_sessions (userid)",
    """CREATE TABLE {p}block_gchat_messages (
        id BIGSERIAL,
        text VARCHAR(1333) NOT NULL DEFAULT '',
        timecreated BIGINT NOT NULL DEFAULT 0,
        sessionid BIGINT NOT NULL DEFAULT 0,
        userid BIGINT NOT NULL DEFAULT 0,
        CONSTRAINT {p}blocgchamess_id_pk PRIMARY KEY (id))""",
    "CREATE INDEX {p}blocgchamess_ses_ix ON {p}block_gchat_messages (sessionid)",
    "CREATE INDEX {p}blocgchamess_use_ix ON {p}block_gchat_messages (userid)",
)
OLD_TABLES = ("block_gchat_users", "block_gchat_sessions", "block_gchat_user_sessions", "block_gchat_messages")
LONG_TEXT = ("Relatório da aula: " + "ção " * 400)[:1333]


class OldPlugin:
    """The old plugin's tables and rows, written as its PHP code wrote them."""

    def __init__(self, site, with_pair: bool) -> None:
        self.site = site
        self.with_pair = with_pair
        for table in OLD_TABLES:
            site.execute(f"DROP TABLE IF EXISTS {{p}}{table}")
        if site.engine == "postgresql":
            ddls = (PG_DDL_WITH_PAIR if with_pair else PG_DDL_PAIRLESS) + PG_DDL_COMMON
        else:
            ddls = (OLD_DDL_WITH_PAIR if with_pair else OLD_DDL_PAIRLESS) + OLD_DDL_COMMON
        for ddl in ddls:
            site.execute(ddl)

    def session(self, userfrom: int, userto: int, sides: dict[int, tuple[int, int]] | None = None) -> int:
        if self.with_pair:
            sid = self.site.execute("INSERT INTO {p}block_gchat_sessions (userfrom, userto) VALUES (%s, %s)",
                                    (userfrom, userto))
        else:
            sid = self.site.execute("INSERT INTO {p}block_gchat_sessions (id) VALUES (DEFAULT)")
        for user, (isopen, unseen) in (sides or {}).items():
            self.site.execute("INSERT INTO {p}block_gchat_user_sessions (isopen, unseen, sessionid, userid) "
                              "VALUES (%s, %s, %s, %s)", (isopen, unseen, sid, user))
        return sid

    def message(self, session: int, user: int, text: str, timecreated: int) -> int:
        return self.site.execute("INSERT INTO {p}block_gchat_messages (text, timecreated, sessionid, userid) "
                                 "VALUES (%s, %s, %s, %s)", (text, timecreated, session, user))

    def drop(self) -> None:
        for table in OLD_TABLES:
            self.site.execute(f"DROP TABLE IF EXISTS {{p}}{table}")


@pytest.fixture(params=[True, False], ids=["userfrom-userto", "pair-in-user-sessions"])
def old(request, site):
    plugin = OldPlugin(site, with_pair=request.param)
    yield plugin
    plugin.drop()


@pytest.fixture
def db(test_db_url):
    database = Database(parse_db_url(test_db_url), prefix="mdl_", pool_size=2, timeout=5)
    yield database
    database.close()


def history(site, old, ana, ben, chloe, dan):
    """The fixture's history; returns the old message ids that must arrive, by conversation."""
    s1 = old.session(ana, ben, {ana: (1, 0), ben: (1, 1)})  # Ben has not seen Ana's last message
    s2 = old.session(ben, ana, {ben: (0, 0), ana: (1, 0)})  # the same pair, the other direction
    s3 = old.session(ana, chloe, {ana: (0, 0), chloe: (1, 1)})
    s4 = old.session(chloe, dan, {chloe: (1, 0), dan: (0, 0)} if not old.with_pair else None)
    lonely = old.session(dan, dan, {dan: (1, 1)})  # damaged: one user only
    m = {}
    m["a1"] = old.message(s1, ana, "Olá Ben, tudo bem?", T0)
    m["b1"] = old.message(s1, ben, "Grüße! Alles gut.", T0 + 5)
    m["intruder"] = old.message(s1, dan, "not a member of this session", T0 + 6)
    m["a2"] = old.message(s2, ana, "second session, same pair", T0 + 60)
    m["long"] = old.message(s2, ana, LONG_TEXT, T0 + 61)
    m["c1"] = old.message(s3, chloe, "Oi Ana <b>not html</b> & co", T0 + 10)
    m["d1"] = old.message(s4, dan, "Chloé, the slides?", T0 + 20)
    m["c2"] = old.message(s4, chloe, "sent!", T0 + 21)
    m["orphan"] = old.message(99999, ana, "its session is gone", T0 + 30)
    m["lonely"] = old.message(lonely, dan, "note to self", T0 + 40)
    return m


def chat_rows(site):
    conversations = site.rows("SELECT id, user_low, user_high, timecreated FROM {p}gchat_conversations ORDER BY id")
    members = site.rows("SELECT conversation, userid, is_open, minimized, unread, last_read "
                        "FROM {p}gchat_members ORDER BY conversation, userid")
    messages = [(*row[:4], Dialect.client_id_value(row[4]), row[5]) for row in site.rows(
        "SELECT id, conversation, sender, text, client_id, time FROM {p}gchat_messages ORDER BY id")]
    return conversations, members, messages


def test_import_twice_yields_everything_once(site, old, db):
    ana, ben, chloe, dan = (site.add_user(n, "Old") for n in ("Ana", "Ben", "Chloe", "Dan"))
    m = history(site, old, ana, ben, chloe, dan)

    first = import_history(db)
    assert (first.sessions, first.conversations_created, first.conversations_existing) == (5, 3, 0)
    assert first.sessions_skipped == 1
    assert first.messages_imported == 7
    assert first.messages_skipped == 3  # the intruder, the orphan, the lonely session's
    assert first.members_created == 6
    after_first = chat_rows(site)

    second = import_history(db)
    assert (second.conversations_created, second.conversations_existing) == (0, 3)
    assert (second.messages_imported, second.messages_present, second.members_created) == (0, 7, 0)
    assert chat_rows(site) == after_first  # nothing added, nothing changed

    conversations, members, messages = after_first
    pairs = {(low, high): cid for cid, low, high, _ in conversations}
    assert set(pairs) == {tuple(sorted(p)) for p in ((ana, ben), (ana, chloe), (chloe, dan))}
    ab, ac, cd = (pairs[tuple(sorted(p))] for p in ((ana, ben), (ana, chloe), (chloe, dan)))
    assert dict((cid, created) for cid, _, _, created in conversations)[ab] == T0 * 1000

    by_client = {client_id: (mid, conv, sender, text, time) for mid, conv, sender, text, client_id, time in messages}
    assert len(by_client) == len(messages) == 7
    expected = {"a1": (ab, ana), "b1": (ab, ben), "a2": (ab, ana), "long": (ab, ana), "c1": (ac, chloe),
                "d1": (cd, dan), "c2": (cd, chloe)}
    for key, (conv, sender) in expected.items():
        mid, got_conv, got_sender, text, time = by_client[f"block_gchat:{m[key]}"]
        assert (got_conv, got_sender) == (conv, sender)
    assert by_client[f"block_gchat:{m['long']}"][3] == LONG_TEXT and len(LONG_TEXT) == 1333
    assert by_client[f"block_gchat:{m['c1']}"][3] == "Oi Ana <b>not html</b> & co"  # stored as text, unchanged
    assert by_client[f"block_gchat:{m['b1']}"][4] == (T0 + 5) * 1000
    # Both old sessions of Ana and Ben are one conversation, in time order.
    ab_texts = [text for _, conv, _, text, _, _ in messages if conv == ab]
    assert ab_texts == ["Olá Ben, tudo bem?", "Grüße! Alles gut.", "second session, same pair", LONG_TEXT]

    state = {(conv, user): (is_open, minimized, unread, last_read)
             for conv, user, is_open, minimized, unread, last_read in members}
    ab_ids = [mid for mid, conv, *_ in messages if conv == ab]
    # Ana saw everything; Ben (unseen) last wrote b1, so Ana's two later messages are unread.
    assert state[(ab, ana)] == (1, 0, 0, ab_ids[-1])
    assert state[(ab, ben)][2:] == (2, by_client[f"block_gchat:{m['b1']}"][0])
    # Two old sessions, one window: open if either was (Ben had closed s2 but not s1).
    assert state[(ab, ben)][0] == 1
    # Chloe's flag says unseen, but the only message is her own: nothing unread.
    assert state[(ac, chloe)] == (1, 0, 0, by_client[f"block_gchat:{m['c1']}"][0])
    assert state[(ac, ana)][:3] == (0, 0, 0)
    if old.with_pair:
        assert state[(cd, dan)][:3] == (0, 0, 0)  # no user_sessions rows: closed, read


def test_history_added_later_is_imported_and_gchat_state_kept(site, old, db):
    ana, ben = site.add_user("Ana", "Old"), site.add_user("Ben", "Old")
    s1 = old.session(ana, ben, {ana: (1, 0), ben: (1, 0)})
    old.message(s1, ana, "one", T0)
    assert import_history(db).messages_imported == 1
    # Ben used gchat since: closed the window. The old plugin, still running, stored one more.
    site.execute("UPDATE {p}gchat_members SET is_open = 0 WHERE userid = %s", (ben,))
    late = old.message(s1, ben, "two", T0 + 1)
    report = import_history(db)
    assert (report.messages_imported, report.messages_present, report.conversations_mixed) == (1, 1, 0)
    rows = site.rows("SELECT text, client_id FROM {p}gchat_messages ORDER BY id")
    assert [r[0] for r in rows] == ["one", "two"] and bytes(rows[1][1]) == f"block_gchat:{late}".encode()
    assert site.rows("SELECT is_open FROM {p}gchat_members WHERE userid = %s", (ben,)) == [(0,)]


def test_missing_old_tables_is_one_clear_failure(site, db):
    for table in OLD_TABLES:
        site.execute(f"DROP TABLE IF EXISTS {{p}}{table}")
    with pytest.raises(ImportFailed, match="mdl_block_gchat_sessions"):
        import_history(db)


def run_cli(test_db_url, tmp_path, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCHAT_")}
    return subprocess.run([sys.executable, os.path.join(REPO, "gchat", "main.py"), "import-block-gchat",
                           f"--db_url={test_db_url}", "--db_prefix=mdl_", f"--data_dir={tmp_path}", *extra],
                          capture_output=True, text=True, timeout=60, env=env, cwd=str(tmp_path))


def test_command_line_prints_counts_twice_the_same_rows(site, old, test_db_url, tmp_path):
    ana, ben, chloe, dan = (site.add_user(n, "Old") for n in ("Ana", "Ben", "Chloe", "Dan"))
    history(site, old, ana, ben, chloe, dan)
    first = run_cli(test_db_url, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "messages: 7 imported, 0 already imported" in first.stdout
    assert "conversations: 3 created, 0 already there" in first.stdout
    rows = chat_rows(site)
    second = run_cli(test_db_url, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "messages: 0 imported, 7 already imported" in second.stdout
    assert "conversations: 0 created, 3 already there" in second.stdout
    assert chat_rows(site) == rows


def test_command_line_wrong_prefix_exits_2_with_one_line(site, old, test_db_url, tmp_path):
    result = run_cli(test_db_url, tmp_path, "--db_prefix=moodle_")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "moodle_block_gchat_sessions" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_command_closes_the_database_and_reports(site, old, test_db_url):
    ana, ben = site.add_user("Ana", "Old"), site.add_user("Ben", "Old")
    s1 = old.session(ana, ben, {ana: (1, 0), ben: (1, 1)})
    old.message(s1, ana, "hello", T0)
    lines: list[str] = []
    database = Database(parse_db_url(test_db_url), prefix="mdl_", pool_size=1, timeout=5)
    run_command(database, lines.append)
    assert any(line == "messages: 1 imported, 0 already imported" for line in lines)


@pytest.mark.gen_test(timeout=30)
async def test_imported_history_is_what_gchat_shows(http_server, base_url, site, old, db):
    ana, ben = site.classmates("Ana", "Ben")
    s1 = old.session(ana, ben, {ana: (1, 0), ben: (1, 1)})
    old.message(s1, ana, "from 2012", T0)
    old.message(s1, ben, "still here", T0 + 3)
    old.message(s1, ana, "unread by Ben", T0 + 9)
    import_history(db)
    code, boot = await bootstrap(base_url, site.login(ben))
    assert code == 200, boot
    client = await WSClient(base_url, boot["token"]).connect()
    ready = await client.wait_type("ready")
    [view] = ready["conversations"]
    assert view["with"]["id"] == ana and view["open"] is True and view["unread"] == 1
    assert [(m["text"], m["time"]) for m in view["messages"]] == [
        ("from 2012", T0 * 1000), ("still here", (T0 + 3) * 1000), ("unread by Ben", (T0 + 9) * 1000)]
    # Chat goes on in the imported conversation, after the old messages.
    sent = await client.send_text(view["id"], "back in gchat")
    assert sent["ok"] and sent["message"]["id"] > view["messages"][-1]["id"]
    await client.close()
