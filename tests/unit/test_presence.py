"""Presence alone: the connection registry and its limits, online announced to online
course-mates only, offline after the grace period (timers fired by hand, no sleeping), page
changes within the grace period, orphans, and retries while the database is away."""

from __future__ import annotations

import pytest

from gchat.errors import GchatError
from tests.support.fakes import PresenceRig


@pytest.fixture
def rig(settings, moodle, broker):
    return PresenceRig(settings.replace(max_connections_per_user=2, max_connections_per_address=3), moodle, broker)


@pytest.mark.gen_test
async def test_connections_are_counted_by_user_and_transport(rig, moodle):
    ana, ben = moodle.classmates("Ana", "Ben")
    first = await rig.attach(ana)
    await rig.attach(ana)
    await rig.attach(ben)
    assert rig.presence.client_count == 3 and rig.presence.user_count == 2
    assert rig.presence.count_by_transport() == {"fake": 3}
    assert len(rig.presence.sessions()) == 3
    await rig.detach(first)
    await rig.detach(first)  # twice: nothing more happens
    assert rig.presence.client_count == 2 and len(rig.presence.clients_of(ana)) == 1
    # The sessions the re-check asks about follow clients coming and going.
    assert rig.presence.sessions() == {(c.identity.user_id, c.identity.sid_hash)
                                       for uid in (ana, ben) for c in rig.presence.clients_of(uid)}
    assert len(rig.presence.sessions()) == 2
    await rig.attach(ben)
    assert len(rig.presence.sessions()) == 3


@pytest.mark.gen_test
async def test_connection_limits_per_user_and_per_address(rig, moodle):
    ana, ben, cat = moodle.classmates("Ana", "Ben", "Cat")
    await rig.attach(ana)
    await rig.attach(ana)
    with pytest.raises(GchatError) as refused:
        await rig.attach(ana)
    assert refused.value.code == "too_many_connections"
    await rig.attach(ben)  # the third from 10.0.0.1
    with pytest.raises(GchatError) as refused:
        await rig.attach(cat)
    assert refused.value.code == "too_many_connections"
    assert rig.presence.clients_of(cat) == set(), "a refused user is not left registered"
    await rig.attach(cat, address="10.0.0.2")


@pytest.mark.gen_test
async def test_online_goes_to_online_coursemates_only(rig, moodle):
    ana, ben = moodle.classmates("Ana", "Ben")
    eve = moodle.add_user("Eve")
    moodle.add_course(eve)
    bens = await rig.attach(ben)
    await rig.attach(eve)
    wakeups = bens.wakeups
    await rig.attach(ana)
    assert await rig.presence_events(ben) == [(ana, "online")]
    assert bens.wakeups == wakeups + 1
    assert await rig.presence_events(eve) == []


@pytest.mark.gen_test
async def test_offline_only_after_the_grace_period(rig, moodle, settings):
    ana, ben = moodle.classmates("Ana", "Ben")
    await rig.attach(ben)
    tab = await rig.attach(ana)
    await rig.detach(tab)
    assert rig.background.delays == [settings.presence_grace]
    assert await rig.broker.online([ana]) == {ana}, "still online within the grace period"
    assert await rig.background.fire() == 1
    assert await rig.presence_events(ben) == [(ana, "online"), (ana, "offline")]
    assert await rig.broker.online([ana]) == set()


@pytest.mark.gen_test
async def test_a_page_change_within_the_grace_period_does_not_flash_offline(rig, moodle):
    ana, ben = moodle.classmates("Ana", "Ben")
    await rig.attach(ben)
    page = await rig.attach(ana)
    await rig.detach(page)
    await rig.attach(ana)  # the next page
    assert rig.background.delays == [], "the grace timer was called off"
    assert await rig.background.fire() == 0
    assert await rig.presence_events(ben) == [(ana, "online")]


@pytest.mark.gen_test
async def test_one_of_two_tabs_closing_starts_no_grace(rig, moodle):
    ana, ben = moodle.classmates("Ana", "Ben")
    await rig.attach(ben)
    first = await rig.attach(ana)
    await rig.attach(ana)
    await rig.detach(first)
    assert rig.background.delays == []
    assert await rig.presence_events(ben) == [(ana, "online")]


@pytest.mark.gen_test
async def test_orphans_of_other_processes_get_the_grace_period(rig, moodle):
    ana, ben = moodle.classmates("Ana", "Ben")
    await rig.attach(ben)
    rig.presence.orphaned(ben)  # connected here: not an orphan
    assert rig.background.delays == []
    await rig.broker.add_connection(ana, "elsewhere")  # a process that then vanished
    await rig.broker.remove_connection(ana, "elsewhere")
    rig.presence.orphaned(ana)
    rig.presence.orphaned(ana)
    assert len(rig.background.delays) == 1
    await rig.background.fire()
    assert await rig.broker.online([ana]) == set()


@pytest.mark.gen_test
async def test_closing_refuses_new_clients_and_arms_no_timer(rig, moodle):
    ana, ben = moodle.classmates("Ana", "Ben")
    tab = await rig.attach(ana)
    rig.presence.close()
    with pytest.raises(GchatError) as refused:
        await rig.attach(ben)
    assert refused.value.code == "shutting_down"
    await rig.detach(tab)
    assert rig.background.delays == []


@pytest.mark.gen_test
async def test_announcements_are_retried_while_the_database_is_away(rig, moodle):
    ana, ben = moodle.classmates("Ana", "Ben")
    await rig.attach(ben)
    moodle.down = True
    await rig.attach(ana)
    assert rig.background.delays == [2.0]
    moodle.down = False
    await rig.background.fire()
    assert await rig.presence_events(ben) == [(ana, "online")]


@pytest.mark.gen_test
async def test_announcements_give_up_after_a_few_attempts(rig, moodle, caplog):
    ana, ben = moodle.classmates("Ana", "Ben")
    await rig.attach(ben)
    moodle.down = True
    await rig.attach(ana)
    delays = []
    while rig.background.delays:
        delays += rig.background.delays
        await rig.background.fire()
    assert delays == [2.0, 4.0, 6.0]
    assert "not announced" in caplog.text


@pytest.mark.gen_test
async def test_ending_the_clients_of_one_session(rig, moodle):
    (ana,) = moodle.classmates("Ana")
    one = await rig.attach(ana)
    other = await rig.attach(ana)
    error = GchatError("session_ended", "logged out")
    assert rig.presence.end_clients(error, session=(ana, one.identity.sid_hash)) == 1
    assert one.ended is error and other.ended is None
    assert rig.presence.end_clients(error) == 2
