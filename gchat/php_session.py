"""PHP's session data, read-only: the ``php`` session encoding, ``serialize()`` and igbinary.

Moodle sets ``session.serialize_handler = php`` (``\\core\\session\\manager::prepare_cookies``), so
a session's data is ``USER|<serialized $USER>SESSION|<serialized $SESSION>`` (plus ``REALUSER`` and
``REALSESSION`` during "log in as"). Where Moodle keeps it depends on the session handler:

* database handler: ``{sessions}.sessdata``, base64 of that string;
* file handler (and Moodle 2.2-2.5 with ``dbsessions = 0``): ``$CFG->dataroot/sessions/sess_<sid>``,
  written by PHP's own ``files`` handler, rewritten at the end of every request (so the file's
  modification time is the session's ``timemodified``);
* Redis store (Moodle 4.5+): the ``sessdata`` field of the ``session_<sid>`` hash, compressed
  (``$CFG->session_redis_compressor``) and then serialized by phpredis's own serializer
  (PHP's, or igbinary): every field of that hash is a serialized PHP value.

gchat reads ``USER``'s ``id`` and ``realuser`` (2.2-2.5 file sessions, which have no row) and
``SESSION->tool_mfa_authenticated`` (multi-factor authentication). Nothing here writes anything.
"""

from __future__ import annotations

import os
import struct
from typing import Any

MAX_DEPTH = 256  # deeper nesting than any real session; a crafted file cannot exhaust the stack
MAX_FILE_BYTES = 16 << 20


class PhpFormatError(ValueError):
    """The bytes are not what PHP writes."""


class PhpObject(dict[str, Any]):
    """A PHP object: its properties (private/protected names without their ``\\0…\\0`` prefix)."""

    def __init__(self, class_name: str) -> None:
        super().__init__()
        self.class_name = class_name

    def __repr__(self) -> str:
        return f"PhpObject({self.class_name!r}, {dict.__repr__(self)})"


# -- serialize() ------------------------------------------------------------------------------------


