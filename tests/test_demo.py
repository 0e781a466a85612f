"""The embedded demo: SQLite through the production code path (gchat.main.prepare, make_app)."""

from __future__ import annotations

import json
import re
import urllib.parse
from http.cookies import SimpleCookie

import pytest

from gchat.app import make_app
from gchat.auth import Identity
from gchat.config import Settings
from gchat.demo import DEMO_BLOCKS, DEMO_COURSES, DEMO_USERS
from gchat.main import prepare
from gchat.moodle import sid_hash

PREFIX = "/gchat"


@pytest.fixture
def demo(tmp_path, io_loop):
    settings = Settings(data_dir=str(tmp_path), demo=True, secret_key="demo-test-key", db_pool_size=2)
    services = prepare(settings)
    assert services.db.dialect == "sqlite"
    io_loop.run_sync(services.start)
    yield services
    io_loop.run_sync(services.aclose)


@pytest.fixture
def app(demo):  # replaces conftest's MariaDB app: pytest-tornado's http_server serves this one
    return make_app(demo)


def visible_courses(courses: tuple[int, ...]) -> set[int]:
    visible = {cid for cid, _, _, shown in DEMO_COURSES if shown}
    return set(courses) & visible


# -- the seeded data -------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_seeded_users_share_courses_one_shares_none_one_pair_is_blocked(demo):
    moodle = demo.moodle
    users = {uid: visible_courses(courses) for uid, _, _, _, _, courses in DEMO_USERS}
    blocked = {frozenset(pair) for pair in DEMO_BLOCKS}
    for uid, courses in users.items():
        expected = {other for other, theirs in users.items()
                    if other != uid and courses & theirs and frozenset((uid, other)) not in blocked}
        assert await moodle.coursemates(uid) == expected, uid

    sharing = [uid for uid in users if await moodle.coursemates(uid)]
    assert len(sharing) >= 2, "some users share a course"
    alone = [uid for uid, courses in users.items()
             if not any(courses & theirs for other, theirs in users.items() if other != uid)]
    assert alone, "one user shares no course"
    for uid in alone:
        assert await moodle.coursemates(uid) == frozenset()
    assert DEMO_BLOCKS, "one pair is blocked"
    for blocker, blocked_user in DEMO_BLOCKS:
        assert users[blocker] & users[blocked_user], "the blocked pair shares a course: only the block parts them"
        assert not await moodle.can_chat(blocker, blocked_user)
        assert not await moodle.can_chat(blocked_user, blocker)


@pytest.mark.gen_test
async def test_seeding_twice_adds_nothing(demo, tmp_path):
    count = demo.db.run_sync(lambda q: q.scalar("SELECT COUNT(*) FROM {user}"))
    again = prepare(Settings(data_dir=str(tmp_path), demo=True, secret_key="demo-test-key"))
    try:
        assert again.db.run_sync(lambda q: q.scalar("SELECT COUNT(*) FROM {user}")) == count
    finally:
        await again.aclose()


# -- logging in and out ------------------------------------------------------------------------------


def cookies_of(response) -> dict[str, str]:
    jar: dict[str, str] = {}
    for header in response.headers.get_list("Set-Cookie"):
        parsed = SimpleCookie()
        parsed.load(header)
        for name, morsel in parsed.items():
            jar[name] = morsel.value
    return jar


class Browser:
    """Just enough of a browser: keeps cookies, does not follow redirects."""

    def __init__(self, http_client, base_url: str) -> None:
        self.http = http_client
        self.base = base_url
        self.cookies: dict[str, str] = {}

    async def request(self, path: str, method: str = "GET", form: dict | None = None):
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = urllib.parse.urlencode(form) if form is not None else None
        response = await self.http.fetch(self.base + path, method=method, body=body, headers=headers,
                                         follow_redirects=False, raise_error=False)
        for name, value in cookies_of(response).items():
            if value:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return response

    async def post(self, path: str, **form):
        return await self.request(path, "POST", {"_xsrf": self.cookies.get("_xsrf", ""), **form})

    async def bootstrap(self) -> tuple[int, dict]:
        response = await self.request(PREFIX + "/api/bootstrap")
        return response.code, json.loads(response.body)


def session_rows(demo, sid: str) -> list[tuple]:
    return demo.db.run_sync(lambda q: q.all("SELECT userid, state FROM {sessions} WHERE sid = %s", (sid,)))


ANA = next(u for u in DEMO_USERS if u[1] == "ana")


