"""Settings: flags, GCHAT_* environment, config file, defaults, precedence and clear errors."""

from __future__ import annotations

import os
import re

import pytest

from gchat.config import (MAX_MESSAGE_LENGTH, OPTION_NAMES, OPTIONS, ConfigError, Settings, load_settings,
                          parse_db_url, render_example, render_help)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "conf", "gchat.conf.example")
SETTING_LINE = re.compile(r"^#\s?([a-z][a-z0-9_]*) = ?(.*)$")


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Run in an empty folder, so that no conf/gchat.conf of the checkout is read by default."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(*argv: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(list(argv), environ=dict(env or {}))


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def assert_names(exc: pytest.ExceptionInfo, *words: str) -> None:
    message = str(exc.value)
    assert "\n" not in message, "one line"
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# -- sources -----------------------------------------------------------------------------------------


def test_defaults():
    s = load()
    assert (s.address, s.port, s.url_prefix, s.db_url, s.db_prefix) == ("127.0.0.1", 8888, "/gchat", None, "mdl_")
    assert s.db_pool_size == 8 and s.history_size == 10 and s.max_message_length == 1333
    assert s.longpoll_timeout == (45.0, 55.0) and s.presence_grace == 10.0
    assert s.log_level == "info" and s.broker_url == "" and s.allowed_origins == ()
    assert s.is_demo_db and s.demo, "no db_url: the embedded demo, with its pages"
    assert s.config_file is None


def test_defaults_follow_options():
    """Every OPTIONS default parses, and Settings' field defaults agree with it."""
    loaded = load()
    for opt in OPTIONS:
        if opt.name in ("demo", "allowed_origins", "db_url", "data_dir", "moodle_wwwroot"):
            continue  # decided from other settings or the environment, checked elsewhere
        assert getattr(loaded, opt.name) == opt.parse(opt.default), opt.name
        assert getattr(Settings(), opt.name) == opt.parse(opt.default), opt.name


def test_flags():
    s = load("--port=9001", "--address", "0.0.0.0", "--db-prefix=moodle_", "--url_prefix=/moodle/gchat/",
             "--longpoll_timeout=20", "--xheaders", "--log_level=DEBUG")
    assert s.port == 9001
    assert s.address == "0.0.0.0"
    assert s.db_prefix == "moodle_"
    assert s.url_prefix == "/moodle/gchat"
    assert s.longpoll_timeout == (20.0, 20.0)
    assert s.xheaders is True
    assert s.log_level == "debug"


def test_demo_flag_alone_and_with_a_value():
    assert load("--demo").demo is True
    assert load("--demo=false").demo is False
    assert load("--db_url=mysql://u@h/moodle").demo is False
    assert load("--db_url=mysql://u@h/moodle", "--demo=yes").demo is True


def test_environment():
    s = load(env={"GCHAT_PORT": "9002", "GCHAT_DB_URL": "mysql://moodle:pw@db:3307/moodle",
                  "GCHAT_ALLOWED_ORIGINS": "https://a.example, https://b.example/", "PATH": "/bin"})
    assert s.port == 9002
    assert s.db_url is not None and s.db_url.host == "db" and s.db_url.port == 3307
    assert s.allowed_origins == ("https://a.example", "https://b.example")


def test_config_file(elsewhere):
    path = write(elsewhere / "gchat.conf", """
# a comment
   # an indented comment

port = 9003
address=0.0.0.0
secret_key = "quoted # not a comment"
session_cookie = 'MoodleSessionabc'
moodle_wwwroot = https://moodle.example/
history_size   =   15
""")
    s = load(f"--config={path}")
    assert s.port == 9003
    assert s.address == "0.0.0.0"
    assert s.secret_key == "quoted # not a comment"
    assert s.session_cookie == "MoodleSessionabc"
    assert s.moodle_wwwroot == "https://moodle.example"
    assert s.history_size == 15
    assert s.config_file == path


