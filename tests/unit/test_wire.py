"""The wire format: events, cursors and replies (docs/protocol.md)."""

from __future__ import annotations

import json

import pytest

from gchat.errors import GchatError
from gchat.wire import (MAX_JSON_DEPTH, CursorGone, NotJson, body_of_events, command_ref, dumps, encode_event,
                        error_event, error_reply, format_cursor, loads, nesting_depth, ok_reply, parse_cursor,
                        with_cursor)


def test_an_event_is_encoded_once_and_gets_its_cursor_in_front():
    body = encode_event({"type": "message", "text": "olá 👋"})
    assert body == '{"type":"message","text":"olá 👋"}'  # compact, UTF-8 kept
    event = with_cursor("ab12:7", body)
    assert list(json.loads(event)) == ["cursor", "type", "text"]
    assert json.loads(event) == {"cursor": "ab12:7", "type": "message", "text": "olá 👋"}


def test_cursors_round_trip():
    assert parse_cursor(format_cursor("e0f1", 0)) == ("e0f1", 0)
    assert parse_cursor("e0f1:123") == ("e0f1", 123)


@pytest.mark.parametrize("cursor", ["", "garbage", ":5", "abc:", "abc:-1", "abc:1.5", "abc:x", "a" * 60 + ":1234"])
def test_a_malformed_cursor_is_gone_never_an_error_of_the_server(cursor):
    with pytest.raises(CursorGone):
        parse_cursor(cursor)


@pytest.mark.parametrize("command,ref", [
    ({"ref": 7}, 7), ({"ref": "r-1"}, "r-1"), ({"ref": None}, None), ({"ref": True}, True), ({"ref": 1.5}, 1.5),
    ({"ref": "x" * 128}, "x" * 128), ({"ref": "x" * 129}, None), ({"ref": [1]}, None), ({"ref": {"a": 1}}, None),
    ({}, None), ([1, 2], None), ("text", None),
])
def test_only_short_scalars_are_echoed_as_ref(command, ref):
    assert command_ref(command) == ref


def test_reply_framing():
    assert ok_reply(3, {"message": {"id": 1}}) == {"type": "reply", "ref": 3, "ok": True, "message": {"id": 1}}
    error = GchatError("rate_limited", "slow down")
    assert error_reply("a", error) == {"type": "reply", "ref": "a", "ok": False,
                                       "error": {"code": "rate_limited", "message": "slow down"}}
    assert json.loads(error_event(error)) == {"type": "error", "code": "rate_limited", "message": "slow down"}


def test_a_long_poll_answer_carries_the_events_as_they_are_and_the_cursor():
    events = [with_cursor("e:1", encode_event({"type": "typing"})), with_cursor("e:2", encode_event({"type": "x"}))]
    answer = json.loads(body_of_events(events, "e:2"))
    assert answer == {"events": [{"cursor": "e:1", "type": "typing"}, {"cursor": "e:2", "type": "x"}],
                      "cursor": "e:2"}
    assert json.loads(body_of_events([], "e:2")) == {"events": [], "cursor": "e:2"}
    assert dumps({"a": "ü"}) == '{"a":"ü"}'


@pytest.mark.parametrize("seq", ["²", "１２", "٣", "𝟙", "+1", "-1", " 1", "1 ", "1\n", "1e3", "0x1", "00", "01",
                                 "9" * 19, "1:1", "1\u00a0"])
def test_a_cursor_is_ascii_digits_in_canonical_form(seq):
    """str.isdigit() takes "²" and full-width digits, which int() then refuses: a 500 before."""
    with pytest.raises(CursorGone):
        parse_cursor(f"e0f1:{seq}")


@pytest.mark.parametrize("epoch", ["é", "e f", "e\n", "x" * 33, "²"])
def test_a_cursor_epoch_is_what_a_broker_makes(epoch):
    with pytest.raises(CursorGone):
        parse_cursor(f"{epoch}:1")


def test_the_largest_cursor_still_parses():
    assert parse_cursor("ab:" + "9" * 18) == ("ab", 10**18 - 1)


@pytest.mark.parametrize("text,why", [
    ("[" * 1000 + "]" * 1000, "nested"), ("[" * 5000, "nested"), ('{"a":' * 17 + "1" + "}" * 17, "nested"),
    ('{"ref":NaN}', "NaN"), ('{"ref":Infinity}', "Infinity"), ('[-Infinity]', "-Infinity"), ("1e999", "too large"),
    ('"\\ud800"', "surrogate"), ('{"k\\udfff":1}', "surrogate"), (b"\xff\xfe\x00", "UTF"), (b'"\xed\xa0\x80"', "UTF"),
    ("1" * 5000, "limit"), ("{", "Expecting"),
])
def test_loads_refuses_what_no_reply_could_echo(text, why):
    with pytest.raises(NotJson) as refused:
        loads(text)
    assert why in str(refused.value)


def test_loads_takes_commands_and_text_that_only_looks_deep():
    assert loads('{"type":"ping","ref":"' + "[" * 3000 + '"}')["ref"] == "[" * 3000
    assert loads('{"a":"\\"[[[[[[[[[[[[[[[[[[[[[["}') == {"a": '"' + "[" * 22}
    assert loads("[" * 16 + "]" * 16) == [[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]  # MAX_JSON_DEPTH itself is fine
    assert loads('"\\ud83d\\ude00"') == "😀"  # an escaped surrogate pair is one character
    assert loads(b'{"text":"ol\xc3\xa1"}') == {"text": "olá"}
    assert loads("1.5e300") == 1.5e300


def test_nesting_depth_ignores_strings_and_stops_early():
    assert nesting_depth('[{"a":"]]]]"},[[]]]') == 3
    assert nesting_depth('"[[[[' + "[" * 100) == 0  # an unclosed string runs to the end
    assert nesting_depth("[" * 10_000, stop=MAX_JSON_DEPTH) == MAX_JSON_DEPTH + 1


def test_nothing_encodes_nan():
    with pytest.raises(ValueError):
        dumps({"ref": float("nan")})
