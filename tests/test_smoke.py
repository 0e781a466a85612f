import pytest

from tests.support.clients import PollClient, WSClient, bootstrap


@pytest.mark.gen_test(timeout=20)
async def test_ws_to_poll_chat(http_server, base_url, site):
    ana, ben = site.classmates("Ana", "Ben")
    code, boot_a = await bootstrap(base_url, site.login(ana))
    assert code == 200, boot_a
    code, boot_b = await bootstrap(base_url, site.login(ben))
    a = await WSClient(base_url, boot_a["token"]).connect()
    b = await PollClient(base_url, boot_b["token"]).connect()
    await a.wait_type("ready")
    await b.wait_type("ready")
    reply = await a.command("open", user=ben)
    assert reply["ok"], reply
    conv = reply["conversation"]["id"]
    reply = await a.send_text(conv, "hello Ben")
    assert reply["ok"], reply
    got = await b.wait_type("message")
    assert got["message"]["text"] == "hello Ben"
    reply = await b.send_text(conv, "hi Ana")
    assert reply["ok"], reply
    await a.wait_for(lambda e: e.get("type") == "message" and e["message"]["text"] == "hi Ana")
    await a.close()
    await b.close()
