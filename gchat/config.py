"""Settings: one frozen, typed object, read once at start-up.

Every setting is a command-line flag (``--port=8888``), a ``name = value`` line in the config
file (``--config=PATH``, default ``conf/gchat.conf`` when it exists) and an environment variable
``GCHAT_<NAME>``. Precedence: flag > environment > file > default. A wrong value raises
:class:`ConfigError`, which ``main`` turns into one line on stderr and exit status 2.
This is the only module that reads the environment or the config file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

DEFAULT_CONFIG_FILE = os.path.join("conf", "gchat.conf")


class ConfigError(Exception):
    """A setting is unknown or has a value gchat cannot use."""


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


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


def _prefix(text: str) -> str:
    value = "/" + text.strip().strip("/")
    if value == "/":
        raise ValueError("must name a path such as /gchat")
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


@dataclass(frozen=True)
class DbUrl:
    """A parsed ``mysql://user:pass@host:port/dbname?charset=utf8mb4&unix_socket=...``."""

    user: str
    password: str
    host: str
    port: int
    database: str
    unix_socket: str | None
    charset: str

    def redacted(self) -> str:
        """The URL without the password, for log lines and error messages."""
        if self.unix_socket:
            return f"mysql://{self.user}@localhost/{self.database} (socket {self.unix_socket})"
        return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}"


def parse_db_url(text: str) -> DbUrl | None:
    """Empty means the embedded demo database; anything else must be a mysql:// URL."""
    text = text.strip()
    if not text:
        return None
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("mysql", "mariadb", "mysql+pymysql"):
        raise ValueError("expected mysql://user:password@host:3306/database")
    query = urllib.parse.parse_qs(parts.query)
    unknown = set(query) - {"charset", "unix_socket"}
    if unknown:
        raise ValueError(f"unknown parameter {sorted(unknown)[0]!r} (charset and unix_socket are known)")
    database = parts.path.lstrip("/")
    if not database or "/" in database:
        raise ValueError("the URL must name a database: mysql://user@host/moodle")
    try:
        port = parts.port or 3306
    except ValueError:
        raise ValueError("the port is not a number") from None
    return DbUrl(
        user=urllib.parse.unquote(parts.username or "root"),
        password=urllib.parse.unquote(parts.password or ""),
        host=parts.hostname or "127.0.0.1",
        port=port,
        database=urllib.parse.unquote(database),
        unix_socket=query.get("unix_socket", [None])[0],
        charset=query.get("charset", ["utf8mb4"])[0],
    )


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[str], Any]
    default: str
    help: str


# The single list of settings: flags, file keys and environment names all come from it.
# conf/gchat.conf.example documents each one; a test keeps the two in step.
OPTIONS: Sequence[Option] = (
    Option("address", str, "127.0.0.1", "address to listen on"),
    Option("port", _positive(int), "8888", "port to listen on"),
    Option("url_prefix", _prefix, "/gchat", "path prefix of every route, e.g. /moodle/gchat"),
    Option("db_url", parse_db_url, "", "Moodle database, mysql://user:pass@host:3306/moodle; empty = embedded demo"),
    Option("db_prefix", _db_prefix, "mdl_", "Moodle's $CFG->prefix"),
    Option("db_pool_size", _positive(int), "8", "database connections and worker threads"),
    Option("db_timeout", _positive(float), "5", "seconds before a database connect or query is given up"),
    Option("moodle_wwwroot", str, "", "Moodle's $CFG->wwwroot (default http://localhost; demo: this server)"),
    Option("allowed_origins", str, "", "comma-separated WebSocket origins (default: the wwwroot's origin)"),
    Option("session_cookie", str, "", "Moodle cookie name (default MoodleSession + Moodle's sessioncookie)"),
    Option("moodle_session_dir", str, "", "Moodle 2.2-2.5 with dbsessions = 0: $CFG->dataroot/sessions (read-only)"),
    Option("session_timeout", _non_negative(int), "0", "seconds; 0 = Moodle's sessiontimeout config"),
    Option("secret_key", str, "", "token signing key (default: generated once and kept in data_dir)"),
    Option("data_dir", str, "", "folder for the generated secret and the demo database"),
    Option("broker_url", str, "", "empty = in-process; redis://127.0.0.1:6379/0 to run several processes"),
    Option("history_size", _positive(int), "10", "messages shown per chat window"),
    Option("max_message_length", _positive(int), "1333", "characters per message (at most 1333)"),
    Option("longpoll_timeout", _parse_range, "45-55", "seconds a long-poll waits when idle (randomised range)"),
    Option("longpoll_idle", _positive(float), "15", "seconds after its last poll ended that a long-poll tab stops counting"),
    Option("presence_grace", _non_negative(float), "10", "seconds before a user whose last tab closed is offline"),
    Option("token_ttl", _positive(int), "3600", "seconds a bootstrap token stays valid"),
    Option("session_check_interval", _positive(float), "60", "seconds between re-checks of connected Moodle sessions"),
    Option("session_cache_ttl", _non_negative(float), "10", "seconds a valid Moodle session lookup is cached"),
    Option("cache_ttl", _non_negative(float), "30", "seconds course-mates, profiles and blocks are cached"),
    Option("ws_ping_interval", _non_negative(float), "25", "seconds between WebSocket pings (0 = off)"),
    Option("event_log_size", _positive(int), "1000", "events kept per user for resuming"),
    Option("max_frame_bytes", _positive(int), "16384", "largest WebSocket frame or api/send body"),
    Option("send_rate", _positive(float), "5", "sends and opens per second per user (token bucket refill)"),
    Option("send_burst", _positive(int), "20", "sends and opens a user may make at once (bucket size)"),
    Option("opens_per_minute", _positive(int), "30", "new conversations a user may start per minute"),
    Option("max_connections_per_user", _positive(int), "20", "WebSockets and long-poll tabs per user"),
    Option("max_connections_per_address", _positive(int), "500", "WebSockets and long-poll tabs per client address"),
    Option("max_output_bytes", _positive(int), str(1024 * 1024), "pending output after which a slow client is cut off"),
    Option("idle_connection_timeout", _positive(float), "15",
           "seconds an HTTP connection may sit without a request before it is closed"),
    Option("color_header", _css_color, "#267A24", "chat window header colour (block_gchat's green, darker for contrast)"),
    Option("color_header_unread", _css_color, "#8A4B00", "header colour of a window with unread messages"),
    Option("color_header_text", _css_color, "#FFFFFF", "header text colour"),
    Option("color_border", _css_color, "#767676", "window border colour"),
    Option("chat_container", _selector, "body", "element the chat attaches to: body, or #page for themes that scroll inside it"),
    Option("demo", _parse_bool, "", "serve the /demo pages (log in as anyone!); default on without db_url"),
    Option("xheaders", _parse_bool, "false", "trust X-Real-Ip/X-Forwarded-For from a reverse proxy"),
    Option("log_level", _log_level, "info", "debug, info, warning or error"),
)
OPTION_NAMES = {opt.name for opt in OPTIONS}


