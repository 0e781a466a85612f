"""Scale-out with real processes: two gchat servers on two ports, one MariaDB database, one Redis.

Any process serves any request of any user: a WebSocket user on one process and a long-poll user
on the other chat; presence crosses processes; a long-poll client alternating between the two
processes request by request misses nothing; when a process is killed its users resume on the
other from their cursors; when Redis restarts no committed message is lost and the clients whose
cursors are gone get ``ready`` with ``reset: true``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from typing import Any
from collections.abc import Callable
from urllib.parse import quote

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.websocket import websocket_connect

from tests.support.clients import PollClient, WSClient, bootstrap
from tests.support.redis import with_params
from tests.support.process import GchatProcess, health_status

SECRET = "scale-out-test-secret"
Event = dict[str, Any]


def health(base: str) -> int:
    return health_status(base)


def gchat_process(db_url: str, broker_url: str, workdir: str, name: str) -> GchatProcess:
    """``python gchat/main.py`` on its own port (its log goes to a file shown on failure)."""
    data_dir = os.path.join(workdir, name)
    os.makedirs(data_dir, exist_ok=True)
    args = ["--address=127.0.0.1", f"--db_url={db_url}",
            f"--broker_url={broker_url}", f"--secret_key={SECRET}", "--presence_grace=0.5",
            "--moodle_wwwroot=http://moodle.test", "--session_check_interval=3600", "--longpoll_timeout=5",
            f"--data_dir={data_dir}", "--db_pool_size=4", "--send_burst=200", "--log_level=info"]
    process = GchatProcess(args, workdir=workdir, name=name)
    process.spawn()
    return process


@pytest.fixture
def cluster(test_db_url, site, tmp_path, redis_url, redis_prefix):
    """``cluster()`` starts two gchat processes on the shared Redis under this test's key prefix
    (``cluster(url)``: on another Redis); all are stopped after the test, before its keys go."""
    started: list[GchatProcess] = []

    def start(broker_url: str | None = None, count: int = 2, **params: object) -> list[GchatProcess]:
        url = with_params(broker_url or with_params(redis_url, key_prefix=redis_prefix), **params)
        procs = [gchat_process(test_db_url, url, str(tmp_path), f"gchat{len(started) + i + 1}") for i in range(count)]
        started.extend(procs)
        for proc in procs:
            proc.wait_ready(proc.healthy, 20.0)
        return procs

    yield start
    for proc in started:
        proc.stop()
        print(f"--- {proc.log_path}\n{proc.output()}")  # shown by pytest when the test failed


def seq(cursor: str) -> tuple[str, int]:
    epoch, _, number = cursor.partition(":")
    return epoch, int(number)


def assert_in_order(events: list[Event]) -> None:
    """One epoch, cursors strictly increasing and contiguous: nothing lost, nothing repeated. (The
    test clients spread a presence_batch into one presence per change, all with its cursor.)"""
    cursors = [seq(e["cursor"]) for i, e in enumerate(events)
               if not (e.get("batched") and i and events[i - 1].get("batched")
                       and events[i - 1]["cursor"] == e["cursor"])]
    assert len({epoch for epoch, _ in cursors}) == 1, cursors
    numbers = [n for _, n in cursors]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers


class Poller:
    """A long-poll client written by hand: one tab, its cursor, any process per request."""

    def __init__(self, token: str, urls: list[str]) -> None:
        self.token = token
        self.urls = urls
        self.tab = secrets.token_hex(6)
        self.cursor: str | None = None
        self.events: list[Event] = []
        self.requests: dict[str, int] = {}
        self.http = AsyncHTTPClient(force_instance=True)

    async def poll(self, base: str) -> list[Event]:
        url = f"{base}/gchat/api/poll?tab={self.tab}"
        if self.cursor:
            url += f"&cursor={quote(self.cursor)}"
        response = await self.http.fetch(url, headers={"X-Gchat-Token": self.token}, request_timeout=20)
        body = json.loads(response.body)
        self.requests[base] = self.requests.get(base, 0) + 1
        self.events.extend(body["events"])
        self.cursor = body["cursor"]
        return body["events"]

    async def until(self, done: Callable[[], bool], alternate: bool = True, timeout: float = 15) -> None:
        """Poll (alternating processes request by request, or always the first URL) until done."""
        async def loop() -> None:
            turn = 0
            while not done():
                await self.poll(self.urls[turn % len(self.urls)] if alternate else self.urls[0])
                turn += 1

        await asyncio.wait_for(loop(), timeout)

    async def send(self, base: str, command: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self.http.fetch(f"{base}/gchat/api/send", method="POST", body=json.dumps(command),
                                             headers={"X-Gchat-Token": self.token,
                                                      "Content-Type": "application/json"})
        except HTTPClientError as exc:
            assert exc.response is not None
            return json.loads(exc.response.body)
        return json.loads(response.body)

    def messages(self) -> list[Event]:
        return [e["message"] for e in self.events if e["type"] == "message"]

    def close(self) -> None:
        self.http.close()


class ReconnectingWS:
    """A WebSocket client that reconnects with its cursor when the server closes it (as the
    widget does), keeping every event it got across connections."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token
        self.cursor: str | None = None
        self.events: list[Event] = []
        self.closes: list[int | None] = []
        self._conn: Any = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._refs = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> ReconnectingWS:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            url = self.base.replace("http", "ws", 1) + f"/gchat/ws?token={quote(self.token)}"
            if self.cursor:
                url += f"&cursor={quote(self.cursor)}"
            try:
                self._conn = await websocket_connect(url)
            except OSError:
                await asyncio.sleep(0.2)
                continue
            while True:
                frame = await self._conn.read_message()
                if frame is None:
                    break
                data = json.loads(frame)
                if data.get("type") == "reply":
                    future = self._replies.pop(data.get("ref"), None)
                    if future is not None and not future.done():
                        future.set_result(data)
                elif data.get("type") != "error":
                    self.events.append(data)
                    self.cursor = data["cursor"]
            self.closes.append(self._conn.close_code)
            self._conn = None
            await asyncio.sleep(0.2)

    async def command(self, kind: str, **fields: Any) -> dict[str, Any]:
        while self._conn is None:
            await asyncio.sleep(0.05)
        self._refs += 1
        future = asyncio.get_running_loop().create_future()
        self._replies[self._refs] = future
        await self._conn.write_message(json.dumps({"type": kind, "ref": self._refs, **fields}))
        return await asyncio.wait_for(future, 10)

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 10, start: int = 0) -> Event:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events[start:]:
                if predicate(event):
                    return event
            await asyncio.sleep(0.05)
        raise AssertionError(f"no such event in {timeout}s; got {[e['type'] for e in self.events]}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._conn is not None:
            self._conn.close()


def is_message(text: str) -> Callable[[Event], bool]:
    return lambda e: e.get("type") == "message" and e["message"]["text"] == text


def is_presence(user: int, status: str) -> Callable[[Event], bool]:
    return lambda e: e.get("type") == "presence" and e["user"]["id"] == user and e["status"] == status


async def tokens(base: str, site: Any, *users: int) -> list[str]:
    result = []
    for user in users:
        code, boot = await bootstrap(base, site.login(user))
        assert code == 200, boot
        result.append(boot["token"])
    return result


@pytest.mark.gen_test(timeout=30)
async def test_websocket_on_one_process_longpoll_on_the_other(io_loop, cluster, site):
    p1, p2 = cluster()
    ana, ben = site.classmates("Ana", "Ben")
    token_a, token_b = await tokens(p1.base_url, site, ana, ben)
    a = await WSClient(p1.base_url, token_a).connect()
    await a.wait_type("ready")
    b = await PollClient(p2.base_url, token_b).connect()
    ready_b = await b.wait_type("ready")
    assert [u["id"] for u in ready_b["online"]] == [ana]  # Ana's socket is on the other process
    await a.wait_for(is_presence(ben, "online"))  # Ben's tab on p2 announced to Ana on p1
    reply = await a.command("open", user=ben)
    assert reply["ok"], reply
    conv = reply["conversation"]["id"]
    assert (await a.send_text(conv, "hello from process 1"))["ok"]
    await b.wait_for(is_message("hello from process 1"))
    assert (await b.send_text(conv, "hi from process 2"))["ok"]
    await a.wait_for(is_message("hi from process 2"))
    await a.close()  # Ana's last connection: offline after the grace period, seen on p2
    await b.wait_for(is_presence(ana, "offline"), timeout=5)
    await b.close()


@pytest.mark.gen_test(timeout=30)
async def test_longpoll_alternating_between_processes_misses_nothing(io_loop, cluster, site):
    p1, p2 = cluster()
    ana, ben = site.classmates("Ana", "Ben")
    token_a, token_b = await tokens(p2.base_url, site, ana, ben)
    a = await WSClient(p1.base_url, token_a).connect()
    await a.wait_type("ready")
    conv = (await a.command("open", user=ben))["conversation"]["id"]
    b = Poller(token_b, [p1.base_url, p2.base_url])
    await b.poll(p2.base_url)  # the ready snapshot
    texts = [f"ana {n}" for n in range(25)]

    async def ana_sends() -> None:
        for text in texts:
            assert (await a.send_text(conv, text))["ok"]
            await asyncio.sleep(0.01)

    sending = asyncio.get_running_loop().create_task(ana_sends())
    await b.until(lambda: len(b.messages()) >= len(texts))
    await sending
    # Ben answers through api/send, alternating processes too; Ana's socket on p1 gets all.
    replies = [f"ben {n}" for n in range(10)]
    for n, text in enumerate(replies):
        reply = await b.send(b.urls[n % 2], {"type": "send", "ref": n, "conversation": conv, "text": text,
                                             "client_id": f"ben-{n}"})
        assert reply["ok"], reply
    await a.wait_for(is_message(replies[-1]))
    await b.until(lambda: len(b.messages()) >= len(texts) + len(replies))

    assert [e["type"] for e in b.events].count("ready") == 1
    assert b.events[0]["type"] == "ready" and b.events[0]["reset"] is False
    assert_in_order(b.events)
    assert [m["text"] for m in b.messages()] == texts + replies
    assert b.requests[p1.base_url] >= 5 and b.requests[p2.base_url] >= 5, b.requests
    assert [m["text"] for m in a.messages()] == texts + replies
    b.close()
    await a.close()


@pytest.mark.gen_test(timeout=40)
async def test_killed_process_users_resume_on_the_other(io_loop, cluster, site):
    p1, p2 = cluster(presence_ttl=1.5)
    ana, ben, carl, dora = site.classmates("Ana", "Ben", "Carl", "Dora")
    token_a, token_b, token_c, token_d = await tokens(p1.base_url, site, ana, ben, carl, dora)
    a = await WSClient(p1.base_url, token_a).connect()  # WebSocket on p1
    await a.wait_type("ready")
    d = await WSClient(p1.base_url, token_d).connect()  # on p1 too, and she will not come back
    await d.wait_type("ready")
    c = Poller(token_c, [p1.base_url, p2.base_url])  # long-poll on p1
    await c.poll(p1.base_url)
    b = await WSClient(p2.base_url, token_b).connect()  # the survivor's user, on p2
    ready = await b.wait_type("ready")
    assert {u["id"] for u in ready["online"]} == {ana, carl, dora}
    with_a = (await b.command("open", user=ana))["conversation"]["id"]
    with_c = (await b.command("open", user=carl))["conversation"]["id"]
    assert (await b.send_text(with_a, "before, Ana"))["ok"]
    assert (await b.send_text(with_c, "before, Carl"))["ok"]
    await a.wait_for(is_message("before, Ana"))
    await c.until(lambda: any(m["text"] == "before, Carl" for m in c.messages()), alternate=False)

    # Carl's poll parked on p1: a poll still waiting after 0.3 s (one that answers at once carries
    # events still on their way, such as a coalesced presence_batch: take them, poll again).
    while True:
        waiting = asyncio.get_running_loop().create_task(c.poll(p1.base_url))
        done, _ = await asyncio.wait({waiting}, timeout=0.3)
        if not done:
            break
        waiting.result()
    p1.kill()
    await a.wait_closed()
    with pytest.raises(Exception):  # noqa: B017 - whichever error the dead socket gives
        await waiting  # the connection died with the process
    a_before, c_before, a_cursor = len(a.events), len(c.events), a.cursor
    after = [f"while away {n}" for n in range(3)]
    for text in after:
        assert (await b.send_text(with_a, text + " Ana"))["ok"]
        assert (await b.send_text(with_c, text + " Carl"))["ok"]

    # Ana reconnects to p2 with her cursor; Carl's next poll goes to p2 with his.
    a2 = await WSClient(p2.base_url, token_a).connect(cursor=a_cursor)
    await a2.wait_for(is_message(after[-1] + " Ana"))
    c.urls = [p2.base_url]
    await c.until(lambda: any(m["text"] == after[-1] + " Carl" for m in c.messages()))
    await asyncio.sleep(0.3)  # anything repeated would arrive now

    for resumed, before, name in ((a.events + a2.events, a_before, "Ana"),
                                  (c.events, c_before, "Carl")):
        assert [e["type"] for e in resumed].count("ready") == 1, name  # the first connection's only
        assert_in_order(resumed)
        texts = [e["message"]["text"] for e in resumed[before:] if e["type"] == "message"]
        assert texts == [t + " " + name for t in after], (name, texts)
    # Dora's only connection died with p1: within the presence TTL she no longer counts.
    deadline = time.monotonic() + 5
    while True:
        fresh = await PollClient(p2.base_url, token_b).connect()
        online = {u["id"] for u in (await fresh.wait_type("ready"))["online"]}
        await fresh.close()
        if online == {ana, carl}:
            break
        assert time.monotonic() < deadline, online
        await asyncio.sleep(0.3)
    await a2.close()
    await b.close()
    c.close()


@pytest.mark.gen_test(timeout=45)
async def test_redis_restart_loses_no_committed_message(io_loop, private_redis, cluster, site):
    p1, p2 = cluster(private_redis.url)
    ana, ben = site.classmates("Ana", "Ben")
    token_a, token_b = await tokens(p1.base_url, site, ana, ben)
    a = ReconnectingWS(p1.base_url, token_a).start()
    b = ReconnectingWS(p2.base_url, token_b).start()
    await a.wait_for(lambda e: e["type"] == "ready")
    await b.wait_for(lambda e: e["type"] == "ready")
    conv = (await a.command("open", user=ben))["conversation"]["id"]
    assert (await a.command("send", conversation=conv, text="before", client_id="m0"))["ok"]
    await b.wait_for(is_message("before"))

    private_redis.stop()
    deadline = time.monotonic() + 10
    while {health(p1.base_url), health(p2.base_url)} != {503}:
        assert time.monotonic() < deadline, "the processes did not notice that Redis is gone"
        await asyncio.sleep(0.1)
    during = {"while Redis is down 1": a, "while Redis is down 2": b, "while Redis is down 3": a}
    for n, (text, client) in enumerate(during.items()):
        reply = await client.command("send", conversation=conv, text=text, client_id=f"m{n + 1}")
        assert reply["ok"], reply  # committed to the database: the truth
    marks = len(a.events), len(b.events)
    await asyncio.sleep(1.0)  # a real outage: the processes back off meanwhile
    private_redis.start()

    everything = ["before", *during]
    for client, mark in zip((a, b), marks):
        ready = await client.wait_for(lambda e: e["type"] == "ready", timeout=15, start=mark)
        assert ready["reset"] is True
        (view,) = [c for c in ready["conversations"] if c["id"] == conv]
        assert [m["text"] for m in view["messages"]] == everything
    rows = site.rows("SELECT text FROM {p}gchat_messages WHERE conversation = %s ORDER BY id", (conv,))
    assert [r[0] for r in rows] == everything
    # And the chat goes on through the new logs.
    assert (await b.command("send", conversation=conv, text="after", client_id="m9"))["ok"]
    await a.wait_for(is_message("after"))
    await a.close()
    await b.close()
