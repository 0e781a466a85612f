"""Moodle's messaging privacy rules as gchat reads them, on a real MariaDB with Moodle's tables.

Each rule has a refused case and an accepted case: the preference message_blocknoncontacts on
the 2.x schema (one-way contacts) and on the 3.6+ schema (contacts either way), the site switch
``messaging`` and the capability moodle/site:sendmessage with Moodle's way of combining roles.
"""

from __future__ import annotations

import pytest

from gchat.config import parse_db_url
from gchat.db import Database
from gchat.moodle import Moodle
from gchat.store import ChatStore
from tests.conftest import PREFIX
from tests.moodle_site import MoodleSite, moodle22_statements
from tests.services import mysql_connect

SEND = "moodle/site:sendmessage"
ALLOW, PREVENT, PROHIBIT = 1, -1, -1000


@pytest.fixture
def db(test_db_url):
    database = Database(parse_db_url(test_db_url), prefix=PREFIX, pool_size=2, timeout=5)
    yield database
    database.close()


@pytest.fixture
def moodle(db, site):
    return Moodle(db, wwwroot="http://moodle.test", cache_ttl=30)


def trio(site: MoodleSite) -> tuple[int, int, int]:
    """Ana, Ben and Cat share a course."""
    ana, ben, cat = site.classmates("Ana", "Ben", "Cat")
    return ana, ben, cat


# -- contacts only, Moodle 2.x (message_contacts with blocked) --------------------------------------


@pytest.mark.gen_test
async def test_moodle2_contacts_only_admits_the_users_own_contacts(site, moodle):
    ana, ben, cat = trio(site)
    site.set_preference(ana, "message_blocknoncontacts", "1")
    site.add_contact(ana, ben)  # Ana's contact list has Ben
    site.add_contact(cat, ana)  # Cat lists Ana: on 2.x that does not make Cat Ana's contact
    assert await moodle.refusal(cat, ana) == "contacts_only"
    assert ana not in await moodle.coursemates(cat)
    assert await moodle.refusal(ben, ana) is None
    assert ana in await moodle.coursemates(ben)
    # Ana herself may write to anyone in her courses (their preference is the default), and
    # only her contact sees her online.
    assert await moodle.coursemates(ana) == frozenset({ben, cat})
    assert await moodle.audience(ana) == frozenset({ben})
    assert await moodle.audience(ben) == frozenset({ana, cat})


@pytest.mark.gen_test
async def test_moodle2_a_blocked_contact_row_is_a_block_not_a_contact(site, moodle):
    ana, ben, _ = trio(site)
    site.set_preference(ana, "message_blocknoncontacts", "1")
    site.block(ana, ben)
    assert await moodle.refusal(ben, ana) == "blocked"
    assert await moodle.refusal(ana, ben) == "blocked"


@pytest.mark.gen_test
@pytest.mark.parametrize("value", ["0", "2", ""])
async def test_other_preference_values_admit_course_mates(site, moodle, value):
    """0 = course members; 2 = anyone on the site, which gchat keeps within shared courses."""
    ana, ben, _ = trio(site)
    site.set_preference(ana, "message_blocknoncontacts", value)
    assert await moodle.refusal(ben, ana) is None
    assert ben in await moodle.audience(ana)


@pytest.mark.gen_test
async def test_a_user_without_a_shared_course_is_refused_as_such(site, moodle):
    ana, _, _ = trio(site)
    stranger = site.add_user("Sol", "Stranger")
    site.enrol(stranger, site.add_course("Elsewhere"))
    site.add_contact(ana, stranger)  # a contact, but gchat's circle is course-mates
    assert await moodle.refusal(stranger, ana) == "no_shared_course"
    assert await moodle.refusal(ana, stranger) == "no_shared_course"


# -- contacts only, Moodle 3.6+ (message_users_blocked; contacts either way) ------------------------

Q36 = "q36_"


@pytest.fixture(scope="module")
def tables36(test_db_url):
    database = test_db_url.split("?")[0].rsplit("/", 1)[1]
    conn = mysql_connect(test_db_url, database)
    with conn.cursor() as cur:
        for statement in moodle22_statements(Q36):
            cur.execute(statement)
        # MDL-63211's upgrade: blocked rows move to message_users_blocked, the column goes.
        cur.execute(f"ALTER TABLE {Q36}message_contacts DROP COLUMN blocked, ADD COLUMN timecreated BIGINT(10) NULL")
        cur.execute(f"""CREATE TABLE {Q36}message_users_blocked (
            id BIGINT(10) NOT NULL AUTO_INCREMENT,
            userid BIGINT(10) NOT NULL,
            blockeduserid BIGINT(10) NOT NULL,
            timecreated BIGINT(10) NULL,
            PRIMARY KEY (id),
            UNIQUE KEY {Q36}messuserbloc_useblo_uix (userid, blockeduserid),
            KEY {Q36}messuserbloc_use_ix (userid),
            KEY {Q36}messuserbloc_blo_ix (blockeduserid)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci""")
    conn.close()
    chat = Database(parse_db_url(test_db_url), prefix=Q36, pool_size=1, timeout=5)
    chat.run_sync(ChatStore(chat).create_tables)
    chat.close()
    return database


@pytest.fixture
def site36(test_db_url, tables36):
    site = MoodleSite(test_db_url, tables36, Q36)
    site.reset()
    site.execute("TRUNCATE TABLE {p}message_users_blocked")
    yield site
    site.close()


@pytest.fixture
def moodle36(test_db_url, site36):
    database = Database(parse_db_url(test_db_url), prefix=Q36, pool_size=2, timeout=5)
    yield Moodle(database, wwwroot="http://moodle.test")
    database.close()