def test_config_file_from_environment_and_default_location(elsewhere):
    path = write(elsewhere / "other.conf", "port = 9004\n")
    assert load(env={"GCHAT_CONFIG": path}).port == 9004
    (elsewhere / "conf").mkdir()
    write(elsewhere / "conf" / "gchat.conf", "port = 9005\n")
    s = load()
    assert s.port == 9005
    assert s.config_file == os.path.join("conf", "gchat.conf")
    assert load("--config", path).port == 9004, "an explicit --config wins over conf/gchat.conf"


def test_precedence_flag_env_file_default(elsewhere):
    path = write(elsewhere / "gchat.conf", "port = 1001\nhistory_size = 11\ncache_ttl = 12\n")
    env = {"GCHAT_CONFIG": path, "GCHAT_PORT": "1002", "GCHAT_HISTORY_SIZE": "21"}
    s = load("--port=1003", env=env)
    assert s.port == 1003, "flag beats environment"
    assert s.history_size == 21, "environment beats file"
    assert s.cache_ttl == 12, "file beats default"
    assert s.presence_grace == 10, "default"
    assert load(env=env).port == 1002
    assert load(env={"GCHAT_CONFIG": path}).port == 1001


def test_a_bad_value_in_a_lower_source_is_still_reported_when_overridden_is_not(elsewhere):
    # Only the value that wins is parsed: a flag fixes a bad file value.
    path = write(elsewhere / "gchat.conf", "port = not-a-number\n")
    assert load(f"--config={path}", "--port=9006").port == 9006
    with pytest.raises(ConfigError) as exc:
        load(f"--config={path}")
    assert_names(exc, "port", "not-a-number", path)


# -- unknown settings and bad values -----------------------------------------------------------------


def test_unknown_flag():
    with pytest.raises(ConfigError) as exc:
        load("--colour=red")
    assert_names(exc, "colour")


def test_unknown_environment_variable():
    with pytest.raises(ConfigError) as exc:
        load(env={"GCHAT_COLOUR": "red"})
    assert_names(exc, "GCHAT_COLOUR")


def test_unknown_file_setting(elsewhere):
    path = write(elsewhere / "gchat.conf", "port = 9007\n\ncolour = red\n")
    with pytest.raises(ConfigError) as exc:
        load(f"--config={path}")
    assert_names(exc, "colour", ":3")


@pytest.mark.parametrize("text", ["just some words", "= value"])
def test_file_line_that_is_not_a_setting(elsewhere, text):
    path = write(elsewhere / "gchat.conf", f"port = 9008\n{text}\n")
    with pytest.raises(ConfigError) as exc:
        load(f"--config={path}")
    assert_names(exc, path, ":2")


def test_missing_config_file(elsewhere):
    with pytest.raises(ConfigError) as exc:
        load(f"--config={elsewhere / 'nope.conf'}")
    assert_names(exc, "nope.conf")


@pytest.mark.parametrize("argv", [["stray"], ["--port"]])
def test_malformed_command_line(argv):
    with pytest.raises(ConfigError):
        load(*argv)


