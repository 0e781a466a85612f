"""Course-mates of a large course, on a real MariaDB and PostgreSQL: each user's circle is right,
the course's members are read once for everyone in it (not once per user), and the users of
the same course share one set of members rather than a copy each."""

from __future__ import annotations

import json

import pytest

from gchat.auth import Identity
from gchat.broker import MemoryBroker
from gchat.config import Settings, parse_db_url
from gchat.db import Database
from gchat.feed import Feed
from gchat.moodle import Moodle
from gchat.store import ChatStore
from tests.conftest import PREFIX

ENGINES = ("mariadb", "postgresql")


@pytest.fixture
def db(test_db_url):
    database = Database(parse_db_url(test_db_url), prefix=PREFIX, pool_size=4, timeout=5)
    yield database
    database.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_course_is_read_once_for_all_its_students(site, db):
    moodle = Moodle(db, wwwroot="http://moodle.test", cache_ttl=60)
    course = site.add_course("Exam")
    students = []
    for n in range(40):
        uid = site.add_user(f"Student{n:02d}", "Tester")
        site.enrol(uid, course)
        students.append(uid)
    other = site.add_course("Other")
    outsider = site.add_user("Out", "Sider")
    site.enrol(outsider, other)
    site.enrol(students[0], other)  # one student in both courses
    site.block(students[1], students[2])

    await moodle.config()
    before = db.queries
    circles = {uid: await moodle.coursemates(uid) for uid in students}
    spent = db.queries - before
    # Per student: its own courses and its blocks (two statements); per course: its members and
    # who among them accepts contacts only; once: the schema probes (which block table, ...).
    assert spent <= 2 * len(students) + 2 * 2 + 6, spent
    everyone = set(students)
    assert circles[students[0]] == everyone - {students[0]} | {outsider}
    assert circles[students[1]] == everyone - {students[1], students[2]}
    assert circles[students[2]] == everyone - {students[2], students[1]}
    assert circles[students[5]] == everyone - {students[5]}
    assert await moodle.coursemates(outsider) == {students[0]}
    assert await moodle.can_chat(students[3], students[4]) and not await moodle.can_chat(students[1], students[2])
    # The profiles of the whole course came with its members: no query for them.
    before = db.queries
    profiles = await moodle.users(students)
    assert len(profiles) == len(students) and db.queries == before


@pytest.mark.gen_test(timeout=60)
async def test_students_of_one_course_share_its_members(site, db):
    moodle = Moodle(db, wwwroot="http://moodle.test", cache_ttl=60)
    students = site.classmates(*(f"S{n}" for n in range(30)))
    sets = [await moodle.coursemates(uid) for uid in students]
    bases = {id(s._base) for s in sets}  # what each user's set is a view over
    assert len(bases) == 1
    assert all(len(s) == len(students) - 1 for s in sets)


@pytest.mark.gen_test(timeout=60)
async def test_the_first_view_of_a_large_course_walks_the_shared_name_order(site, db, tmp_path):
    """With more course-mates online than ready_online_limit, ready lists the first by name (the
    course's name order, read once with its members) and says how many are online in all."""
    moodle = Moodle(db, wwwroot="http://moodle.test", cache_ttl=60)
    names = ["zoe", "Ana", "bruno", "Álvaro", "carla", "Ana", "dora", "Eli"]
    course = site.add_course("Big")
    users = []
    for first in names:
        uid = site.add_user(first, "X")
        site.enrol(uid, course)
        users.append(uid)
    me = site.add_user("Me", "Myself")
    site.enrol(me, course)
    broker = MemoryBroker()
    for uid in users:
        if uid != users[-2]:  # dora stays offline
            await broker.add_connection(uid, f"c{uid}")
    settings = Settings(data_dir=str(tmp_path), secret_key="s", ready_online_limit=4, demo=False)
    feed = Feed(settings, broker=broker, moodle=moodle, store=ChatStore(db))
    raw, _ = await feed.catch_up(Identity(me, "h"), None)
    ready = json.loads(raw[0])
    expected = sorted((u for u in users if u != users[-2]), key=lambda u: (names[users.index(u)].lower() + " x", u))
    assert [u["id"] for u in ready["online"]] == expected[:4]
    assert ready["online_total"] == len(users) - 1 and ready["coursemates"] == len(users)
