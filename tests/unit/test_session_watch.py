"""Sessions alone: cookie → token, token checks, and the re-check that ends the chat of a
user who logged out of Moodle (remembered for token_ttl, with a clock the test moves)."""

from __future__ import annotations

import pytest

from gchat.auth import Identity, TokenSigner
from gchat.errors import AuthError
from gchat.moodle import sid_hash
from gchat.presence import Presence
from gchat.session_watch import SessionWatch
from tests.support.fakes import ManualBackground, RecordingClient


class Clock:
    now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def presence(settings, moodle, broker):
    async def publish(user_ids, event):
        pass

    return Presence(settings, broker=broker, moodle=moodle, publish=publish, background=ManualBackground())


@pytest.fixture
def watch(settings, moodle, presence, clock):
    signer = TokenSigner(settings.secret_key, settings.token_ttl)
    return SessionWatch(settings, moodle=moodle, signer=signer, presence=presence, clock=clock)


@pytest.mark.gen_test
async def test_bootstrap_turns_a_valid_session_into_a_token(watch, moodle):
    (ana,) = moodle.classmates("Ana")
    sid = moodle.login(ana)
    token, user = await watch.bootstrap(sid)
    assert user.id == ana
    assert watch.authenticate(token) == Identity(ana, sid_hash(sid))


@pytest.mark.gen_test
@pytest.mark.parametrize("sid", [None, "", "nosuchsession"])
async def test_bootstrap_refuses_without_a_valid_session(watch, sid):
    with pytest.raises(AuthError) as refused:
        await watch.bootstrap(sid)
    assert refused.value.code == "not_logged_in"


@pytest.mark.gen_test
async def test_the_cookie_name_follows_the_setting_or_moodles_suffix(settings, moodle, presence):
    signer = TokenSigner("k", 60)
    moodle.cookie_suffix = "abc"
    assert await SessionWatch(settings, moodle=moodle, signer=signer, presence=presence).cookie_name() \
        == "MoodleSessionabc"
    named = settings.replace(session_cookie="MySession")
    assert await SessionWatch(named, moodle=moodle, signer=signer, presence=presence).cookie_name() == "MySession"


def test_a_bad_token_is_refused(watch):
    for token in (None, "", "x" * 600, "not.a.token"):
        with pytest.raises(AuthError) as refused:
            watch.authenticate(token)
        assert refused.value.code == "bad_token"


@pytest.mark.gen_test
async def test_a_moodle_logout_ends_that_sessions_clients_and_its_tokens(watch, moodle, presence, clock, settings):
    ana, ben = moodle.classmates("Ana", "Ben")
    sid = moodle.login(ana)
    token, _ = await watch.bootstrap(sid)
    ana_tabs = [RecordingClient(watch.authenticate(token)) for _ in range(2)]
    ana_elsewhere = RecordingClient(moodle.identity(ana))  # another session of the same user
    bens = RecordingClient(moodle.identity(ben))
    for client in (*ana_tabs, ana_elsewhere, bens):
        await presence.attach(client)
    assert await watch.check_sessions() == 0
    moodle.logout(sid)
    assert await watch.check_sessions() == 2
    assert [tab.ended.code for tab in ana_tabs] == ["session_ended", "session_ended"]
    assert ana_elsewhere.ended is None and bens.ended is None
    with pytest.raises(AuthError) as refused:
        watch.authenticate(token)
    assert refused.value.code == "session_ended"
    clock.now += settings.token_ttl + 1
    for tab in ana_tabs:
        await presence.detach(tab)
    await watch.check_sessions()  # forgets ended sessions older than any token
    assert watch.authenticate(token) == ana_tabs[0].identity


@pytest.mark.gen_test
async def test_no_clients_no_query(watch, moodle):
    before = moodle.lookups
    assert await watch.check_sessions() == 0
    assert moodle.lookups == before
