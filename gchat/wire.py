"""The wire format in one place: the event envelope, cursors, and reply framing.

An **event** is a JSON object with a ``type``; in a user's event log it carries a ``cursor``
``"<epoch>:<seq>"`` as its first key. Events are encoded once (however many users receive
them) and the cursor is spliced in front when they are read. A **reply** answers one command:
``{"type": "reply", "ref": R, "ok": true, ...}`` or ``{..., "ok": false, "error": {code,
message}}``. docs/protocol.md is the contract; docs/design.md says who calls what.
"""

from __future__ import annotations

import json
from typing import Any

from gchat.errors import GchatError

_SCALAR = (str, int, float, bool, type(None))
MAX_REF_LENGTH = 128
MAX_CURSOR_LENGTH = 64


class CursorGone(Exception):
    """The cursor cannot be resumed: unknown epoch, trimmed, from the future, or malformed."""


def dumps(data: Any) -> str:
    """Compact JSON, UTF-8 characters kept as they are."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """Parse a command frame or body; ValueError (or UnicodeDecodeError) when it is not JSON."""
    return json.loads(text)


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
    epoch, sep, seq = cursor.partition(":")
    if not sep or not epoch or not seq.isdigit() or len(cursor) > MAX_CURSOR_LENGTH:
        raise CursorGone(f"malformed cursor {cursor!r}")
    return epoch, int(seq)


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
