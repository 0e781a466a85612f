"""The embedded demo: a small Moodle in SQLite, and pages to log in as any of its users.

With no ``db_url`` gchat creates ``data_dir/demo.sqlite3`` with the Moodle tables it reads,
seeded with demo courses and users (some share a course, one shares none, one pair is blocked).
``/demo`` logs you in as a demo user the way Moodle does: it inserts a real ``sessions`` row and
sets the real ``MoodleSession`` cookie, so the chat runs exactly the production code path.
The demo pages must never be enabled on a real site: anyone could log in as anyone.
"""

from __future__ import annotations

import hashlib
import html
import secrets
import time
from typing import Any

import tornado.web

from gchat.db import Database, Query
from gchat.moodle import Moodle

_SQLITE_MOODLE_DDL = (
    """CREATE TABLE IF NOT EXISTS {config} (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {sessions} (id INTEGER PRIMARY KEY, state INTEGER NOT NULL DEFAULT 0,
        sid TEXT NOT NULL UNIQUE, userid INTEGER NOT NULL, sessdata TEXT, timecreated INTEGER NOT NULL,
        timemodified INTEGER NOT NULL, firstip TEXT, lastip TEXT)""",
    """CREATE TABLE IF NOT EXISTS {user} (id INTEGER PRIMARY KEY, auth TEXT NOT NULL DEFAULT 'manual',
        confirmed INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0, suspended INTEGER NOT NULL DEFAULT 0,
        mnethostid INTEGER NOT NULL DEFAULT 1, username TEXT NOT NULL, firstname TEXT NOT NULL, lastname TEXT NOT NULL,
        email TEXT NOT NULL DEFAULT '', lang TEXT NOT NULL DEFAULT 'en', picture INTEGER NOT NULL DEFAULT 0,
        imagealt TEXT, lastaccess INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS {course} (id INTEGER PRIMARY KEY, category INTEGER NOT NULL DEFAULT 0,
        fullname TEXT NOT NULL, shortname TEXT NOT NULL, visible INTEGER NOT NULL DEFAULT 1)""",
    """CREATE TABLE IF NOT EXISTS {enrol} (id INTEGER PRIMARY KEY, enrol TEXT NOT NULL,
        status INTEGER NOT NULL DEFAULT 0,
        courseid INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {user_enrolments} (id INTEGER PRIMARY KEY, status INTEGER NOT NULL DEFAULT 0,
        enrolid INTEGER NOT NULL, userid INTEGER NOT NULL, timestart INTEGER NOT NULL DEFAULT 0,
        timeend INTEGER NOT NULL DEFAULT 2147483647, UNIQUE (enrolid, userid))""",
    """CREATE TABLE IF NOT EXISTS {message_contacts} (id INTEGER PRIMARY KEY, userid INTEGER NOT NULL,
        contactid INTEGER NOT NULL, blocked INTEGER NOT NULL DEFAULT 0, UNIQUE (userid, contactid))""",
    # Messaging privacy as Moodle keeps it: the user preference message_blocknoncontacts, and
    # the capability moodle/site:sendmessage at the system context (context 1, the default user
    # role from $CFG->defaultuserroleid allows it, as in a fresh Moodle).
    """CREATE TABLE IF NOT EXISTS {user_preferences} (id INTEGER PRIMARY KEY, userid INTEGER NOT NULL,
        name TEXT NOT NULL, value TEXT NOT NULL, UNIQUE (userid, name))""",
    """CREATE TABLE IF NOT EXISTS {context} (id INTEGER PRIMARY KEY, contextlevel INTEGER NOT NULL,
        instanceid INTEGER NOT NULL, path TEXT, depth INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS {role_assignments} (id INTEGER PRIMARY KEY, roleid INTEGER NOT NULL,
        contextid INTEGER NOT NULL, userid INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {role_capabilities} (id INTEGER PRIMARY KEY, contextid INTEGER NOT NULL,
        roleid INTEGER NOT NULL, capability TEXT NOT NULL, permission INTEGER NOT NULL)""",
)

SYSTEM_CONTEXT = 1
DEFAULT_USER_ROLE = 7  # Moodle's "Authenticated user" role id in a fresh install

# (id, username, first, last, lang, courses)
DEMO_COURSES = (
    (2, "Introduction to Physics", "PHY101", 1),
    (3, "Medieval History", "HIS201", 1),
    (4, "Archived Seminar", "ARC300", 0),  # hidden: its members are not course-mates through it
)
DEMO_USERS = (
    (3, "ana", "Ana", "Silva", "pt", (2, 3)),
    (4, "ben", "Ben", "Müller", "de", (2,)),
    (5, "chloe", "Chloé", "Martin", "en", (3,)),
    (6, "dan", "Dan", "Okafor", "en", (2, 3)),
    (7, "eve", "Eve", "Novak", "en", (4,)),
    (8, "teacher", "Tereza", "Teacher", "en", (2, 3)),
    # More classmates: enough for the conversations list, search and the "+N" overflow.
    (9, "farid", "Farid", "Haddad", "en", (2,)),
    (10, "grace", "Grace", "Kim", "en", (2,)),
    (11, "hugo", "Hugo", "Lefebvre", "en", (2, 3)),
    (12, "ines", "Inês", "Costa", "pt", (3,)),
)
DEMO_BLOCKS = ((6, 4),)  # Dan blocks Ben
DEMO_NOTES = {4: "blocked by Dan", 6: "blocks Ben", 7: "no shared course"}


