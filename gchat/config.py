"""Settings: one frozen, typed object, read once at start-up.

Every setting is declared once, as a field of :class:`Settings` made by :func:`setting`: its
default (as written in a config file), the parser that checks and converts it, its unit, a
one-line help and a longer explanation. From that declaration follow the command-line flag
(``--port=8888``), the ``name = value`` line of the config file (``--config=PATH``, default
``conf/gchat.conf`` when it exists), the environment variable ``GCHAT_<NAME>``, ``gchat --help``
and conf/gchat.conf.example (``python -m gchat.config > conf/gchat.conf.example``; a test keeps
the file in step). Precedence: flag > environment > file > default. A wrong value raises
:class:`ConfigError`, which ``main`` turns into one line on stderr and exit status 2.
This is the only module that reads the environment or the config file.

Adding a setting: append a field to :class:`Settings` with ``setting(...)``, then regenerate the
example file. A setting's name never changes once released (it is in admins' config files); a
duration whose name has no unit says it in ``unit``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import textwrap
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gchat.session_spec import SessionsSpec, parse_moodle_sessions

DEFAULT_CONFIG_FILE = os.path.join("conf", "gchat.conf")
# The message column's size (VARCHAR in gchat_messages): no setting may allow longer messages.
MAX_MESSAGE_LENGTH = 1333
SECONDS = "seconds"


class ConfigError(Exception):
    """A setting is unknown or has a value gchat cannot use."""


# -- parsers: text → value, or ValueError with a short reason -----------------------------------


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_bool_or_auto(text: str) -> bool | None:
    """A switch that may be left empty: None, decided from other settings."""
    return None if text.strip() == "" else _parse_bool(text)


SWITCHES = (_parse_bool, _parse_bool_or_auto)  # a flag of these may stand alone: --demo


def _parse_range(text: str) -> tuple[float, float]:
    """``45-55`` (a randomised range) or ``50`` (a fixed value), in seconds."""
    low, sep, high = text.strip().partition("-")
    lo = float(low)
    hi = float(high) if sep else lo
    if lo <= 0 or hi < lo:
        raise ValueError("expected a positive number or a range like 45-55")
    return (lo, hi)


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    return parse


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise ValueError("must not be negative")
        return value

    return parse


def _message_length(text: str) -> int:
    value = int(_positive(int)(text))
    if value > MAX_MESSAGE_LENGTH:
        raise ValueError(f"at most {MAX_MESSAGE_LENGTH} (the column holds {MAX_MESSAGE_LENGTH} characters)")
    return value


def _prefix(text: str) -> str:
    value = "/" + text.strip().strip("/")
    if value == "/":
        raise ValueError("must name a path such as /gchat")
    return value


def _http_url(text: str) -> str:
    """Empty, or an http(s) URL without its trailing slash."""
    value = text.strip().rstrip("/")
    if value and urllib.parse.urlsplit(value).scheme not in ("http", "https"):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


def _origins(text: str) -> tuple[str, ...]:
    """Comma-separated http(s) origins."""
    origins = tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())
    for origin in origins:
        if urllib.parse.urlsplit(origin).scheme not in ("http", "https"):
            raise ValueError(f"{origin!r} is not an http(s) origin")
    return origins


def _broker_url(text: str) -> str:
    value = text.strip()
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{value!r} is not a redis:// URL")
    return value


def _css_color(text: str) -> str:
    """``#2F922C``, ``#888``, or a CSS colour name; nothing that could break out of a style."""
    value = text.strip()
    if not re.fullmatch(r"#[0-9A-Fa-f]{3}|#[0-9A-Fa-f]{6}|[A-Za-z]{3,20}", value):
        raise ValueError("expected a colour such as #2F922C, #888 or green")
    return value


def _selector(text: str) -> str:
    value = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9#._-]{1,64}", value):
        raise ValueError("expected a simple CSS selector such as body or #page")
    return value


def _log_level(text: str) -> str:
    value = text.strip().lower()
    if value not in ("debug", "info", "warning", "error"):
        raise ValueError("expected debug, info, warning or error")
    return value


def _db_prefix(text: str) -> str:
    value = text.strip()
    if not value.replace("_", "").isalnum() and value != "":
        raise ValueError("letters, digits and _ only")
    return value


