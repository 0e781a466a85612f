"""``gchat check``: test a configuration against the Moodle database and print specific advice.

One line per check: ``OK``, ``WARN`` (works, but probably not as intended) or ``FAIL`` (gchat
cannot serve this site until it is fixed), each with what to do about it. Read-only, like the
rest of gchat: it never writes Moodle's tables and never creates gchat's.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Callable

from gchat.config import Settings
from gchat.db import Database, Query
from gchat.errors import Unavailable
from gchat.moodle import REQUIRED_TABLES, Moodle
from gchat.php_session import read_session_bytes
from gchat.session_spec import SessionsSpec
from gchat.sessions import (SESSION_KEY, RedisStore, SessionRecord, iter_redis_sessions, make_sync_client,
                            readable_dir)
from gchat.store import ChatStore

SESSION_SETTINGS = "Site administration › Server › Session handling"


class _Report:
    def __init__(self, out: Callable[[str], object]) -> None:
        self.out = out
        self.failed = False

    def ok(self, topic: str, text: str) -> None:
        self.out(f"OK    {topic}: {text}")

    def warn(self, topic: str, text: str) -> None:
        self.out(f"WARN  {topic}: {text}")

    def fail(self, topic: str, text: str) -> None:
        self.failed = True
        self.out(f"FAIL  {topic}: {text}")


def run_check(settings: Settings, db: Database, out: Callable[[str], object] = print) -> bool:
    """Print one line per check to ``out``; False when any check FAILs."""
    report = _Report(out)
    check_colors(settings, report)
    try:
        _run(settings, db, report)
    except Unavailable as exc:
        report.fail("database", f"{' '.join(str(exc).split())} — check db_url and that the database server is up")
    return not report.failed


def _run(settings: Settings, db: Database, report: _Report) -> None:
    prefix = settings.db_prefix
    if settings.is_demo_db:
        report.warn("db_url", "empty, so gchat runs the embedded demo (SQLite in data_dir) — to serve a Moodle "
                              "site set db_url = mysql://user:password@host:3306/moodle (or postgresql://user:password@"
                              "host:5432/moodle) and run gchat check again")
        return

    # -- the database --------------------------------------------------------------------------------
    try:
        version = db.run_sync(lambda q: q.scalar(q.dialect.version_sql))
    except Unavailable as exc:
        report.fail("database", f"cannot connect to {db.where}: {_one_line(exc)} — check the host, port, user, "
                                "password and database name in db_url, and that this host may connect")
        return
    report.ok("database", f"{db.where} answers ({db.sql_dialect.server_name(version)})")

    # -- Moodle's tables -----------------------------------------------------------------------------
    moodle = Moodle(db, wwwroot=settings.moodle_wwwroot or "http://localhost", session_timeout=settings.session_timeout)
    missing = db.run_sync(moodle.missing_tables)
    if missing:
        found = db.run_sync(_moodle_prefixes)
        others = [p for p in found if p != prefix]
        if len(missing) < len(REQUIRED_TABLES):
            report.fail("moodle tables", f"{', '.join(prefix + m for m in missing)} missing with db_prefix "
                                         f"'{prefix}' — is this a complete Moodle database?")
        elif others:
            also = f" (also found: {', '.join(others[1:])})" if len(others) > 1 else ""
            report.fail("moodle tables", f"db_prefix is '{prefix}' but the database has tables like "
                                         f"'{others[0]}user' — set db_prefix = {others[0]}{also}")
        else:
            report.fail("moodle tables", f"no Moodle tables with db_prefix '{prefix}' ({prefix}user, "
                                         f"{prefix}sessions, …) in {db.where} — is db_url the Moodle database, and "
                                         "db_prefix its $CFG->prefix from config.php?")
        return
    report.ok("moodle tables", f"found with db_prefix '{prefix}'")

    # -- Moodle's version and settings -----------------------------------------------------------------
    config = db.run_sync(lambda q: dict(q.all(
        "SELECT name, value FROM {config} WHERE name IN (%s, %s, %s, %s, %s, %s, %s)",
        ("release", "version", "dbsessions", "sessioncookie", "sessioncookiepath", "sessiontimeout", "siteguest"))))
    release = (config.get("release") or "").strip()
    major_minor = _major_minor(release)
    if release:
        text = f"Moodle {release}" + (f" (version {config['version']})" if config.get("version") else "")
        if major_minor is not None and major_minor < (2, 2):
            report.warn("moodle version", text + " — gchat is made for Moodle 2.2 and later")
        else:
            report.ok("moodle version", text)
    else:
        report.warn("moodle version", f"no 'release' in {prefix}config, so the version is unknown — "
                                      "is this a Moodle database?")

    mode = db.run_sync(moodle._detect_block_mode)  # the very detection the server uses
    if mode == "users_blocked":
        report.ok("blocks", f"read from {prefix}message_users_blocked (Moodle 3.6+)")
    elif mode == "contacts":
        report.ok("blocks", f"read from {prefix}message_contacts.blocked (Moodle 2.x–3.5)")
    else:
        report.warn("blocks", f"neither {prefix}message_users_blocked nor {prefix}message_contacts.blocked exists: "
                              "users who blocked each other can still chat")

    _check_sessions(settings, db, report, config, major_minor)
    _check_cookie(settings, report, config)

    # -- gchat's own tables ----------------------------------------------------------------------------
    store = ChatStore(db)
    chat_missing = db.run_sync(store.missing_tables)
    outdated = [] if chat_missing else db.run_sync(store.outdated)
    if chat_missing:
        report.fail("gchat tables", f"{', '.join(prefix + t for t in chat_missing)} missing — create them with: "
                                    "gchat initdb (same settings as the server)")
    elif outdated:
        report.warn("gchat tables", f"{'; '.join(outdated)} — bring them up to date with: gchat initdb (same "
                                    "settings as the server; it rebuilds the table: run it at a quiet time, "
                                    "with --db_timeout=3600 when the table is large)")
    else:
        report.ok("gchat tables", f"present ({prefix}gchat_conversations, {prefix}gchat_members, "
                                  f"{prefix}gchat_messages)")

    _check_origins(settings, report)


def _check_sessions(settings: Settings, db: Database, report: _Report, config: dict[str, str],
                    major_minor: tuple[int, int] | None) -> None:
    """Which session store gchat reads, whether it sees sessions there, and multi-factor
    authentication. Every OK names what was actually looked at."""
    spec = settings.moodle_sessions.with_legacy_dir(settings.moodle_session_dir)
    release = (config.get("release") or "").strip()
    if spec.kind == "redis":
        report.ok("session store", f"moodle_sessions = {spec.describe()}")
        _check_redis_sessions(settings, db, report, spec, config, major_minor)
        return
    if spec.kind == "files":
        report.ok("session store", f"moodle_sessions = files:{spec.directory} (Moodle's file session handler)")
    else:
        report.ok("session store", f"moodle_sessions = database: {settings.db_prefix}sessions")
    if not _check_dbsessions(settings, db, report, config, major_minor, spec):
        return
    logged_in = db.run_sync(lambda q: q.scalar("SELECT COUNT(*) FROM {sessions} WHERE userid > 0 AND state = 0"))
    if logged_in:
        report.ok("sessions", f"{logged_in} logged-in session(s) in {settings.db_prefix}sessions")
    elif major_minor is not None and major_minor >= (4, 5) and spec.kind == "database":
        report.warn("sessions", f"no logged-in sessions in {settings.db_prefix}sessions on Moodle {release}: your site "
                                "probably uses the Redis session store ($CFG->session_handler_class = "
                                "'\\core\\session\\redis' in config.php), which keeps Moodle 4.5+ sessions in Redis "
                                "only — set moodle_sessions = redis://<$CFG->session_redis_host>:6379/"
                                "<$CFG->session_redis_database>?prefix=<$CFG->session_redis_prefix>; if it does "
                                "not, log in to Moodle and run gchat check again")
    else:
        report.warn("sessions", f"no logged-in sessions in {settings.db_prefix}sessions yet — log in to Moodle and "
                                "run gchat check again; if there are still none, Moodle's config.php may set "
                                "$CFG->dbsessions = false (Moodle 2.2–2.5), or db_url names another copy of the "
                                "database")
    _check_mfa(settings, db, report, spec, logged_in=int(logged_in or 0))


def _check_dbsessions(settings: Settings, db: Database, report: _Report, config: dict[str, str],
                      major_minor: tuple[int, int] | None, spec: SessionsSpec) -> bool:
    """Moodle 2.2–2.5's dbsessions, and the file store's folder; False when the sessions table
    is not where this site's sessions are (nothing more to count there)."""
    prefix = settings.db_prefix
    dbsessions = (config.get("dbsessions") or "").strip()
    if spec.kind == "files" and not readable_dir(spec.directory):
        report.fail("dbsessions", f"moodle_sessions = files:{spec.directory} is not a folder gchat can read: point "
                                  "it at Moodle's $CFG->dataroot/sessions (or $CFG->session_file_save_path) and give "
                                  "gchat's user read access")
        return False
    if major_minor is not None and major_minor >= (2, 6):
        # Moodle 2.6+ (\core\session\manager::get_handler_class): $CFG->session_handler_class, else
        # dbsessions picks the database or the file handler; handler::add_session() writes the row.
        report.ok("dbsessions", f"Moodle 2.6+ writes a {prefix}sessions row at login with every session handler "
                                "except Moodle 4.5+'s Redis store; dbsessions only picks the database or file handler")
        return True
    if dbsessions == "0" and spec.kind == "files":
        report.ok("dbsessions", f"dbsessions = 0: sessions are read from the files in {spec.directory} "
                                "(moodle_sessions = files:…, formerly moodle_session_dir)")
        return False
    if dbsessions == "0":
        report.fail("dbsessions", f"dbsessions = 0 in {prefix}config: Moodle 2.2–2.5 then keeps sessions in "
                                  f"files (dataroot/sessions) and never writes {prefix}sessions, so gchat cannot "
                                  "see who is logged in — set dbsessions = 1 (Use database for session "
                                  f"information) in {SESSION_SETTINGS}; everyone logs in again once — or let gchat "
                                  "read the session files: moodle_sessions = files:<dataroot>/sessions")
        return False
    report.ok("dbsessions", f"sessions are kept in {prefix}sessions (dbsessions = {dbsessions or 'unset, so 1'})")
    return True


