"""A gchat server on its own IOLoop in a background thread, for tests whose driver is
synchronous (hypothesis) while the server keeps serving."""

from __future__ import annotations

import asyncio
import threading

import tornado.testing

from gchat.app import Services, build_services, make_app, make_server
from gchat.config import Settings


class ServerThread:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: Services | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gchat-test-server", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.services = build_services(self.settings)
        server = make_server(make_app(self.services), self.settings)
        sock, self.port = tornado.testing.bind_unused_port()
        server.add_sockets([sock])
        await self.services.start()
        self._ready.set()
        await self._stop.wait()
        server.stop()
        await self.services.aclose(drain_secs=1)

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
