"""The wire format in one place: the event envelope, cursors, and reply framing.

An **event** is a JSON object with a ``type``; in a user's event log it carries a ``cursor``
``"<epoch>:<seq>"`` as its first key. Events are encoded once (however many users receive
them) and the cursor is spliced in front when they are read. A **reply** answers one command:
``{"type": "reply", "ref": R, "ok": true, ...}`` or ``{..., "ok": false, "error": {code,
message}}``. docs/protocol.md is the contract; docs/design.md says who calls what.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from gchat.errors import GchatError

_SCALAR = (str, int, float, bool, type(None))
MAX_REF_LENGTH = 128
MAX_CURSOR_LENGTH = 64
# Deeper than any command needs, far below where a recursive JSON parser (or repr, or a log
# line) meets Python's recursion limit: a deeper frame is refused before it is parsed.
MAX_JSON_DEPTH = 16
# What gchat's brokers hand out: an epoch of letters and digits, a canonical decimal below 10**18.
# ASCII only: str.isdigit() also takes "²" and "１", which int() then refuses.
_CURSOR = re.compile(r"([A-Za-z0-9_-]{1,32}):(0|[1-9][0-9]{0,17})", re.ASCII)
# A JSON string (closed or not: an unclosed one runs to the end) or a bracket. Unrolled so that
# the scan is linear whatever the input.
_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|([\[{])|[\]}]', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


class NotJson(ValueError):
    """A frame or body that is not a command's JSON; the message says why (for the reply)."""


class CursorGone(Exception):
    """The cursor cannot be resumed: unknown epoch, trimmed, from the future, or malformed."""


def dumps(data: Any) -> str:
    """Compact JSON, UTF-8 characters kept as they are; never NaN or Infinity (not JSON)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def loads(text: str | bytes) -> Any:
    """Parse a command frame or body; :class:`NotJson` (a ValueError) when it is not JSON gchat
    takes: not UTF-8, nested deeper than MAX_JSON_DEPTH, ``NaN``/``Infinity`` or a number too
    large for a float (no JSON, and no reply could echo it), a lone surrogate (``"\\ud800"``:
    no UTF-8 reply or database row could hold it)."""
    if isinstance(text, bytes):
        try:
            text = text.decode(json.detect_encoding(text))
        except (UnicodeDecodeError, LookupError):
            raise NotJson("not UTF-8") from None
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and nesting_depth(text) > MAX_JSON_DEPTH:
        raise NotJson(f"nested more than {MAX_JSON_DEPTH} deep")
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except NotJson:
        raise
    except ValueError as exc:  # JSONDecodeError, and an integer of more than 4300 digits
        raise NotJson(str(exc).partition(":")[0][:100]) from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise NotJson("a string holds a lone surrogate")
    return value


def nesting_depth(text: str, stop: int = MAX_JSON_DEPTH) -> int:
    """How deep ``text``'s brackets nest outside its strings, counting no further than ``stop + 1``
    (an upper bound of what a JSON parser would recurse into before it stops)."""
    depth = deepest = 0
    for match in _STRUCTURE.finditer(text):
        token = match.group()
        if match.group(1):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop:
                    break
        elif token in "]}":
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise NotJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJson("a number too large for a float")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def encode_event(event: dict[str, Any]) -> str:
    """JSON of an event without its cursor; encoded once however many users receive it."""
    return dumps(event)


def with_cursor(cursor: str, body: str) -> str:
    """Splice ``"cursor"`` in front of an encoded event (bodies always start with ``{"type"``)."""
    return '{"cursor":"' + cursor + '",' + body[1:]


def format_cursor(epoch: str, seq: int | str) -> str:
    return f"{epoch}:{seq}"


def parse_cursor(cursor: str) -> tuple[str, int]:
    """``"<epoch>:<seq>"`` → (epoch, seq); anything else is :class:`CursorGone`."""
    found = _CURSOR.fullmatch(cursor) if isinstance(cursor, str) and len(cursor) <= MAX_CURSOR_LENGTH else None
    if found is None:
        raise CursorGone(f"malformed cursor {cursor[:MAX_CURSOR_LENGTH]!r}")
    return found.group(1), int(found.group(2))


def command_ref(command: Any) -> Any:
    """The ``ref`` a reply echoes: a JSON scalar of the command, else None (a client cannot make
    the server echo a structure or a long string)."""
    ref = command.get("ref") if isinstance(command, dict) else None
    if not isinstance(ref, _SCALAR) or (isinstance(ref, str) and len(ref) > MAX_REF_LENGTH):
        return None
    return ref


def ok_reply(ref: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"type": "reply", "ref": ref, "ok": True, **result}


def error_reply(ref: Any, error: GchatError) -> dict[str, Any]:
    return {"type": "reply", "ref": ref, "ok": False, "error": error.as_dict()}


def error_event(error: GchatError) -> str:
    """The last frame of a WebSocket the server closes: why (no cursor: it is not in a log)."""
    return json.dumps({"type": "error", "code": error.code, "message": error.message})


def body_of_events(events: list[str], cursor: str) -> str:
    """A long-poll answer: the events (already JSON) and the cursor to continue from."""
    return '{"events":[' + ",".join(events) + '],"cursor":"' + cursor + '"}'
