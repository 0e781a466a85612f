"""Sessions alone: cookie → token, token checks, and the re-check that ends the chat of a
user who logged out of Moodle (remembered for token_ttl, with a clock the test moves)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gchat.auth import Identity, TokenSigner
from gchat.errors import AuthError, Unavailable
from gchat.moodle import SessionCheck, sid_hash
from gchat.presence import Presence
from gchat.session_watch import WATCH_AFTER_USE_SECS, SessionWatch
from tests.support.fakes import ManualBackground, RecordingClient, cancel_pending_tasks


class Clock:
    now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def presence(settings, moodle, broker, io_loop):
    async def publish(user_ids, event):
        pass

    presence = Presence(settings, broker=broker, moodle=moodle, publish=publish, background=ManualBackground())
    yield presence
    io_loop.run_sync(cancel_pending_tasks)


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


# -- admission: no command of an ended session, no query while the re-check keeps it fresh ---------

@pytest.fixture
def settings(settings):
    return settings.replace(session_check_interval=2.0)  # the default: fresh for 2 x 1.1 + 1.5 = 3.7 s


@pytest.mark.gen_test
async def test_a_fresh_session_is_admitted_without_a_lookup(watch, moodle, clock):
    (ana,) = moodle.classmates("Ana")
    token, _ = await watch.bootstrap(moodle.login(ana))
    identity = watch.authenticate(token)
    before = moodle.lookups
    clock.now += watch.fresh_secs - 0.1
    for _ in range(20):
        await watch.admit(identity)
    assert moodle.lookups == before


@pytest.mark.gen_test
async def test_a_stale_session_is_looked_up_once_then_fresh_again(watch, moodle, clock):
    (ana,) = moodle.classmates("Ana")
    token, _ = await watch.bootstrap(moodle.login(ana))
    identity = watch.authenticate(token)
    clock.now += watch.fresh_secs + 0.1
    before = moodle.lookups
    await asyncio.gather(*(watch.admit(identity) for _ in range(10)))  # concurrent: one lookup shared
    assert moodle.lookups == before + 1
    await watch.admit(identity)
    assert moodle.lookups == before + 1


@pytest.mark.gen_test
async def test_a_stale_session_that_ended_is_refused_and_its_clients_end(watch, moodle, presence, clock):
    (ana,) = moodle.classmates("Ana")
    sid = moodle.login(ana)
    token, _ = await watch.bootstrap(sid)
    identity = watch.authenticate(token)
    tab = RecordingClient(identity)
    await presence.attach(tab)
    moodle.logout(sid)
    await watch.admit(identity)  # still fresh: the bound, not every command, pays for a lookup
    clock.now += watch.fresh_secs + 0.1
    with pytest.raises(AuthError) as refused:
        await watch.admit(identity)
    assert refused.value.code == "session_ended" and tab.ended.code == "session_ended"
    with pytest.raises(AuthError):
        watch.authenticate(token)


@pytest.mark.gen_test
async def test_the_recheck_keeps_sessions_fresh_with_one_lookup_for_all(watch, moodle, presence, clock):
    people = moodle.classmates("Ana", "Ben", "Cat")
    identities = []
    for uid in people:
        token, _ = await watch.bootstrap(moodle.login(uid))
        identities.append(watch.authenticate(token))
    await presence.attach(RecordingClient(identities[0]))  # Ana has a tab here; Ben and Cat only sent
    for _ in range(5):
        clock.now += 2.2
        before = moodle.lookups
        await watch.check_sessions()
        assert moodle.lookups == before + 1
        for identity in identities:
            await watch.admit(identity)
        assert moodle.lookups == before + 1


@pytest.mark.gen_test
async def test_a_session_that_only_sends_here_is_rechecked_too(watch, moodle, clock):
    """A long-poll tab polls another process; its sends come here: the re-check watches them."""
    (ana,) = moodle.classmates("Ana")
    sid = moodle.login(ana)
    identity = Identity(ana, sid_hash(sid))  # a token from another process's bootstrap
    await watch.admit(identity)
    moodle.logout(sid)
    assert (ana, identity.sid_hash) in watch.watched()
    await watch.check_sessions()
    with pytest.raises(AuthError) as refused:
        await watch.admit(identity)
    assert refused.value.code == "session_ended"
    clock.now += WATCH_AFTER_USE_SECS + 1
    assert not watch.watched()


@pytest.mark.gen_test
async def test_unused_sessions_leave_the_watch(watch, moodle, clock):
    (ana,) = moodle.classmates("Ana")
    sid = moodle.login(ana)
    await watch.bootstrap(sid)
    assert watch.watched() == {(ana, sid_hash(sid))}
    clock.now += WATCH_AFTER_USE_SECS + 1
    before = moodle.lookups
    assert await watch.check_sessions() == 0 and not watch.watched()
    assert moodle.lookups == before


@pytest.mark.gen_test
async def test_bootstrap_gives_no_token_for_a_session_found_ended(watch, moodle, presence):
    (ana,) = moodle.classmates("Ana")
    sid = moodle.login(ana)
    token, _ = await watch.bootstrap(sid)
    await presence.attach(RecordingClient(watch.authenticate(token)))
    moodle.logout(sid)
    assert await watch.check_sessions() == 1

    async def cached(_sid):  # a verdict cached before the logout says "live"
        return SessionCheck(ana, "ok")

    moodle.check_session = cached
    with pytest.raises(AuthError) as refused:
        await watch.bootstrap(sid)
    assert refused.value.code == "not_logged_in"


@pytest.mark.gen_test
async def test_a_session_found_ended_by_a_hiccup_comes_back_when_the_store_says_so(watch, moodle, presence):
    (ana,) = moodle.classmates("Ana")
    sid = moodle.login(ana)
    token, _ = await watch.bootstrap(sid)
    await presence.attach(RecordingClient(watch.authenticate(token)))
    moodle.logout(sid)  # the store misses the record for one round
    assert await watch.check_sessions() == 1
    moodle._sessions[sid] = ana
    token, _ = await watch.bootstrap(sid)  # looked up now: live
    assert watch.authenticate(token).user_id == ana


@pytest.mark.gen_test
async def test_bootstrap_looks_again_when_the_cached_verdict_is_older_than_the_bound(watch, moodle, clock):
    (ana,) = moodle.classmates("Ana")
    sid = moodle.login(ana)
    stale = SessionCheck(ana, "ok", checked_at=time.monotonic() - 8)  # session_cache_ttl is 10 s

    async def cached(_sid):
        return stale

    moodle.check_session = cached
    token, _ = await watch.bootstrap(sid)  # looked up again: still live
    moodle.logout(sid)
    clock.now += watch.fresh_secs + 0.1  # that lookup is stale too now
    with pytest.raises(AuthError) as refused:
        await watch.bootstrap(sid)
    assert refused.value.code == "not_logged_in"
    with pytest.raises(AuthError) as ended:
        watch.authenticate(token)
    assert ended.value.code == "session_ended"


@pytest.mark.gen_test
async def test_admission_fails_closed_while_sessions_cannot_be_looked_up(watch, moodle, clock):
    (ana,) = moodle.classmates("Ana")
    token, _ = await watch.bootstrap(moodle.login(ana))
    identity = watch.authenticate(token)
    clock.now += watch.fresh_secs + 0.1
    moodle.down = True
    with pytest.raises(Unavailable):
        await asyncio.gather(watch.admit(identity), watch.admit(identity))
    moodle.down = False
    await watch.admit(identity)