MYSQL_SCHEMES = ("mysql", "mariadb", "mysql+pymysql")
POSTGRESQL_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "pgsql")


@dataclass(frozen=True)
class DbUrl:
    """A parsed ``mysql://user:pass@host:port/dbname?charset=utf8mb4&unix_socket=...`` or
    ``postgresql://user:pass@host:port/dbname?host=/run/postgresql&sslmode=require``.

    ``engine`` is ``mysql`` (MySQL and MariaDB, through PyMySQL) or ``postgresql`` (psycopg 3).
    ``unix_socket`` is the socket file on MySQL and the socket *folder* on PostgreSQL (libpq's
    ``host=/dir``, as in Moodle's ``$CFG->dboptions['dbsocket']``).
    """

    user: str
    password: str
    host: str
    port: int
    database: str
    unix_socket: str | None
    charset: str
    engine: str = "mysql"
    sslmode: str | None = None  # PostgreSQL only: libpq's sslmode (disable, require, verify-full, ...)

    def redacted(self) -> str:
        """The URL without the password, for log lines and error messages."""
        scheme = "postgresql" if self.engine == "postgresql" else "mysql"
        if self.unix_socket:
            return f"{scheme}://{self.user}@localhost/{self.database} (socket {self.unix_socket})"
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{self.database}"


def parse_db_url(text: str) -> DbUrl | None:
    """Empty means the embedded demo database; otherwise a mysql:// or postgresql:// URL."""
    text = text.strip()
    if not text:
        return None
    parts = urllib.parse.urlsplit(text)
    if parts.scheme in MYSQL_SCHEMES:
        engine, known, default_port, default_user = "mysql", ("charset", "unix_socket"), 3306, "root"
    elif parts.scheme in POSTGRESQL_SCHEMES:
        engine, known, default_port, default_user = "postgresql", ("host", "sslmode"), 5432, "postgres"
    else:
        raise ValueError("expected mysql://user:password@host:3306/database or "
                         "postgresql://user:password@host:5432/database")
    query = urllib.parse.parse_qs(parts.query)
    unknown = set(query) - set(known)
    if unknown:
        raise ValueError(f"unknown parameter {sorted(unknown)[0]!r} ({' and '.join(known)} are known)")
    database = parts.path.lstrip("/")
    if not database or "/" in database:
        raise ValueError(f"the URL must name a database: {parts.scheme}://user@host/moodle")
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError("the port is not a number") from None
    socket = query.get("unix_socket" if engine == "mysql" else "host", [None])[0]
    if engine == "postgresql" and socket is not None and not socket.startswith("/"):
        raise ValueError("host= in a postgresql:// URL is the folder of the server's Unix socket (an absolute "
                         "path); put a host name before the port instead")
    return DbUrl(
        user=urllib.parse.unquote(parts.username or default_user),
        password=urllib.parse.unquote(parts.password or ""),
        host=parts.hostname or "127.0.0.1",
        port=port,
        database=urllib.parse.unquote(database),
        unix_socket=socket,
        charset=query.get("charset", ["utf8mb4"])[0],
        engine=engine,
        sslmode=query.get("sslmode", [None])[0],
    )


# -- declarations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One setting as the outside sees it (flag, file key, environment variable)."""

    name: str
    parse: Callable[[str], Any]
    default: str  # as written in a config file
    help: str  # one line, for --help
    unit: str = ""  # seconds, bytes, characters, ... ("" for names, switches and counts)
    doc: str = ""  # the explanation in conf/gchat.conf.example (default: the help)
    section: str = ""  # starts a new section of the example file

    @property
    def switch(self) -> bool:
        """``--name`` alone means true."""
        return self.parse in SWITCHES


_UNSET: Any = object()


def setting(default: str, parse: Callable[[str], Any], help: str, *, unit: str = "", doc: str = "",
            section: str = "", value: Any = _UNSET) -> Any:
    """Declare a field of :class:`Settings`. ``default`` is text, as in a config file; the
    field's default value is ``parse(default)`` unless ``value`` is given (a setting decided
    from others when left empty)."""
    spec = {"parse": parse, "default": default, "help": help, "unit": unit, "doc": doc, "section": section}
    return field(default=parse(default) if value is _UNSET else value, metadata={"gchat": spec})


