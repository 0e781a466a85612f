"""The router over real sockets (WebSocket and long-poll), MariaDB behind: chat, resume,
window state, presence, authorisation. Every test runs with each broker. See docs/protocol.md;
the router's parts alone, over fakes, are in tests/unit/."""

from __future__ import annotations

import asyncio
import time
from unittest import mock

import pytest
from itsdangerous import URLSafeTimedSerializer
from tornado.httpclient import HTTPClientError

from gchat.auth import TOKEN_SALT
from tests.support.clients import CLIENTS, PollClient, WSClient, bootstrap
from tests.support.redis import with_params
from tests.support.serving import running

# pytest-tornado's http_server reaches `app` (and so `settings`) at run time; naming the
# parametrised fixture here makes pytest generate one test per broker.
pytestmark = pytest.mark.usefixtures("settings")

PAIRINGS = [("websocket", "websocket"), ("websocket", "longpoll"), ("longpoll", "longpoll")]


@pytest.fixture(params=["memory", "redis"])
def settings(request, settings):
    """Every router test runs with each broker: in-process, and Redis (as with several processes)."""
    if request.param == "memory":
        return settings
    url = with_params(request.getfixturevalue("redis_url"), key_prefix=request.getfixturevalue("redis_prefix"))
    return settings.replace(broker_url=url)


def is_message_from(user):
    return lambda e: e.get("type") == "message" and e["message"]["from"] == user


@pytest.mark.parametrize("first,second", PAIRINGS)
@pytest.mark.gen_test(timeout=30)
async def test_chat_both_ways_and_senders_other_tab(people, site, first, second):
    ana, ben = site.classmates("Ana", "Ben")
    a = await people.connect(ana, first)
    a2 = await people.connect(ana, second)  # Ana's second tab, on the other transport
    b = await people.connect(ben, second)
    conv = (await a.command("open", user=ben))["conversation"]["id"]
    sent = await a.send_text(conv, "hello Ben")
    assert sent["ok"] and sent["message"]["from"] == ana
    got = await b.wait_type("message")
    assert got["message"] == sent["message"]
    own = await a2.wait_type("message")
    assert own["message"]["id"] == sent["message"]["id"]
    back = await b.send_text(conv, "hi Ana 👋")
    assert back["ok"]
    for tab in (a, a2):
        event = await tab.wait_for(is_message_from(ben))
        assert event["message"]["text"] == "hi Ana 👋"


@pytest.mark.gen_test(timeout=30)
async def test_closed_window_opens_for_peer_before_message(people):
    ana, ben, a, b, conv = await people.chat("websocket", "longpoll")
    await a.send_text(conv, "are you there?")
    opened = await b.wait_type("conversation")
    message = await b.wait_type("message")
    assert b.events.index(opened) < b.events.index(message)
    view = opened["conversation"]
    assert view["open"] is True and view["unread"] == 1 and view["with"]["id"] == ana
    assert [m["text"] for m in view["messages"]] == ["are you there?"]
    assert view["unread_upto"] == message["message"]["id"], "the count covers the message it opened with"


@pytest.mark.parametrize("transport", ["websocket", "longpoll"])
@pytest.mark.gen_test(timeout=30)
async def test_resume_gets_exactly_the_missed_events(people, base_url, transport):
    ana, ben, a, b, conv = await people.chat("websocket", transport)
    await a.send_text(conv, "before")
    await b.wait_type("message")
    cursor, token = b.cursor, b.token
    await b.close()
    sent = [(await a.send_text(conv, f"missed {i}"))["message"] for i in range(3)]
    back = people.track(await CLIENTS[transport](base_url, token).connect(cursor=cursor))
    await back.wait_for(lambda e: e.get("type") == "message" and e["message"]["text"] == "missed 2")
    assert back.of_type("ready") == []
    assert back.messages() == sent  # exactly those three, in order, once
    cursors = [e["cursor"] for e in back.events]
    assert len(set(cursors)) == len(cursors)