def _check_mfa(settings: Settings, db: Database, report: _Report, spec: SessionsSpec, *, logged_in: int,
               sample: SessionRecord | None = None) -> None:
    """Multi-factor authentication (tool_mfa): on or off, and whether this store lets gchat see
    the pass in a session's data (without it gchat refuses every session: it fails closed)."""
    prefix = settings.db_prefix
    moodle = Moodle(db, wwwroot="http://localhost")
    if not db.run_sync(moodle._mfa_enabled):  # the very detection the server uses
        report.ok("mfa", f"multi-factor authentication is off (no enabled tool_mfa with an enabled factor in "
                         f"{prefix}config_plugins)")
        return
    what = "multi-factor authentication (tool_mfa) is on, so gchat accepts only sessions whose data says the factor " \
           "was passed"
    if spec.kind == "redis":
        if sample is None:
            report.warn("mfa", f"{what}; no logged-in session in Redis to verify that gchat can read the session data "
                               "— log in to Moodle and run gchat check again")
        elif sample.data is None:
            report.fail("mfa", f"{what}, but gchat cannot read the session data in Redis ({sample.data_problem}) — "
                               "check serializer= and compressor= against $CFG->session_redis_serializer_use_igbinary "
                               "and $CFG->session_redis_compressor")
        else:
            report.ok("mfa", f"{what}; gchat read and parsed a logged-in session's data in Redis "
                             f"(serializer {spec.serializer}, compressor {spec.compressor})")
        return
    rows = db.run_sync(lambda q: q.all("SELECT sid, sessdata FROM {sessions} WHERE userid > 0 AND state = 0 "
                                       "ORDER BY timemodified DESC LIMIT 20"))
    if not rows:
        report.warn("mfa", f"{what}; no logged-in session to verify that gchat can read the session data — log in "
                           "to Moodle and run gchat check again")
        return
    if spec.kind == "files":
        readable = [sid for sid, _ in rows if read_session_bytes(spec.directory, str(sid)) is not None]
        if readable:
            report.ok("mfa", f"{what}; gchat read {len(readable)} of {len(rows)} recent logged-in session(s) from "
                             f"the files in {spec.directory}")
        else:
            report.fail("mfa", f"{what}, but none of {len(rows)} recent logged-in sessions has a readable file in "
                               f"{spec.directory} — is it Moodle's session folder ($CFG->dataroot/sessions or "
                               "$CFG->session_file_save_path), readable by gchat's user? Without the data gchat "
                               "refuses every session")
        return
    with_data = [sid for sid, data in rows if data]
    if with_data:
        report.ok("mfa", f"{what}; {len(with_data)} of {len(rows)} recent logged-in session(s) have their data in "
                         f"{prefix}sessions.sessdata (Moodle's database session handler)")
    else:
        report.fail("mfa", f"{what}, but none of {len(rows)} recent logged-in sessions has its data in "
                           f"{prefix}sessions.sessdata: Moodle keeps it elsewhere, so gchat refuses every session — "
                           "with Moodle's file handler set moodle_sessions = files:<dataroot>/sessions; with "
                           "memcached gchat cannot read the session data (use the database, file or Redis store)")