BAD_VALUES = [
    ("port", "http"), ("port", "0"), ("port", "-1"), ("port", "80.5"),
    ("db_pool_size", "0"), ("db_timeout", "soon"), ("db_timeout", "0"),
    ("url_prefix", "/"), ("url_prefix", ""),
    ("db_url", "oracle://u@h/moodle"), ("db_url", "mysql://u@h"), ("db_url", "mysql://u@h:port/moodle"),
    ("db_url", "mysql://u@h/moodle?sslmode=require"),
    ("db_prefix", "mdl-"), ("db_prefix", "mdl_;drop"),
    ("moodle_wwwroot", "moodle.example"), ("moodle_wwwroot", "ftp://moodle.example"),
    ("allowed_origins", "moodle.example"), ("allowed_origins", "https://ok.example,ws://no.example"),
    ("session_timeout", "-5"), ("session_timeout", "2h"),
    ("broker_url", "memcached://127.0.0.1"),
    ("history_size", "0"), ("max_message_length", "1334"), ("max_message_length", "0"),
    ("longpoll_timeout", "55-45"), ("longpoll_timeout", "0"), ("longpoll_timeout", "long"),
    ("longpoll_idle", "0"), ("idle_connection_timeout", "never"),
    ("presence_grace", "-1"), ("presence_interval", "-0.1"), ("presence_interval", "soon"),
    ("ready_online_limit", "-1"), ("ready_online_limit", "ten"), ("token_ttl", "0"),
    ("session_check_interval", "0"),
    ("session_cache_ttl", "-1"), ("cache_ttl", "forever"), ("ws_ping_interval", "-1"),
    ("event_log_size", "0"), ("max_frame_bytes", "0"), ("send_rate", "0"), ("send_burst", "0"),
    ("opens_per_minute", "0"), ("max_connections_per_user", "0"), ("max_connections_per_address", "0"),
    ("max_output_bytes", "0"), ("color_header", "red;}body{x"), ("color_header_unread", "url(x)"),
    ("color_header_text", "#12345"), ("color_border", ""), ("chat_container", "body > div{}"),
    ("demo", "maybe"), ("xheaders", "2"), ("log_level", "loud"),
    ("honour_moodle_messaging", "perhaps"), ("history_retention_days", "-1"), ("history_retention_days", "1y"),
    ("purge_deleted_users", "2"),
    ("moodle_sessions", "memcached://h:11211"), ("moodle_sessions", "files:"),
    ("moodle_sessions", "redis://h:6379/0?serializer=json"), ("moodle_sessions", "redis://h1,h2/3"),
]


@pytest.mark.parametrize("name,value", BAD_VALUES)
@pytest.mark.parametrize("source", ["flag", "env", "file"])
def test_bad_value_names_the_setting(elsewhere, name, value, source):
    if source == "flag":
        argv, env = [f"--{name}={value}"], {}
    elif source == "env":
        argv, env = [], {f"GCHAT_{name.upper()}": value}
    else:
        path = write(elsewhere / "gchat.conf", f"{name} = {value}\n")
        argv, env = [f"--config={path}"], {}
    with pytest.raises(ConfigError) as exc:
        load(*argv, env=env)
    assert_names(exc, name)


def test_every_option_has_a_bad_value_case():
    """New settings with a parser that can refuse something should get a case in BAD_VALUES."""
    accepts_anything = {"address", "secret_key", "data_dir", "session_cookie", "moodle_session_dir"}
    covered = {name for name, _ in BAD_VALUES}
    missing = OPTION_NAMES - covered - accepts_anything
    assert not missing, f"add bad-value cases for {sorted(missing)}"


# -- db_url --------------------------------------------------------------------------------------------


def test_db_url_parts():
    url = parse_db_url("mysql://moodle:p%40ss%3Aw%2Frd%25@db.example:3307/moodle22?charset=utf8")
    assert url is not None
    assert (url.user, url.password, url.host, url.port, url.database, url.charset, url.unix_socket) == \
        ("moodle", "p@ss:w/rd%", "db.example", 3307, "moodle22", "utf8", None)
    assert "p@ss" not in url.redacted() and "p%40ss" not in url.redacted()


def test_db_url_defaults():
    url = parse_db_url("mysql://db.example/moodle")
    assert url is not None
    assert (url.user, url.password, url.port, url.charset, url.unix_socket) == ("root", "", 3306, "utf8mb4", None)
    assert parse_db_url("") is None
    assert parse_db_url("   ") is None
    assert parse_db_url("mariadb://u@h/m") is not None


def test_db_url_unix_socket():
    url = parse_db_url("mysql://moodle:secret@localhost/moodle?unix_socket=/run/mysqld/mysqld.sock&charset=utf8mb4")
    assert url is not None
    assert url.unix_socket == "/run/mysqld/mysqld.sock"
    assert url.charset == "utf8mb4"
    assert url.database == "moodle"
    assert "/run/mysqld/mysqld.sock" in url.redacted()