@pytest.mark.gen_test(timeout=30)
async def test_restart_resets_with_memory_broker_and_resumes_with_redis(people, site, settings):
    ana, ben = site.classmates("Ana", "Ben")
    a = await people.connect(ana)
    conv = (await a.command("open", user=ben))["conversation"]["id"]
    for i in range(3):
        await a.send_text(conv, f"line {i}")
    await a.wait_for(lambda e: e.get("type") == "message" and e["message"]["text"] == "line 2")
    cursor, token = a.cursor, a.token
    await a.close()
    # A second server process, as after a restart: same database, secret and broker settings.
    async with running(settings) as (fresh, fresh_url):
        again = people.track(await WSClient(fresh_url, token).connect(cursor=cursor))
        if fresh.broker.name == "memory":  # the log died with the process: a snapshot, marked reset
            ready = await again.wait_type("ready")
            assert ready["reset"] is True
            [view] = ready["conversations"]
            assert [m["text"] for m in view["messages"]] == ["line 0", "line 1", "line 2"]
        else:  # the log lives in Redis: the new process resumes from the cursor
            other_tab = people.track(await WSClient(fresh_url, token).connect())
            await other_tab.wait_type("ready")
            sent = (await other_tab.send_text(conv, "after the restart"))["message"]
            got = await again.wait_type("message")
            assert got["message"] == sent and again.of_type("ready") == []
            await other_tab.close()
        await again.close()


@pytest.mark.gen_test(timeout=30)
async def test_unknown_or_trimmed_cursor_is_a_reset_never_a_gap(people, base_url, site):
    (ana,) = site.classmates("Ana")
    a = await people.connect(ana)
    token = a.token
    await a.close()
    for bad in ("nosuchepoch:5", "garbage", a.cursor.split(":")[0] + ":999999"):
        client = people.track(await WSClient(base_url, token).connect(cursor=bad))
        ready = await client.wait_type("ready")
        assert ready["reset"] is True
        await client.close()


@pytest.mark.gen_test(timeout=30)
async def test_repeated_client_id_is_stored_and_shown_once(people, site):
    ana, ben, a, b, conv = await people.chat()
    first = await a.send_text(conv, "only once", client_id="retry-1")
    second = await a.send_text(conv, "only once", client_id="retry-1")
    assert first["message"] == second["message"]
    await a.send_text(conv, "marker")
    await b.wait_for(lambda e: e.get("type") == "message" and e["message"]["text"] == "marker")
    shown = {m["id"]: m["text"] for m in b.messages()}  # what the application shows: one per id
    assert list(shown.values()) == ["only once", "marker"]
    assert site.rows("SELECT COUNT(*) FROM {p}gchat_messages WHERE client_id = 'retry-1'")[0][0] == 1


@pytest.mark.gen_test(timeout=30)
async def test_window_state_reaches_other_tabs_and_new_pages(people, site):
    ana, ben = site.classmates("Ana", "Ben")
    tab1 = await people.connect(ana)
    tab2 = await people.connect(ana, "longpoll")
    conv = (await tab1.command("open", user=ben))["conversation"]["id"]
    opened = await tab2.wait_type("conversation")
    assert opened["conversation"]["id"] == conv and opened["conversation"]["open"]
    assert (await tab1.command("minimize", conversation=conv, minimized=True))["ok"]
    await tab2.wait_for(lambda e: e.get("type") == "conversation" and e["conversation"]["minimized"])
    page = await people.connect(ana)  # a new page load
    [view] = page.of_type("ready")[0]["conversations"]
    assert view["id"] == conv and view["open"] and view["minimized"]
    assert (await tab2.command("close", conversation=conv))["ok"]
    await page.wait_for(lambda e: e.get("type") == "conversation" and not e["conversation"]["open"])
    later = await people.connect(ana)
    assert later.of_type("ready")[0]["conversations"] == []


