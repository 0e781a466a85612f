"""gchat's exception tree and its mapping to the wire.

    GchatError(code, message)          any refusal a client can be told about
     ├── AuthError                     not_logged_in, bad_token, token_expired, session_ended, bad_origin
     └── Unavailable                   the database (or broker) did not answer: nothing was applied

Every error code of the protocol (docs/protocol.md) has one HTTP status here and, where a
WebSocket is closed because of it, one close code. Transports translate; the core only raises.
A ``not_allowed`` refusal may carry a ``reason`` (REFUSALS) so that a client can explain it.
"""

from __future__ import annotations

HTTP_STATUS = {
    "not_logged_in": 401,
    "bad_token": 401,
    "token_expired": 401,
    "session_ended": 401,
    "bad_origin": 403,
    "bad_json": 400,
    "bad_command": 400,
    "too_long": 413,
    "empty": 400,
    "rate_limited": 429,
    "not_allowed": 403,
    "not_found": 404,
    "too_many_connections": 429,
    "unavailable": 503,
    "shutting_down": 503,
}

# WebSocket close codes (RFC 6455 §7.4.1 plus gchat's 4000).
WS_CLOSE_GOING_AWAY = 1001
WS_CLOSE_INVALID_DATA = 1007  # a text frame that is not UTF-8
WS_CLOSE_POLICY = 1008
WS_CLOSE_TOO_BIG = 1009
WS_CLOSE_SERVER_ERROR = 1011
WS_CLOSE_TRY_AGAIN = 1013
WS_CLOSE_SESSION_ENDED = 4000


# The reasons a `not_allowed` may carry (docs/protocol.md §7), with the message sent beside each.
REFUSALS = {
    "blocked": "one of you has blocked the other",
    "contacts_only": "this user accepts messages from their contacts only",
    "no_shared_course": "you can only chat with people who share a course with you",
    "messaging_disabled": "messaging is turned off on this Moodle site",
    "cannot_send": "your Moodle roles do not allow you to send messages",
    "not_member": "you are not a member of this conversation",
}


class GchatError(Exception):
    """A refusal with a protocol error code, a human-readable message and, for some
    ``not_allowed`` refusals, a machine-readable ``reason``."""

    def __init__(self, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 400)

    def as_dict(self) -> dict[str, str]:
        body = {"code": self.code, "message": self.message}
        if self.reason is not None:
            body["reason"] = self.reason
        return body


class AuthError(GchatError):
    pass


class Unavailable(GchatError):
    def __init__(self, message: str = "the chat database is not reachable; try again") -> None:
        super().__init__("unavailable", message)


def bad_command(message: str) -> GchatError:
    return GchatError("bad_command", message)


def not_allowed(message: str, reason: str | None = None) -> GchatError:
    return GchatError("not_allowed", message, reason)


def refused(reason: str) -> GchatError:
    """A ``not_allowed`` with one of the REFUSALS reasons and its message."""
    return GchatError("not_allowed", REFUSALS[reason], reason)
