"""Personal data on real rows in MariaDB: the retention purge and the deleted-user purge (in
batches, removing exactly what they should), ``gchat privacy export`` and ``gchat privacy
delete`` (nothing of other users touched), as functions and as real processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest

from gchat.app import build_services
from gchat.config import parse_db_url
from gchat.db import Database
from gchat.privacy import DAY_MS, Purger, delete_user, export_user
from tests.conftest import PREFIX
from tests.moodle_site import MoodleSite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT_TABLES = ("gchat_conversations", "gchat_members", "gchat_messages")


@pytest.fixture
def db(test_db_url):
    database = Database(parse_db_url(test_db_url), prefix=PREFIX, pool_size=2, timeout=5)
    yield database
    database.close()


def now_ms() -> int:
    return int(time.time() * 1000)


class Chats:
    """gchat's rows as the store writes them, with chosen times."""

    def __init__(self, site: MoodleSite) -> None:
        self.site = site
        self._client = 0

    def conversation(self, a: int, b: int) -> int:
        conv = self.site.execute("INSERT INTO {p}gchat_conversations (user_low, user_high, timecreated) "
                                 "VALUES (%s, %s, %s)", (min(a, b), max(a, b), now_ms()))
        for user in (a, b):
            self.site.execute("INSERT INTO {p}gchat_members (conversation, userid, is_open, timemodified) "
                              "VALUES (%s, %s, 1, %s)", (conv, user, now_ms()))
        return conv

    def message(self, conv: int, sender: int, text: str, age_days: float = 0) -> int:
        self._client += 1
        message = self.site.execute("INSERT INTO {p}gchat_messages (conversation, sender, text, client_id, time) "
                                    "VALUES (%s, %s, %s, %s, %s)",
                                    (conv, sender, text, f"c{self._client}", now_ms() - int(age_days * DAY_MS)))
        self.site.execute("UPDATE {p}gchat_members SET unread = unread + 1 WHERE conversation = %s AND userid <> %s",
                          (conv, sender))
        return message

    def snapshot(self) -> dict[str, set[tuple]]:
        return {table: set(self.site.rows(f"SELECT * FROM {{p}}{table}")) for table in CHAT_TABLES}

    def of_conversation(self, conv: int) -> dict[str, set[tuple]]:
        """The snapshot's rows that belong to conversation ``conv``."""
        column = {"gchat_conversations": 0, "gchat_members": 0, "gchat_messages": 1}
        return {table: {row for row in rows if row[column[table]] == conv} for table, rows in self.snapshot().items()}

    def texts(self) -> set[str]:
        return {row[0] for row in self.site.rows("SELECT text FROM {p}gchat_messages")}


@pytest.fixture
def chats(site) -> Chats:
    return Chats(site)


def purger(db: Database, **options) -> Purger:
    defaults = dict(retention_days=0, deleted_users=False, pause=0.0)
    return Purger(db, **{**defaults, **options})


# -- retention ------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_retention_purge_removes_exactly_the_old_messages_in_batches(site, chats, db):
    ana, ben, cat = site.classmates("Ana", "Ben", "Cat")
    ab, bc = chats.conversation(ana, ben), chats.conversation(ben, cat)
    for i in range(3):
        chats.message(ab, ben, f"old ab {i}", age_days=40)
        chats.message(bc, cat, f"old bc {i}", age_days=31)
    chats.message(ab, ben, "recent ab", age_days=29)
    chats.message(bc, ben, "today bc")
    chats.message(ab, ana, "imported, old but with a new id", age_days=400)  # block_gchat history
    run = await purger(db, retention_days=30, message_batch=2).run_once()
    assert chats.texts() == {"recent ab", "today bc"}
    assert run.messages == 7 and run.batches == 4  # 7 old rows, at most 2 per transaction
    assert run.conversations == 0 and run.members == 0  # the windows stay
    unread = dict(((c, u), n) for c, u, n in site.rows("SELECT conversation, userid, unread FROM {p}gchat_members"))
    assert unread[(ab, ana)] == 1  # 4 from Ben, of which 1 is left
    assert unread[(ab, ben)] == 0  # Ana's one message is gone
    assert unread[(bc, ben)] == 0 and unread[(bc, cat)] == 1
    assert (await purger(db, retention_days=30).run_once()).messages == 0  # nothing left to do


