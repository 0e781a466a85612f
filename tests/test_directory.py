"""Read receipts, recent conversations, course-mate search and ``ready.coursemates`` over real
sockets with MariaDB behind (protocol additions in docs/protocol.md: ``read``, ``peer_read``,
``conversations``, ``search``)."""

from __future__ import annotations

import time

import pytest

from gchat.config import parse_db_url
from gchat.db import Database
from gchat.directory import fold
from gchat.limits import SEARCH_BURST
from gchat.store import ChatStore
from tests.support.clients import CLIENTS, bootstrap

# Both engines where the test fixtures are parametrised by engine (tests/conftest.py reads this).
ENGINES = ("mariadb", "postgresql")


async def connect(base_url, site, user, transport="websocket", cursor=None, sid=None):
    code, boot = await bootstrap(base_url, sid or site.login(user))
    assert code == 200, boot
    client = await CLIENTS[transport](base_url, boot["token"]).connect(cursor=cursor)
    await client.wait_type("ready")
    return client


async def close_all(*clients):
    for client in clients:
        await client.close()


@pytest.mark.parametrize("transport", ["websocket", "longpoll"])
@pytest.mark.gen_test(timeout=30)
async def test_reading_sends_the_sender_a_read_event_that_survives_reloads(http_server, base_url, site, transport):
    ana, ben = site.classmates("Ana", "Ben")
    a = await connect(base_url, site, ana, transport)
    b = await connect(base_url, site, ben)
    conv = (await a.command("open", user=ben))["conversation"]["id"]
    first = (await a.send_text(conv, "one"))["message"]
    second = (await a.send_text(conv, "two"))["message"]
    await b.wait_for(lambda e: e.get("type") == "message" and e["message"]["id"] == second["id"])
    cursor_before = a.cursor

    before = int(time.time() * 1000)
    assert (await b.command("seen", conversation=conv, message=first["id"]))["ok"]
    read = await a.wait_type("read", message=first["id"])
    assert read["conversation"] == conv and read["user"] == ben
    assert before <= read["time"] <= int(time.time() * 1000)
    assert (await b.command("seen", conversation=conv, message=second["id"]))["ok"]
    latest = await a.wait_type("read", message=second["id"])
    # Reading an older message again moves nothing: no event. A ping's reply proves the order.
    assert (await b.command("seen", conversation=conv, message=first["id"]))["ok"]
    await b.command("ping")
    await a.command("ping")
    assert [e["message"] for e in a.of_type("read")] == [first["id"], second["id"]]
    assert b.of_type("read") == []  # the reader's own tabs get no receipt

    # A reload: the snapshot carries peer_read; a resume replays the events it missed.
    fresh = await connect(base_url, site, ana, transport)
    [view] = fresh.of_type("ready")[0]["conversations"]
    assert view["peer_read"] == {"message": second["id"], "time": latest["time"]}
    resumed = await CLIENTS[transport](base_url, a.token).connect(cursor=cursor_before)
    await resumed.wait_type("read", message=second["id"])
    assert [e["message"] for e in resumed.of_type("read")] == [first["id"], second["id"]]
    # Ben's view of the conversation: Ana has read nothing of his (he wrote nothing).
    opened = await b.command("open", user=ana)
    assert opened["conversation"]["peer_read"] is None
    await close_all(a, b, fresh, resumed)


@pytest.mark.gen_test(timeout=30)
async def test_a_made_up_message_id_is_not_a_receipt_for_messages_never_read(http_server, base_url, site):
    ana, ben = site.classmates("Ana", "Ben")
    a = await connect(base_url, site, ana)
    b = await connect(base_url, site, ben)
    conv = (await a.command("open", user=ben))["conversation"]["id"]
    sent = (await a.send_text(conv, "only one"))["message"]
    await b.wait_type("message")
    assert (await b.command("seen", conversation=conv, message=sent["id"] + 1000))["ok"]
    read = await a.wait_type("read")
    assert read["message"] == sent["id"]
    later = (await a.send_text(conv, "written after"))["message"]
    opened = await a.command("open", user=ben)
    assert opened["conversation"]["peer_read"]["message"] == sent["id"] < later["id"]
    await close_all(a, b)


