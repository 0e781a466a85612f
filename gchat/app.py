"""Wiring: build gchat's parts from Settings and put them behind one Tornado Application."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
import tornado.web
from tornado.log import access_log

from gchat.auth import TokenSigner, load_or_create_secret
from gchat.broker import Broker, MemoryBroker
from gchat.config import Settings
from gchat.db import Database
from gchat.demo import demo_routes
from gchat.metrics import MetricsHandler, build_metrics
from gchat.moodle import Moodle
from gchat.paths import static_dir, template_dir
from gchat.privacy import Purger
from gchat.router import Router
from gchat.sessions import make_store
from gchat.store import ChatStore
from gchat.transports.base import OriginPolicy
from gchat.transports.http import BootstrapHandler, HealthHandler
from gchat.transports.longpoll import PollHandler, PollTabs, SendHandler
from gchat.transports.websocket import WebSocketHandler

@dataclass
class Services:
    settings: Settings
    db: Database
    moodle: Moodle
    store: ChatStore
    broker: Broker
    router: Router
    purger: Purger | None = None  # history retention and deleted users (gchat/privacy.py)

    def start_purge(self) -> None:
        """Start the background purge (call with the server; a no-op when nothing is to purge)."""
        if self.purger is not None:
            self.purger.start()

    async def close(self) -> None:
        if self.purger is not None:
            await self.purger.stop()
        await self.router.stop()
        await self.broker.close()
        await self.moodle.close()
        self.db.close()


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


def build_services(settings: Settings, db: Database | None = None, broker: Broker | None = None) -> Services:
    if db is None:
        db = Database(settings.db_url, prefix=settings.db_prefix, pool_size=settings.db_pool_size,
                      timeout=settings.db_timeout,
                      sqlite_path=demo_db_path(settings) if settings.is_demo_db else None)
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
                    signer=TokenSigner(secret, settings.token_ttl))
    purger = Purger(db, retention_days=settings.history_retention_days, deleted_users=settings.purge_deleted_users)
    return Services(settings, db, moodle, store, broker, router, purger)


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
    access_log.log(level, "%d %s %.2fms", status, handler._request_summary(), 1000.0 * request.request_time())


def make_app(services: Services, **app_settings: Any) -> tornado.web.Application:
    settings = services.settings
    prefix = settings.url_prefix
    origins = OriginPolicy(settings)
    common = dict(router=services.router, settings=settings, origins=origins)
    tabs = PollTabs(services.router, idle_secs=settings.longpoll_idle)
    routes: list[Any] = [
        (prefix + "/api/bootstrap", BootstrapHandler, common),
        (prefix + "/api/poll", PollHandler, dict(common, tabs=tabs)),
        (prefix + "/api/send", SendHandler, common),
        (prefix + "/ws", WebSocketHandler, common),
        (prefix + "/health", HealthHandler, common),
        (prefix + "/metrics", MetricsHandler, {"metrics": build_metrics(services)}),
        (prefix + "/static/(.*)", tornado.web.StaticFileHandler, {"path": static_dir()}),
    ]
    if settings.demo:
        routes += demo_routes(prefix, common)
        routes.append((r"/", tornado.web.RedirectHandler, {"url": prefix + "/demo"}))
    return tornado.web.Application(
        routes,
        template_path=template_dir(),
        xsrf_cookies=True,
        websocket_ping_interval=settings.ws_ping_interval or None,
        websocket_ping_timeout=max(settings.ws_ping_interval, 10) if settings.ws_ping_interval else None,
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