@pytest.mark.gen_test
async def test_retention_zero_keeps_everything(site, chats, db):
    ana, ben = site.classmates("Ana", "Ben")
    chats.message(chats.conversation(ana, ben), ana, "ancient", age_days=5000)
    idle = purger(db, retention_days=0, deleted_users=False)
    assert not idle.enabled
    before = chats.snapshot()
    await idle.run_once()
    assert chats.snapshot() == before


# -- users deleted in Moodle -------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_deleted_users_lose_their_conversations_and_nobody_else_does(site, chats, db):
    ana, ben, cat, dan = site.classmates("Ana", "Ben", "Cat", "Dan")
    ab, ac, cd = chats.conversation(ana, ben), chats.conversation(ana, cat), chats.conversation(cat, dan)
    for i in range(5):
        chats.message(ab, ana if i % 2 else ben, f"ab {i}")
    chats.message(ac, cat, "ac 0")
    chats.message(cd, dan, "cd 0", age_days=1000)  # old, but retention is off
    kept = chats.of_conversation(cd)
    site.delete_user(ana)
    run = await purger(db, deleted_users=True, message_batch=2, conversation_batch=1).run_once()
    assert run.conversations == 2 and run.messages == 6 and run.members == 4
    assert run.batches == 4  # 5 messages of Ana-Ben two at a time, then Ana-Cat: four transactions
    assert chats.snapshot() == kept
    assert chats.texts() == {"cd 0"}
    assert {row[:2] for row in kept["gchat_members"]} == {(cd, cat), (cd, dan)}
    assert (await purger(db, deleted_users=True).run_once()).conversations == 0


@pytest.mark.gen_test
async def test_deleted_user_purge_off_keeps_their_chats(site, chats, db):
    ana, ben = site.classmates("Ana", "Ben")
    chats.message(chats.conversation(ana, ben), ana, "still here")
    site.delete_user(ana)
    await purger(db, deleted_users=False, retention_days=0).run_once()
    assert chats.texts() == {"still here"}


@pytest.mark.gen_test(timeout=30)
async def test_purge_runs_in_the_background_with_the_server_and_stops_with_it(site, chats, settings):
    ana, ben = site.classmates("Ana", "Ben")
    chats.message(chats.conversation(ana, ben), ana, "too old", age_days=8)
    chats.message(chats.conversation(ana, site.add_user("Cat", "Tester")), ana, "fresh")
    services = build_services(settings.replace(history_retention_days=7))
    assert services.purger is not None and services.purger.enabled
    services.purger.first_delay = 0
    await services.start()  # the purge starts with the server's other parts
    report = await services.purger.wait_run()
    assert report is not None and report.messages == 1
    assert chats.texts() == {"fresh"}
    await services.aclose()  # stops the purge, then the router, broker and database
    assert services.purger._task is None


# -- one user's data --------------------------------------------------------------------------------


def make_history(site: MoodleSite, chats: Chats) -> dict[str, int]:
    ana, ben, cat, dan = site.classmates("Ana", "Ben", "Cat", "Dan")
    ab, ac, bc = chats.conversation(ana, ben), chats.conversation(cat, ana), chats.conversation(ben, cat)
    chats.message(ab, ana, "Olá Ben")
    chats.message(ab, ben, "hi Ana 👋")
    chats.message(ac, cat, "Cat → Ana")
    chats.message(bc, ben, "Ben to Cat, not Ana's business")
    return {"ana": ana, "ben": ben, "cat": cat, "dan": dan, "ab": ab, "ac": ac, "bc": bc}