class _Unserializer:
    """PHP's ``unserialize()`` format (PHP 5-8), including references.

    PHP numbers every value it reads, in order, except array keys and ``R:`` entries themselves
    (ext/standard/var_unserializer: ``var_push`` for everything but 'R'); ``r:N;`` (same object)
    and ``R:N;`` (PHP reference) name value N (1-based). The session decoder shares one table over
    all the session's variables, as PHP's ``php`` session decoder does.
    """

    def __init__(self, data: bytes, *, text: bool) -> None:
        self.data = data
        self.text = text  # strings as str (session data) or bytes (binary Redis fields)
        self.table: list[Any] = []

    def _until(self, pos: int, stop: bytes) -> tuple[bytes, int]:
        end = self.data.find(stop, pos)
        if end < 0:
            raise PhpFormatError(f"missing {stop!r} after {pos}")
        return self.data[pos:end], end + 1

    def _int(self, text: bytes) -> int:
        if not text or not text.lstrip(b"+-").isdigit():
            raise PhpFormatError(f"bad integer {text[:20]!r}")
        return int(text)

    def _string(self, pos: int) -> tuple[bytes, int]:
        """``<len>:"<bytes>"`` starting at the length."""
        length_text, pos = self._until(pos, b":")
        length = self._int(length_text)
        if length < 0 or self.data[pos:pos + 1] != b'"' or self.data[pos + 1 + length:pos + 2 + length] != b'"':
            raise PhpFormatError(f"bad string at {pos}")
        return self.data[pos + 1:pos + 1 + length], pos + 2 + length

    def _str(self, raw: bytes) -> Any:
        return raw.decode("utf-8", "replace") if self.text else raw

    def value(self, pos: int, depth: int = 0, *, key: bool = False) -> tuple[Any, int]:
        if depth > MAX_DEPTH:
            raise PhpFormatError("nested too deep")
        kind = self.data[pos:pos + 1]
        if self.data[pos + 1:pos + 2] != b":" and kind != b"N":
            raise PhpFormatError(f"expected a value at {pos}")
        if kind == b"R" and not key:
            index_text, end = self._until(pos + 2, b";")
            return self._ref(self._int(index_text)), end
        slot = None
        if not key:
            slot = len(self.table)
            self.table.append(None)
        result, end = self._value(kind, pos, depth, slot)
        if slot is not None:
            self.table[slot] = result
        return result, end

    def _ref(self, index: int) -> Any:
        if not 1 <= index <= len(self.table):
            raise PhpFormatError(f"reference to value {index} of {len(self.table)}")
        return self.table[index - 1]

    def _value(self, kind: bytes, pos: int, depth: int, slot: int | None) -> tuple[Any, int]:
        if kind == b"N":
            if self.data[pos + 1:pos + 2] != b";":
                raise PhpFormatError(f"bad null at {pos}")
            return None, pos + 2
        if kind in (b"i", b"b", b"d", b"r"):
            text, end = self._until(pos + 2, b";")
            if kind == b"i":
                return self._int(text), end
            if kind == b"b":
                if text not in (b"0", b"1"):
                    raise PhpFormatError(f"bad boolean at {pos}")
                return text == b"1", end
            if kind == b"r":
                return self._ref(self._int(text)), end
            try:  # serialize_precision -1 (PHP 7.1+): shortest round trip, e.g. 0.1, 1.0E+25, INF, NAN
                return float(text.decode("ascii")), end
            except (UnicodeDecodeError, ValueError):
                raise PhpFormatError(f"bad float {text[:30]!r}") from None
        if kind == b"s":
            raw, end = self._string(pos + 2)
            if self.data[end:end + 1] != b";":
                raise PhpFormatError(f"bad string end at {end}")
            return self._str(raw), end + 1
        if kind == b"a":
            count_text, end = self._until(pos + 2, b":")
            result: dict[Any, Any] = {}
            if slot is not None:
                self.table[slot] = result  # members may refer back to the array
            return result, self._members(result, self._int(count_text), end, depth)
        if kind == b"O":
            raw_name, end = self._string(pos + 2)
            obj = PhpObject(raw_name.decode("utf-8", "replace"))
            if self.data[end:end + 1] != b":":
                raise PhpFormatError(f"bad object at {pos}")
            count_text, end = self._until(end + 1, b":")
            if slot is not None:
                self.table[slot] = obj
            return obj, self._members(obj, self._int(count_text), end, depth)
        if kind == b"C":  # C:<len>:"<class>":<len>:{<the class's own format>}: kept opaque
            raw_name, end = self._string(pos + 2)
            length_text, end = self._until(end + 1, b":")
            length = self._int(length_text)
            if self.data[end:end + 1] != b"{" or self.data[end + 1 + length:end + 2 + length] != b"}":
                raise PhpFormatError(f"bad custom object at {pos}")
            return PhpObject(raw_name.decode("utf-8", "replace")), end + 2 + length
        if kind == b"E":  # PHP 8.1 enum case: E:<len>:"Class:Case";
            raw, end = self._string(pos + 2)
            return self._str(raw), end + 1
        raise PhpFormatError(f"unknown PHP type {kind!r} at {pos}")

    def _members(self, target: dict[Any, Any], count: int, pos: int, depth: int) -> int:
        if count < 0 or self.data[pos:pos + 1] != b"{":
            raise PhpFormatError(f"bad array at {pos}")
        pos += 1
        for _ in range(count):
            name, pos = self.value(pos, depth + 1, key=True)
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            if not isinstance(name, (int, str)):
                raise PhpFormatError(f"bad key at {pos}")
            if isinstance(name, str) and name.startswith("\0"):
                name = name.split("\0")[-1]  # private/protected property names carry a \0…\0 prefix
            target[name], pos = self.value(pos, depth + 1)
        if self.data[pos:pos + 1] != b"}":
            raise PhpFormatError(f"expected }} at {pos}")
        return pos + 1


def unserialize(data: bytes, *, text: bool = True) -> Any:
    """One value in PHP's ``serialize()`` format; strings as str (``text``) or raw bytes."""
    reader = _Unserializer(bytes(data), text=text)
    try:
        value, end = reader.value(0)
    except (IndexError, RecursionError) as exc:
        raise PhpFormatError(f"truncated or malformed: {exc}") from None
    if end != len(data):
        raise PhpFormatError(f"{len(data) - end} bytes after the value")
    return value


def parse_session(data: bytes) -> dict[str, Any]:
    """PHP's ``php`` session encoding, ``name|value name|value ...`` → {name: value}."""
    data = bytes(data)
    reader = _Unserializer(data, text=True)
    result: dict[str, Any] = {}
    pos = 0
    while pos < len(data):
        bar = data.find(b"|", pos)
        if bar <= pos:
            raise PhpFormatError(f"expected a variable name at {pos}")
        name = data[pos:bar].decode("utf-8", "replace")
        try:
            result[name], pos = reader.value(bar + 1)
        except (IndexError, RecursionError) as exc:
            raise PhpFormatError(f"truncated or malformed: {exc}") from None
    return result


# -- igbinary ------------------------------------------------------------------------------------------

# igbinary's type bytes (src/php7/igbinary.h, enum igbinary_type).
_IG_NULL, _IG_REF8, _IG_REF16, _IG_REF32, _IG_FALSE, _IG_TRUE = range(0x00, 0x06)
_IG_LONG = {0x06: (1, 1), 0x07: (1, -1), 0x08: (2, 1), 0x09: (2, -1), 0x0A: (4, 1), 0x0B: (4, -1),
            0x20: (8, 1), 0x21: (8, -1)}