def create_moodle_schema(q: Query) -> None:
    for ddl in _SQLITE_MOODLE_DDL:
        q.execute(ddl)


def seed(q: Query) -> bool:
    """Fill an empty demo Moodle; returns False when it already has users. Works on SQLite and
    MySQL alike (tests seed a MariaDB database with it)."""
    if q.scalar("SELECT COUNT(*) FROM {user}"):
        return False
    for name, value in (("sessiontimeout", "7200"), ("siteguest", "1"), ("sessioncookie", ""),
                        ("dbsessions", "1"), ("release", "2.2.9 (Build: 20130114)"), ("messaging", "1"),
                        ("defaultuserroleid", str(DEFAULT_USER_ROLE)), ("siteadmins", "2")):
        q.execute("INSERT INTO {config} (name, value) VALUES (%s, %s)", (name, value))
    q.execute("INSERT INTO {course} (id, category, fullname, shortname, visible) "
              "VALUES (1, 0, 'gchat demo site', 'demo', 1)")
    for cid, full, short, visible in DEMO_COURSES:
        q.execute("INSERT INTO {course} (id, category, fullname, shortname, visible) VALUES (%s, 1, %s, %s, %s)",
                  (cid, full, short, visible))
        q.execute("INSERT INTO {enrol} (id, enrol, status, courseid) VALUES (%s, 'manual', 0, %s)", (cid, cid))
    users = ((1, "guest", "Guest user", " ", "en", ()), (2, "admin", "Admin", "User", "en", ())) + DEMO_USERS
    for uid, username, first, last, lang, courses in users:
        q.execute("INSERT INTO {user} (id, auth, confirmed, username, firstname, lastname, email, lang) "
                  "VALUES (%s, 'manual', 1, %s, %s, %s, %s, %s)",
                  (uid, username, first, last, f"{username}@example.invalid", lang))
        for cid in courses:
            q.execute("INSERT INTO {user_enrolments} (status, enrolid, userid, timestart, timeend) "
                      "VALUES (0, %s, %s, 0, 0)", (cid, uid))
    for blocker, blocked in DEMO_BLOCKS:
        q.execute("INSERT INTO {message_contacts} (userid, contactid, blocked) VALUES (%s, %s, 1)", (blocker, blocked))
    q.execute("INSERT INTO {context} (id, contextlevel, instanceid, path, depth) VALUES (%s, 10, 0, '/1', 1)",
              (SYSTEM_CONTEXT,))
    q.execute("INSERT INTO {role_capabilities} (contextid, roleid, capability, permission) "
              "VALUES (%s, %s, 'moodle/site:sendmessage', 1)", (SYSTEM_CONTEXT, DEFAULT_USER_ROLE))
    return True


def demo_users(q: Query) -> list[dict[str, Any]]:
    rows = q.all("SELECT u.id, u.username, u.firstname, u.lastname FROM {user} u WHERE u.id > 2 AND u.deleted = 0 "
                 "ORDER BY u.firstname")
    courses = q.all("SELECT ue.userid, c.shortname FROM {user_enrolments} ue JOIN {enrol} e ON e.id = ue.enrolid "
                    "JOIN {course} c ON c.id = e.courseid ORDER BY c.shortname")
    by_user: dict[int, list[str]] = {}
    for uid, short in courses:
        by_user.setdefault(int(uid), []).append(short)
    return [{"id": int(r[0]), "username": r[1], "name": f"{r[2]} {r[3]}", "courses": by_user.get(int(r[0]), []),
             "note": DEMO_NOTES.get(int(r[0]), "")} for r in rows]


class DemoHandler(tornado.web.RequestHandler):
    """Base of the demo pages: reads the demo Moodle's session cookie like Moodle would."""

    def initialize(self, router: Any, settings: Any, moodle: Moodle, db: Database, **_: Any) -> None:
        self.router = router
        self.gchat_settings = settings
        self.moodle = moodle
        self.db = db
        self.prefix = settings.url_prefix

    async def current_user_id(self) -> int | None:
        sid = self.get_cookie(await self.router.cookie_name())
        if not sid:
            return None
        check = await self.moodle.check_session(sid)
        if not check.ok:
            return None
        # Moodle refreshes timemodified on every page view; so does the demo.
        await self.db.run(lambda q: q.execute("UPDATE {sessions} SET timemodified = %s WHERE sid = %s",
                                              (int(time.time()), sid)))
        return check.user_id

    async def users(self) -> list[dict[str, Any]]:
        users = await self.db.run(demo_users)
        for user in users:
            user["picture"] = self.moodle.picture_url(user["id"])
        return users


