"""A gchat application on a port of its own, inside a test's event loop (a second server, as
after a restart, or an application built differently from the ``app`` fixture's)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import tornado.httpserver
import tornado.testing
import tornado.web

from gchat.app import Services, build_services, make_app
from gchat.config import Settings


def serve(app: tornado.web.Application) -> tuple[tornado.httpserver.HTTPServer, str]:
    """Listen on an unused port of 127.0.0.1; returns the server and its base URL."""
    server = tornado.httpserver.HTTPServer(app)
    sock, port = tornado.testing.bind_unused_port()
    server.add_sockets([sock])
    return server, f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def running(settings: Settings, *, start: bool = True) -> AsyncIterator[tuple[Services, str]]:
    """Services built from ``settings`` (started, unless ``start`` is false) behind their own
    server; everything is stopped and closed afterwards. Yields (services, base URL)."""
    services = build_services(settings)
    if start:
        await services.start()
    server, base_url = serve(make_app(services))
    try:
        yield services, base_url
    finally:
        server.stop()
        await services.aclose()