@pytest.mark.gen_test
async def test_moodle36_contacts_only_counts_a_contact_row_in_either_direction(site36, moodle36):
    ana, ben, cat = trio(site36)
    dan = site36.add_user("Dan", "Tester")
    site36.enrol(dan, site36.rows("SELECT courseid FROM {p}enrol ORDER BY id DESC LIMIT 1")[0][0])
    site36.set_preference(ana, "message_blocknoncontacts", "1")
    site36.add_contact(ana, ben)  # add_contact(): one row for an accepted request
    site36.add_contact(cat, ana)  # the other direction counts too (api::is_contact)
    assert await moodle36.refusal(ben, ana) is None
    assert await moodle36.refusal(cat, ana) is None
    assert await moodle36.refusal(dan, ana) == "contacts_only"
    assert await moodle36.audience(ana) == frozenset({ben, cat})
    assert await moodle36.coursemates(dan) == frozenset({ben, cat})


@pytest.mark.gen_test
async def test_moodle36_block_comes_before_the_preference(site36, moodle36):
    ana, ben, _ = trio(site36)
    site36.set_preference(ana, "message_blocknoncontacts", "1")
    site36.add_contact(ana, ben)
    site36.execute("INSERT INTO {p}message_users_blocked (userid, blockeduserid) VALUES (%s, %s)", (ana, ben))
    assert await moodle36.refusal(ben, ana) == "blocked"


# -- the site switch ---------------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("value,enabled", [(None, True), ("1", True), ("0", False), ("", False)])
async def test_site_switch_messaging(site, db, value, enabled):
    if value is not None:
        site.set_config("messaging", value)
    moodle = Moodle(db, wwwroot="http://moodle.test")
    assert await moodle.messaging_enabled() is enabled


# -- moodle/site:sendmessage ------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_default_user_role_allows_sending(site, moodle):
    ana, _, _ = trio(site)
    site.install_roles()
    assert await moodle.can_send(ana) is True


@pytest.mark.gen_test
async def test_without_an_allow_in_any_role_sending_is_refused(site, moodle):
    ana, _, _ = trio(site)
    roles = site.install_roles()
    site.execute("DELETE FROM {p}role_capabilities WHERE roleid = %s", (roles["user"],))
    assert await moodle.can_send(ana) is False


@pytest.mark.gen_test
@pytest.mark.parametrize("default,assigned,expected", [
    (PREVENT, None, False),      # a prevent alone grants nothing
    (PROHIBIT, ALLOW, False),    # a prohibit in any role wins
    (ALLOW, PROHIBIT, False),
    (PREVENT, ALLOW, True),      # roles are evaluated apart: an allow in one beats a prevent in another
    (ALLOW, PREVENT, True),
])
async def test_roles_at_the_system_context_combine_as_in_moodle(site, moodle, default, assigned, expected):
    ana, ben, _ = trio(site)
    roles = site.install_roles()
    site.set_permission(roles["user"], SEND, default)
    if assigned is not None:
        site.set_permission(roles["student"], SEND, assigned)
        site.assign_system_role(ana, roles["student"])
    assert await moodle.can_send(ana) is expected
    # Ben has only the default role: prevent or prohibit refuses him, allow admits him.
    assert await moodle.can_send(ben) is (default == ALLOW)


@pytest.mark.gen_test
async def test_a_role_assigned_in_a_course_does_not_count_at_the_system_context(site, moodle):
    ana, _, _ = trio(site)
    roles = site.install_roles()
    site.set_permission(roles["user"], SEND, PREVENT)
    site.set_permission(roles["student"], SEND, ALLOW)
    course_context = site.execute("INSERT INTO {p}context (contextlevel, instanceid, path, depth) "
                                  "VALUES (50, 5, '/1/5', 2)")
    site.execute("INSERT INTO {p}role_assignments (roleid, contextid, userid, component) VALUES (%s, %s, %s, '')",
                 (roles["student"], course_context, ana))
    assert await moodle.can_send(ana) is False


@pytest.mark.gen_test
async def test_site_admins_may_send_whatever_their_roles_say(site, moodle):
    ana, _, _ = trio(site)
    roles = site.install_roles()
    site.set_permission(roles["user"], SEND, PROHIBIT)
    site.set_config("siteadmins", f"2,{ana}")
    assert await moodle.can_send(ana) is True


@pytest.mark.gen_test
async def test_without_moodle_roles_sending_is_not_restricted(site, moodle):
    """No defaultuserroleid (not a Moodle install's roles, e.g. the demo): gchat does not refuse."""
    ana, _, _ = trio(site)
    assert await moodle.can_send(ana) is True


@pytest.mark.gen_test
async def test_lookups_are_cached_and_forget_user_reloads(site, moodle, db):
    ana, ben, _ = trio(site)
    roles = site.install_roles()
    site.set_preference(ana, "message_blocknoncontacts", "1")
    assert await moodle.can_send(ben) is True
    assert await moodle.refusal(ben, ana) == "contacts_only"
    assert await moodle.messaging_enabled() is True
    assert await moodle.audience(ana) == frozenset()
    before = db.queries
    for _ in range(3):
        assert await moodle.can_send(ben) is True
        assert await moodle.refusal(ben, ana) == "contacts_only"
        assert await moodle.audience(ana) == frozenset()
        assert await moodle.messaging_enabled() is True
    assert db.queries == before
    site.set_permission(roles["user"], SEND, PROHIBIT)
    site.add_contact(ana, ben)
    moodle.forget_user(ben)
    assert await moodle.can_send(ben) is False
    assert await moodle.refusal(ben, ana) is None