_IG_DOUBLE, _IG_STRING_EMPTY = 0x0C, 0x0D
_IG_STRING_ID = {0x0E: 1, 0x0F: 2, 0x10: 4}
_IG_STRING = {0x11: 1, 0x12: 2, 0x13: 4}
_IG_ARRAY = {0x14: 1, 0x15: 2, 0x16: 4}
_IG_OBJECT = {0x17: 1, 0x18: 2, 0x19: 4}
_IG_OBJECT_ID = {0x1A: 1, 0x1B: 2, 0x1C: 4}
_IG_OBJECT_SER = {0x1D: 1, 0x1E: 2, 0x1F: 4}
_IG_OBJREF = {0x22: 1, 0x23: 2, 0x24: 4}
_IG_SIMPLE_REF = 0x25
_IG_REFS = {_IG_REF8: 1, _IG_REF16: 2, _IG_REF32: 4}


class _IgbinaryReader:
    """igbinary's format, version 1 or 2 (what phpredis stores with ``SERIALIZER_IGBINARY``).

    Two tables, as igbinary's unserializer keeps them: every string read in full (``string8``…,
    object class names) gets the next string id, later ``string_id*`` entries name it; every
    array and object (and a ``ref`` value) gets the next reference number, which ``ref*`` and
    ``objref*`` entries name.
    """

    def __init__(self, data: bytes, *, text: bool) -> None:
        self.data = data
        self.pos = 0
        self.text = text
        self.strings: list[bytes] = []
        self.refs: list[Any] = []

    def _take(self, size: int) -> bytes:
        chunk = self.data[self.pos:self.pos + size]
        if len(chunk) != size:
            raise PhpFormatError("igbinary data ends early")
        self.pos += size
        return chunk

    def _uint(self, size: int) -> int:
        return int.from_bytes(self._take(size), "big")

    def _str(self, raw: bytes) -> Any:
        return raw.decode("utf-8", "replace") if self.text else raw

    def _raw_string(self, kind: int) -> bytes:
        """A string entry (for values, keys and class names), reading through the string table."""
        if kind == _IG_STRING_EMPTY:
            return b""
        if kind in _IG_STRING:
            raw = self._take(self._uint(_IG_STRING[kind]))
            self.strings.append(raw)
            return raw
        if kind in _IG_STRING_ID:
            index = self._uint(_IG_STRING_ID[kind])
            if index >= len(self.strings):
                raise PhpFormatError(f"igbinary string id {index} of {len(self.strings)}")
            return self.strings[index]
        raise PhpFormatError(f"igbinary: expected a string, found type {kind:#04x}")

    def value(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise PhpFormatError("nested too deep")
        kind = self._uint(1)
        if kind == _IG_NULL:
            return None
        if kind in (_IG_FALSE, _IG_TRUE):
            return kind == _IG_TRUE
        if kind in _IG_LONG:
            size, sign = _IG_LONG[kind]
            return sign * self._uint(size)
        if kind == _IG_DOUBLE:
            return struct.unpack(">d", self._take(8))[0]
        if kind == _IG_STRING_EMPTY or kind in _IG_STRING or kind in _IG_STRING_ID:
            return self._str(self._raw_string(kind))
        if kind in _IG_ARRAY:
            result: dict[Any, Any] = {}
            self.refs.append(result)
            self._members(result, self._uint(_IG_ARRAY[kind]), depth)
            return result
        if kind in _IG_OBJECT or kind in _IG_OBJECT_ID:
            if kind in _IG_OBJECT:
                name = self._take(self._uint(_IG_OBJECT[kind]))
                self.strings.append(name)
            else:
                index = self._uint(_IG_OBJECT_ID[kind])
                if index >= len(self.strings):
                    raise PhpFormatError(f"igbinary class name id {index} of {len(self.strings)}")
                name = self.strings[index]
            obj = PhpObject(name.decode("utf-8", "replace"))
            self.refs.append(obj)
            inner = self._uint(1)
            if inner in _IG_ARRAY:
                self._members(obj, self._uint(_IG_ARRAY[inner]), depth)
            elif inner in _IG_OBJECT_SER:  # Serializable::serialize() output: kept opaque
                self._take(self._uint(_IG_OBJECT_SER[inner]))
            else:
                raise PhpFormatError(f"igbinary: unexpected type {inner:#04x} in an object")
            return obj
        if kind in _IG_REFS or kind in _IG_OBJREF:
            index = self._uint(_IG_REFS.get(kind) or _IG_OBJREF[kind])
            if index >= len(self.refs):
                raise PhpFormatError(f"igbinary reference {index} of {len(self.refs)}")
            return self.refs[index]
        if kind == _IG_SIMPLE_REF:
            start = len(self.refs)
            inner = self.value(depth + 1)
            if len(self.refs) == start:  # a scalar behind a PHP reference: numbered after it is read
                self.refs.append(inner)
            return inner
        raise PhpFormatError(f"igbinary: unknown type {kind:#04x} at {self.pos - 1}")

    def _members(self, target: dict[Any, Any], count: int, depth: int) -> None:
        for _ in range(count):
            kind = self._uint(1)
            if kind in _IG_LONG:
                size, sign = _IG_LONG[kind]
                key: Any = sign * self._uint(size)
            elif kind == _IG_NULL:
                key = ""
            else:
                key = self._raw_string(kind).decode("utf-8", "replace")
                if key.startswith("\0"):
                    key = key.split("\0")[-1]
            target[key] = self.value(depth + 1)


def igbinary_unserialize(data: bytes, *, text: bool = True) -> Any:
    """One value in igbinary's format (``\\x00\\x00\\x00\\x02`` header, or version 1)."""
    data = bytes(data)
    if len(data) < 5 or data[:4] not in (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"):
        raise PhpFormatError("not igbinary data (no version 1 or 2 header)")
    reader = _IgbinaryReader(data, text=text)
    reader.pos = 4
    value = reader.value()
    if reader.pos != len(data):
        raise PhpFormatError(f"{len(data) - reader.pos} bytes after the igbinary value")
    return value


# -- what gchat asks of a session -------------------------------------------------------------------


def php_truthy(value: Any) -> bool:
    """PHP's ``!empty($value)``: false for null, false, 0, 0.0, "", "0" and an empty array."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, (str, bytes)):
        return value not in ("", "0", b"", b"0")
    if isinstance(value, dict) and not isinstance(value, PhpObject):
        return bool(value)
    return True


def session_user_id(parsed: dict[str, Any]) -> int:
    """The user a session belongs to: ``USER->realuser`` during "log in as" (as Moodle's own
    ``sessions.userid`` says), else ``USER->id``; 0 when not logged in."""
    user = parsed.get("USER")
    if not isinstance(user, dict):
        return 0
    try:
        return int(user.get("realuser") or user.get("id") or 0)
    except (TypeError, ValueError):
        return 0


def mfa_passed(parsed: dict[str, Any]) -> bool:
    """True when the session says the user passed multi-factor authentication.

    tool_mfa sets ``$SESSION->tool_mfa_authenticated = true`` once the factors are passed
    (``\\tool_mfa\\manager::set_pass_state``; also when MFA is not ready for that user) and core
    never unsets it within a session, so a session accepted once need not be parsed again.
    During "log in as", ``$SESSION`` is fresh and the admin's own session is kept in
    ``REALSESSION`` (``\\core\\session\\manager::loginas``); MFA skips login-as pages, so the
    admin's own pass is what counts.
    """
    session = parsed.get("SESSION")
    if isinstance(session, dict) and php_truthy(session.get("tool_mfa_authenticated")):
        return True
    user = parsed.get("USER")
    if isinstance(user, dict) and user.get("tool_mfa_authenticated") is True:
        return True  # early versions of Catalyst's tool_mfa plugin kept it in $USER (checked with true !==)
    real = parsed.get("REALSESSION")
    return (isinstance(user, dict) and php_truthy(user.get("realuser")) and isinstance(real, dict)
            and php_truthy(real.get("tool_mfa_authenticated")))


# -- session files ------------------------------------------------------------------------------------


def read_session_bytes(directory: str, sid: str) -> tuple[bytes, int] | None:
    """The content and modification time of ``sess_<sid>``, or None when there is none or it
    cannot be read. The caller has checked the sid's shape (no path characters)."""
    path = os.path.join(directory, "sess_" + sid)
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read(MAX_FILE_BYTES)
    except OSError:
        return None
    return data, int(stat.st_mtime)


def read_session_file(directory: str, sid: str) -> tuple[int, int] | None:
    """(user id, modification time) of ``sess_<sid>``, or None when there is none or it cannot
    be read or parsed."""
    found = read_session_bytes(directory, sid)
    if found is None:
        return None
    data, mtime = found
    try:
        return session_user_id(parse_session(data)), mtime
    except PhpFormatError:
        return None


def session_ids(directory: str) -> list[str]:
    """Every session id with a file in ``directory`` (for the periodic re-check)."""
    try:
        with os.scandir(directory) as entries:
            return [entry.name[5:] for entry in entries if entry.name.startswith("sess_")]
    except OSError:
        return []