@pytest.mark.gen_test(timeout=30)
async def test_recent_conversations_newest_first_paged_and_only_mine(http_server, base_url, site):
    ana, ben, chloe, dan = site.classmates("Ana", "Ben", "Chloé", "Dan")
    a = await connect(base_url, site, ana)
    b = await connect(base_url, site, ben)
    with_chloe = (await a.command("open", user=chloe))["conversation"]["id"]  # Chloé is offline
    await a.send_text(with_chloe, "for Chloé, later")
    with_ben = (await a.command("open", user=ben))["conversation"]["id"]
    await a.send_text(with_ben, "hi Ben")
    await b.wait_type("message")
    newest = (await b.send_text(with_ben, "hi Ana"))["message"]
    assert (await a.command("close", conversation=with_chloe))["ok"]  # closed windows are listed too
    await a.command("open", user=dan)  # no message: not a conversation yet
    ben_chloe = (await b.command("open", user=chloe))["conversation"]["id"]
    await b.send_text(ben_chloe, "not Ana's business")

    reply = await a.command("conversations")
    assert reply["ok"] and reply["more"] is False
    listed = reply["conversations"]
    assert [c["id"] for c in listed] == [with_ben, with_chloe]
    top = listed[0]
    assert top["with"] == {"id": ben, "name": "Ben Tester", "picture": f"http://moodle.test/user/pix.php/{ben}/f2.jpg"}
    assert top["open"] is True and top["minimized"] is False and top["unread"] == 1
    assert top["last_message"] == newest
    assert top["peer_read"] is None
    assert listed[1]["open"] is False and listed[1]["unread"] == 0
    assert listed[1]["last_message"]["text"] == "for Chloé, later"

    first_page = await a.command("conversations", limit=1)
    assert [c["id"] for c in first_page["conversations"]] == [with_ben] and first_page["more"] is True
    second_page = await a.command("conversations", limit=1,
                                  before=first_page["conversations"][0]["last_message"]["time"])
    assert [c["id"] for c in second_page["conversations"]] == [with_chloe] and second_page["more"] is False

    assert (await b.command("seen", conversation=with_ben, message=newest["id"] - 1))["ok"]
    await a.wait_type("read")
    assert (await a.command("conversations"))["conversations"][0]["peer_read"]["message"] == newest["id"] - 1
    for bad in ({"limit": 0}, {"limit": 51}, {"limit": "5"}, {"before": -1}, {"before": "yesterday"},
                {"before": True}):
        answer = await a.command("conversations", **bad)
        assert answer["ok"] is False and answer["error"]["code"] == "bad_command", bad
    await close_all(a, b)


@pytest.mark.gen_test(timeout=30)
async def test_search_finds_course_mates_online_or_not_and_nobody_else(http_server, base_url, site):
    ana, chloe, chris, ben = site.classmates("Ana", "Chloé", "Christopher", "Ben")
    stranger = site.add_user("Chloe", "Elsewhere")
    site.enrol(stranger, site.add_course("Other course"))
    blocker = site.add_user("Chlodwig", "Blocker")
    site.enrol(blocker, site.rows("SELECT courseid FROM {p}enrol ORDER BY id LIMIT 1")[0][0])
    site.block(blocker, ana)
    a = await connect(base_url, site, ana)
    c = await connect(base_url, site, chris)  # online; Chloé is not
    await a.wait_for(lambda e: e.get("type") == "presence" and e["user"]["id"] == chris)

    found = await a.command("search", query="CHLO")
    assert found["ok"] and found["more"] is False
    assert [(u["name"], u["online"]) for u in found["users"]] == [("Chloé Tester", False)]
    assert [u["id"] for u in (await a.command("search", query="chr tes"))["users"]] == [chris]
    assert (await a.command("search", query="chri"))["users"][0]["online"] is True
    everyone = await a.command("search", query="tester")
    assert [u["id"] for u in everyone["users"]] == [ben, chloe, chris]  # sorted by name, not Ana herself
    page = await a.command("search", query="tester", offset=1, limit=1)
    assert [u["id"] for u in page["users"]] == [chloe] and page["more"] is True
    last = await a.command("search", query="tester", offset=2, limit=1)
    assert [u["id"] for u in last["users"]] == [chris] and last["more"] is False
    assert (await a.command("search", query="zzz"))["users"] == []
    for bad in ({"query": ""}, {"query": "x" * 101}, {"query": 5}, {"query": "  "}, {"query": "a", "offset": -1},
                {"query": "a", "limit": 0}, {"query": "a", "limit": 51}, {}):
        answer = await a.command("search", **bad)
        assert answer["ok"] is False and answer["error"]["code"] == "bad_command", bad
    await close_all(a, c)