@pytest.mark.gen_test(timeout=30)
async def test_unread_and_seen(people):
    ana, ben, a, b, conv = await people.chat()
    await a.send_text(conv, "one")
    last = (await a.send_text(conv, "two"))["message"]
    await b.wait_for(lambda e: e.get("type") == "message" and e["message"]["id"] == last["id"])
    b2 = await people.connect(ben)
    [view] = b2.of_type("ready")[0]["conversations"]
    assert view["unread"] == 2 and view["unread_upto"] == last["id"]
    assert (await b.command("seen", conversation=conv, message=last["id"]))["ok"]
    read = await b2.wait_for(lambda e: e.get("type") == "conversation")
    assert read["conversation"]["unread"] == 0 and read["conversation"]["unread_upto"] == last["id"]
    # Ana's own view counts nothing of hers, up to her newest message all the same.
    assert (await a.command("minimize", conversation=conv, minimized=True))["ok"]
    mine = await a.wait_for(lambda e: e.get("type") == "conversation" and e["conversation"]["minimized"])
    assert mine["conversation"]["unread"] == 0 and mine["conversation"]["unread_upto"] == last["id"]


@pytest.mark.gen_test(timeout=30)
async def test_history_pages_backwards(people, site):
    ana, ben = site.classmates("Ana", "Ben")
    a = await people.connect(ana)
    conv = (await a.command("open", user=ben))["conversation"]["id"]
    ids = [(await a.send_text(conv, f"m{i}"))["message"]["id"] for i in range(15)]
    page = await a.command("history", conversation=conv, before=ids[10], limit=5)
    assert [m["id"] for m in page["messages"]] == ids[5:10]
    assert (await a.command("history", conversation=conv, limit=51))["error"]["code"] == "bad_command"


@pytest.mark.gen_test(timeout=30)
async def test_typing_reaches_the_peer(people):
    ana, ben, a, b, conv = await people.chat("websocket", "longpoll")
    assert (await a.command("typing", conversation=conv))["ok"]
    typing = await b.wait_type("typing")
    assert typing["conversation"] == conv and typing["user"] == ana


# -- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["websocket", "longpoll"])
@pytest.mark.gen_test(timeout=30)
async def test_forged_and_expired_tokens_are_refused(people, base_url, site, settings, transport):
    (ana,) = site.classmates("Ana")
    forged = URLSafeTimedSerializer("not-the-secret", salt=TOKEN_SALT).dumps({"u": ana, "s": "x"})

    long_ago = time.time() - settings.token_ttl - 60
    with mock.patch("time.time", return_value=long_ago):  # signed before the TTL began
        expired = URLSafeTimedSerializer(settings.secret_key, salt=TOKEN_SALT).dumps({"u": ana, "s": "x"})
    for token, code in ((forged, "bad_token"), (expired, "token_expired"), ("", "bad_token")):
        if transport == "websocket":
            client = people.track(await WSClient(base_url, token).connect())
            assert await client.wait_closed() == 1008
            assert client.closed_error["code"] == code
        else:
            client = people.track(await PollClient(base_url, token).connect())
            await asyncio.wait_for(client._loop_task, 5)
            assert client.status == 401 and client.error["code"] == code
            reply = await client.command("ping")
            assert reply["http_status"] == 401 and reply["error"]["code"] == code
            await client.close()


@pytest.mark.gen_test(timeout=30)
async def test_bootstrap_needs_a_valid_moodle_session(http_server, base_url, site):
    (ana,) = site.classmates("Ana")
    assert (await bootstrap(base_url, None))[1]["error"]["code"] == "not_logged_in"
    assert (await bootstrap(base_url, "nosuchsession"))[0] == 401
    code, boot = await bootstrap(base_url, site.login(ana))
    assert code == 200 and boot["user"]["id"] == ana and boot["user"]["name"] == "Ana Tester"
    assert boot["transports"] == ["websocket", "longpoll"] and boot["strings"]
    assert boot["settings"]["colors"] == {"header": "#267A24", "header_unread": "#8A4B00",
                                          "header_text": "#FFFFFF", "border": "#767676"}
    assert boot["settings"]["container"] == "body"