class DemoLoginPage(DemoHandler):
    async def get(self) -> None:
        users = await self.users()
        uid = await self.current_user_id()
        me = next((u for u in users if u["id"] == uid), None)
        # Like Moodle's login page, this one carries the site's Additional HTML (the script tag):
        # after a logout its bootstrap answers 401, and it tells the user's other tabs at once.
        self.render("demo_login.html", prefix=self.prefix, users=users, me=me,
                    script_src=self.prefix + "/static/gchat.js")


class DemoLogin(DemoHandler):
    async def post(self) -> None:
        try:
            uid = int(self.get_body_argument("user"))
        except (ValueError, tornado.web.MissingArgumentError):
            raise tornado.web.HTTPError(400, "pick a user") from None
        if not any(u["id"] == uid for u in await self.users()):
            raise tornado.web.HTTPError(400, "no such demo user")
        sid = secrets.token_hex(13)  # the shape of a PHP session id
        now = int(time.time())
        ip = self.request.remote_ip or ""
        await self.db.run(lambda q: q.execute(
            "INSERT INTO {sessions} (state, sid, userid, timecreated, timemodified, firstip, lastip) "
            "VALUES (0, %s, %s, %s, %s, %s, %s)", (sid, uid, now, now, ip, ip)))
        self.set_cookie(await self.router.cookie_name(), sid, path="/", httponly=True)
        self.redirect(self.prefix + "/demo/course")


class DemoLogout(DemoHandler):
    async def post(self) -> None:
        name = await self.router.cookie_name()
        sid = self.get_cookie(name)
        if sid:
            # Moodle deletes the session row at logout (session_regenerate_id + terminate).
            await self.db.run(lambda q: q.execute("DELETE FROM {sessions} WHERE sid = %s", (sid,)))
            self.moodle.forget_session(sid)
        self.clear_cookie(name, path="/")
        self.redirect(self.prefix + "/demo")


class DemoCoursePage(DemoHandler):
    async def get(self) -> None:
        uid = await self.current_user_id()
        if uid is None:
            self.redirect(self.prefix + "/demo")
            return
        users = await self.users()
        me = next(u for u in users if u["id"] == uid)
        rows = await self.db.run(lambda q: q.all(
            "SELECT c.id, c.fullname, c.shortname FROM {course} c JOIN {enrol} e ON e.courseid = c.id "
            "JOIN {user_enrolments} ue ON ue.enrolid = e.id WHERE ue.userid = %s AND c.id <> 1 ORDER BY c.id", (uid,)))
        courses = [{"id": int(r[0]), "fullname": r[1], "shortname": r[2]} for r in rows]
        wanted = self.get_query_argument("id", None)
        course = next((c for c in courses if str(c["id"]) == wanted), None)
        self.render("demo_page.html", prefix=self.prefix, me=me, courses=courses, course=course, users=users,
                    script_src=self.prefix + "/static/gchat.js", block=self.get_query_argument("block", "") == "1")


class DemoAvatar(tornado.web.RequestHandler):
    """``/demo/user/pix.php/<id>/f2.jpg``: an SVG disc with initials, standing in for Moodle's."""

    def initialize(self, moodle: Moodle, **_: Any) -> None:
        self.moodle = moodle

    async def get(self, user_id: str) -> None:
        user = await self.moodle.user(int(user_id))
        initials = "".join(part[:1] for part in (user.name.split()[:2] if user else ["?"])).upper()
        hue = int(hashlib.sha256(user_id.encode()).hexdigest()[:4], 16) % 360
        self.set_header("Content-Type", "image/svg+xml")
        self.set_header("Cache-Control", "max-age=3600")
        self.finish(
            '<svg xmlns="http://www.w3.org/2000/svg" width="70" height="70" viewBox="0 0 70 70">'
            f'<circle cx="35" cy="35" r="35" fill="hsl({hue},45%,45%)"/>'
            '<text x="35" y="45" font-family="sans-serif" font-size="28" fill="#fff" text-anchor="middle">'
            f"{html.escape(initials)}</text></svg>")


def demo_routes(prefix: str, kwargs: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    return [
        (prefix + "/demo/?", DemoLoginPage, kwargs),
        (prefix + "/demo/login", DemoLogin, kwargs),
        (prefix + "/demo/logout", DemoLogout, kwargs),
        (prefix + "/demo/course", DemoCoursePage, kwargs),
        (prefix + r"/demo/user/pix\.php/(\d+)/f[12]\.jpg", DemoAvatar, kwargs),
    ]
