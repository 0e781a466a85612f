"""The ``moodle_sessions`` setting: every form it takes, the old ``moodle_session_dir`` alias, and
one clear line naming the setting (exit status 2) for a value gchat cannot use."""

from __future__ import annotations

import pytest

from gchat.config import ConfigError, load_settings
from gchat.main import main
from gchat.sessions import DatabaseStore, FileStore, RedisStore, SessionsSpec, make_store, parse_moodle_sessions


def load(*argv: str, env: dict[str, str] | None = None):
    return load_settings(list(argv), environ=env or {})


def test_default_is_the_sessions_table():
    settings = load()
    assert settings.moodle_sessions == SessionsSpec() and settings.moodle_sessions.kind == "database"
    assert isinstance(make_store(settings.moodle_sessions), DatabaseStore)


def test_files_and_the_old_setting():
    spec = load("--moodle_sessions=files:/srv/moodledata/sessions").moodle_sessions
    assert (spec.kind, spec.directory) == ("files", "/srv/moodledata/sessions")
    old = load(env={"GCHAT_MOODLE_SESSION_DIR": "/srv/moodledata/sessions"}).moodle_sessions
    assert old == spec
    store = make_store(old)
    assert isinstance(store, FileStore) and store.directory == "/srv/moodledata/sessions"


def test_both_the_old_and_the_new_setting_is_an_error():
    with pytest.raises(ConfigError) as exc:
        load("--moodle_session_dir=/a", "--moodle_sessions=files:/b")
    assert str(exc.value).startswith("moodle_session_dir:")


@pytest.mark.parametrize("text,expected", [
    ("redis://cache.example:6380/2?prefix=mdl_sess_",
     dict(hosts=(("cache.example", 6380),), db=2, prefix="mdl_sess_", tls=False, serializer="php", compressor="none")),
    ("redis://:s3cret@cache.example/0?prefix=x&serializer=igbinary&compressor=gzip",
     dict(hosts=(("cache.example", 6379),), password="s3cret", serializer="igbinary", compressor="gzip")),
    ("rediss://moodle:pw@cache.example:6390/1?ssl_ca_certs=/etc/ca.pem",
     dict(tls=True, username="moodle", password="pw", ssl_ca_certs="/etc/ca.pem", db=1)),
    ("redis://h1:7000,h2:7001, h3/0?prefix=p&password=pw&compressor=zstd",
     dict(hosts=(("h1", 7000), ("h2", 7001), ("h3", 6379)), password="pw", compressor="zstd")),
    ("redis://[::1]:6379/0", dict(hosts=(("::1", 6379),))),
    ("unix:///run/redis/redis.sock?db=3&prefix=mdl_", dict(socket="/run/redis/redis.sock", db=3, prefix="mdl_")),
])
def test_redis_forms(text, expected):
    spec = parse_moodle_sessions(text)
    assert spec.kind == "redis"
    for name, value in expected.items():
        assert getattr(spec, name) == value, name
    assert spec.cluster == (len(spec.hosts) > 1)
    assert "s3cret" not in spec.describe() and "pw" not in spec.where()
    assert isinstance(make_store(spec), RedisStore)


@pytest.mark.parametrize("text,words", [
    ("memcached://h:11211", "expected database, files:<dir> or redis://"),
    ("files:", "needs Moodle's session folder"),
    ("redis://h/0?serializer=json", "serializer is php or igbinary"),
    ("redis://h/0?compressor=lz4", "compressor is none, gzip or zstd"),
    ("redis://h1,h2/3", "only database 0"),
    ("redis://h:port/0", "not a number"),
    ("redis:///0", "no host"),
    ("redis://h/0?prefx=mdl_", "unknown parameter 'prefx'"),
    ("unix://", "socket's path"),
])
def test_bad_values_say_what_is_wrong(text, words):
    with pytest.raises(ConfigError) as exc:
        load(f"--moodle_sessions={text}")
    message = str(exc.value)
    assert message.startswith("moodle_sessions: bad value") and words in message and "\n" not in message


def test_a_bad_value_stops_start_up_with_exit_status_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["check", "--moodle_sessions=redis://h/0?serializer=json"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "moodle_sessions" in err[0]
