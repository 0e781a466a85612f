"""Wiring: build gchat's parts from Settings and put them behind one Tornado Application.

:func:`build_services` builds the parts; :class:`Services` starts and stops them (production's
``gchat serve``, the test fixtures and the benchmark all go through it); :func:`make_app` puts
the router behind the HTTP and WebSocket routes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import tornado.httpserver
import tornado.web
from tornado.log import access_log, app_log, gen_log

from gchat.auth import TokenSigner, load_or_create_secret
from gchat.broker import Broker, MemoryBroker
from gchat.config import Settings
from gchat.db import Database
from gchat.demo import demo_routes
from gchat.metrics import MetricsHandler, build_metrics, new_observer
from gchat.moodle import Moodle
from gchat.paths import static_dir, template_dir
from gchat.privacy import Purger
from gchat.router import DRAIN_SECS, Router
from gchat.sessions import make_store
from gchat.store import ChatStore
from gchat.transports.base import OriginPolicy
from gchat.transports.heartbeat import Pinger
from gchat.transports.http import BootstrapHandler, HealthHandler
from gchat.transports.longpoll import PollHandler, PollTabs, SendHandler
from gchat.transports.websocket import WebSocketHandler

# A Tornado route: (pattern, handler class, initialize() keyword arguments).
Route = tuple[str, Any, dict[str, Any]]
RoutesFor = Callable[["Services"], Sequence[Route]]


@dataclass
class Services:
    """gchat's parts, started and stopped together::

        async with build_services(settings) as services:   # start(): router, broker
            ...                                             # aclose(): stop, broker, database

    ``stop()`` alone lets the commands in flight finish and tells every client to reconnect
    (``gchat serve`` does it before closing the HTTP connections).
    """

    settings: Settings
    db: Database
    moodle: Moodle
    store: ChatStore
    broker: Broker
    router: Router
    purger: Purger | None = None  # history retention and deleted users (gchat/privacy.py)
    _stopped: bool = field(default=False, init=False, repr=False)

    async def start(self) -> None:
        # The router first: it hears of users a crashed process left behind from the broker's
        # first heartbeat on.
        self.router.start()
        await self.broker.start()
        if self.purger is not None:
            self.purger.start()

    async def stop(self, drain_secs: float = DRAIN_SECS) -> None:
        if not self._stopped:
            self._stopped = True
            if self.purger is not None:
                await self.purger.stop()
            await self.router.stop(drain_secs)

    async def aclose(self, drain_secs: float = DRAIN_SECS) -> None:
        await self.stop(drain_secs)
        await self.broker.close()
        await self.moodle.close()
        self.db.close()

    async def __aenter__(self) -> Services:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


def demo_db_path(settings: Settings) -> str:
    return os.path.join(settings.data_dir, "demo.sqlite3")


def effective_wwwroot(settings: Settings) -> str:
    if settings.moodle_wwwroot:
        return settings.moodle_wwwroot
    # The demo serves its own avatars; a path keeps them working whatever host the page used.
    return settings.url_prefix + "/demo" if settings.is_demo_db else "http://localhost"


def make_broker(settings: Settings) -> Broker:
    if settings.broker_url:
        from gchat.redis_broker import RedisBroker  # optional dependency: pip install gchat[redis]

        return RedisBroker(settings.broker_url, log_size=settings.event_log_size)
    return MemoryBroker(log_size=settings.event_log_size)


def open_database(settings: Settings, **pool_options: Any) -> Database:
    """The database of ``db_url`` (the demo's SQLite file without one). ``pool_options`` go to
    the connection pool (the benchmark's what-if runs)."""
    if settings.is_demo_db:
        os.makedirs(settings.data_dir, exist_ok=True)
    return Database(settings.db_url, prefix=settings.db_prefix, pool_size=settings.db_pool_size,
                    timeout=settings.db_timeout, sqlite_path=demo_db_path(settings) if settings.is_demo_db else None,
                    **pool_options)


def build_services(settings: Settings, db: Database | None = None, broker: Broker | None = None) -> Services:
    """Build (not start) gchat's parts; without ``db``, the database of the settings."""
    if db is None:
        db = open_database(settings)
    wwwroot = effective_wwwroot(settings)
    if settings.moodle_wwwroot != wwwroot:
        settings = settings.replace(moodle_wwwroot=wwwroot)
    sessions = make_store(settings.moodle_sessions.with_legacy_dir(settings.moodle_session_dir),
                          timeout=settings.db_timeout)
    moodle = Moodle(db, wwwroot=wwwroot, session_timeout=settings.session_timeout,
                    session_cache_ttl=settings.session_cache_ttl, cache_ttl=settings.cache_ttl, sessions=sessions)
    store = ChatStore(db)
    broker = broker or make_broker(settings)
    secret = settings.secret_key or load_or_create_secret(settings.data_dir)
    router = Router(settings, moodle=moodle, store=store, broker=broker,
                    signer=TokenSigner(secret, settings.token_ttl), observer=new_observer())
    purger = Purger(db, retention_days=settings.history_retention_days, deleted_users=settings.purge_deleted_users)
    return Services(settings, db, moodle, store, broker, router, purger)


# A token in a URL (the WebSocket's ?token=): whatever logs the URL, the token stays out of the log.
TOKEN_IN_URL = re.compile(r"(\btoken=)[^&\s'\"#]+")
REDACTED = r"\1[redacted]"


def redact(text: str) -> str:
    return TOKEN_IN_URL.sub(REDACTED, text)


class RedactTokens(logging.Filter):
    """Takes tokens out of a log line. On Tornado's loggers, whose access lines and error lines
    (``Uncaught exception GET /gchat/ws?token=…``, the request's repr) carry request URLs: a
    token in a log file would let whoever reads it chat as that user until it expires."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def redact_tokens_in_logs() -> None:
    """Put :class:`RedactTokens` on Tornado's three loggers (once per process)."""
    for logger in (access_log, app_log, gen_log):
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


class StaticFiles(tornado.web.StaticFileHandler):
    """The widget's files. A path the operating system cannot name (a NUL byte, or another control
    character) is not found: Tornado would hand it to ``os.stat`` and answer 500."""

    def parse_url_path(self, url_path: str) -> str:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url_path):
            raise tornado.web.HTTPError(404)
        return super().parse_url_path(url_path)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log, except that refusals the protocol expects (429 rate limits, 503
    while the database is down) are warnings, not errors: one outage must not flood the log
    with stack-less "errors" (the database's own warning says what happened)."""
    status = handler.get_status()
    if status < 400:
        level = logging.INFO
    elif status < 500 or status == 503:
        level = logging.WARNING
    else:
        level = logging.ERROR
    request = handler.request
    access_log.log(level, "%d %s %s (%s) %.2fms", status, request.method, redact(request.uri or ""),
                   request.remote_ip, 1000.0 * request.request_time())


def make_app(services: Services, *, extra_routes: RoutesFor | None = None,
             **app_settings: Any) -> tornado.web.Application:
    """gchat's routes over ``services``; ``extra_routes(services)`` adds routes of a program that
    embeds gchat (the benchmark's statistics route)."""
    settings = services.settings
    prefix = settings.url_prefix
    origins = OriginPolicy(settings)
    common: dict[str, Any] = dict(router=services.router, settings=settings, origins=origins)
    tabs = PollTabs(services.router, idle_secs=settings.longpoll_idle)
    # WebSocket pings from one timer for all sockets (gchat.transports.heartbeat), not Tornado's task per socket.
    pinger = Pinger(settings.ws_ping_interval) if settings.ws_ping_interval else None
    metrics = build_metrics(services.router, services.db, services.broker, pinger)
    routes: list[Route] = [
        (prefix + "/api/bootstrap", BootstrapHandler, common),
        (prefix + "/api/poll", PollHandler, dict(common, tabs=tabs)),
        (prefix + "/api/send", SendHandler, common),
        (prefix + "/ws", WebSocketHandler, dict(common, pinger=pinger)),
        (prefix + "/health", HealthHandler, dict(common, db=services.db)),
        (prefix + "/metrics", MetricsHandler, {"metrics": metrics}),
        (prefix + "/static/(.*)", StaticFiles, {"path": static_dir()}),
    ]
    if settings.demo:
        routes += demo_routes(prefix, dict(common, moodle=services.moodle, db=services.db))
        routes.append((r"/", tornado.web.RedirectHandler, {"url": prefix + "/demo"}))
    if extra_routes is not None:
        routes += extra_routes(services)
    redact_tokens_in_logs()
    return tornado.web.Application(
        routes,
        template_path=template_dir(),
        xsrf_cookies=True,
        # Frames up to max_frame_bytes are commands; larger ones up to 4x get a too_long reply on a
        # connection that stays open; beyond that Tornado closes with 1009 without buffering more.
        websocket_max_message_size=settings.max_frame_bytes * 4,
        poll_tabs=tabs,
        log_function=log_request,
        **app_settings,
    )


def make_server(app: tornado.web.Application, settings: Settings) -> tornado.httpserver.HTTPServer:
    """The HTTP server gchat runs behind: bodies bounded, idle connections closed quickly."""
    return tornado.httpserver.HTTPServer(app, xheaders=settings.xheaders,
                                         max_body_size=max(settings.max_frame_bytes * 4, 65536),
                                         idle_connection_timeout=settings.idle_connection_timeout)
