"""Every Moodle rule on every session store, with sessions written by real PHP.

Stores: the sessions table (PHP's ``sessdata``), the file handler (Moodle 2.6+ rows with
``sess_<sid>`` files, and 2.2-2.5 files without rows), and Moodle 4.5+'s Redis store (records
written by phpredis with each serializer and compressor, on one server and on a real three-node
Redis Cluster). Users are real rows in MariaDB. Each rule has a refused case and an accepted one.
"""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest

from gchat.config import parse_db_url
from gchat.db import Database
from gchat.moodle import Moodle, sid_hash
from gchat.sessions import make_store, parse_moodle_sessions
from tests.support.clients import PollClient, WSClient, bootstrap
from tests.conftest import PREFIX
from tests.session_stores import (GUEST_ID, DatabaseSessions, FileSessions, LegacyFileSessions, RedisSessions,
                                  TlsRedis, disable_mfa, enable_mfa, php, redis_cluster)  # noqa: F401

STORES = ["database", "files", "files-2.2", "redis-php-none", "redis-igbinary-zstd", "redis-cluster"]
REDIS_FORMATS = [(s, c) for s in ("php", "igbinary") for c in ("none", "gzip", "zstd")]


def make_sessions(kind: str, request, php, site, tmp_path):
    if kind == "database":
        return DatabaseSessions(php, site)
    if kind in ("files", "files-2.2"):
        folder = tmp_path / "moodledata-sessions"
        folder.mkdir(exist_ok=True)
        return (FileSessions if kind == "files" else LegacyFileSessions)(php, site, str(folder))
    if kind == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return RedisSessions(php, prefix=f"mdl_sess_{secrets.token_hex(4)}_", seeds=cluster.seeds)
    _, serializer, compressor = kind.split("-")
    return RedisSessions(php, prefix=request.getfixturevalue("redis_prefix"), serializer=serializer,
                         compressor=compressor, url=request.getfixturevalue("redis_url"))


@pytest.fixture(params=STORES)
def store(request, php, site, tmp_path):
    return make_sessions(request.param, request, php, site, tmp_path)


@pytest.fixture
def db(test_db_url):
    database = Database(parse_db_url(test_db_url), prefix=PREFIX, pool_size=4, timeout=5)
    yield database
    database.close()


def moodle_for(store, db: Database, **options) -> Moodle:
    options.setdefault("session_cache_ttl", 0)
    return Moodle(db, wwwroot="http://moodle.test", sessions=make_store(parse_moodle_sessions(store.setting)),
                  **options)


@pytest.fixture
def moodle(store, db, io_loop):
    built = moodle_for(store, db)
    yield built
    io_loop.run_sync(built.close)


@pytest.fixture
def mfa(site):
    """Turns tool_mfa on for one test (config_plugins rows are not reset between tests)."""
    yield lambda **kw: enable_mfa(site, **kw)
    disable_mfa(site)


async def verdict(moodle: Moodle, sid: str, user: int) -> tuple[bool, str]:
    """The bootstrap check and the periodic re-check must agree."""
    check = await moodle.check_session(sid)
    live = await moodle.live_sessions({(user, sid_hash(sid))})
    assert check.ok == bool(live), (check, live)
    if check.ok:
        assert check.user_id == user
    return check.ok, check.reason


# -- the rules, store by store ------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_valid_session_is_accepted_until_moodle_logs_it_out(store, moodle, site):
    uid = site.add_user("Ana")
    sid = store.login(uid)
    assert await verdict(moodle, sid, uid) == (True, "ok")
    store.logout(sid)
    ok, reason = await verdict(moodle, sid, uid)
    assert not ok and reason == "no such session"


@pytest.mark.gen_test(timeout=60)
async def test_a_sid_nobody_has_is_refused(store, moodle, site):
    uid = site.add_user()
    store.login(uid)
    assert await verdict(moodle, secrets.token_hex(13), uid) == (False, "no such session")


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("kind", [k for k in STORES if k != "files-2.2"])  # 2.2-2.5 files: state is always 0
async def test_state_other_than_0_is_refused(kind, request, php, site, tmp_path, db):
    store = make_sessions(kind, request, php, site, tmp_path)
    moodle = moodle_for(store, db)
    try:
        uid = site.add_user()
        sid = store.login(uid)
        assert (await verdict(moodle, sid, uid))[0]
        store.set_state(sid, 1)
        assert await verdict(moodle, sid, uid) == (False, "session state is not 0")
    finally:
        await moodle.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_not_logged_in_session_is_refused(store, moodle, site):
    assert await verdict(moodle, store.login(0), 0) == (False, "not logged in")
    uid = site.add_user()
    assert (await verdict(moodle, store.login(uid), uid))[0]


