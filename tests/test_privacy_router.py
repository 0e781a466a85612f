"""Moodle's messaging privacy over the real router and both transports, MariaDB behind: each
refusal carries its ``reason``, each rule has an accepted case, presence follows the
contacts-only preference, and bootstrap tells the widget about the site switch and the
capability. See docs/protocol.md §1, §7."""

from __future__ import annotations

import json

import pytest
import tornado.httpserver
import tornado.testing

from gchat.app import build_services, make_app
from tests.support.clients import CLIENTS, bootstrap

SEND = "moodle/site:sendmessage"
TRANSPORTS = ["websocket", "longpoll"]


@pytest.fixture
def services(settings, site, io_loop):
    built = build_services(settings)
    io_loop.run_sync(built.broker.start)
    yield built
    io_loop.run_sync(built.broker.close)
    built.db.close()


async def connect(base_url, site, user, transport="websocket"):
    code, boot = await bootstrap(base_url, site.login(user))
    assert code == 200, boot
    client = await CLIENTS[transport](base_url, boot["token"]).connect()
    await client.wait_type("ready")
    return client


def refusal(reply: dict, reason: str) -> None:
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == "not_allowed", reply
    assert reply["error"]["reason"] == reason, reply
    assert reply["error"]["message"]
    if "http_status" in reply:  # api/send
        assert reply["http_status"] == 403


async def close_all(*clients) -> None:
    for client in clients:
        await client.close()


# -- contacts only --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_contacts_only_refuses_non_contacts_and_admits_contacts(http_server, base_url, site, transport):
    ana, ben, cat = site.classmates("Ana", "Ben", "Cat")
    site.set_preference(ana, "message_blocknoncontacts", "1")
    site.add_contact(ana, ben)
    c = await connect(base_url, site, cat, transport)
    b = await connect(base_url, site, ben, transport)
    refusal(await c.command("open", user=ana), "contacts_only")
    opened = await b.command("open", user=ana)
    assert opened["ok"], opened
    assert (await b.send_text(opened["conversation"]["id"], "hi Ana"))["ok"]
    await close_all(b, c)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_a_non_contact_cannot_reply_to_a_contacts_only_user(http_server, base_url, site, transport):
    """As in Moodle (api::can_send_message_to_conversation checks the recipient's preference):
    Ana may write to Cat, who shares her course, but Cat may not write back."""
    ana, cat = site.classmates("Ana", "Cat")
    site.set_preference(ana, "message_blocknoncontacts", "1")
    a = await connect(base_url, site, ana)
    c = await connect(base_url, site, cat, transport)
    conv = (await a.command("open", user=cat))["conversation"]["id"]
    assert (await a.send_text(conv, "a question"))["ok"]
    await c.wait_type("message")
    refusal(await c.send_text(conv, "an answer"), "contacts_only")
    assert (await c.command("history", conversation=conv))["ok"]  # reading stays possible
    assert site.rows("SELECT COUNT(*) FROM {p}gchat_messages WHERE sender = %s", (cat,))[0][0] == 0
    await close_all(a, c)


@pytest.mark.gen_test(timeout=30)
async def test_contacts_only_user_is_online_only_for_those_allowed_to_message_her(http_server, base_url, site,
                                                                                    services):
    ana, ben, cat = site.classmates("Ana", "Ben", "Cat")
    site.set_preference(ana, "message_blocknoncontacts", "1")
    site.add_contact(ana, ben)
    b = await connect(base_url, site, ben)
    c = await connect(base_url, site, cat, "longpoll")
    c_head = await services.broker.head(cat)
    a = await connect(base_url, site, ana)
    # Ana sees both (she may message anyone in her course) ...
    assert {u["id"] for u in a.of_type("ready")[0]["online"]} == {ben, cat}
    # ... her contact is told she came online ...
    await b.wait_for(lambda e: e.get("type") == "presence" and e["user"]["id"] == ana and e["status"] == "online")
    # ... Cat is not: the same announcement went to every target at once, and Cat's event log
    # holds nothing about Ana.
    events, _ = await services.broker.read(cat, c_head)
    assert not [e for e in map(json.loads, events) if e["type"] == "presence" and e["user"]["id"] == ana]
    assert not [e for e in c.events if e.get("type") == "presence" and e["user"]["id"] == ana]
    # A page Cat opens now does not list Ana as online; Ben's does.
    c2 = await connect(base_url, site, cat)
    assert ana not in {u["id"] for u in c2.of_type("ready")[0]["online"]}
    b2 = await connect(base_url, site, ben)
    assert ana in {u["id"] for u in b2.of_type("ready")[0]["online"]}
    await close_all(a, b, c, c2, b2)


