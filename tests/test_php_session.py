"""gchat's readers of PHP's formats against what real PHP writes: serialize() (with references,
objects and serialize_precision floats), igbinary (as phpredis stores it), and the php session
encoding. PHP prints each value both serialized and as JSON; the readers must agree with the JSON."""

from __future__ import annotations

import base64
import json
import math

import pytest

from gchat.php_session import (PhpFormatError, PhpObject, igbinary_unserialize, mfa_passed, parse_session,
                               php_truthy, session_user_id, unserialize)
from tests.php_moodle import Php


@pytest.fixture(scope="module")
def php():
    return Php()


def as_json(value):
    """What json_encode() makes of a PHP value: lists for 0..n-1 arrays, public properties only."""
    if isinstance(value, PhpObject):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, dict):
        if list(value) == list(range(len(value))):
            return [as_json(v) for v in value.values()]
        return {str(k): as_json(v) for k, v in value.items()}
    return value



@pytest.mark.parametrize("spec", [dict(mfa=True), dict(mfa=None), dict(loginas=77, mfa=True)],
                         ids=["mfa passed", "password only", "log in as"])
def test_serialize_and_igbinary_read_as_php_wrote_them(php, spec):
    out = php.sample(**spec)
    expected = json.loads(out["json"])
    from_php = unserialize(base64.b64decode(out["serialized"]))
    from_igbinary = igbinary_unserialize(base64.b64decode(out["igbinary"]))
    if "loginas" in spec:
        context = from_php["USER"].pop("loginascontext")  # protected properties: not in json_encode()
        assert context.class_name == "core\\context\\system" and context["_contextlevel"] == 10
        assert from_igbinary["USER"].pop("loginascontext") == context
        expected["USER"].pop("loginascontext")
    assert as_json(from_php) == expected
    assert as_json(from_igbinary) == expected
    for parsed in (from_php, from_igbinary):
        session = parsed.get("REALSESSION") or parsed["SESSION"]  # log in as: a fresh $SESSION
        assert session["navcache"] is session["navcache_copy"]  # r: / objref: the same object
        assert session["fontsize"] == 0.1 + 0.2 and session["huge"] == 1e25  # serialize_precision -1
        assert parsed["scalars"]["big"] == 2 ** 63 - 1 and parsed["scalars"]["utf8"] == "Zoë ✓"


def test_a_session_file_written_by_php_is_parsed(php, tmp_path):
    sid = php.file_login(str(tmp_path), 42, mfa=True)
    parsed = parse_session((tmp_path / f"sess_{sid}").read_bytes())
    assert set(parsed) == {"USER", "SESSION"}
    assert session_user_id(parsed) == 42 and mfa_passed(parsed)
    assert parsed["USER"]["preference"]["email_bounce_count"] == "1"
    assert parsed["SESSION"]["counter"] == parsed["SESSION"]["counter_alias"] == 3  # R: a PHP reference


def test_log_in_as_in_a_session_file(php, tmp_path):
    passed = parse_session((tmp_path / f"sess_{php.file_login(str(tmp_path), 5, loginas=9, mfa=True)}").read_bytes())
    assert set(passed) == {"USER", "SESSION", "REALUSER", "REALSESSION"}
    assert session_user_id(passed) == 5 and passed["USER"]["id"] == "9"
    assert mfa_passed(passed)
    not_passed = parse_session((tmp_path / f"sess_{php.file_login(str(tmp_path), 5, loginas=9)}").read_bytes())
    assert not mfa_passed(not_passed)


@pytest.mark.parametrize("flag,passed", [(True, True), (False, False), (None, False)])
def test_mfa_flag_from_database_sessdata(php, flag, passed):
    out = php.run({"action": "login", "store": "database", "sid": "abc123", "userid": 8, "mfa": flag})
    parsed = parse_session(base64.b64decode(out["sessdata"]))
    assert mfa_passed(parsed) is passed and session_user_id(parsed) == 8


@pytest.mark.parametrize("value,truthy", [(None, False), (False, False), (0, False), (0.0, False), ("", False),
                                          ("0", False), ({}, False), (True, True), (1, True), ("1", True),
                                          ("0.0", True), ({0: 0}, True), (math.nan, True)])
def test_php_truthiness(value, truthy):
    assert php_truthy(value) is truthy


BROKEN = {
    "truncated": b'a:2:{i:0;s:3:"abc";i:1;',
    "string longer than the data": b's:99:"abc";',
    "bad integer": b"i:12x;",
    "bad boolean": b"b:2;",
    "reference to nothing": b"a:1:{i:0;R:9;}",
    "unknown type": b"X:1;",
    "trailing bytes": b"i:1;i:2;",
    "deep": b"a:1:{i:0;" * 5000 + b"N;" + b"}" * 5000,
}


@pytest.mark.parametrize("data", list(BROKEN.values()), ids=list(BROKEN))
def test_malformed_serialized_data_is_a_format_error(data):
    with pytest.raises(PhpFormatError):
        unserialize(data)


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x00\x02", b"\x00\x00\x00\x03\x00", b"\x00\x00\x00\x02\x11\x05ab",
                                  b"\x00\x00\x00\x02\x0e\x00", b"\x00\x00\x00\x02\x01\x00", b"\x00\x00\x00\x02\xff",
                                  b"\x00\x00\x00\x02" + b"\x14\x01\x06\x00" * 1000 + b"\x00"],
                         ids=["empty", "header only", "version 3", "short string", "unknown string id",
                              "reference to nothing", "unknown type", "deep"])
def test_malformed_igbinary_is_a_format_error(data):
    with pytest.raises(PhpFormatError):
        igbinary_unserialize(data)


def test_a_session_without_names_is_a_format_error():
    with pytest.raises(PhpFormatError):
        parse_session(b"|i:1;")