def _check_redis_sessions(settings: Settings, db: Database, report: _Report, spec: SessionsSpec,
                          config: dict[str, str], major_minor: tuple[int, int] | None) -> None:
    if major_minor is not None and major_minor < (4, 5):
        report.warn("session store", f"Moodle {config.get('release', '').strip()} keeps its session records in "
                                     f"{settings.db_prefix}sessions whatever the handler (the Redis store keeps them "
                                     "in Redis from Moodle 4.5 on) — set moodle_sessions = database")
    try:
        import redis
    except ImportError:
        report.fail("session store", "the redis package is missing: pip install 'gchat[redis]'")
        return
    client = make_sync_client(spec, timeout=min(settings.db_timeout, 5.0))
    store = RedisStore(spec)
    try:
        client.ping()
        sids = list(iter_redis_sessions(client, spec, limit=200))
        records = []
        for sid in sids:
            values = client.hmget(store.key(SESSION_KEY, sid), [*RedisStore.FIELDS, "sessdata"])
            record = store.decode(sid, list(values), True)
            if record is not None:
                records.append(record)
    except redis.exceptions.RedisError as exc:
        report.fail("session store", f"cannot read {spec.where()}: {_one_line(exc)} — check the host, port, "
                                     "password and TLS against $CFG->session_redis_host, _port, _auth and _encrypt")
        return
    finally:
        client.close()
    guest = _int_or(config.get("siteguest"), 1)
    timeout = settings.session_timeout or _int_or(config.get("sessiontimeout"), 7200)
    now = int(time.time())
    broken = [r for r in records if r.problem]
    live = [r for r in records if not r.problem and r.state == 0 and r.userid > 0 and r.userid != guest
            and r.timemodified + timeout >= now]
    if broken and not live:
        report.fail("sessions", f"{spec.where()} answers, but its session records cannot be decoded: "
                                f"{broken[0].problem}")
        return
    if not sids:
        report.warn("sessions", f"{spec.where()} answers, but has no session_* keys under the prefix '{spec.prefix}' "
                                "— set prefix= to $CFG->session_redis_prefix and the database number to "
                                "$CFG->session_redis_database, or log in to Moodle and run gchat check again")
    elif not live:
        report.warn("sessions", f"{spec.where()} answers and has {len(sids)} session record(s) under '{spec.prefix}'"
                                f", none of them a logged-in user's — log in to Moodle and run gchat check again")
    else:
        more = "at least " if len(sids) >= 200 else ""
        report.ok("sessions", f"{spec.where()} answers: {more}{len(live)} logged-in session(s) of "
                              f"{len(sids)} session record(s) under the prefix '{spec.prefix}'")
    sample = next((r for r in live if r.data is not None), live[0] if live else None)
    _check_mfa(settings, db, report, spec, logged_in=len(live), sample=sample)