LISTEN, DATABASE, MOODLE, SECURITY, SCALE = ("Where gchat listens", "The Moodle database", "Moodle",
                                             "Security and storage", "Running several processes")
LOOK, CHAT, TRANSPORTS, CACHES, LIMITS, LOGGING = ("Look", "Chat", "Transports and presence",
                                                   "Caches and re-checks", "Limits", "Logging")
PRIVACY = "Moodle's messaging rules and personal data"
LARGE = "Large courses"


@dataclass(frozen=True)
class Settings:
    # -- where gchat listens
    address: str = setting(
        "127.0.0.1", str, "address to listen on", section=LISTEN,
        doc="Address to listen on. Keep 127.0.0.1 when nginx or Apache on the same host proxies gchat; "
            "use 0.0.0.0 only when a proxy on another host must reach it.")
    port: int = setting("8888", _positive(int), "port to listen on",
                        doc="TCP port to listen on (the proxy forwards /gchat/ to it).")
    url_prefix: str = setting(
        "/gchat", _prefix, "path prefix of every route, e.g. /moodle/gchat",
        doc="Path prefix of every gchat route (API, WebSocket, widget files, health). Moodle's session "
            "cookie must reach this path: when Moodle lives under a sub-path such as http://host/moodle, "
            "proxy gchat under /moodle/gchat and set url_prefix to /moodle/gchat to match, or set "
            "Moodle's sessioncookiepath to / (Site administration > Server > Session handling).")
    xheaders: bool = setting(
        "false", _parse_bool, "trust X-Real-Ip/X-Forwarded-For from a reverse proxy",
        doc="Trust the X-Real-Ip / X-Forwarded-For headers of the reverse proxy for client addresses "
            "(per-address connection limits and logs). Turn on only behind a proxy that sets them.")
    idle_connection_timeout: float = setting(
        "15", _positive(float), "seconds an HTTP connection may sit without a request before it is closed",
        unit=SECONDS, doc="Seconds an HTTP connection may stay open without a request before gchat closes it.")

    # -- the Moodle database
    db_url: DbUrl | None = setting(
        "", parse_db_url, "Moodle database, mysql://… or postgresql://user:pass@host/moodle; empty = embedded demo",
        section=DATABASE,
        doc="Moodle's database, as mysql://user:password@host:3306/moodle (MySQL, MariaDB; add "
            "?charset=utf8mb4, or ?unix_socket=/run/mysqld/mysqld.sock to connect through a socket) or "
            "postgresql://user:password@host:5432/moodle (PostgreSQL; ?host=/run/postgresql for a socket "
            "folder, ?sslmode=require). %-escape special characters in the password. Empty: the embedded "
            "demo, an SQLite file in data_dir with demo users. "
            "gchat only reads Moodle's own tables; its chat tables live in the same database.")
    db_prefix: str = setting("mdl_", _db_prefix, "Moodle's $CFG->prefix",
                             doc="Moodle's table prefix, $CFG->prefix in Moodle's config.php. gchat's tables get "
                                 "it too.")
    db_pool_size: int = setting(
        "8", _positive(int), "database connections and worker threads",
        doc="Database connections in the pool, and threads that run the queries (the server never waits "
            "on the database in its event loop).")
    db_timeout: float = setting("5", _positive(float), "seconds before a database connect or query is given up",
                                unit=SECONDS,
                                doc="Seconds before connecting to, or a query on, the database is given up.")

    # -- Moodle
    moodle_wwwroot: str = setting(
        "", _http_url, "Moodle's $CFG->wwwroot (default http://localhost; demo: this server)", section=MOODLE,
        doc="Moodle's address, $CFG->wwwroot in config.php (for example https://moodle.example.edu). "
            "Used for avatar URLs and as the default allowed WebSocket origin. Empty: http://localhost, "
            "or this server's own address in the demo.")
    allowed_origins: tuple[str, ...] = setting(
        "", _origins, "comma-separated WebSocket origins (default: the wwwroot's origin)",
        doc="Comma-separated origins (scheme://host[:port]) of the pages allowed to open a WebSocket with "
            "the user's cookies. Empty: the origin of moodle_wwwroot only.")
    session_cookie: str = setting(
        "", str, "Moodle cookie name (default MoodleSession + Moodle's sessioncookie)",
        doc="Name of Moodle's session cookie. Empty: MoodleSession followed by the sessioncookie suffix "
            "from Moodle's configuration (read from the database).")
    moodle_session_dir: str = setting(
        "", str, "Moodle 2.2-2.5 with dbsessions = 0: $CFG->dataroot/sessions (read-only)",
        doc="Moodle 2.2-2.5 sites with dbsessions = 0 keep sessions in files, not in the sessions table. "
            "Point this at $CFG->dataroot/sessions (gchat only reads it) to authenticate those users too; "
            "or better, turn dbsessions on (Site administration > Server > Session handling).")
    moodle_sessions: SessionsSpec = setting(
        "database", parse_moodle_sessions,
        "where Moodle keeps sessions: database, files:<dir>, or redis://host:6379/0?prefix=... (Moodle 4.5+)",
        doc="Where Moodle keeps its sessions:\n"
            "  database        the {prefix}sessions table (Moodle's database, file and memcached handlers)\n"
            "  files:<dir>     PHP session files, $CFG->dataroot/sessions (Moodle 2.2-2.5 with dbsessions = 0;\n"
            "                  on 2.6+ the file handler, when gchat must read the session data for MFA)\n"
            "  redis://host:6379/0?prefix=<$CFG->session_redis_prefix>   Moodle 4.5+'s Redis store\n"
            "                  ($CFG->session_handler_class = '\\core\\session\\redis'); optional password=,\n"
            "                  serializer=php|igbinary, compressor=none|gzip|zstd; rediss:// for TLS; a comma\n"
            "                  list of hosts (redis://h1:6379,h2:6379/0?...) is a Redis Cluster.\n"
            "gchat only reads sessions, never writes them.")
    session_timeout: int = setting(
        "0", _non_negative(int), "seconds; 0 = Moodle's sessiontimeout config", unit=SECONDS,
        doc="Seconds of inactivity after which a Moodle session no longer counts as logged in.\n"
            "0: Moodle's own sessiontimeout setting (read from the database).")
    demo: bool = setting(
        "", _parse_bool_or_auto, "serve the /demo pages (log in as anyone!); default on without db_url",
        value=False,
        doc="Serve the demo pages under url_prefix/demo, which log anyone in as any user: never turn this "
            "on for a real Moodle site. Empty: on without db_url (the embedded demo), off with it.")

    # -- security and storage
    secret_key: str = setting(
        "", str, "token signing key (default: generated once and kept in data_dir)", section=SECURITY,
        doc="Key that signs the tokens handed to the widget. Empty: a random key generated once and kept "
            "in data_dir/secret_key. Several gchat processes behind one site must share the same key.")
    data_dir: str = setting(
        "", str, "folder for the generated secret and the demo database",
        doc="Folder for the generated secret_key and the demo database. Empty: $XDG_DATA_HOME/gchat, "
            "that is ~/.local/share/gchat for the user gchat runs as.")
    token_ttl: int = setting(
        "3600", _positive(int), "seconds a bootstrap token stays valid", unit=SECONDS,
        doc="Seconds a token from api/bootstrap stays valid (the widget fetches a new one in time).")

    # -- running several processes
    broker_url: str = setting(
        "", _broker_url, "empty = in-process; redis://127.0.0.1:6379/0 to run several processes", section=SCALE,
        doc="Where event logs and presence live. Empty: inside this process (one process only). A Redis "
            "URL such as redis://127.0.0.1:6379/0 lets any number of gchat processes, on any hosts, serve "
            "any user without sticky sessions (pip install gchat[redis]). Two optional parameters:\n"
            "  ?key_prefix=gchat:   prefix of every key gchat writes (share one Redis between sites)\n"
            "  ?presence_ttl=15     seconds after which a crashed process's connections stop counting\n"
            "Run that Redis without persistence (save \"\", appendonly no) and with maxmemory-policy "
            "noeviction or volatile-lru; a flushed or restarted Redis costs clients a \"reset\", not messages.")
    event_log_size: int = setting(
        "1000", _positive(int), "events kept per user for resuming",
        doc="Events kept per user so that a client that reconnects can resume without a gap.")

    # -- look
    color_header: str = setting(
        "#267A24", _css_color, "chat window header colour (block_gchat's green, darker for contrast)",
        section=LOOK,
        doc="Colours of the chat windows, as the old block_gchat let admins choose them (#RGB, #RRGGBB or "
            "a colour name). The defaults keep block_gchat's green, darker, so that every state passes "
            "WCAG 2.1 AA (4.5:1); gchat check warns when configured colours do not. The header of a chat "
            "window:")
    color_header_unread: str = setting("#8A4B00", _css_color, "header colour of a window with unread messages",
                                       doc="The header of a window with unread messages:")
    color_header_text: str = setting("#FFFFFF", _css_color, "header text colour", doc="The header's text:")
    color_border: str = setting("#767676", _css_color, "window border colour", doc="The windows' border:")
    chat_container: str = setting(
        "body", _selector, "element the chat attaches to: body, or #page for themes that scroll inside it",
        doc="The element the chat windows attach to: body, or #page for themes that scroll inside it.")

    # -- chat
    history_size: int = setting(
        "10", _positive(int), "messages shown per chat window", section=CHAT,
        doc="Messages shown in a chat window when it opens (the old block_gchat showed 10).")
    max_message_length: int = setting(
        str(MAX_MESSAGE_LENGTH), _message_length, f"characters per message (at most {MAX_MESSAGE_LENGTH})",
        unit="characters",
        doc=f"Longest message, in characters (the message column holds at most {MAX_MESSAGE_LENGTH}).")

    # -- transports and presence
    longpoll_timeout: tuple[float, float] = setting(
        "45-55", _parse_range, "seconds a long-poll waits when idle (randomised range)", unit=SECONDS,
        section=TRANSPORTS,
        doc="Seconds a long-poll request waits for events when nothing happens, as a range from which "
            "each request picks at random (or one number). Keep it below the proxy's read timeout.")
    longpoll_idle: float = setting(
        "15", _positive(float), "seconds after its last poll ended that a long-poll tab stops counting",
        unit=SECONDS, doc="Seconds after its last poll ended that a long-poll tab stops counting as connected.")
    ws_ping_interval: float = setting(
        "25", _non_negative(float), "seconds between WebSocket pings (0 = off)", unit=SECONDS,
        doc="Seconds between WebSocket pings, which keep idle connections open through proxies and "
            "detect dead ones. 0: no pings.")
    presence_grace: float = setting(
        "10", _non_negative(float), "seconds before a user whose last tab closed is offline", unit=SECONDS,
        doc="Seconds a user whose last tab closed still shows as online, so that moving from one Moodle "
            "page to the next does not flash them offline to their course-mates.")

    # -- caches and re-checks
    session_check_interval: float = setting(
        "2", _positive(float), "seconds between re-checks of the Moodle sessions in use", unit=SECONDS,
        section=CACHES,
        doc="Seconds between re-checks of the Moodle sessions in use on this process (one query for all "
            "of them, whatever their number). A session that ended (logout, timeout, user suspended) "
            "ends the chat in every tab, and no command of it is accepted, at most interval x 1.1 + 1.5 "
            "seconds later: 3.7 s with the default 2, within the 5 s of docs/protocol.md. Larger values "
            "cost fewer queries and stretch that bound accordingly (names never change: 60 was the "
            "old default).")
    session_cache_ttl: float = setting(
        "10", _non_negative(float), "seconds a valid Moodle session lookup is cached", unit=SECONDS,
        doc="Seconds a valid Moodle session lookup is cached for api/bootstrap. A cached lookup older "
            "than the re-check's bound (see session_check_interval) is made again, so a session that "
            "ended never gets a new token.")
    cache_ttl: float = setting(
        "30", _non_negative(float), "seconds course-mates, profiles and blocks are cached", unit=SECONDS,
        doc="Seconds course-mates, profiles and blocks are cached (enrolment changes show this late).")

    # -- limits
    max_frame_bytes: int = setting(
        "16384", _positive(int), "largest WebSocket frame or api/send body", unit="bytes", section=LIMITS,
        doc="Largest WebSocket frame or api/send request body, in bytes.")
    send_rate: float = setting(
        "5", _positive(float), "sends and opens per second per user (token bucket refill)", unit="per second",
        doc="Sends and conversation opens per second per user, on average (token-bucket refill rate); "
            "typing notices have a bucket of the same size of their own.")
    send_burst: int = setting(
        "20", _positive(int), "sends and opens a user may make at once (bucket size)",
        doc="Sends and opens a user may make in one burst (token-bucket size).")
    opens_per_minute: int = setting("30", _positive(int), "new conversations a user may start per minute",
                                    unit="per minute", doc="New conversations a user may start per minute.")
    max_connections_per_user: int = setting(
        "20", _positive(int), "WebSockets and long-poll tabs per user",
        doc="WebSockets and long-poll tabs one user may have open at once.")
    max_connections_per_address: int = setting(
        "500", _positive(int), "WebSockets and long-poll tabs per client address",
        doc="WebSockets and long-poll tabs from one client address (a school's NAT may hold many users).")
    max_output_bytes: int = setting(
        str(1024 * 1024), _positive(int), "pending output after which a slow client is cut off", unit="bytes",
        doc="Bytes of output waiting for a client after which that slow client is disconnected.")

    # -- Moodle's rules and personal data
    honour_moodle_messaging: bool = setting(
        "true", _parse_bool, "follow Moodle's site switch 'messaging': when it is off, so is the chat",
        section=PRIVACY,
        doc="Follow Moodle's site switch 'messaging' (Site administration > Advanced features > Enable "
            "messaging system): while it is off, the widget says chat is turned off and every command "
            "on a conversation is refused.")
    history_retention_days: int = setting(
        "0", _non_negative(int), "days chat messages are kept; older ones are purged in the background "
        "(0 = keep forever)", unit="days",
        doc="Days chat messages are kept. Older ones are deleted by a background purge that runs hourly in "
            "small batches. 0: keep forever.")
    purge_deleted_users: bool = setting(
        "true", _parse_bool, "purge the conversations and messages of users deleted in Moodle, in the background",
        doc="Delete, in the same background purge, the conversations and messages of users that Moodle "
            "has deleted (user.deleted = 1).")

    # -- logging
    log_level: str = setting("info", _log_level, "debug, info, warning or error", section=LOGGING,
                             doc="Log level: debug, info, warning or error.")

    # -- large courses
    presence_interval: float = setting(
        "0.25", _non_negative(float), "seconds between presence deliveries to a user (changes in between "
        "go together)", unit=SECONDS, section=LARGE,
        doc="Seconds between two deliveries of presence changes (who came online, who went offline) to "
            "a user; the changes in between travel together in one event. A course whose students all log "
            "in at once then costs each of them a few events a second instead of one per arrival. 0: each "
            "change is sent on its own.")
    ready_online_limit: int = setting(
        "100", _non_negative(int), "online course-mates listed when a page connects (0 = all)",
        doc="Online course-mates listed (the first by name) when a page connects; beyond that the widget "
            "shows how many more are online and search finds them. Keeps the first view of a very large "
            "course small. 0: list them all.")

    # Not a setting: where the settings were read from.
    config_file: str | None = field(default=None, compare=False)

    @property
    def is_demo_db(self) -> bool:
        return self.db_url is None

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# The single list of settings: flags, file keys, environment names and the example file.
OPTIONS: Sequence[Option] = tuple(Option(name=f.name, **f.metadata["gchat"])
                                  for f in dataclasses.fields(Settings) if "gchat" in f.metadata)
