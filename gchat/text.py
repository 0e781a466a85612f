"""Normalising message text before it is stored.

Rules (documented in docs/protocol.md): Unicode NFC; ``\\r\\n`` and ``\\r`` become ``\\n``; tabs
are kept; other control characters (C0, DEL, C1), lone surrogates (what invalid UTF-8 or a broken
JSON escape turns into), and the non-characters U+FFFE/U+FFFF are removed; leading and trailing
white space is trimmed. Text that is empty after that is refused (``empty``); text longer than
``max_message_length`` characters (code points, as MySQL's utf8mb4 counts them) is refused
(``too_long``), never cut.
"""

from __future__ import annotations

import re
import unicodedata

from gchat.errors import GchatError

_STRIP = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def normalise_text(text: object, max_length: int) -> str:
    if not isinstance(text, str):
        raise GchatError("bad_command", "text must be a string")
    if len(text) > max_length * 4 + 64:
        raise GchatError("too_long", f"a message may have at most {max_length} characters")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _STRIP.sub("", text)
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        raise GchatError("empty", "the message is empty")
    if len(text) > max_length:
        raise GchatError("too_long", f"a message may have at most {max_length} characters")
    return text
