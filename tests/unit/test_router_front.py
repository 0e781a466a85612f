"""The router as the transports see it, over fakes: bootstrap to chat, counts, and its life
cycle (start hears of orphans, stop tells every client to reconnect)."""

from __future__ import annotations

import json

import pytest

from tests.support.fakes import RecordingClient


@pytest.mark.gen_test
async def test_from_cookie_to_chat(router, moodle):
    ana, ben = moodle.classmates("Ana", "Ben")
    token, user = await router.bootstrap(moodle.login(ana))
    assert user.id == ana and await router.cookie_name() == "MoodleSession"
    identity = router.authenticate(token)
    tab = RecordingClient(identity)
    await router.attach(tab)
    raw, cursor = await router.catch_up(identity, None)
    assert json.loads(raw[0])["type"] == "ready"
    bens = RecordingClient(moodle.identity(ben))
    await router.attach(bens)
    reply = await router.handle(identity, {"type": "open", "ref": 1, "user": ben})
    conv = reply["conversation"]["id"]
    sent = await router.handle(identity, {"type": "send", "ref": 2, "conversation": conv, "text": "hi"})
    raw, _ = await router.catch_up(identity, cursor)
    assert [json.loads(e)["type"] for e in raw][-1] == "message"
    assert json.loads(raw[-1])["message"] == sent["message"]
    assert tab.wakeups >= 2 and bens.wakeups >= 2
    assert router.client_count == 2 and router.connected_users == 2
    assert router.count_by_transport() == {"fake": 2}
    router.clients_of(ana).clear()  # a copy: the router's registry is read-only from outside
    assert len(router.clients_of(ana)) == 1


@pytest.mark.gen_test
async def test_start_hears_of_orphans_and_stop_ends_every_client(router, moodle, broker):
    ana, ben = moodle.classmates("Ana", "Ben")
    router.start()
    assert broker.on_orphan is not None
    tabs = [RecordingClient(moodle.identity(uid)) for uid in (ana, ana, ben)]
    for tab in tabs:
        await router.attach(tab)
    await router.stop(drain_secs=1)
    assert [tab.ended.code for tab in tabs] == ["shutting_down"] * 3
    assert router.closing
    with pytest.raises(Exception) as refused:
        await router.attach(RecordingClient(moodle.identity(ana)))
    assert getattr(refused.value, "code", None) == "shutting_down"