@pytest.mark.gen_test(timeout=20)
async def test_login_creates_a_session_row_and_the_cookie_and_bootstrap_knows_the_user(demo, http_client, base_url):
    browser = Browser(http_client, base_url)
    page = await browser.request(PREFIX + "/demo")
    assert page.code == 200
    assert "_xsrf" in browser.cookies, "the login page sets Tornado's XSRF cookie for its forms"
    assert b"Ana" in page.body

    response = await browser.post(PREFIX + "/demo/login", user=str(ANA[0]))
    assert response.code in (302, 303), response.body
    assert response.headers["Location"] == PREFIX + "/demo/course"
    sid = browser.cookies.get("MoodleSession")
    assert sid and re.fullmatch(r"[A-Za-z0-9,-]{1,128}", sid)
    assert session_rows(demo, sid) == [(ANA[0], 0)]

    code, body = await browser.bootstrap()
    assert code == 200, body
    assert body["user"]["id"] == ANA[0]
    assert body["user"]["name"] == f"{ANA[2]} {ANA[3]}"
    assert demo.router.signer.verify(body["token"]) == Identity(ANA[0], sid_hash(sid))

    course = await browser.request(PREFIX + "/demo/course")
    assert course.code == 200
    assert f'src="{PREFIX}/static/gchat.js"'.encode() in course.body


@pytest.mark.gen_test(timeout=20)
async def test_logout_deletes_the_row_and_bootstrap_answers_401(demo, http_client, base_url):
    browser = Browser(http_client, base_url)
    await browser.request(PREFIX + "/demo")
    await browser.post(PREFIX + "/demo/login", user=str(ANA[0]))
    sid = browser.cookies["MoodleSession"]
    assert (await browser.bootstrap())[0] == 200

    response = await browser.post(PREFIX + "/demo/logout")
    assert response.code in (302, 303)
    assert response.headers["Location"] == PREFIX + "/demo"
    assert session_rows(demo, sid) == []
    assert "MoodleSession" not in browser.cookies, "the cookie is cleared"

    code, body = await browser.bootstrap()
    assert code == 401
    assert body["error"]["code"] == "not_logged_in"
    browser.cookies["MoodleSession"] = sid  # a browser that kept the old cookie gets no further
    code, body = await browser.bootstrap()
    assert code == 401
    assert body["error"]["code"] == "not_logged_in"


@pytest.mark.gen_test(timeout=20)
async def test_two_logins_are_two_sessions(demo, http_client, base_url):
    first, second = Browser(http_client, base_url), Browser(http_client, base_url)
    for browser, user in ((first, DEMO_USERS[0][0]), (second, DEMO_USERS[1][0])):
        await browser.request(PREFIX + "/demo")
        await browser.post(PREFIX + "/demo/login", user=str(user))
    assert first.cookies["MoodleSession"] != second.cookies["MoodleSession"]
    assert (await first.bootstrap())[1]["user"]["id"] == DEMO_USERS[0][0]
    assert (await second.bootstrap())[1]["user"]["id"] == DEMO_USERS[1][0]


@pytest.mark.gen_test(timeout=20)
async def test_login_needs_the_xsrf_token_and_a_demo_user(demo, http_client, base_url):
    browser = Browser(http_client, base_url)
    await browser.request(PREFIX + "/demo")
    forged = await browser.request(PREFIX + "/demo/login", "POST", {"user": str(ANA[0])})
    assert forged.code == 403
    for user in ("999", "1", "nobody"):  # no such user; the guest is not a demo user
        assert (await browser.post(PREFIX + "/demo/login", user=user)).code == 400
    assert "MoodleSession" not in browser.cookies
    assert demo.db.run_sync(lambda q: q.scalar("SELECT COUNT(*) FROM {sessions}")) == 0


@pytest.mark.gen_test(timeout=20)
async def test_without_a_session_the_course_page_sends_you_to_log_in(http_client, base_url):
    browser = Browser(http_client, base_url)
    response = await browser.request(PREFIX + "/demo/course")
    assert response.code == 302
    assert response.headers["Location"] == PREFIX + "/demo"
    code, body = await browser.bootstrap()
    assert code == 401 and body["error"]["code"] == "not_logged_in"


@pytest.mark.gen_test(timeout=20)
async def test_health_and_demo_avatar(http_client, base_url):
    health = await http_client.fetch(base_url + PREFIX + "/health", raise_error=False)
    assert health.code == 200
    assert json.loads(health.body)["database"] == "ok"
    avatar = await http_client.fetch(f"{base_url}{PREFIX}/demo/user/pix.php/{ANA[0]}/f2.jpg", raise_error=False)
    assert avatar.code == 200
    assert avatar.headers["Content-Type"].startswith("image/svg+xml")
