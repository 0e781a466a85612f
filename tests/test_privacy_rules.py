"""Moodle's messaging privacy rules as gchat reads them, on a real MariaDB and a real PostgreSQL,
on each Moodle schema (the hand-made 2.2 tables and the XMLDB 2.8, 4.4 and 5.2 ones).

Each rule has a refused case and an accepted case: the preference message_blocknoncontacts on
the 2.x-3.5 schemas (one-way contacts) and on the 3.6+ ones (contacts either way), the site
switch ``messaging`` and the capability moodle/site:sendmessage with Moodle's way of combining
roles.
"""

from __future__ import annotations

import pytest

from gchat.config import parse_db_url
from gchat.db import Database
from gchat.moodle import Moodle
from tests.conftest import ALL_SCHEMAS, PREFIX
from tests.moodle_site import MoodleSite

ENGINES = ("mariadb", "postgresql")
SCHEMAS = ALL_SCHEMAS
SEND = "moodle/site:sendmessage"
ALLOW, PREVENT, PROHIBIT = 1, -1, -1000


@pytest.fixture(scope="module")
def db(test_db_url):
    """One pool per schema and engine; each test makes its own Moodle (empty caches) over it."""
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
@pytest.mark.moodle_schemas(before="3.6")
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
@pytest.mark.moodle_schemas(before="3.6")
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

@pytest.mark.gen_test
@pytest.mark.moodle_schemas(since="3.6")
async def test_moodle36_contacts_only_counts_a_contact_row_in_either_direction(site, moodle):
    ana, ben, cat = trio(site)
    dan = site.add_user("Dan", "Tester")
    site.enrol(dan, site.rows("SELECT courseid FROM {p}enrol ORDER BY id DESC LIMIT 1")[0][0])
    site.set_preference(ana, "message_blocknoncontacts", "1")
    site.add_contact(ana, ben)  # add_contact(): one row for an accepted request
    site.add_contact(cat, ana)  # the other direction counts too (api::is_contact)
    assert await moodle.refusal(ben, ana) is None
    assert await moodle.refusal(cat, ana) is None
    assert await moodle.refusal(dan, ana) == "contacts_only"
    assert await moodle.audience(ana) == frozenset({ben, cat})
    assert await moodle.coursemates(dan) == frozenset({ben, cat})


@pytest.mark.gen_test
@pytest.mark.moodle_schemas(since="3.6")
async def test_moodle36_block_comes_before_the_preference(site, moodle):
    ana, ben, _ = trio(site)
    site.set_preference(ana, "message_blocknoncontacts", "1")
    site.add_contact(ana, ben)
    site.block(ana, ben)  # a message_users_blocked row
    assert await moodle.refusal(ben, ana) == "blocked"


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