def test_export_holds_every_conversation_and_message_of_the_user_and_nothing_else(site, chats, db):
    ids = make_history(site, chats)
    out = io.StringIO()
    assert export_user(db, ids["ana"], out, limit=1) == 2  # one message per read: pages are joined
    data = json.loads(out.getvalue())
    assert data["user"] == ids["ana"]
    by_id = {c["id"]: c for c in data["conversations"]}
    assert set(by_id) == {ids["ab"], ids["ac"]}
    assert by_id[ids["ab"]]["with"] == ids["ben"] and by_id[ids["ac"]]["with"] == ids["cat"]
    assert [(m["from"], m["text"]) for m in by_id[ids["ab"]]["messages"]] == [
        (ids["ana"], "Olá Ben"), (ids["ben"], "hi Ana 👋")]
    assert [m["text"] for m in by_id[ids["ac"]]["messages"]] == ["Cat → Ana"]
    assert by_id[ids["ac"]]["unread"] == 1 and by_id[ids["ac"]]["open"] is True
    assert "not Ana's business" not in out.getvalue()


def test_export_of_a_user_without_chats_is_an_empty_list(site, chats, db):
    ids = make_history(site, chats)
    out = io.StringIO()
    assert export_user(db, ids["dan"], out) == 0
    assert json.loads(out.getvalue())["conversations"] == []


@pytest.mark.gen_test
async def test_delete_erases_the_user_and_leaves_other_users_alone(site, chats, db):
    ids = make_history(site, chats)
    # What a server that still had an erased conversation (999999) in memory writes into it: a
    # message of Ana's, one of Ben's, and both window rows again; no conversation row.
    for sender, client in ((ids["ana"], "stray-1"), (ids["ben"], "stray-2")):
        site.execute("INSERT INTO {p}gchat_messages (conversation, sender, text, client_id, time) "
                     "VALUES (999999, %s, 'stray', %s, 0)", (sender, client))
    for user in (ids["ana"], ids["ben"]):
        site.execute("INSERT INTO {p}gchat_members (conversation, userid, timemodified) VALUES (999999, %s, 0)",
                     (user,))
    # And one more message of Ana's under a conversation id nobody has a row for.
    site.execute("INSERT INTO {p}gchat_messages (conversation, sender, text, client_id, time) "
                 "VALUES (888888, %s, 'stray', 'stray-3', 0)", (ids["ana"],))
    others = chats.of_conversation(ids["bc"])
    run = await delete_user(db, ids["ana"], limit=1)
    assert run.conversations == 2 and run.messages == 3 + 3 and run.members == 4 + 2
    assert chats.snapshot() == others
    assert site.rows("SELECT COUNT(*) FROM {p}gchat_messages WHERE sender = %s", (ids["ana"],))[0][0] == 0


# -- the command line ---------------------------------------------------------------------------------


def gchat(*args: str, url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GCHAT_")}
    return subprocess.run([sys.executable, "-m", "gchat", *args, f"--db_url={url}", f"--db_prefix={PREFIX}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_privacy_commands_as_processes(site, chats, test_db_url, tmp_path):
    ids = make_history(site, chats)
    exported = gchat("privacy", "export", "--user", str(ids["ana"]), f"--data_dir={tmp_path}", url=test_db_url)
    assert exported.returncode == 0, exported.stderr
    data = json.loads(exported.stdout)  # stdout is the JSON document and nothing else
    assert {c["id"] for c in data["conversations"]} == {ids["ab"], ids["ac"]}
    others = chats.of_conversation(ids["bc"])
    deleted = gchat("privacy", "delete", f"--user={ids['ana']}", f"--data_dir={tmp_path}", url=test_db_url)
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {"user": ids["ana"],
                                          "deleted": {"messages": 3, "members": 4, "conversations": 2}}
    assert chats.snapshot() == others
    again = gchat("privacy", "export", "--user", str(ids["ana"]), f"--data_dir={tmp_path}", url=test_db_url)
    assert json.loads(again.stdout)["conversations"] == []


@pytest.mark.parametrize("args,words", [
    (["privacy"], ["export", "delete"]),
    (["privacy", "export"], ["--user"]),
    (["privacy", "delete", "--user", "ana"], ["--user", "positive"]),
    (["privacy", "delete", "--user", "²"], ["--user"]),
    (["privacy", "forget", "--user", "3"], ["export", "delete"]),
])
def test_privacy_command_mistakes_get_one_line(args, words, test_db_url, tmp_path):
    result = gchat(*args, f"--data_dir={tmp_path}", url=test_db_url)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    for word in words:
        assert word in line
