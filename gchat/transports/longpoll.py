"""HTTP long-polling: ``GET api/poll`` reads a user's event log after a cursor or waits for it;
``POST api/send`` carries one command. Both need the ``X-Gchat-Token`` header.

A long-poll *tab* (the ``tab`` parameter, one random id per page) is one :class:`Client` of the
router: it counts for presence while it polls, and for ``tab_idle`` seconds after its last poll
ended (``longpoll_idle``; the client re-polls at once, so only a closed page lets it lapse). A new poll of the same
tab answers the one still waiting (newest wins, as Zulip does); tabs poll independently.
"""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

from gchat.auth import Identity
from gchat.errors import GchatError, bad_command
from gchat.router import Client, Router
from gchat.transports.base import TOKEN_HEADER, JsonHandler, forget_parsed_request, query_text
from gchat.wire import body_of_events, loads

TAB_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)  # fullmatch: "$" would let a trailing newline in


def _time_out(waiter: asyncio.Future[str]) -> None:
    """A wait's own timer ends its own waiter (a newer poll of the tab may have another by
    then); a function of the module rather than a closure per parked poll."""
    if not waiter.done():
        waiter.set_result("timeout")


class LongPollTab(Client):
    transport = "longpoll"
    __slots__ = ("tab_id", "_tabs", "_waiter", "_owner", "_active", "_idle", "ended")

    def __init__(self, tabs: PollTabs, identity: Identity, address: str, tab_id: str) -> None:
        super().__init__(identity, address)
        self.tab_id = tab_id
        self._tabs = tabs
        self._waiter: asyncio.Future[str] | None = None
        self._owner: object = None
        self._active = 0
        self._idle: asyncio.TimerHandle | None = None
        self.ended: GchatError | None = None

    def wake(self) -> None:
        self._resolve("wake")

    def end(self, error: GchatError) -> None:
        self.ended = error
        self._resolve("end")
        self._tabs.forget(self)

    def abandon(self, owner: object) -> None:
        """The request that owns the current wait went away."""
        if self._owner is owner:
            self._resolve("closed")

    def _resolve(self, outcome: str) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(outcome)

    async def poll(self, router: Router, cursor: str | None, timeout: float, owner: object) -> tuple[list[str], str]:
        if self.ended:
            raise self.ended
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._resolve("superseded")
        self._active += 1
        try:
            events, cursor_now = await router.catch_up(self.identity, cursor)
            if events or self.ended:
                return events, cursor_now
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            self._owner = owner
            timer = loop.call_later(timeout, _time_out, waiter)
            try:
                outcome = await waiter
            finally:
                timer.cancel()
                if self._waiter is waiter:
                    self._waiter = None
                    self._owner = None
            if outcome == "end" and self.ended:
                raise self.ended
            if outcome != "wake":
                return [], cursor_now
            return await router.catch_up(self.identity, cursor_now)
        finally:
            self._active -= 1
            if self._active == 0 and not self.ended:
                self._idle = asyncio.get_running_loop().call_later(self._tabs.idle_secs, self._lapse)

    def _lapse(self) -> None:
        self._idle = None
        if self._active == 0:
            self._tabs.forget(self)


class PollTabs:
    """The long-poll tabs of this process, by (user, tab id)."""

    def __init__(self, router: Router, idle_secs: float) -> None:
        self.router = router
        self.idle_secs = idle_secs
        self._tabs: dict[tuple[int, str], LongPollTab] = {}

    async def get(self, identity: Identity, tab_id: str, address: str) -> LongPollTab:
        key = (identity.user_id, tab_id)
        tab = self._tabs.get(key)
        if tab is not None and not tab.ended:
            tab.identity = identity  # a renewed token
            return tab
        # A new tab is a new connection: its session must be live (an idle poll of a tab that
        # lives here costs nothing: the session watch re-checks the tabs' sessions in batches).
        await self.router.admit(identity)
        tab = LongPollTab(self, identity, address, tab_id)
        await self.router.attach(tab)
        self._tabs[key] = tab
        return tab

    def forget(self, tab: LongPollTab) -> None:
        key = (tab.user_id, tab.tab_id)
        if self._tabs.get(key) is tab:
            del self._tabs[key]
        self.router.spawn(self.router.detach(tab))

    def __len__(self) -> int:
        return len(self._tabs)


class TokenHandler(JsonHandler):
    def identity(self) -> Identity:
        return self.router.authenticate(self.request.headers.get(TOKEN_HEADER))


class PollHandler(TokenHandler):
    """``GET api/poll?cursor=C&tab=T``."""

    tabs: PollTabs

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("X-Accel-Buffering", "no")

    async def get(self) -> None:
        self._tab: LongPollTab | None = None
        try:
            identity = self.identity()
            tab_id = query_text(self.request, "tab") or ""
            if not TAB_SHAPE.fullmatch(tab_id):
                raise bad_command("tab must be 1 to 64 letters, digits, - or _")
            cursor = query_text(self.request, "cursor") or None
            self._tab = await self.tabs.get(identity, tab_id, self.address)
            self._forget_request()
            low, high = self.gchat_settings.longpoll_timeout
            events, cursor = await self._tab.poll(self.router, cursor, random.uniform(low, high), self)
        except GchatError as exc:
            if not self.request.connection.stream.closed():  # type: ignore[union-attr]
                self.send_error_json(exc)
            return
        if self.request.connection.stream.closed():  # type: ignore[union-attr]
            return  # the events stay in the log; the client's next poll from its cursor gets them
        self.finish(body_of_events(events, cursor))

    def _forget_request(self) -> None:
        """What a parked poll keeps of its request and never reads again is let go: the
        headers but ``Connection`` (Tornado reads it to answer an HTTP/1.0 client) and the
        parsed query (the access log line, written with the answer, reads the query as text).
        The CORS headers of the answer were set in ``prepare``."""
        forget_parsed_request(self.request, keep="Connection")

    def on_connection_close(self) -> None:
        tab = getattr(self, "_tab", None)
        if tab is not None:
            tab.abandon(self)


class SendHandler(TokenHandler):
    """``POST api/send``: the body is one command; the answer is its reply."""

    async def post(self) -> None:
        try:
            identity = self.identity()
        except GchatError as exc:
            self.send_error_json(exc)
            return
        if len(self.request.body) > self.gchat_settings.max_frame_bytes:
            self._answer(self.router.error_reply(None, GchatError("too_long", "the request body is too large")))
            return
        try:
            command: Any = loads(self.request.body)
        except ValueError as exc:  # wire.NotJson
            self._answer(self.router.error_reply(None, GchatError("bad_json", f"the body is not valid JSON: {exc}")))
            return
        self._answer(await self.router.handle(identity, command))

    def _answer(self, reply: dict[str, Any]) -> None:
        status = 200 if reply["ok"] else GchatError(reply["error"]["code"], "").http_status
        self.send_json(reply, status)