# -- blocks, shared courses, membership -------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_block_no_shared_course_and_not_member_reasons(http_server, base_url, site, services, transport):
    ana, ben, dan = site.classmates("Ana", "Ben", "Dan")
    stranger = site.add_user("Sol", "Stranger")
    site.enrol(stranger, site.add_course("Elsewhere"))
    a = await connect(base_url, site, ana, transport)
    b = await connect(base_url, site, ben)
    refusal(await a.command("open", user=stranger), "no_shared_course")
    conv = (await a.command("open", user=dan))["conversation"]["id"]
    assert (await a.send_text(conv, "before the block"))["ok"]
    site.block(dan, ana)
    services.moodle.forget_user(ana)  # what cache_ttl does in production
    refusal(await a.send_text(conv, "after the block"), "blocked")
    refusal(await a.command("open", user=dan), "blocked")
    bd = (await b.command("open", user=dan))["conversation"]["id"]
    refusal(await a.command("history", conversation=bd), "not_member")
    refusal(await a.send_text(bd, "intrude"), "not_member")
    await close_all(a, b)


# -- moodle/site:sendmessage ------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_without_sendmessage_a_user_reads_but_cannot_open_or_send(http_server, base_url, site, transport):
    ana, ben = site.classmates("Ana", "Ben")
    roles = site.install_roles()
    site.set_permission(roles["student"], SEND, -1000)  # prohibited for students
    site.assign_system_role(ben, roles["student"])
    _, boot_b = await bootstrap(base_url, site.login(ben))
    _, boot_a = await bootstrap(base_url, site.login(ana))
    assert boot_b["can_send"] is False and boot_a["can_send"] is True
    a = await connect(base_url, site, ana)
    b = await connect(base_url, site, ben, transport)
    refusal(await b.command("open", user=ana), "cannot_send")
    conv = (await a.command("open", user=ben))["conversation"]["id"]  # Ana may write to Ben
    sent = (await a.send_text(conv, "read this"))["message"]
    await b.wait_for(lambda e: e.get("type") == "message" and e["message"]["id"] == sent["id"])
    refusal(await b.send_text(conv, "I cannot answer"), "cannot_send")
    assert [m["text"] for m in (await b.command("history", conversation=conv))["messages"]] == ["read this"]
    assert (await b.command("seen", conversation=conv, message=sent["id"]))["ok"]
    await close_all(a, b)


# -- the site switch ------------------------------------------------------------------------------------


@pytest.fixture
def switched_off(site):
    site.set_config("messaging", "0")
    return site


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_site_switch_off_refuses_every_chat_command(http_server, base_url, switched_off, transport):
    site = switched_off
    ana, ben = site.classmates("Ana", "Ben")
    conv = site.execute("INSERT INTO {p}gchat_conversations (user_low, user_high, timecreated) VALUES (%s, %s, 0)",
                        (min(ana, ben), max(ana, ben)))
    code, boot = await bootstrap(base_url, site.login(ana))
    assert code == 200 and boot["messaging"] is False and boot["token"]
    a = await CLIENTS[transport](base_url, boot["token"]).connect()
    await a.wait_type("ready")
    refusal(await a.command("open", user=ben), "messaging_disabled")
    refusal(await a.send_text(conv, "hello?"), "messaging_disabled")
    refusal(await a.command("history", conversation=conv), "messaging_disabled")
    refusal(await a.command("typing", conversation=conv), "messaging_disabled")
    assert (await a.command("ping"))["ok"]
    await a.close()


@pytest.fixture
def not_honoured(settings):
    return settings.replace(honour_moodle_messaging=False)


@pytest.mark.gen_test(timeout=30)
async def test_site_switch_is_ignored_when_not_honoured(site, not_honoured):
    site.set_config("messaging", "0")
    ana, ben = site.classmates("Ana", "Ben")
    services = build_services(not_honoured)
    server = tornado.httpserver.HTTPServer(make_app(services))
    sock, port = tornado.testing.bind_unused_port()
    server.add_sockets([sock])
    base_url = f"http://127.0.0.1:{port}"
    try:
        code, boot = await bootstrap(base_url, site.login(ana))
        assert code == 200 and boot["messaging"] is True
        a = await connect(base_url, site, ana)
        conv = (await a.command("open", user=ben))["conversation"]["id"]
        assert (await a.send_text(conv, "still chatting"))["ok"]
        await a.close()
    finally:
        server.stop()
        services.db.close()


# -- cost -------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_privacy_checks_cost_no_query_once_cached(http_server, base_url, site, services):
    ana, ben = site.classmates("Ana", "Ben")
    site.install_roles()
    site.set_preference(ben, "message_blocknoncontacts", "1")
    site.add_contact(ben, ana)
    a = await connect(base_url, site, ana)
    conv = (await a.command("open", user=ben))["conversation"]["id"]
    assert (await a.send_text(conv, "warm"))["ok"]
    assert await services.moodle.audience(ben) == frozenset({ana})  # Ben is not connected: load his circle
    router = services.router
    before = services.db.queries
    for _ in range(5):
        assert await router.permissions(ana) == {"messaging": True, "can_send": True}
        assert await services.moodle.refusal(ana, ben) is None
        assert await services.moodle.audience(ben) == frozenset({ana})
        assert (await a.command("ping"))["ok"]
    assert services.db.queries == before
    await a.close()