OPTION_NAMES = frozenset(opt.name for opt in OPTIONS)


# -- conf/gchat.conf.example ---------------------------------------------------------------------

EXAMPLE_HEADER = """\
# gchat configuration file.
#
# Copy this file to conf/gchat.conf (read by default when gchat starts in the folder that holds
# conf/), or anywhere else and start gchat with --config=/path/to/gchat.conf.
#
# Format: one "name = value" per line; a line starting with # is a comment; a value may be put
# in 'single' or "double" quotes. Every setting below is shown commented out with its default:
# remove the leading "# " to change it.
#
# Every setting can also be given as a command-line flag (--port=8888) or as an environment
# variable GCHAT_<NAME> in upper case (GCHAT_DB_URL). Precedence: flag, then environment, then
# this file, then the default. A wrong value stops gchat with one line naming the setting.
#
# After editing, run "gchat check" with the same settings: it tests the database, the Moodle
# tables, Moodle's session settings and the cookie path, and prints advice.
#
# (Generated from gchat/config.py: python -m gchat.config > conf/gchat.conf.example)
"""
EXAMPLE_WIDTH = 96


def _comment(text: str) -> list[str]:
    """Lines of ``# text`` wrapped to the example's width; a line that starts with spaces is
    kept as written (lists, examples)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        if paragraph.startswith(" "):
            lines.append("# " + paragraph)
        else:
            lines += ["# " + line for line in textwrap.wrap(paragraph, EXAMPLE_WIDTH - 2, break_on_hyphens=False,
                                                                break_long_words=False)]
    return lines


def render_example(options: Sequence[Option] = OPTIONS) -> str:
    """conf/gchat.conf.example: every setting commented out with its default and explanation."""
    lines = EXAMPLE_HEADER.splitlines()
    for opt in options:
        if opt.section:
            lines += ["", "", f"# -- {opt.section} ".ljust(EXAMPLE_WIDTH, "-")]
        lines += ["", *_comment(opt.doc or opt.help), f"# {opt.name} =" + (f" {opt.default}" if opt.default else "")]
    return "\n".join(lines) + "\n"


def render_help(options: Sequence[Option] = OPTIONS) -> str:
    """One line per setting for ``gchat --help``."""
    return "\n".join(f"  --{o.name:<28} {o.help}" + (f" [{o.unit}]" if o.unit and o.unit not in o.help else "")
                     + f" (default: {o.default or 'empty'})" for o in options)


# -- reading ------------------------------------------------------------------------------------


def _read_config_file(path: str) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"config: {path}:{number}: expected 'name = value'")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if name not in OPTION_NAMES:
            raise ConfigError(f"config: {path}:{number}: unknown setting {name!r}")
        values[name] = value
    return values


_SWITCH_NAMES = frozenset(opt.name for opt in OPTIONS if opt.switch)


def _split_flags(argv: Sequence[str]) -> tuple[dict[str, str], str | None]:
    """``--name=value`` or ``--name value``; returns the values and an explicit --config."""
    values: dict[str, str] = {}
    config_path = None
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r} (settings are --name=value)")
        name, sep, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        if not sep:
            if name in _SWITCH_NAMES and (not args or args[0].startswith("--")):
                value = "true"
            elif not args:
                raise ConfigError(f"--{name} needs a value")
            else:
                value = args.pop(0)
        if name == "config":
            config_path = value
            continue
        if name not in OPTION_NAMES:
            raise ConfigError(f"unknown setting --{name}")
        values[name] = value
    return values, config_path


def load_settings(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from flags, environment, config file and defaults, in that precedence."""
    environ = os.environ if environ is None else environ
    flags, config_path = _split_flags(argv)
    config_path = config_path or environ.get("GCHAT_CONFIG") or None
    if config_path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        config_path = DEFAULT_CONFIG_FILE
    file_values = _read_config_file(config_path) if config_path else {}
    env_values = {
        key[len("GCHAT_"):].lower(): value
        for key, value in environ.items()
        if key.startswith("GCHAT_") and key != "GCHAT_CONFIG"
    }
    for name in env_values:
        if name not in OPTION_NAMES:
            raise ConfigError(f"unknown setting GCHAT_{name.upper()} in the environment")

    parsed: dict[str, Any] = {}
    for opt in OPTIONS:
        for source, values in (("--" + opt.name, flags), ("GCHAT_" + opt.name.upper(), env_values),
                               (f"{opt.name} in {config_path}", file_values)):
            if opt.name in values:
                raw, where = values[opt.name], source
                break
        else:
            raw, where = opt.default, "default"
        try:
            parsed[opt.name] = opt.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{opt.name}: bad value {raw!r} ({where}): {exc}") from None

    if parsed["demo"] is None:
        parsed["demo"] = parsed["db_url"] is None
    if parsed["moodle_session_dir"] and parsed["moodle_sessions"].kind != "database":
        # moodle_session_dir is the old name of moodle_sessions = files:<dir>: one place says where.
        raise ConfigError("moodle_session_dir: set moodle_sessions instead (moodle_session_dir is its old name "
                          "for files:<dir>), not both")
    parsed["moodle_sessions"] = parsed["moodle_sessions"].with_legacy_dir(parsed["moodle_session_dir"])
    if not parsed["data_dir"]:
        base = environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        parsed["data_dir"] = os.path.join(base, "gchat")
    return Settings(config_file=config_path, **parsed)


if __name__ == "__main__":
    print(render_example(), end="")
