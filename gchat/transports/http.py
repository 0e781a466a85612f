"""Plain HTTP endpoints: api/bootstrap (Moodle cookie → token) and health."""

from __future__ import annotations

from typing import Any

from gchat.db import Database
from gchat.errors import GchatError
from gchat.strings import strings_for
from gchat.transports.base import JsonHandler


class BootstrapHandler(JsonHandler):
    """``GET api/bootstrap``: checks the Moodle session cookie and answers with a token, the
    user, the strings in the user's language and the widget's settings; 401 otherwise."""

    async def get(self) -> None:
        try:
            cookie_name = await self.router.cookie_name()
            token, user = await self.router.bootstrap(self.get_cookie(cookie_name))
            permissions = await self.router.permissions(user.id)
        except GchatError as exc:
            self.send_error_json(exc)
            return
        s = self.gchat_settings
        self.send_json({
            "token": token,
            "user": user.as_dict(),
            "lang": user.lang,
            "strings": strings_for(user.lang),
            "settings": {
                "colors": {"header": s.color_header, "header_unread": s.color_header_unread,
                           "header_text": s.color_header_text, "border": s.color_border},
                "history_size": s.history_size,
                "max_message_length": s.max_message_length,
                "token_ttl": s.token_ttl,
                "container": s.chat_container,
                "longpoll_timeout": s.longpoll_timeout[1],
            },
            "transports": ["websocket", "longpoll"],
            "messaging": permissions["messaging"],
            "can_send": permissions["can_send"],
        })


class HealthHandler(JsonHandler):
    """``GET /health``: 200 when the database answers, 503 when it does not."""

    db: Database

    async def get(self) -> None:
        db_ok = await self.db.ping()
        broker_ok = await self.router.broker.healthy()
        body: dict[str, Any] = {
            "status": "ok" if db_ok and broker_ok else "unavailable",
            "database": "ok" if db_ok else "unreachable",
            "broker": {"kind": self.router.broker.name, "status": "ok" if broker_ok else "unreachable"},
            "connections": self.router.count_by_transport(),
            "shutting_down": self.router.closing,
        }
        self.send_json(body, 200 if db_ok and broker_ok else 503)
