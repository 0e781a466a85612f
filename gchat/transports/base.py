"""What every HTTP handler of gchat shares: JSON answers, errors mapped to statuses, the token
header, CORS for the allowed origins, and the client's address."""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import tornado.httputil
import tornado.web

from gchat.config import Settings
from gchat.errors import GchatError
from gchat.router import Router
from gchat.wire import dumps

log = logging.getLogger("gchat.http")

TOKEN_HEADER = "X-Gchat-Token"


def query_text(request: tornado.httputil.HTTPServerRequest, name: str) -> str | None:
    """The last value of query parameter ``name`` as text (bytes that are not UTF-8 become
    U+FFFD), or None. The caller checks its shape: a token's signature, a cursor's or a tab's
    pattern. Tornado's ``get_query_argument`` raises a 400 on bad UTF-8 instead, which after a
    WebSocket upgrade can only drop the connection."""
    values = request.query_arguments.get(name)
    return values[-1].decode("utf-8", "replace") if values else None


def forget_parsed_request(request: tornado.httputil.HTTPServerRequest, keep: str | None = None) -> None:
    """Empty what Tornado parsed of a request that is held open (a WebSocket, a parked poll)
    and that gchat never reads again: its headers, but the one named ``keep``, and its parsed
    query. The header object itself stays (Tornado's connection holds the same one)."""
    kept = request.headers.get(keep) if keep else None
    request.headers.clear()
    if keep and kept is not None:
        request.headers[keep] = kept
    request.arguments.clear()
    request.query_arguments.clear()


def origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class OriginPolicy:
    """Which page origins may use gchat with the user's cookies: the configured ones (by
    default Moodle's wwwroot origin), and gchat's own origin (the Host it was reached by)."""

    def __init__(self, settings: Settings) -> None:
        origins = set(o.lower() for o in settings.allowed_origins)
        if not origins and settings.moodle_wwwroot.startswith(("http://", "https://")):
            origins.add(origin_of(settings.moodle_wwwroot))
        self.origins = frozenset(origins)

    def allows(self, origin: str | None, host: str | None) -> bool:
        if not origin:
            return False
        origin = origin.lower().rstrip("/")
        if origin in self.origins:
            return True
        return host is not None and host != "" and urllib.parse.urlsplit(origin).netloc == host.lower()


class JsonHandler(tornado.web.RequestHandler):
    """Base of gchat's HTTP handlers: every answer is JSON and never cached."""

    def initialize(self, router: Router, settings: Settings, origins: OriginPolicy, **extra: Any) -> None:
        self.router = router
        self.gchat_settings = settings
        self.origins = origins
        for name, value in extra.items():
            setattr(self, name, value)

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and self.origins.allows(origin, None):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Allow-Credentials", "true")
            self.set_header("Vary", "Origin")

    def options(self, *args: Any) -> None:
        """CORS preflight for a page on an allowed origin calling api/* with the token header."""
        self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", f"{TOKEN_HEADER}, Content-Type")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    def check_xsrf_cookie(self) -> None:
        """api/* is protected by the custom token header (a cross-site form cannot send it)."""

    @property
    def address(self) -> str:
        return self.request.remote_ip or "?"

    def send_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(dumps(data))

    def send_error_json(self, error: GchatError) -> None:
        self.send_json({"error": error.as_dict()}, error.http_status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Anything unexpected still answers in the protocol's shape, with no traceback."""
        code = {400: "bad_command", 403: "not_allowed", 404: "not_found", 405: "bad_command",
                413: "too_long"}.get(status_code, "unavailable")
        self.finish(json.dumps({"error": {"code": code, "message": self._reason}}))