@pytest.mark.parametrize("text", [
    "moodle", "http://h/moodle", "mysql://h", "mysql://h/", "mysql://h/a/b", "mysql://h:99999/m", "mysql://h:x/m",
    "mysql://h/m?ssl=1",
])
def test_malformed_db_url(text):
    with pytest.raises(ValueError):
        parse_db_url(text)
    with pytest.raises(ConfigError) as exc:
        load(f"--db_url={text}")
    assert_names(exc, "db_url")


# -- conf/gchat.conf.example -----------------------------------------------------------------------


def example_settings() -> list[tuple[int, str, str]]:
    with open(EXAMPLE, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    return [(number, m.group(1), m.group(2)) for number, line in enumerate(lines)
            if (m := SETTING_LINE.match(line))]


def test_example_documents_every_option_once_and_nothing_else():
    names = [name for _, name, _ in example_settings()]
    assert len(names) == len(set(names)), "a setting is listed twice"
    assert set(names) - OPTION_NAMES == set(), "the example lists settings gchat does not have"
    assert OPTION_NAMES - set(names) == set(), "settings missing from conf/gchat.conf.example"


def test_example_shows_each_default_with_an_explanation():
    with open(EXAMPLE, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    defaults = {opt.name: opt.default for opt in OPTIONS}
    for number, name, value in example_settings():
        assert value == defaults[name], f"{name}: the example shows {value!r}, the default is {defaults[name]!r}"
        above = lines[number - 1]
        assert above.startswith("# ") and len(above) > 10 and not SETTING_LINE.match(above), \
            f"{name} has no explanation above it"


def test_example_uncommented_is_valid_and_changes_nothing(elsewhere):
    with open(EXAMPLE, encoding="utf-8") as handle:
        text = "\n".join(line[2:] if SETTING_LINE.match(line) else line for line in handle.read().splitlines())
    path = write(elsewhere / "gchat.conf", text)
    assert load(f"--config={path}") == load()


def test_example_is_generated_from_the_declarations():
    with open(EXAMPLE, encoding="utf-8") as handle:
        assert handle.read() == render_example(), \
            "conf/gchat.conf.example is out of date: python -m gchat.config > conf/gchat.conf.example"


# -- one declaration per setting ---------------------------------------------------------------------


def test_every_setting_is_a_flag_a_variable_and_a_file_line(elsewhere):
    """Each declared setting is reachable from the three sources under its one name."""
    for opt in OPTIONS:
        if opt.switch:
            continue  # covered by test_demo_flag_alone_and_with_a_value and test_flags
        path = write(elsewhere / "gchat.conf", f"{opt.name} = {opt.default}\n")
        from_file = load(f"--config={path}")
        assert getattr(from_file, opt.name) == getattr(load(f"--{opt.name}={opt.default}"), opt.name), opt.name
        assert getattr(from_file, opt.name) == getattr(load(env={f"GCHAT_{opt.name.upper()}": opt.default}),
                                                       opt.name), opt.name


DURATION_WORDS = ("ttl", "timeout", "interval", "grace", "idle")


def test_durations_carry_their_unit():
    """A duration says its unit: in its name, or declared (shown by --help and in the example)."""
    for opt in OPTIONS:
        if any(word in opt.name for word in DURATION_WORDS):
            assert opt.unit == "seconds" or opt.name.endswith(("_secs", "_ms")), opt.name
            assert "seconds" in (opt.doc or opt.help).lower(), opt.name
        if opt.unit:
            assert opt.unit in render_help([opt]), opt.name


def test_help_lists_every_setting_once():
    text = render_help()
    for opt in OPTIONS:
        assert text.count(f"--{opt.name} ") == 1, opt.name


def test_message_length_bound_comes_from_one_constant():
    assert Settings().max_message_length == MAX_MESSAGE_LENGTH
    with pytest.raises(ConfigError) as exc:
        load(f"--max_message_length={MAX_MESSAGE_LENGTH + 1}")
    assert_names(exc, "max_message_length", str(MAX_MESSAGE_LENGTH))
    source = open(os.path.join(ROOT, "gchat", "config.py"), encoding="utf-8").read()
    assert source.count(str(MAX_MESSAGE_LENGTH)) == 1