@pytest.mark.gen_test(timeout=30)
async def test_websocket_from_another_origin_is_refused(people, base_url, site):
    (ana,) = site.classmates("Ana")
    _, boot = await bootstrap(base_url, site.login(ana))
    with pytest.raises(HTTPClientError) as refused:
        await WSClient(base_url, boot["token"]).connect(origin="https://evil.example")
    assert refused.value.code == 403
    ok = people.track(await WSClient(base_url, boot["token"]).connect(origin="http://moodle.test"))
    await ok.wait_type("ready")


@pytest.mark.parametrize("transport", ["websocket", "longpoll"])
@pytest.mark.gen_test(timeout=30)
async def test_authorisation_refusals(people, site, transport):
    ana, ben, cat, dan = site.classmates("Ana", "Ben", "Cat", "Dan")
    stranger = site.add_user("Sol", "Stranger")
    site.enrol(stranger, site.add_course("Elsewhere"))
    site.block(dan, ana)  # Dan blocks Ana
    a = await people.connect(ana, transport)
    b = await people.connect(ben)
    assert (await a.command("open", user=stranger))["error"]["code"] == "not_allowed"
    assert (await a.command("open", user=dan))["error"]["code"] == "not_allowed"
    assert (await a.command("open", user=ana))["error"]["code"] == "not_allowed"
    bc = (await b.command("open", user=cat))["conversation"]["id"]
    await b.send_text(bc, "private")
    assert (await a.command("history", conversation=bc))["error"]["code"] == "not_allowed"
    assert (await a.send_text(bc, "intrude"))["error"]["code"] == "not_allowed"
    assert (await a.command("seen", conversation=bc, message=1))["error"]["code"] == "not_allowed"
    assert (await a.command("history", conversation=999999))["error"]["code"] == "not_found"
    ab = (await a.command("open", user=ben))["conversation"]["id"]
    spoof = await a.command("send", conversation=ab, text="as Ben", client_id="s1", **{"from": ben})
    assert spoof["error"]["code"] == "not_allowed"
    assert site.rows("SELECT COUNT(*) FROM {p}gchat_messages WHERE sender <> %s", (ben,))[0][0] == 0


@pytest.mark.parametrize("transport", ["websocket", "longpoll"])
@pytest.mark.gen_test(timeout=30)
async def test_bad_commands_get_errors_and_the_connection_goes_on(people, site, transport):
    ana, ben = site.classmates("Ana", "Ben")
    a = await people.connect(ana, transport)
    assert (await a.raw("{not json"))["error"]["code"] == "bad_json"
    assert (await a.raw({"type": "fly", "ref": 1}))["error"]["code"] == "bad_command"
    assert (await a.raw([1, 2]))["error"]["code"] == "bad_command"
    assert (await a.command("open", user="ben"))["error"]["code"] == "bad_command"
    conv = (await a.command("open", user=ben))["conversation"]["id"]
    assert (await a.command("send", conversation=conv, text="   "))["error"]["code"] == "empty"
    assert (await a.command("send", conversation=conv, text="x" * 1334))["error"]["code"] == "too_long"
    assert (await a.send_text(conv, "still fine"))["ok"]


# -- presence -------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_presence_online_offline_and_two_tabs(people, site, settings):
    ana, ben = site.classmates("Ana", "Ben")
    b = await people.connect(ben)
    assert b.of_type("ready")[0]["online"] == []
    started = time.monotonic()
    a1 = await people.connect(ana)
    online = await b.wait_type("presence", timeout=1.0, status="online")
    assert online["user"]["id"] == ana and time.monotonic() - started < 1.0
    assert [u["id"] for u in a1.of_type("ready")[0]["online"]] == [ben]
    a2 = await people.connect(ana, "longpoll")
    await a1.close()  # one of two tabs closes: Ana stays online
    await asyncio.sleep(settings.presence_grace * 3)  # the behaviour under test is the grace period
    assert b.of_type("presence")[-1]["status"] == "online"
    closed_at = time.monotonic()
    await a2.close()
    offline = await b.wait_type("presence", timeout=5, status="offline")
    assert offline["user"]["id"] == ana
    assert time.monotonic() - closed_at >= settings.presence_grace