@pytest.mark.gen_test(timeout=60)
async def test_the_guest_is_refused(store, moodle, site):
    assert await verdict(moodle, store.login(GUEST_ID), GUEST_ID) == (False, "guest")
    uid = site.add_user()
    assert (await verdict(moodle, store.login(uid), uid))[0]


@pytest.mark.gen_test(timeout=60)
async def test_a_session_idle_past_sessiontimeout_is_refused(store, moodle, site):
    uid = site.add_user()
    assert await verdict(moodle, store.login(uid, age=7200 + 100), uid) == (False, "session timed out")
    assert (await verdict(moodle, store.login(uid, age=7200 - 100), uid))[0]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("flag,reason", [(dict(deleted=1), "user deleted"), (dict(suspended=1), "user suspended"),
                                         (dict(confirmed=0), "user not confirmed"),
                                         (dict(auth="nologin"), "user may not log in (nologin)")],
                         ids=["deleted", "suspended", "unconfirmed", "nologin"])
async def test_the_users_row_is_checked_in_the_database(store, moodle, site, flag, reason):
    bad = site.add_user("Bad", **flag)
    assert await verdict(moodle, store.login(bad), bad) == (False, reason)
    good = site.add_user("Good")
    assert (await verdict(moodle, store.login(good), good))[0]
    # A user suspended while logged in: refused at the next check, and by the re-check.
    sid = store.login(good)
    site.execute("UPDATE {p}user SET suspended = 1 WHERE id = %s", (good,))
    assert await verdict(moodle, sid, good) == (False, "user suspended")


@pytest.mark.gen_test(timeout=60)
async def test_a_user_without_a_row_is_refused(store, moodle, site):
    ghost = 999_999
    assert await verdict(moodle, store.login(ghost), ghost) == (False, "no such user")


@pytest.mark.gen_test(timeout=60)
async def test_log_in_as_belongs_to_the_real_user(store, moodle, site):
    admin, student = site.add_user("Admin"), site.add_user("Stu")
    sid = store.login(admin, loginas=student)  # the record's userid is the admin, as Moodle keeps it
    assert await verdict(moodle, sid, admin) == (True, "ok")


@pytest.mark.gen_test(timeout=60)
async def test_the_recheck_reads_many_sessions_at_once(store, moodle, site):
    users = [site.add_user(f"U{i}") for i in range(12)]
    sids = {uid: store.login(uid) for uid in users}
    for uid in users[:6]:  # half of them bootstrapped here; the others through another process
        assert (await moodle.check_session(sids[uid])).ok
    gone = users[3], users[9]
    for uid in gone:
        store.logout(sids[uid])
    pairs = {(uid, sid_hash(sid)) for uid, sid in sids.items()}
    pairs.add((users[0], sid_hash(sids[users[1]])))  # someone else's session
    assert await moodle.live_sessions(pairs, recheck=True) == {(uid, sid_hash(sids[uid])) for uid in users
                                                               if uid not in gone}


# -- costs -----------------------------------------------------------------------------------------------


class Counted:
    """Counts a store's round trips (Redis) next to the database's queries."""

    def __init__(self, moodle: Moodle) -> None:
        self.calls = 0
        store = moodle.sessions
        if hasattr(store, "_call"):
            original = store._call

            async def counted(work):
                self.calls += 1
                return await original(work)

            store._call = counted


