"""Every Moodle rule gchat applies, against a real MariaDB and a real PostgreSQL, on each Moodle
schema: the hand-made 2.2 tables and the tables Moodle's own install.xml of 2.8, 4.4 and 5.2
creates (tests/xmldb.py; see ``SCHEMAS``).

Each rule has a case that is refused and a case that is accepted, so that dropping the rule (or
getting it backwards) fails a test. Rows are written with tests/moodle_site.py the way Moodle
writes them; gchat itself only reads.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gchat.config import parse_db_url
from gchat.db import Database
from gchat.moodle import Moodle, sid_hash
from tests.conftest import ALL_SCHEMAS, PREFIX, version_key
from tests.moodle_site import GUEST_ID, MoodleSite

ENGINES = ("mariadb", "postgresql")
SCHEMAS = ALL_SCHEMAS
WWWROOT = "http://moodle.test"
FOREVER = 2147483647  # ENROL_MAX_TIMESTAMP, Moodle's "no end"
HOUR = 3600


@pytest.fixture(scope="module")
def db(test_db_url):
    """One pool per schema and engine (its connections are the costly part); each test makes
    its own Moodle over it, with empty caches, and counts queries relative to its start."""
    database = Database(parse_db_url(test_db_url), prefix=PREFIX, pool_size=4, timeout=5)
    yield database
    database.close()


def make_moodle(db: Database, **options) -> Moodle:
    # A trailing slash, as admins often type it: avatar URLs must not get a double slash.
    return Moodle(db, wwwroot=WWWROOT + "/", **options)


@pytest.fixture
def moodle(db, site):
    return make_moodle(db, session_cache_ttl=10, cache_ttl=30)


async def accepted(moodle: Moodle, sid: str, user: int) -> None:
    check = await moodle.check_session(sid)
    assert check.ok, check.reason
    assert check.user_id == user


async def refused(moodle: Moodle, sid) -> str:
    check = await moodle.check_session(sid)
    assert not check.ok, f"session {sid!r} was accepted for user {check.user_id}"
    assert check.user_id is None
    return check.reason


# -- sessions ------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_valid_session_is_accepted(site, moodle):
    uid = site.add_user("Ana", "Silva")
    await accepted(moodle, site.login(uid), uid)


@pytest.mark.gen_test
async def test_session_without_a_row_is_refused_and_the_refusal_is_not_cached(site, moodle):
    uid = site.add_user()
    sid = "abcdef0123456789abcdef0123"
    await refused(moodle, sid)
    site.login(uid, sid=sid)  # the user logs in: the same sid now names a row
    await accepted(moodle, sid, uid)


@pytest.mark.gen_test
@pytest.mark.parametrize("state", [1, 9])
async def test_session_state_other_than_0_is_refused(site, moodle, state):
    uid = site.add_user()
    await refused(moodle, site.login(uid, state=state))
    await accepted(moodle, site.login(uid, state=0), uid)


@pytest.mark.gen_test
async def test_userid_0_is_refused_even_when_a_user_0_row_exists(site, moodle):
    # A visitor who is not logged in has userid 0. Give user 0 a perfectly valid row, so that only
    # the "userid > 0" rule can refuse the session.
    if site.engine == "mariadb":  # MySQL would take an id of 0 to mean "the next id"
        mode = site.rows("SELECT @@SESSION.sql_mode")[0][0]
        site.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO')")
    site.execute("INSERT INTO {p}user (id, auth, confirmed, mnethostid, username, firstname, lastname) "
                 "VALUES (0, 'manual', 1, 1, 'nobody', 'No', 'Body')")
    if site.engine == "mariadb":
        site.execute("SET SESSION sql_mode = %s", (mode,))  # the site's connection serves other tests
    assert site.rows("SELECT id FROM {p}user WHERE username = 'nobody'") == [(0,)]
    await refused(moodle, site.login(0))
    uid = site.add_user()
    await accepted(moodle, site.login(uid), uid)


@pytest.mark.gen_test
async def test_guest_session_is_refused(site, moodle):
    # The guest user row is confirmed, manual and not deleted: only the siteguest rule refuses it.
    await refused(moodle, site.login(GUEST_ID))


@pytest.mark.gen_test
async def test_guest_is_whoever_config_siteguest_names(site, db):
    uid = site.add_user()
    site.set_config("siteguest", str(uid))
    moodle = make_moodle(db)
    await refused(moodle, site.login(uid))
    await accepted(moodle, site.login(GUEST_ID), GUEST_ID)  # user 1 is an ordinary user on this site


@pytest.mark.gen_test
async def test_default_timeout_7200_from_config(site, moodle):
    uid = site.add_user()
    await accepted(moodle, site.login(uid, age=7200 - 100), uid)
    await refused(moodle, site.login(uid, age=7200 + 100))


@pytest.mark.gen_test
async def test_timeout_follows_config_sessiontimeout(site, db):
    site.set_config("sessiontimeout", "600")
    moodle = make_moodle(db)
    uid = site.add_user()
    await accepted(moodle, site.login(uid, age=500), uid)
    await refused(moodle, site.login(uid, age=700))


@pytest.mark.gen_test
async def test_session_timeout_setting_overrides_config(site, db):
    uid = site.add_user()
    shorter = make_moodle(db, session_timeout=300)  # config says 7200
    await accepted(shorter, site.login(uid, age=200), uid)
    await refused(shorter, site.login(uid, age=400))
    site.set_config("sessiontimeout", "600")
    longer = make_moodle(db, session_timeout=3600)
    await accepted(longer, site.login(uid, age=1000), uid)
    await refused(longer, site.login(uid, age=3700))


@pytest.mark.gen_test
@pytest.mark.parametrize("account", [dict(deleted=1), dict(suspended=1), dict(confirmed=0), dict(auth="nologin")],
                         ids=["deleted", "suspended", "unconfirmed", "nologin"])
async def test_session_of_a_user_who_may_not_log_in_is_refused(site, moodle, account):
    uid = site.add_user(**account)
    await refused(moodle, site.login(uid))


@pytest.mark.gen_test
@pytest.mark.parametrize("auth", ["manual", "email", "ldap", "cas", "nologinx"])
async def test_other_auth_plugins_are_accepted(site, moodle, auth):
    uid = site.add_user(auth=auth)
    await accepted(moodle, site.login(uid), uid)


@pytest.mark.gen_test
async def test_session_of_a_user_without_a_row_is_refused(site, moodle):
    await refused(moodle, site.login(9999))


MALFORMED = {
    "empty": "",
    "too long": "a" * 129,
    "sql": "'; DROP TABLE mdl_sessions; --",
    "non-ascii": "sessão1234",
    "space": "abc def",
    "semicolon": "abc;def",
    "nul": "abc\x00def",
    "newline": "abcdef\n",
}


@pytest.mark.gen_test
@pytest.mark.parametrize("sid", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_sid_is_refused_without_a_query(site, moodle, db, sid):
    uid = site.add_user()
    if len(sid) <= 128 and "\x00" not in sid:
        # A row with exactly this sid and a valid user: only the shape check can refuse it.
        site.login(uid, sid=sid)
    before = db.queries
    await refused(moodle, sid)
    assert db.queries == before, "a malformed sid must be refused before any query"
    assert site.rows("SELECT COUNT(*) FROM {p}sessions")[0][0] >= 0  # the table is still there


@pytest.mark.gen_test
@pytest.mark.parametrize("sid", [None, 12345, b"abc"])
async def test_sid_that_is_not_a_string_is_refused(moodle, sid):
    await refused(moodle, sid)


@pytest.mark.gen_test
@pytest.mark.parametrize("sid", ["x", "a" * 128, "Ab09,-ZZ", "0123456789abcdef0123456789"],
                         ids=["one char", "128 chars", "comma and dash", "php"])
async def test_well_formed_sids_are_accepted(site, moodle, sid):
    uid = site.add_user()
    site.login(uid, sid=sid)
    await accepted(moodle, sid, uid)


# -- the session cache -----------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_logged_out_session_is_served_within_the_cache_ttl_but_not_beyond(site, db):
    ttl = 0.5
    moodle = make_moodle(db, session_cache_ttl=ttl)
    uid = site.add_user()
    sid = site.login(uid)
    await accepted(moodle, sid, uid)
    before = db.queries
    await accepted(moodle, sid, uid)
    assert db.queries == before, "a cached session costs no query"
    site.logout(sid)
    await accepted(moodle, sid, uid)  # still cached: at most ttl seconds stale
    await asyncio.sleep(ttl)
    await refused(moodle, sid)


@pytest.mark.gen_test
async def test_session_cache_ttl_0_checks_every_time(site, db):
    moodle = make_moodle(db, session_cache_ttl=0)
    uid = site.add_user()
    sid = site.login(uid)
    await accepted(moodle, sid, uid)
    site.logout(sid)
    await refused(moodle, sid)


@pytest.mark.gen_test
async def test_forget_session_drops_the_cached_answer(site, moodle):
    uid = site.add_user()
    sid = site.login(uid)
    await accepted(moodle, sid, uid)
    site.logout(sid)
    moodle.forget_session(sid)
    await refused(moodle, sid)


# -- the batched re-check ----------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("recheck", [False, True], ids=["lookup", "recheck"])
async def test_live_sessions_keeps_only_valid_pairs_in_one_query(site, moodle, db, recheck):
    ana, ben, cat, dan, eve, fay = (site.add_user(name) for name in ("Ana", "Ben", "Cat", "Dan", "Eve", "Fay"))
    s_ana, s_ana2 = site.login(ana), site.login(ana)
    s_ben = site.login(ben)
    site.logout(s_ben)
    s_cat = site.login(cat, state=1)
    s_dan = site.login(dan, age=7300)
    s_eve = site.login(eve)
    site.execute("UPDATE {p}user SET suspended = 1 WHERE id = %s", (eve,))
    s_fay = site.login(fay)
    pairs = {
        (ana, sid_hash(s_ana)), (ana, sid_hash(s_ana2)),  # two valid tabs
        (ben, sid_hash(s_ben)),                            # logged out
        (cat, sid_hash(s_cat)),                            # state 1
        (dan, sid_hash(s_dan)),                            # timed out
        (eve, sid_hash(s_eve)),                            # suspended since
        (ana, sid_hash(s_fay)),                            # someone else's session
        (fay, sid_hash("no-such-session")),
    }
    await moodle.config()  # loaded once at start-up in production
    before = db.queries
    live = await moodle.live_sessions(pairs, recheck=recheck)
    assert db.queries - before == 1
    assert live == {(ana, sid_hash(s_ana)), (ana, sid_hash(s_ana2))}
    if recheck:  # the digest agrees: the next re-check reads no row
        before = db.queries
        assert await moodle.live_sessions(pairs, recheck=True) == live
        assert db.queries - before == 1


@pytest.mark.gen_test
@pytest.mark.parametrize("recheck", [False, True], ids=["lookup", "recheck"])
async def test_live_sessions_is_one_query_for_many_users(site, moodle, db, recheck):
    users = [site.add_user(f"U{i}") for i in range(60)]
    pairs = {(uid, sid_hash(site.login(uid))) for uid in users}
    await moodle.config()
    before = db.queries
    assert await moodle.live_sessions(pairs, recheck=recheck) == pairs
    assert db.queries - before == 1
    before = db.queries
    assert await moodle.live_sessions(set(), recheck=recheck) == set()
    assert db.queries == before


@pytest.mark.gen_test
async def test_live_sessions_drops_the_cached_sessions_of_users_it_finds_dead(site, moodle):
    uid = site.add_user()
    sid = site.login(uid)
    await accepted(moodle, sid, uid)  # now cached for 10 s
    site.logout(sid)
    assert await moodle.live_sessions({(uid, sid_hash(sid))}) == set()
    await refused(moodle, sid)


@pytest.mark.gen_test
async def test_an_unchanged_recheck_reads_a_digest_not_the_sessions(site, moodle, db, monkeypatch):
    users = [site.add_user(f"U{i}") for i in range(70)]  # more users than buckets
    pairs = {(uid, sid_hash(site.login(uid))) for uid in users}
    await moodle.config()
    assert await moodle.live_sessions(pairs, recheck=True) == pairs  # the first: the rows themselves, one query
    reads = []
    lookup_many = moodle.sessions.lookup_many

    async def counted(db, wanted, known):
        reads.append({uid for uid, _ in wanted})
        return await lookup_many(db, wanted, known)

    monkeypatch.setattr(moodle.sessions, "lookup_many", counted)
    before = db.queries
    assert await moodle.live_sessions(pairs, recheck=True) == pairs
    assert (db.queries - before, reads) == (1, []), "nothing changed: one digest query, no session read"
    # A lookup of one session meanwhile (a bootstrap, a command) leaves the re-check's baselines be.
    assert len(await moodle.live_sessions({next(iter(pairs))})) == 1
    reads.clear()
    before = db.queries
    assert await moodle.live_sessions(pairs, recheck=True) == pairs
    assert (db.queries - before, reads) == (1, [])
    # Moodle starts a second session for one user (another device): that user's bucket is read again.
    site.login(users[5])
    assert await moodle.live_sessions(pairs, recheck=True) == pairs
    assert len(reads) == 1 and users[5] in reads[0] and len(reads[0]) < len(users) / 10


async def changed_once(moodle, pairs, change) -> set:
    """live_sessions after a baseline and one change made by Moodle."""
    await moodle.config()
    assert await moodle.live_sessions(pairs, recheck=True) == pairs
    assert await moodle.live_sessions(pairs, recheck=True) == pairs  # from the digest
    change()
    return await moodle.live_sessions(pairs, recheck=True)


@pytest.mark.gen_test
@pytest.mark.parametrize("change", ["logout", "logout and login", "suspended", "deleted", "unconfirmed", "nologin",
                                    "state", "timed out", "logged in again with the same sid"])
async def test_the_digest_sees_every_way_a_session_ends(site, moodle, change):
    ana, ben = site.add_user("Ana"), site.add_user("Ben")
    s_ana, s_ben = site.login(ana), site.login(ben)
    pairs = {(ana, sid_hash(s_ana)), (ben, sid_hash(s_ben))}
    changes = {
        "logout": lambda: site.logout(s_ana),
        "logout and login": lambda: (site.logout(s_ana), site.login(ana)),  # as many rows as before
        "suspended": lambda: site.execute("UPDATE {p}user SET suspended = 1 WHERE id = %s", (ana,)),
        "deleted": lambda: site.execute("UPDATE {p}user SET deleted = 1 WHERE id = %s", (ana,)),
        "unconfirmed": lambda: site.execute("UPDATE {p}user SET confirmed = 0 WHERE id = %s", (ana,)),
        "nologin": lambda: site.execute("UPDATE {p}user SET auth = 'nologin' WHERE id = %s", (ana,)),
        "state": lambda: site.execute("UPDATE {p}sessions SET state = 1 WHERE sid = %s", (s_ana,)),
        "timed out": lambda: site.execute("UPDATE {p}sessions SET timemodified = timemodified - 7300 WHERE sid = %s",
                                          (s_ana,)),
        # The row gone and a new one with the same sid (a new id): the user is the same, still valid.
        "logged in again with the same sid": lambda: (site.logout(s_ana), site.login(ana, sid=s_ana)),
    }
    live = await changed_once(moodle, pairs, changes[change])
    if change == "logged in again with the same sid":
        assert live == pairs
    else:
        assert live == {(ben, sid_hash(s_ben))}


# -- profiles ------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_profile_has_display_name_and_avatar_url(site, moodle, db):
    ana = site.add_user("Ana", "Silva")
    chloe = site.add_user("Chloé", "Müller")
    found = await moodle.users([ana, chloe, 9999])
    assert set(found) == {ana, chloe}
    assert found[ana].name == "Ana Silva"
    assert found[chloe].name == "Chloé Müller"
    assert found[ana].picture == f"{WWWROOT}/user/pix.php/{ana}/f2.jpg"
    assert found[chloe].as_dict() == {"id": chloe, "name": "Chloé Müller",
                                      "picture": f"{WWWROOT}/user/pix.php/{chloe}/f2.jpg"}
    assert await moodle.user(9999) is None
    before = db.queries
    assert (await moodle.user(ana)).name == "Ana Silva"
    assert db.queries == before, "profiles are cached"


# -- course-mates ------------------------------------------------------------------------------------


def add_instance(site: MoodleSite, course: int, status: int = 0, plugin: str = "self") -> int:
    return site.execute("INSERT INTO {p}enrol (enrol, status, courseid) VALUES (%s, %s, %s)", (plugin, status, course))


def enrol_via(site: MoodleSite, user: int, enrolid: int, *, status: int = 0, timestart: int = 0,
              timeend: int = 0) -> None:
    site.execute("INSERT INTO {p}user_enrolments (status, enrolid, userid, timestart, timeend) "
                 "VALUES (%s, %s, %s, %s, %s)", (status, enrolid, user, timestart, timeend))


def shared_course(site: MoodleSite, *, visible: int = 1, course: int | None = None,
                  me: dict | None = None, mate: dict | None = None,
                  me_instance: int = 0, mate_instance: int = 0) -> tuple[int, int]:
    """Two users in one course, each through an enrolment instance of their own, so that every
    condition can be set on one side only."""
    me_id, mate_id = site.add_user("Me", "Myself"), site.add_user("Mate", "Other")
    if course is None:
        course = site.add_course("Course", visible=visible)
    enrol_via(site, me_id, add_instance(site, course, me_instance, "manual"), **(me or {}))
    enrol_via(site, mate_id, add_instance(site, course, mate_instance, "self"), **(mate or {}))
    return me_id, mate_id


async def assert_mates(moodle: Moodle, a: int, b: int, expected: bool) -> None:
    moodle.forget_user(a)
    moodle.forget_user(b)
    assert (b in await moodle.coursemates(a)) is expected
    assert (a in await moodle.coursemates(b)) is expected
    assert await moodle.can_chat(a, b) is expected
    assert await moodle.can_chat(b, a) is expected


@pytest.mark.gen_test
async def test_shared_visible_course_makes_course_mates(site, moodle):
    me, mate = shared_course(site)
    loner = site.add_user("Lone", "Wolf")
    site.enrol(loner, site.add_course("Elsewhere"))
    assert await moodle.coursemates(me) == frozenset({mate})
    assert await moodle.coursemates(mate) == frozenset({me})
    assert await moodle.coursemates(loner) == frozenset()
    assert not await moodle.can_chat(me, loner)


@pytest.mark.gen_test
async def test_hidden_course_does_not_make_mates(site, moodle):
    me, mate = shared_course(site, visible=0)
    await assert_mates(moodle, me, mate, False)
    site.execute("UPDATE {p}course SET visible = 1 WHERE id <> 1")
    await assert_mates(moodle, me, mate, True)


@pytest.mark.gen_test
async def test_front_page_does_not_make_mates(site, moodle):
    me, mate = shared_course(site, course=1)
    await assert_mates(moodle, me, mate, False)


SIDE_RULES = {
    "suspended enrolment": dict(enrol=dict(status=1)),
    "disabled instance": dict(instance=1),
    "starts in the future": dict(enrol=dict(timestart=+HOUR)),
    "ended in the past": dict(enrol=dict(timeend=-HOUR)),
}
SIDE_OK = {
    "started in the past": dict(enrol=dict(timestart=-HOUR)),
    "timestart 0": dict(enrol=dict(timestart=0)),
    "timeend 0": dict(enrol=dict(timeend=0)),
    "timeend 2147483647": dict(enrol=dict(timeend=FOREVER)),
    "ends in the future": dict(enrol=dict(timeend=+HOUR)),
}


def _side(rule: dict, side: str) -> dict:
    now = int(time.time())
    enrol = {}
    for key, value in rule.get("enrol", {}).items():
        # Relative times are offsets from now; 0 and FOREVER are Moodle's literal values.
        enrol[key] = now + value if key.startswith("time") and value not in (0, FOREVER) else value
    options: dict = {side: enrol}
    if "instance" in rule:
        options[side + "_instance"] = rule["instance"]
    return options


@pytest.mark.gen_test
@pytest.mark.parametrize("side", ["me", "mate"])
@pytest.mark.parametrize("rule", list(SIDE_RULES), ids=list(SIDE_RULES))
async def test_inactive_enrolment_on_either_side_does_not_make_mates(site, moodle, rule, side):
    me, mate = shared_course(site, **_side(SIDE_RULES[rule], side))
    await assert_mates(moodle, me, mate, False)


@pytest.mark.gen_test
@pytest.mark.parametrize("side", ["me", "mate"])
@pytest.mark.parametrize("rule", list(SIDE_OK), ids=list(SIDE_OK))
async def test_active_enrolment_time_windows_make_mates(site, moodle, rule, side):
    me, mate = shared_course(site, **_side(SIDE_OK[rule], side))
    await assert_mates(moodle, me, mate, True)


@pytest.mark.gen_test
async def test_an_inactive_enrolment_does_not_hide_an_active_one_in_another_course(site, moodle):
    me, mate = shared_course(site, visible=0)
    other = site.add_course("Visible")
    site.enrol(me, other)
    site.enrol(mate, other)
    await assert_mates(moodle, me, mate, True)


@pytest.mark.gen_test
@pytest.mark.parametrize("account", [dict(deleted=1), dict(suspended=1), dict(confirmed=0), dict(auth="nologin")],
                         ids=["deleted", "suspended", "unconfirmed", "nologin"])
async def test_mate_who_may_not_log_in_is_not_a_mate(site, moodle, account):
    me, mate = shared_course(site)
    other = site.add_user("Other", "Account", **account)
    site.enrol(other, site.rows("SELECT courseid FROM {p}enrol ORDER BY id DESC LIMIT 1")[0][0])
    assert await moodle.coursemates(me) == frozenset({mate})
    assert not await moodle.can_chat(me, other)


@pytest.mark.gen_test
async def test_guest_is_never_a_mate(site, db):
    me, mate = shared_course(site)
    course = site.rows("SELECT courseid FROM {p}enrol ORDER BY id DESC LIMIT 1")[0][0]
    site.enrol(GUEST_ID, course)
    moodle = make_moodle(db)
    assert await moodle.coursemates(me) == frozenset({mate})
    # On a site whose guest is another account, user 1 is an ordinary course-mate.
    site.set_config("siteguest", "999")
    moodle = make_moodle(db)
    assert await moodle.coursemates(me) == frozenset({mate, GUEST_ID})


@pytest.mark.gen_test
async def test_oneself_is_not_a_mate(site, moodle):
    me, mate = shared_course(site)
    # Enrolled twice in the course (two instances) and in a second shared course.
    enrol_via(site, me, add_instance(site, site.rows("SELECT courseid FROM {p}enrol ORDER BY id DESC LIMIT 1")[0][0]))
    assert me not in await moodle.coursemates(me)
    assert await moodle.coursemates(me) == frozenset({mate})
    assert not await moodle.can_chat(me, me)


# -- blocks: message_contacts.blocked up to Moodle 3.5, message_users_blocked from 3.6 (MDL-63211) --


@pytest.mark.gen_test
async def test_blocks_are_read_where_the_schema_keeps_them(moodle, schema):
    expected = "users_blocked" if version_key(schema) >= (3, 6) else "contacts"
    assert await moodle.block_mode() == expected


@pytest.mark.gen_test
@pytest.mark.parametrize("direction", ["me blocks mate", "mate blocks me"])
async def test_a_block_in_either_direction_separates_mates(site, moodle, direction):
    me, mate = shared_course(site)
    bystander = site.add_user("By", "Stander")
    site.enrol(bystander, site.rows("SELECT courseid FROM {p}enrol ORDER BY id DESC LIMIT 1")[0][0])
    await assert_mates(moodle, me, mate, True)
    if direction == "me blocks mate":
        site.block(me, mate)  # message_contacts.blocked = 1, or a message_users_blocked row (3.6+)
    else:
        site.block(mate, me)
    await assert_mates(moodle, me, mate, False)
    assert await moodle.coursemates(me) == frozenset({bystander})
    assert await moodle.coursemates(bystander) == frozenset({me, mate})


@pytest.mark.gen_test
@pytest.mark.moodle_schemas(before="3.6")
async def test_moodle2_contact_that_is_not_blocked_stays_a_mate(site, moodle):
    me, mate = shared_course(site)
    site.execute("INSERT INTO {p}message_contacts (userid, contactid, blocked) VALUES (%s, %s, 0)", (me, mate))
    site.execute("INSERT INTO {p}message_contacts (userid, contactid, blocked) VALUES (%s, %s, 0)", (mate, me))
    await assert_mates(moodle, me, mate, True)
    site.execute("UPDATE {p}message_contacts SET blocked = 1 WHERE userid = %s", (mate,))
    await assert_mates(moodle, me, mate, False)


@pytest.mark.gen_test
@pytest.mark.moodle_schemas(since="3.6")
async def test_moodle36_contacts_are_still_mates_and_a_block_beside_them_wins(site, moodle):
    me, mate = shared_course(site)
    site.add_contact(me, mate)  # an accepted contact request: one row, timecreated set
    await assert_mates(moodle, me, mate, True)
    site.block(mate, me)
    await assert_mates(moodle, me, mate, False)


# -- caches ------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_second_coursemates_call_within_the_ttl_costs_no_query(site, moodle, db):
    me, mate = shared_course(site)
    assert await moodle.coursemates(me) == frozenset({mate})
    before = db.queries
    assert await moodle.coursemates(me) == frozenset({mate})
    assert (await moodle.users([mate]))[mate].name == "Mate Other"  # profiles came with the mates
    assert db.queries == before


@pytest.mark.gen_test
async def test_coursemates_are_reloaded_after_the_ttl(site, db):
    ttl = 0.5
    moodle = make_moodle(db, cache_ttl=ttl)
    me, mate = shared_course(site)
    assert await moodle.coursemates(me) == frozenset({mate})
    site.block(me, mate)
    assert await moodle.coursemates(me) == frozenset({mate})  # cached
    await asyncio.sleep(ttl)
    assert await moodle.coursemates(me) == frozenset()