@pytest.mark.gen_test(timeout=30)
async def test_page_change_within_grace_does_not_flash_offline(people, base_url, site):
    ana, ben = site.classmates("Ana", "Ben")
    b = await people.connect(ben)
    a = await people.connect(ana)
    await b.wait_type("presence", status="online")
    cursor, token = a.cursor, a.token
    await a.close()
    people.track(await WSClient(base_url, token).connect(cursor=cursor))  # the next page
    await asyncio.sleep(0.6)  # longer than the 0.3 s grace: still no offline
    assert [e["status"] for e in b.of_type("presence")] == ["online"]


@pytest.mark.gen_test(timeout=30)
async def test_no_query_per_heartbeat_or_idle_poll(people, site, services):
    (ana,) = site.classmates("Ana")
    a = await people.connect(ana, "longpoll")
    before = services.db.queries
    for _ in range(5):
        assert (await a.command("ping"))["ok"]
    status, body = await a.poll_once()  # an extra poll of the same tab answers the waiting one
    assert status == 200
    assert services.db.queries == before


@pytest.mark.gen_test(timeout=30)
async def test_second_poll_of_a_tab_answers_the_first(http_server, base_url, site):
    (ana,) = site.classmates("Ana")
    code, boot = await bootstrap(base_url, site.login(ana))
    client = PollClient(base_url, boot["token"])
    client.tab = "tab1"
    status, first = await client.poll_once()
    assert first["events"][0]["type"] == "ready"
    client.cursor = first["cursor"]
    waiting = asyncio.ensure_future(client.poll_once())
    await asyncio.sleep(0.2)  # let the first poll park
    assert not waiting.done()
    newer = asyncio.ensure_future(client.poll_once())
    status, answered = await asyncio.wait_for(waiting, 2)  # newest wins: the first one answers now
    assert status == 200 and answered["events"] == [] and answered["cursor"] == client.cursor
    assert not newer.done()
    newer.cancel()


# -- Moodle logout ---------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_moodle_logout_ends_the_chat(people, base_url, site, services):
    ana, ben = site.classmates("Ana", "Ben")
    sid = site.login(ana)
    _, boot = await bootstrap(base_url, sid)
    ws = people.track(await WSClient(base_url, boot["token"]).connect())
    poll = people.track(await PollClient(base_url, boot["token"]).connect())
    other = await people.connect(ben)
    await ws.wait_type("ready")
    await poll.wait_type("ready")
    site.logout(sid)
    assert await services.router.check_sessions() == 2
    assert await ws.wait_closed() == 4000
    assert ws.closed_error["code"] == "session_ended"
    await asyncio.wait_for(poll._loop_task, 5)
    assert poll.status == 401 and poll.error["code"] == "session_ended"
    assert (await poll.command("ping"))["error"]["code"] == "session_ended"
    assert (await other.command("ping"))["ok"]  # everyone else goes on


@pytest.mark.gen_test(timeout=30)
async def test_shutdown_tells_clients_to_reconnect(people, site, services):
    ana, ben = site.classmates("Ana", "Ben")
    ws = await people.connect(ana)
    poll = await people.connect(ben, "longpoll")
    await services.stop()
    assert await ws.wait_closed() == 1001
    assert ws.closed_error["code"] == "shutting_down"
    await asyncio.wait_for(poll._loop_task, 5)
    assert poll.status == 503 and poll.error["code"] == "shutting_down"
    assert (await poll.command("ping"))["error"]["code"] == "shutting_down"
