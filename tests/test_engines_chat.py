"""A whole chat, WebSocket to long-poll, on each database engine (MariaDB and PostgreSQL): bootstrap
from a Moodle session row, presence, messages both ways, history, a retried send, ids that differ
only by a trailing space, and a Moodle logout ending the chat. The router's own tests go deeper
on MariaDB; this one shows that nothing in the path depends on the engine."""

from __future__ import annotations

import pytest

from tests.support.clients import bootstrap, send_and_receive, websocket_meets_longpoll

ENGINES = ("mariadb", "postgresql")


@pytest.mark.gen_test(timeout=30)
async def test_websocket_to_longpoll_chat_history_and_logout(http_server, base_url, site, services, engine):
    ana, ben = site.classmates("Ana", "Ben")
    ana_sid = site.login(ana)
    a, b, _ = await websocket_meets_longpoll(base_url, ana, ana_sid, ben, site.login(ben))

    conv = (await a.command("open", user=ben))["conversation"]["id"]
    sent = await send_and_receive(a, b, conv, [(f"olá {i} 😀", f"c{i}") for i in range(3)])
    back = await b.send_text(conv, "hi Ana", client_id="pad")
    padded = await b.send_text(conv, "a different message", client_id="pad ")
    retried = await b.send_text(conv, "hi Ana (retried)", client_id="pad")
    assert back["ok"] and padded["ok"] and retried["ok"]
    assert padded["message"]["id"] != back["message"]["id"], "'pad ' was taken for a retry of 'pad'"
    assert retried["message"] == back["message"]
    await a.wait_for(lambda e: e.get("type") == "message" and e["message"]["id"] == padded["message"]["id"])

    # History pages backwards, oldest first, the same on both transports.
    everything = sent + [back["message"], padded["message"]]
    for client in (a, b):
        page = await client.command("history", conversation=conv, before=everything[-1]["id"], limit=2)
        assert page["ok"] and page["messages"] == everything[-3:-1]
    earlier = await b.command("history", conversation=conv, before=everything[2]["id"], limit=50)
    assert earlier["messages"] == everything[:2]

    # Ana logs out of Moodle: her chat ends; Ben sees her go.
    site.logout(ana_sid)
    assert await services.router.check_sessions() == 1
    assert await a.wait_closed() == 4000
    assert a.closed_error["code"] == "session_ended"
    offline = await b.wait_type("presence", status="offline")
    assert offline["user"]["id"] == ana
    assert (await b.command("ping"))["ok"]
    code, _ = await bootstrap(base_url, ana_sid)
    assert code == 401
    rows = site.rows("SELECT COUNT(*) FROM {p}gchat_messages WHERE conversation = %s", (conv,))
    assert rows == [(5,)]
    await b.close()