@pytest.mark.gen_test(timeout=60)
async def test_a_cached_session_costs_no_lookup_and_the_recheck_one_round_trip(store, db, site, io_loop):
    moodle = moodle_for(store, db, session_cache_ttl=30)
    counted = Counted(moodle)
    try:
        users = [site.add_user(f"U{i}") for i in range(20)]
        sids = {uid: store.login(uid) for uid in users}
        await moodle.config()
        for uid, sid in sids.items():
            assert (await moodle.check_session(sid)).user_id == uid
        queries, calls = db.queries, counted.calls
        for uid, sid in sids.items():  # every further bootstrap of these sessions, within the TTL
            assert (await moodle.check_session(sid)).user_id == uid
        assert (db.queries, counted.calls) == (queries, calls), "a cached session costs no lookup"
        pairs = {(uid, sid_hash(sid)) for uid, sid in sids.items()}
        assert await moodle.live_sessions(pairs, recheck=True) == pairs
        if store.name.startswith("redis"):
            assert (db.queries - queries, counted.calls - calls) == (1, 1)  # one pipeline, one query for the users
        elif store.name == "files-2.2":
            assert db.queries - queries == 2  # no rows (one query says so), then the users of the files
        else:
            assert db.queries - queries == 1
    finally:
        await moodle.close()


# -- a connected chat ends with the Moodle session ------------------------------------------------------------


@pytest.fixture
def settings(settings, store):
    return settings.replace(moodle_sessions=parse_moodle_sessions(store.setting))


@pytest.fixture
def services(services, io_loop):
    yield services
    io_loop.run_sync(services.moodle.close)


@pytest.mark.gen_test(timeout=60)
async def test_a_moodle_logout_ends_a_connected_chat(http_server, base_url, site, services, store):
    ana, ben = site.classmates("Ana", "Ben")
    sid, other_sid = store.login(ana), store.login(ben)
    code, boot = await bootstrap(base_url, sid)
    assert code == 200 and boot["user"]["id"] == ana, boot
    code, other_boot = await bootstrap(base_url, other_sid)
    assert code == 200, other_boot
    ws = await WSClient(base_url, boot["token"]).connect()
    poll = await PollClient(base_url, boot["token"]).connect()
    other = await WSClient(base_url, other_boot["token"]).connect()
    for client in (ws, poll, other):
        await client.wait_type("ready")
    assert await services.router.check_sessions() == 0
    store.logout(sid)
    assert await services.router.check_sessions() == 2
    assert await ws.wait_closed() == 4000 and ws.closed_error["code"] == "session_ended"
    await asyncio.wait_for(poll._loop_task, 5)
    assert poll.status == 401 and poll.error["code"] == "session_ended"
    assert (await other.command("ping"))["ok"]
    code, _ = await bootstrap(base_url, sid)
    assert code == 401
    await poll.close()
    await other.close()


# -- multi-factor authentication -----------------------------------------------------------------------------


@pytest.fixture(params=STORES[:3] + [f"redis-{s}-{c}" for s, c in REDIS_FORMATS] + ["redis-cluster"])
def any_store(request, php, site, tmp_path):
    return make_sessions(request.param, request, php, site, tmp_path)


@pytest.mark.gen_test(timeout=60)
async def test_mfa_refuses_a_password_only_session_until_it_passes(any_store, db, site, mfa):
    mfa()
    moodle = moodle_for(any_store, db)
    try:
        uid = site.add_user()
        sid = any_store.login(uid)  # the password is in, the second factor not yet
        check = await moodle.check_session(sid)
        assert not check.ok and check.reason == "multi-factor authentication not passed yet"
        any_store.page(sid)  # another page, still without the factor
        assert not (await moodle.check_session(sid)).ok
        any_store.page(sid, pass_mfa=True)  # tool_mfa: $SESSION->tool_mfa_authenticated = true
        check = await moodle.check_session(sid)
        assert check.ok and check.user_id == uid, check.reason
        # Passed in one session says nothing of the user's other sessions.
        other = any_store.login(uid)
        assert not (await moodle.check_session(other)).ok
    finally:
        await moodle.close()