@dataclass(frozen=True)
class Settings:
    address: str = "127.0.0.1"
    port: int = 8888
    url_prefix: str = "/gchat"
    db_url: DbUrl | None = None
    db_prefix: str = "mdl_"
    db_pool_size: int = 8
    db_timeout: float = 5.0
    moodle_wwwroot: str = ""
    allowed_origins: tuple[str, ...] = ()
    session_cookie: str = ""
    moodle_session_dir: str = ""
    session_timeout: int = 0
    secret_key: str = ""
    data_dir: str = ""
    broker_url: str = ""
    history_size: int = 10
    max_message_length: int = 1333
    longpoll_timeout: tuple[float, float] = (45.0, 55.0)
    longpoll_idle: float = 15.0
    presence_grace: float = 10.0
    token_ttl: int = 3600
    session_check_interval: float = 60.0
    session_cache_ttl: float = 10.0
    cache_ttl: float = 30.0
    ws_ping_interval: float = 25.0
    event_log_size: int = 1000
    max_frame_bytes: int = 16384
    send_rate: float = 5.0
    send_burst: int = 20
    opens_per_minute: int = 30
    max_connections_per_user: int = 20
    max_connections_per_address: int = 500
    max_output_bytes: int = 1024 * 1024
    idle_connection_timeout: float = 15.0
    color_header: str = "#267A24"
    color_header_unread: str = "#8A4B00"
    color_header_text: str = "#FFFFFF"
    color_border: str = "#767676"
    chat_container: str = "body"
    demo: bool = False
    xheaders: bool = False
    log_level: str = "info"
    config_file: str | None = field(default=None, compare=False)

    @property
    def is_demo_db(self) -> bool:
        return self.db_url is None

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


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
            if name in ("demo", "xheaders") and (not args or args[0].startswith("--")):
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
        if opt.name == "demo" and raw == "":
            continue  # decided below from db_url
        try:
            parsed[opt.name] = opt.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{opt.name}: bad value {raw!r} ({where}): {exc}") from None

    if "demo" not in parsed:
        parsed["demo"] = parsed["db_url"] is None
    if parsed["max_message_length"] > 1333:
        raise ConfigError("max_message_length: at most 1333 (the column holds 1333 characters)")
    origins = tuple(o.strip().rstrip("/") for o in parsed.pop("allowed_origins").split(",") if o.strip())
    for origin in origins:
        if urllib.parse.urlsplit(origin).scheme not in ("http", "https"):
            raise ConfigError(f"allowed_origins: {origin!r} is not an http(s) origin")
    wwwroot = parsed["moodle_wwwroot"].strip().rstrip("/")
    if wwwroot and urllib.parse.urlsplit(wwwroot).scheme not in ("http", "https"):
        raise ConfigError(f"moodle_wwwroot: {wwwroot!r} is not an http(s) URL")
    parsed["moodle_wwwroot"] = wwwroot
    if parsed["broker_url"] and not parsed["broker_url"].startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"broker_url: {parsed['broker_url']!r} is not a redis:// URL")
    if not parsed["data_dir"]:
        base = environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        parsed["data_dir"] = os.path.join(base, "gchat")
    return Settings(allowed_origins=origins, config_file=config_path, **parsed)