@pytest.mark.gen_test(timeout=30)
async def test_search_is_rate_limited_and_the_connection_goes_on(http_server, base_url, site):
    ana, ben = site.classmates("Ana", "Ben")
    a = await connect(base_url, site, ana)
    codes = [(await a.command("search", query="b")).get("error", {}).get("code") for _ in range(SEARCH_BURST + 3)]
    assert None in codes and "rate_limited" in codes
    assert (await a.command("ping"))["ok"]
    await a.close()


@pytest.mark.gen_test(timeout=30)
async def test_message_to_an_offline_course_mate_waits_for_their_next_login(http_server, base_url, site):
    ana, ben = site.classmates("Ana", "Ben")
    a = await connect(base_url, site, ana)
    [found] = (await a.command("search", query="ben"))["users"]
    assert found["online"] is False
    conv = (await a.command("open", user=found["id"]))["conversation"]["id"]
    sent = (await a.send_text(conv, "see this when you are back"))["message"]
    b = await connect(base_url, site, ben)
    [view] = b.of_type("ready")[0]["conversations"]
    assert view["id"] == conv and view["open"] is True and view["unread"] == 1
    assert view["messages"] == [sent] and view["peer_read"] is None
    await close_all(a, b)


@pytest.mark.gen_test(timeout=30)
async def test_ready_counts_course_mates_online_or_not(http_server, base_url, site):
    ana, _ben, _chloe = site.classmates("Ana", "Ben", "Chloé")
    loner = site.add_user("Lone", "Student")
    a = await connect(base_url, site, ana)
    alone = await connect(base_url, site, loner)
    assert a.of_type("ready")[0]["coursemates"] == 2
    assert alone.of_type("ready")[0]["coursemates"] == 0
    await close_all(a, alone)


def test_fold_ignores_case_and_accents():
    assert fold("Chloé MÜLLER") == fold("chloe muller") == "chloe muller"


def test_initdb_adds_the_read_time_column_to_tables_of_an_earlier_version(test_db_url):
    db = Database(parse_db_url(test_db_url), prefix="upg_", pool_size=1, timeout=5)
    store = ChatStore(db)
    try:
        db.run_sync(lambda q: q.execute(
            "CREATE TABLE {gchat_members} (conversation BIGINT NOT NULL, userid BIGINT NOT NULL, "
            "is_open SMALLINT NOT NULL DEFAULT 0, minimized SMALLINT NOT NULL DEFAULT 0, "
            "unread INT NOT NULL DEFAULT 0, "
            "last_read BIGINT NOT NULL DEFAULT 0, timemodified BIGINT NOT NULL, PRIMARY KEY (conversation, userid))"))
        db.run_sync(lambda q: q.execute("INSERT INTO {gchat_members} (conversation, userid, last_read, timemodified) "
                                        "VALUES (1, 2, 7, 0)"))
        assert "gchat_members.last_read_time" in db.run_sync(store.missing_tables)
        db.run_sync(store.create_tables)
        db.run_sync(store.create_tables)  # twice is safe
        assert db.run_sync(store.missing_tables) == []
        assert db.run_sync(lambda q: q.all("SELECT last_read, last_read_time FROM {gchat_members}")) == [(7, 0)]
    finally:
        db.run_sync(lambda q: [q.execute(f"DROP TABLE IF EXISTS {{{t}}}")
                               for t in ("gchat_conversations", "gchat_members", "gchat_messages")])
        db.close()