@pytest.mark.gen_test(timeout=60)
async def test_mfa_passed_at_login_and_during_log_in_as(store, db, site, mfa):
    mfa()
    moodle = moodle_for(store, db)
    try:
        uid = site.add_user()
        assert (await moodle.check_session(store.login(uid, mfa=True))).ok
        assert not (await moodle.check_session(store.login(uid, mfa=False))).ok
        admin, student = site.add_user("Admin"), site.add_user("Stu")
        # "Log in as": a fresh $SESSION; the admin's own, which passed MFA, is kept as REALSESSION.
        assert (await moodle.check_session(store.login(admin, loginas=student, mfa=True))).user_id == admin
        assert not (await moodle.check_session(store.login(admin, loginas=student))).ok
    finally:
        await moodle.close()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("switches", [dict(tool="0"), dict(factors={}), dict(factors={"factor_totp": "0"}),
                                      dict(tool="", factors={"factor_email": "1"})],
                         ids=["tool off", "no factor", "factor off", "tool unset"])
async def test_mfa_that_is_not_ready_does_not_apply(store, db, site, mfa, switches):
    """tool_mfa's is_ready(): the plugin enabled and at least one factor enabled."""
    mfa(**switches)
    moodle = moodle_for(store, db)
    try:
        uid = site.add_user()
        assert (await moodle.check_session(store.login(uid))).ok
        assert not (await moodle.config()).mfa_enabled
    finally:
        await moodle.close()


@pytest.mark.gen_test(timeout=60)
async def test_mfa_fails_closed_when_the_session_data_cannot_be_read(php, site, db, mfa, tmp_path):
    mfa()
    folder = str(tmp_path)
    # Memcached (or the file handler read as "database"): rows without sessdata.
    database = DatabaseSessions(php, site)
    moodle = moodle_for(database, db)
    uid = site.add_user()
    sid = site.login(uid)
    check = await moodle.check_session(sid)
    assert not check.ok and "cannot read this session's data" in check.reason
    assert "memcached" in check.reason
    # The file handler with the file gone (or unreadable): refused, not waved through.
    files = FileSessions(php, site, folder)
    moodle = moodle_for(files, db)
    sid = files.login(uid, mfa=True)
    assert (await moodle.check_session(sid)).ok
    os.remove(os.path.join(folder, "sess_" + sid))
    check = await moodle.check_session(sid)
    assert not check.ok and "cannot read sess_" in check.reason


# -- Redis down --------------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_redis_store_that_stops_answering_is_unavailable_not_a_logout(php, site, db, private_redis):
    from gchat.errors import Unavailable

    store = RedisSessions(php, prefix="mdl_sess_", url=private_redis.url)
    moodle = moodle_for(store, db, session_cache_ttl=0)
    try:
        uid = site.add_user()
        sid = store.login(uid)
        assert (await moodle.check_session(sid)).ok
        private_redis.stop()
        with pytest.raises(Unavailable):
            await moodle.check_session(sid)  # bootstrap answers 503 "unavailable", not 401
        with pytest.raises(Unavailable):
            await moodle.live_sessions({(uid, sid_hash(sid))})  # the re-check ends nobody's chat
    finally:
        await moodle.close()


# -- TLS and a password ----------------------------------------------------------------------------------------------


@pytest.fixture
def tls_redis():
    server = TlsRedis()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.mark.gen_test(timeout=60)
async def test_rediss_with_a_password(php, site, db, tls_redis, mfa):
    mfa()
    store = RedisSessions(php, prefix="mdl_sess_", compressor="gzip", url=f"redis://127.0.0.1:{tls_redis.port}/0")
    store.conf.update(password=tls_redis.password, tls={"cafile": tls_redis.ca})
    base = f"rediss://:{tls_redis.password}@127.0.0.1:{tls_redis.port}/0?prefix=mdl_sess_&compressor=gzip"
    store.setting = base + f"&ssl_ca_certs={tls_redis.ca}"
    moodle = moodle_for(store, db)
    try:
        uid = site.add_user()
        sid = store.login(uid, mfa=True)
        assert (await moodle.check_session(sid)).user_id == uid
        store.logout(sid)
        assert not (await moodle.check_session(sid)).ok
    finally:
        await moodle.close()
    from gchat.errors import Unavailable

    for wrong in (base.replace(tls_redis.password, "wrong"), base.replace("rediss://", "redis://") + "&ssl_ca_certs=x"):
        store.setting = wrong
        moodle = moodle_for(store, db)
        try:
            with pytest.raises(Unavailable):
                await moodle.check_session(store.login(uid, mfa=True))
        finally:
            await moodle.close()