def _int_or(value: object, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def _check_cookie(settings: Settings, report: _Report, config: dict[str, str]) -> None:
    suffix = (config.get("sessioncookie") or "").strip()
    moodle_name = "MoodleSession" + suffix
    if settings.session_cookie and settings.session_cookie != moodle_name:
        report.warn("session cookie", f"session_cookie is '{settings.session_cookie}' but Moodle's sessioncookie "
                                      f"setting makes it '{moodle_name}' — remove session_cookie unless Moodle's "
                                      "config.php sets $CFG->sessioncookie")
    elif settings.session_cookie:
        report.ok("session cookie", f"{moodle_name} (session_cookie, agrees with Moodle)")
    else:
        source = f"MoodleSession + Moodle's sessioncookie '{suffix}'" if suffix else "Moodle's sessioncookie is empty"
        report.ok("session cookie", f"{moodle_name} ({source})")

    configured = config.get("sessioncookiepath") or ""
    if not settings.moodle_wwwroot:
        report.warn("moodle_wwwroot", "not set: avatars point at http://localhost, only pages on http://localhost "
                                      "may open a WebSocket, and the cookie path cannot be checked — set "
                                      "moodle_wwwroot = Moodle's $CFG->wwwroot")
        return
    www_path = urllib.parse.urlsplit(settings.moodle_wwwroot).path.rstrip("/") + "/"
    path = moodle_cookie_path(settings.moodle_wwwroot, configured)
    ignored = ""
    if configured.strip() and configured.strip().rstrip("/") + "/" != path:
        ignored = f" (sessioncookiepath = {configured} is ignored: it is not a prefix of the wwwroot path {www_path})"
    prefix = settings.url_prefix
    if (prefix + "/").startswith(path):
        report.ok("cookie path", f"Moodle's cookie has path {path}, which covers url_prefix {prefix}{ignored}")
        return
    under = www_path.rstrip("/") + "/gchat"
    report.fail("cookie path", f"Moodle lives under {www_path} and its session cookie has path {path}, so browsers "
                               f"do not send it to {prefix}{ignored} — proxy gchat under {under} "
                               f"(url_prefix = {under}) or set sessioncookiepath = / in {SESSION_SETTINGS}")


def moodle_cookie_path(wwwroot: str, configured: str) -> str:
    """The path Moodle (2.2+, MDL-28630) gives its session cookie: ``sessioncookiepath`` when it
    is ``/`` or a prefix of the wwwroot path, otherwise the wwwroot path itself (always ending in /)."""
    www_path = urllib.parse.urlsplit(wwwroot).path.rstrip("/") + "/"
    wanted = configured.strip()
    if wanted and wanted != "/":
        wanted = wanted.rstrip("/") + "/"
    if not wanted or not www_path.startswith(wanted):
        return www_path
    return wanted


def _check_origins(settings: Settings, report: _Report) -> None:
    if not settings.moodle_wwwroot:
        return
    parts = urllib.parse.urlsplit(settings.moodle_wwwroot)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    allowed = [o.lower() for o in settings.allowed_origins]
    if not allowed:
        report.ok("allowed_origins", f"WebSockets may be opened from {origin} (the wwwroot's origin)")
    elif origin in allowed:
        report.ok("allowed_origins", f"{', '.join(allowed)} (includes the wwwroot's origin)")
    else:
        report.warn("allowed_origins", f"{', '.join(allowed)} does not include {origin}, the origin of "
                                       "moodle_wwwroot: the widget on Moodle's pages cannot open a WebSocket and "
                                       f"falls back to long-poll — add {origin} to allowed_origins or remove the "
                                       "setting")


def _moodle_prefixes(q: Query) -> list[str]:
    """Table prefixes under which every table gchat reads exists, Moodle's default ``mdl_`` first."""
    names = q.table_names()
    marker = "user_enrolments"
    candidates = {name[:-len(marker)] for name in names if name.endswith(marker)}
    found = [p for p in candidates if all(p + table in names for table in REQUIRED_TABLES)]
    return sorted(found, key=lambda p: (p != "mdl_", p))


def _major_minor(release: str) -> tuple[int, int] | None:
    match = re.match(r"\s*(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# -- colours: WCAG 2.1 contrast (https://www.w3.org/TR/WCAG21/#dfn-contrast-ratio) ------------------

# The CSS colour names an admin is likely to type; others cannot be checked (a WARN says so).
_NAMED_COLORS = {
    "black": "#000000", "white": "#ffffff", "gray": "#808080", "grey": "#808080", "silver": "#c0c0c0",
    "red": "#ff0000", "maroon": "#800000", "green": "#008000", "darkgreen": "#006400", "lime": "#00ff00",
    "olive": "#808000", "navy": "#000080", "blue": "#0000ff", "teal": "#008080", "purple": "#800080",
    "orange": "#ffa500", "yellow": "#ffff00", "brown": "#a52a2a", "darkred": "#8b0000", "darkblue": "#00008b",
    "forestgreen": "#228b22", "seagreen": "#2e8b57", "darkslategray": "#2f4f4f", "darkslategrey": "#2f4f4f",
}
TEXT_CONTRAST = 4.5   # WCAG 2.1 AA, 1.4.3: normal text
BORDER_CONTRAST = 3.0  # WCAG 2.1 AA, 1.4.11: the window's edge against the white page


def _rgb(color: str) -> tuple[float, float, float] | None:
    value = _NAMED_COLORS.get(color.strip().lower(), color.strip())
    match = re.fullmatch(r"#([0-9A-Fa-f]{3}|[0-9A-Fa-f]{6})", value)
    if not match:
        return None
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(ch * 2 for ch in digits)
    red, green, blue = (int(digits[i:i + 2], 16) / 255 for i in (0, 2, 4))
    return red, green, blue


def _luminance(rgb: tuple[float, float, float]) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    red, green, blue = (channel(c) for c in rgb)
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def contrast_ratio(first: str, second: str) -> float | None:
    """WCAG contrast of two colours (1 to 21), or None when one cannot be read."""
    a, b = _rgb(first), _rgb(second)
    if a is None or b is None:
        return None
    light, dark = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def check_colors(settings: Settings, report: _Report) -> None:
    """Warn when the configured window colours fail WCAG 2.1 AA: header text on both headers
    (4.5:1) and the border against the page (3:1). Silent when they pass (the other checks'
    output stays as it was)."""
    pairs = (("color_header_text on color_header", settings.color_header_text, settings.color_header, TEXT_CONTRAST),
             ("color_header_text on color_header_unread", settings.color_header_text, settings.color_header_unread,
              TEXT_CONTRAST),
             ("color_border on the white page", settings.color_border, "#ffffff", BORDER_CONTRAST))
    problems = []
    for what, first, second, needed in pairs:
        ratio = contrast_ratio(first, second)
        if ratio is None:
            unreadable = first if _rgb(first) is None else second
            problems.append(f"{what}: cannot check '{unreadable}' (use #RRGGBB)")
        elif ratio < needed:
            problems.append(f"{what} is {ratio:.1f}:1, WCAG 2.1 AA needs {needed:g}:1")
    if problems:
        report.warn("colours", "; ".join(problems) + " — some people cannot read the chat's headers; the "
                               "defaults pass (color_header = #267A24, color_header_unread = #8A4B00, "
                               "color_header_text = #FFFFFF, color_border = #767676)")
