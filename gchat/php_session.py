"""Moodle 2.2–2.5 sessions kept in files (``dbsessions = 0``): reading ``sess_<sid>``.

With file sessions Moodle never writes ``{sessions}``; PHP's ``files`` handler keeps each session
in ``$CFG->dataroot/sessions/sess_<sid>``, rewritten at the end of every request (so the file's
modification time is the session's ``timemodified``). Its content is PHP's session format:
``USER|<serialized object>SESSION|<serialized object>``. gchat reads only ``USER``'s ``id`` and
``realuser`` (set during "log in as": the session belongs to the admin, as Moodle's own
``sessions.userid`` would say). Setting: ``moodle_session_dir``. Read-only, like everything gchat
does with Moodle.
"""

from __future__ import annotations

import os
import re
from typing import Any

_NAME = re.compile(rb"([A-Za-z0-9_]+)\|")


class PhpFormatError(ValueError):
    pass


def _unserialize(data: bytes, pos: int) -> tuple[Any, int]:
    """One value of PHP's serialize() format starting at ``pos``; returns it and the next position."""
    kind = data[pos:pos + 1]
    if kind == b"N":
        return None, pos + 2
    if kind in (b"i", b"b", b"d"):
        end = data.index(b";", pos)
        text = data[pos + 2:end].decode("ascii")
        value: Any = int(text) if kind == b"i" else bool(int(text)) if kind == b"b" else float(text)
        return value, end + 1
    if kind == b"s":
        colon = data.index(b":", pos + 2)
        length = int(data[pos + 2:colon])
        start = colon + 2  # skip :"
        return data[start:start + length].decode("utf-8", "replace"), start + length + 2  # skip ";
    if kind in (b"a", b"O"):
        if kind == b"O":  # O:8:"stdClass":N:{...}
            colon = data.index(b":", pos + 2)
            name_length = int(data[pos + 2:colon])
            pos = colon + 2 + name_length + 2  # past "name":
            colon = data.index(b":", pos)
            count = int(data[pos:colon])
        else:  # a:N:{...}
            colon = data.index(b":", pos + 2)
            count = int(data[pos + 2:colon])
        pos = colon + 2  # past :{
        result: dict[Any, Any] = {}
        for _ in range(count):
            key, pos = _unserialize(data, pos)
            value, pos = _unserialize(data, pos)
            if isinstance(key, str):
                key = key.split("\0")[-1]  # private/protected property names carry a \0 prefix
            result[key] = value
        return result, pos + 1  # past }
    if kind in (b"r", b"R"):  # references: not needed for USER's scalars
        end = data.index(b";", pos)
        return None, end + 1
    raise PhpFormatError(f"unknown PHP type {kind!r} at {pos}")


def parse_session(data: bytes) -> dict[str, Any]:
    """``name|value name|value ...`` → {name: value}."""
    result: dict[str, Any] = {}
    pos = 0
    while pos < len(data):
        match = _NAME.match(data, pos)
        if match is None:
            raise PhpFormatError(f"expected a variable name at {pos}")
        try:
            value, pos = _unserialize(data, match.end())
        except (ValueError, IndexError) as exc:
            raise PhpFormatError(str(exc)) from None
        result[match.group(1).decode("ascii")] = value
    return result


def read_session_file(directory: str, sid: str) -> tuple[int, int] | None:
    """(user id, modification time) of ``sess_<sid>``, or None when there is none or it cannot
    be read. The caller has checked the sid's shape (no path characters)."""
    path = os.path.join(directory, "sess_" + sid)
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read(1 << 20)
    except OSError:
        return None
    try:
        user = parse_session(data).get("USER")
    except PhpFormatError:
        return None
    if not isinstance(user, dict):
        return (0, int(stat.st_mtime))
    try:
        uid = int(user.get("realuser") or user.get("id") or 0)
    except (TypeError, ValueError):
        uid = 0
    return (uid, int(stat.st_mtime))


def session_ids(directory: str) -> list[str]:
    """Every session id with a file in ``directory`` (for the periodic re-check)."""
    try:
        with os.scandir(directory) as entries:
            return [entry.name[5:] for entry in entries if entry.name.startswith("sess_")]
    except OSError:
        return []
