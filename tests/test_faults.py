"""Fault test with real processes: nothing acknowledged is lost or shown twice.

The test starts its own MariaDB (a private ``mariadbd`` on a Unix socket: never the machine's
shared one), creates the Moodle 2.2 tables and gchat's (``gchat initdb`` as a subprocess, twice:
it must be safe to run again), three pairs of course-mates with Moodle sessions, and gchat as a
subprocess. Each user has two tabs, one WebSocket and one long-poll, and every tab sends
messages at a modest rate to its peer while the test

1. stops MariaDB cleanly (SIGTERM) and keeps it down for a few seconds: commands must be
   answered ``unavailable`` quickly, ``/gchat/health`` must say 503, connected tabs must stay
   connected and still get what needs no database (a ``typing`` event); when MariaDB is back
   the pool must recover with no gchat restart;
2. kills gchat (SIGKILL) and starts it again on the same port;
3. kills MariaDB (SIGKILL: crash recovery on restart), and meanwhile checks that a gchat
   started while the database is down stops with one line and exit status 2;
4. freezes MariaDB (SIGSTOP, then SIGCONT): a database that accepts connections but answers
   nothing, as a hung server or a lost network does — the same checks as in 1, and the hardest
   for "answered quickly";
5. stops gchat with SIGTERM (graceful: it must exit 0 within a few seconds) and starts it again.

The tabs behave like the widget (tests/fault_clients.py): retries with the same client_id,
reconnects with the last cursor, snapshots on reset, history to fill a gap, dedupe by id.
After each fault, before the next, every message queued so far must be acknowledged and shown
by every tab of both members (so that a message missed by a running process cannot hide behind
the snapshot a later restart sends). When everything is back and settled, the test prints and
checks the counts (one ``COUNTS`` line, then details): every acknowledged
message stored exactly once, no client_id stored twice, every acknowledged message shown by
every tab of both members exactly once and in order, sends refused with ``unavailable`` and
retried stored once.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from gchat.dialect import Dialect
from tests.fault_clients import Failed, Ledger, PollTab, Tab, WSTab, http_request
from tests.moodle_site import MoodleSite, moodle22_statements
from tests.services import MariaDBInstance, mysql_connect, with_database
from tests.support.process import ServerProcess, clean_env, free_port, gchat_command

DATABASE = "gchat_faults"
PREFIX = "mdl_"
SECRET = "fault-test-secret"
HISTORY_SIZE = 50
DB_TIMEOUT = 5.0
MAX_OUTAGE_REPLY = 6.0  # seconds: a command during an outage is answered within db_timeout + 1
SCENARIO_BOUND = 100.0  # seconds for everything after MariaDB is up (the whole test stays < 120 s)
SETTLE_TIMEOUT = 25.0
PAIRS = (("Ana", "Ben"), ("Cris", "Dani"), ("Eva", "Fabio"))


def now() -> float:
    return time.monotonic()


def log_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


class GchatRuns(ServerProcess):
    """``python gchat/main.py`` as a subprocess, restartable on the same port; each run logs to
    its own file in ``workdir`` (also its cwd, so no conf/gchat.conf is picked up)."""

    def __init__(self, args: list[str], base_url: str, workdir: str) -> None:
        super().__init__(gchat_command(*args), log_path="", cwd=workdir, env=clean_env(), name="gchat")
        self.base_url = base_url
        self.workdir = workdir
        self.logs: list[str] = []

    async def _healthy(self) -> bool:
        try:
            status, _ = await http_request(self.base_url, "GET", "/gchat/health", timeout=2)
        except Failed:
            return False
        return status == 200

    async def run(self, timeout: float = 20.0) -> float:
        """Start it and poll /gchat/health until 200; returns the seconds that took."""
        self.log_path = os.path.join(self.workdir, f"gchat-{len(self.logs) + 1}.log")
        self.logs.append(self.log_path)
        return await self.astart(self._healthy, timeout)


@dataclass
class Outage:
    kind: str
    started: float  # the stop or kill was asked for
    down_from: float = 0.0  # MariaDB is gone
    down_to: float = 0.0  # MariaDB is being started again
    up_at: float = 0.0  # MariaDB accepts connections again
    health: list[tuple[float, float, int]] = field(default_factory=list)  # (sent, answered, status)
    typing_sent: float = 0.0
    typing_reply: dict[str, Any] = field(default_factory=dict)
    recovered_after: float | None = None  # seconds from up_at to the first ok send that started after it


@pytest.fixture
def private_mariadb():
    """A MariaDB of this test's own: stopping and killing it harms nobody."""
    instance = MariaDBInstance()
    try:
        instance.start()
        yield instance
    finally:
        if instance.process is not None and instance.process.poll() is None:
            instance.process.send_signal(signal.SIGCONT)  # in case the test stopped while it was frozen
        instance.destroy()


def create_site(instance: MariaDBInstance, workdir: str) -> tuple[str, MoodleSite]:
    admin = mysql_connect(instance.url)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        cur.execute(f"USE `{DATABASE}`")
        for statement in moodle22_statements(PREFIX):
            cur.execute(statement)
    admin.close()
    db_url = with_database(instance.url, DATABASE)
    for run in (1, 2):  # gchat initdb creates the chat tables, and is safe to run twice
        done = subprocess.run(gchat_command("initdb", f"--db_url={db_url}", f"--db_prefix={PREFIX}"),
                              cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"initdb run {run}: {done.stdout}{done.stderr}"
        assert "gchat tables ready" in done.stdout, done.stdout
    site = MoodleSite(db_url, DATABASE, PREFIX)
    site.reset()
    return db_url, site


def test_messages_survive_database_and_server_faults(private_mariadb, tmp_path):
    started = now()
    instance = private_mariadb
    workdir = str(tmp_path)
    db_url, site = create_site(instance, workdir)
    users: dict[str, int] = dict(zip([n for pair in PAIRS for n in pair],
                                     site.classmates(*[n for pair in PAIRS for n in pair])))
    sessions = {name: site.login(uid) for name, uid in users.items()}
    site.close()

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    args = ["--address=127.0.0.1", f"--port={port}", f"--db_url={db_url}", f"--db_prefix={PREFIX}",
            f"--secret_key={SECRET}", "--presence_grace=1", "--log_level=warning", f"--history_size={HISTORY_SIZE}",
            "--moodle_wwwroot=http://moodle.test", f"--data_dir={workdir}", f"--db_timeout={DB_TIMEOUT:g}",
            "--longpoll_timeout=15-20"]
    gchat = GchatRuns(args, base_url, workdir)
    try:
        report = asyncio.run(asyncio.wait_for(
            scenario(instance, gchat, db_url, users, sessions, workdir), SCENARIO_BOUND))
        report["seconds"] = now() - started
        check(report, instance)
    except BaseException:
        for path in gchat.logs:  # what gchat said, without the access log's one line per 503
            text = [line for line in log_text(path).splitlines() if "tornado.access" not in line]
            print(f"--- {os.path.basename(path)} (without access lines) ---", *text[-60:], sep="\n")
        raise
    finally:
        gchat.kill()


async def scenario(instance: MariaDBInstance, gchat: GchatRuns, db_url: str, users: dict[str, int],
                   sessions: dict[str, str], workdir: str) -> dict[str, Any]:
    ledger = Ledger()
    tabs: list[Tab] = []
    report: dict[str, Any] = {"ledger": ledger, "tabs": tabs, "outages": [], "restarts": [], "checkpoints": []}
    await gchat.run()
    try:
        for name, uid in users.items():
            for kind in (WSTab, PollTab):
                tabs.append(kind(f"{name}-{'ws' if kind is WSTab else 'lp'}", uid, sessions[name], gchat.base_url,
                                 ledger, history_size=HISTORY_SIZE))
        await asyncio.gather(*(tab.start() for tab in tabs))
        for tab in tabs:
            assert await tab.wait_until(lambda t=tab: t.readies >= 1, 10), f"{tab.name}: no ready"
        # Each user opens the window with its peer (from its WebSocket tab): both windows are open.
        for a, b in PAIRS:
            for me, peer in ((a, b), (b, a)):
                reply = await tab_of(tabs, me, "ws").command({"type": "open", "user": users[peer]}, 10)
                assert reply["ok"], reply
                for tab in tabs:
                    if tab.user_id == users[me]:
                        tab.conversation = reply["conversation"]["id"]

        stop_chatting = asyncio.Event()
        chatters = [asyncio.get_running_loop().create_task(chatter(tab, stop_chatting)) for tab in tabs]
        chat_started = now()
        await faults(instance, gchat, db_url, tabs, ledger, report, workdir)
        await asyncio.sleep(1.0)
        stop_chatting.set()
        await asyncio.gather(*chatters)
        report["chat_seconds"] = now() - chat_started

        # Settle: every queued message acknowledged and shown by every tab of both members.
        settle_started = now()
        for tab in tabs:
            tab.give_up_at = settle_started + SETTLE_TIMEOUT

        def settled() -> bool:
            return all(tab.pending == 0 for tab in tabs) and all(
                tab.shows_all(ledger.acked_in(tab.conversation)) for tab in tabs)

        deadline = settle_started + SETTLE_TIMEOUT
        while not settled() and now() < deadline:
            await asyncio.sleep(0.1)
        report["settled"] = settled()
        report["settle_seconds"] = now() - settle_started
    finally:
        await asyncio.gather(*(tab.close() for tab in tabs), return_exceptions=True)
        if gchat.running:
            report["final_stop"] = await gchat.aterminate()
    report["logs"] = {os.path.basename(p): log_text(p) for p in gchat.logs}
    return report


def tab_of(tabs: list[Tab], name: str, kind: str) -> Tab:
    return next(tab for tab in tabs if tab.name == f"{name}-{kind}")


async def chatter(tab: Tab, stop: asyncio.Event) -> None:
    """The user types a message every second or so, whatever the state of the connection."""
    count = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), random.uniform(0.5, 1.3))
        except TimeoutError:
            count += 1
            tab.queue_message(f"{tab.name} #{count}: olá, grüß dich ✓")


async def faults(instance: MariaDBInstance, gchat: GchatRuns, db_url: str, tabs: list[Tab], ledger: Ledger,
                 report: dict[str, Any], workdir: str) -> None:
    await asyncio.sleep(3.0)  # chatting normally first
    # 1. MariaDB stopped cleanly, down for 4 s.
    report["outages"].append(await database_outage(instance, "stop (SIGTERM)", 4.0, tabs, ledger, gchat))
    await checkpoint("MariaDB stop", tabs, ledger, report)
    # 2. gchat killed and restarted on the same port.
    gchat.kill()
    killed = now()
    await gchat.run()
    report["restarts"].append(("SIGKILL", None, 0.0, now() - killed))
    await checkpoint("gchat SIGKILL", tabs, ledger, report)

    # 3. MariaDB killed, down for 3 s; a gchat started meanwhile must refuse with one line.
    async def start_while_down() -> None:
        refused = await asyncio.create_subprocess_exec(
            *gchat_command(f"--port={free_port()}"), f"--db_url={db_url}", f"--db_prefix={PREFIX}",
            f"--secret_key={SECRET}", "--log_level=warning", cwd=workdir, env=clean_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(refused.communicate(), 15)
        report["start_while_down"] = (refused.returncode, out.decode(), err.decode())

    report["outages"].append(await database_outage(instance, "kill (SIGKILL)", 3.0, tabs, ledger, gchat,
                                                   during=start_while_down))
    await checkpoint("MariaDB kill", tabs, ledger, report)
    # 4. MariaDB frozen for 8 s: connections hang instead of being refused. Longer than the 6 s
    # bound on a reply, or a hung request would go unnoticed.
    report["outages"].append(await database_outage(instance, "freeze (SIGSTOP)", 8.0, tabs, ledger, gchat))
    await checkpoint("MariaDB freeze", tabs, ledger, report)
    # 5. gchat stopped gracefully (SIGTERM) and started again.
    code, took = await gchat.aterminate()
    stopped = now()
    await gchat.run()
    report["restarts"].append(("SIGTERM", code, took, now() - stopped))
    await checkpoint("gchat SIGTERM", tabs, ledger, report)


async def checkpoint(label: str, tabs: list[Tab], ledger: Ledger, report: dict[str, Any],
                     timeout: float = 10.0) -> None:
    """After a fault, before the next one: every message queued before now gets acknowledged,
    and then every tab shows every message acknowledged so far. Checked here, and not only at
    the end, so that a message missed in a running process cannot hide behind the snapshot that
    a later restart sends to everyone."""
    began = now()
    deadline = began + timeout
    queued = [cid for cid, out in ledger.messages.items() if out.queued_at <= began]
    while now() < deadline and not all(cid in ledger.acked for cid in queued):
        await asyncio.sleep(0.05)
    wanted = {tab.name: ledger.acked_in(tab.conversation) for tab in tabs}
    while now() < deadline and not all(tab.shows_all(wanted[tab.name]) for tab in tabs):
        await asyncio.sleep(0.05)
    unacked = [cid for cid in queued if cid not in ledger.acked]
    missing = {tab.name: sorted(wanted[tab.name] - tab.seen.keys()) for tab in tabs
               if not tab.shows_all(wanted[tab.name])}
    report["checkpoints"].append((label, now() - began, len(queued), unacked, missing))
    await asyncio.sleep(1.5)  # and a little normal chatting before the next fault


async def database_outage(instance: MariaDBInstance, kind: str, hold: float, tabs: list[Tab], ledger: Ledger,
                          gchat: GchatRuns, during: Any = None) -> Outage:
    outage = Outage(kind, started=now())
    if kind.startswith("freeze"):
        assert instance.process is not None
        instance.process.send_signal(signal.SIGSTOP)
    else:
        await asyncio.to_thread(instance.stop if kind.startswith("stop") else instance.kill)
    outage.down_from = now()

    async def probe_health() -> None:
        while now() < outage.down_from + hold - 0.5:
            sent = now()
            try:
                status, _ = await http_request(gchat.base_url, "GET", "/gchat/health", timeout=8)
            except Failed as exc:
                status = -1 if exc.kind == "dropped" else -2
            outage.health.append((sent, now(), status))
            await asyncio.sleep(0.25)

    async def typing_to_peer() -> None:
        await asyncio.sleep(0.5)
        sender = tabs[1]  # a long-poll tab: its typing reaches the peer's WebSocket and long-poll tabs
        outage.typing_sent = now()
        try:
            outage.typing_reply = await sender.command({"type": "typing", "conversation": sender.conversation}, 8)
        except Failed as exc:
            outage.typing_reply = {"ok": False, "error": {"code": exc.kind}}

    # Probes run on while MariaDB comes back (a hung one must not stretch the outage).
    probes = [asyncio.get_running_loop().create_task(job) for job in (probe_health(), typing_to_peer())]
    if during is not None:
        await during()
    left = outage.down_from + hold - now()
    if left > 0:
        await asyncio.sleep(left)
    outage.down_to = now()
    if kind.startswith("freeze"):
        assert instance.process is not None
        instance.process.send_signal(signal.SIGCONT)
    else:
        await asyncio.to_thread(instance.start)
    outage.up_at = now()
    await asyncio.gather(*probes)
    # The pool must recover by itself: wait for the first send that started after MariaDB came back
    # to be acknowledged (tabs are retrying all the time), with no gchat restart.
    while now() - outage.up_at < 10:
        oks = [a.ended for a in ledger.attempts if a.outcome == "ok" and a.started >= outage.up_at]
        if oks:
            outage.recovered_after = min(oks) - outage.up_at
            break
        await asyncio.sleep(0.05)
    return outage


# -- the verdict ------------------------------------------------------------------------------


def check(report: dict[str, Any], instance: MariaDBInstance) -> None:
    ledger: Ledger = report["ledger"]
    tabs: list[Tab] = report["tabs"]
    conn = mysql_connect(instance.url, DATABASE)
    with conn.cursor() as cur:
        cur.execute(f"SELECT id, conversation, sender, client_id, text FROM {PREFIX}gchat_messages ORDER BY id")
        rows = [(*row[:3], Dialect.client_id_value(row[3]), row[4]) for row in cur.fetchall()]  # bytes stored
    conn.close()
    stored_by_key = collections.Counter((sender, cid) for _, _, sender, cid, _ in rows)
    row_by_key = {(sender, cid): (mid, conv, text) for mid, conv, sender, cid, text in rows}
    stored_ids_by_conv: dict[int, list[int]] = collections.defaultdict(list)
    for mid, conv, *_ in rows:
        stored_ids_by_conv[conv].append(mid)

    outcomes = collections.Counter(a.outcome for a in ledger.attempts)
    acked = ledger.acked
    refused_then_stored = [cid for cid, m in ledger.messages.items()
                           if "unavailable" in m.outcomes and cid in acked]
    retried = [cid for cid, m in ledger.messages.items() if len(m.outcomes) > 1]
    not_stored = [cid for cid, m in acked.items() if stored_by_key[(m["from"], cid)] != 1]
    wrong_row = [cid for cid, m in acked.items()
                 if row_by_key.get((m["from"], cid), (None,))[0] != m["id"]
                 or row_by_key[(m["from"], cid)][2] != ledger.messages[cid].text]
    stored_twice = [key for key, n in stored_by_key.items() if n > 1]
    client_id_twice = [cid for cid, n in collections.Counter(cid for _, _, _, cid, _ in rows).items() if n > 1]
    stored_not_acked = [key for key in stored_by_key if key[1] not in acked]

    lines = ["", "=" * 100, "gchat fault test: counts", "=" * 100]
    lines.append(f"messages written: {len(ledger.messages)}   sent (attempts): {len(ledger.attempts)}   "
                 f"acknowledged (unique ok): {len(acked)}   stored (rows): {len(rows)}   "
                 f"gave up: {len(ledger.gave_up)}   refused for good: {len(ledger.refused)}")
    lines.append(f"attempt outcomes: {dict(outcomes)}   sends that waited for a connection: {ledger.not_connected}")
    lines.append(f"retried messages: {len(retried)}   refused 'unavailable' then stored: {len(refused_then_stored)}   "
                 f"stored not acknowledged: {len(stored_not_acked)}   acked not stored once: {len(not_stored)}")
    lines.append(f"{'tab':<10} {'deliv':>6} {'expect':>6} {'raw':>5} {'repeat':>6} {'curRep':>6} {'dup':>4} "
                 f"{'lost':>4} {'ready':>5} {'reset':>5} {'hist':>4} {'drops':>5} arrival  sources")
    lost_total = len(not_stored)
    dup_total = 0
    raw_repeat_total = 0
    missing_by_tab: dict[str, list[int]] = {}
    order_problems: list[str] = []
    order_notes: list[str] = []
    non_monotone_arrival = 0
    for tab in tabs:
        expected = ledger.acked_in(tab.conversation)
        shown = {i for i, m in tab.seen.items() if m["conversation"] == tab.conversation}
        missing = sorted(expected - shown)
        missing_by_tab[tab.name] = missing
        lost_total += len(missing)
        dup_total += tab.app_duplicates
        raw_repeat_total += tab.raw_repeats
        arrival = [i for i in tab.arrival if tab.seen[i]["conversation"] == tab.conversation]
        increasing = all(x < y for x, y in zip(arrival, arrival[1:]))
        non_monotone_arrival += not increasing
        if not increasing:
            late = [f"{y} ({tab.first_source[y]})" for x, y in zip(arrival, arrival[1:]) if y < x]
            order_notes.append(f"{tab.name}: {', '.join(late[:4])}")
        if sorted(shown) != stored_ids_by_conv[tab.conversation]:
            extra = sorted(shown - set(stored_ids_by_conv[tab.conversation]))
            order_problems.append(f"{tab.name}: shows {len(shown)} messages, the database has "
                                  f"{len(stored_ids_by_conv[tab.conversation])} (not stored but shown: {extra[:5]})")
        lines.append(f"{tab.name:<10} {len(expected & shown):>6} {len(expected):>6} {tab.raw_arrivals:>5} "
                     f"{tab.raw_repeats:>6} {tab.cursor_repeats:>6} {tab.app_duplicates:>4} {len(missing):>4} "
                     f"{tab.readies:>5} {tab.resets:>5} {tab.history_fetches:>4} {len(tab.drops):>5} "
                     f"{'ordered' if increasing else 'MIXED':<8} {dict(tab.sources)}")
    lines.append(f"duplicates (shown twice after dedupe by id): {dup_total}   raw repeats (same id again): "
                 f"{raw_repeat_total}   lost (acked but not stored, or not shown by a member's tab): {lost_total}   "
                 f"tabs whose arrival order was not increasing: {non_monotone_arrival}")
    delivered = sum(len(ledger.acked_in(t.conversation) & t.seen.keys()) for t in tabs)
    lines.insert(4, f"COUNTS sent (attempts)={len(ledger.attempts)} acknowledged={len(acked)} stored={len(rows)} "
                    f"delivered={delivered}/{sum(len(ledger.acked_in(t.conversation)) for t in tabs)} (tab x message) "
                    f"duplicates={dup_total} raw_repeats={raw_repeat_total} lost={lost_total} "
                    f"refused_unavailable_then_stored_once={len(refused_then_stored)}")
    if order_notes:
        # e.g. a send whose unit of work outlived its timeout and committed late: it is published
        # when its retry finds it stored, after newer messages (a widget sorts by id).
        lines.append("arrived after a newer message (id, how): " + "; ".join(order_notes))

    outage_problems: list[str] = []
    for outage in report["outages"]:
        # Every send started while MariaDB was down must be answered quickly; those answered
        # before it came back must be refused with 'unavailable' (nothing else can be true).
        window = [a for a in ledger.attempts if outage.down_from <= a.started <= outage.down_to]
        slowest = max((a.seconds for a in window), default=0.0)
        codes = collections.Counter(a.outcome for a in window if a.ended <= outage.down_to)
        health = [(s, e, st) for s, e, st in outage.health if outage.down_from <= s <= outage.down_to]
        health_codes = collections.Counter(st for s, e, st in health if e <= outage.down_to)
        slowest_health = max((e - s for s, e, _ in health), default=0.0)
        span = (outage.started, outage.up_at + 1.0)
        drops = [f"{t.name} at +{when - outage.down_from:.1f}s: {why}" for t in tabs for when, why in t.drops
                 if span[0] <= when <= span[1]]
        peer_tabs = [t for t in tabs if t.conversation == tabs[1].conversation and t.user_id != tabs[1].user_id]
        typing_seen = [t.name for t in peer_tabs
                       if any(outage.typing_sent <= w <= outage.down_to for w in t.typing_at)]
        lines.append(f"MariaDB {outage.kind}: down {outage.down_to - outage.down_from:.1f}s, back after "
                     f"{outage.up_at - outage.down_to:.1f}s; sends while down: {len(window)}, answered while down "
                     f"{dict(codes)}, "
                     f"slowest reply {slowest:.3f}s; health while down: {dict(health_codes)} slowest "
                     f"{slowest_health:.3f}s; typing reply {outage.typing_reply.get('ok')} seen by {typing_seen}; "
                     f"connection drops: {len(drops)}; first ok after restart: "
                     f"{'never' if outage.recovered_after is None else f'{outage.recovered_after:.2f}s'}")
        if not codes:
            outage_problems.append(f"{outage.kind}: no send was answered while MariaDB was down")
        if slowest >= MAX_OUTAGE_REPLY:
            outage_problems.append(f"{outage.kind}: a send took {slowest:.1f}s to be answered while MariaDB was down")
        if set(codes) - {"unavailable", "rate_limited"}:
            outage_problems.append(f"{outage.kind}: sends while down got {dict(codes)} (expected unavailable)")
        if not health or set(health_codes) != {503} or slowest_health >= MAX_OUTAGE_REPLY:
            outage_problems.append(f"{outage.kind}: /gchat/health while down: {dict(health_codes)}, "
                                   f"slowest {slowest_health:.1f}s (expected 503s, quickly)")
        if drops:
            outage_problems.append(f"{outage.kind}: connections dropped during the outage: {drops}")
        if not outage.typing_reply.get("ok") or len(typing_seen) != len(peer_tabs):
            outage_problems.append(f"{outage.kind}: typing during the outage: reply {outage.typing_reply}, "
                                   f"seen by {typing_seen} of {[t.name for t in peer_tabs]}")
        if outage.recovered_after is None or outage.recovered_after > 5.0:
            outage_problems.append(f"{outage.kind}: the pool did not recover within 5 s of MariaDB's return")

    for kind, code, took, back in report["restarts"]:
        lines.append(f"gchat {kind}: " + (f"exited {code} after {took:.2f}s; " if kind == "SIGTERM" else "")
                     + f"serving again {back:.2f}s later")
    for label, took, queued, unacked, missing in report["checkpoints"]:
        lines.append(f"after {label}: the {queued} messages queued until then acknowledged and shown by every tab "
                     f"within {took:.2f}s" if not unacked and not missing else
                     f"after {label}: NOT caught up in {took:.1f}s: unacknowledged {unacked[:5]}, missing {missing}")
    sigterm = [(code, took) for kind, code, took, _ in report["restarts"] if kind == "SIGTERM"]
    final_stop = report.get("final_stop")
    start_while_down = report.get("start_while_down")
    lines.append(f"gchat started while MariaDB was down: {start_while_down and start_while_down[0]} "
                 f"{start_while_down and start_while_down[2].strip()!r}")
    lines.append(f"final SIGTERM: {final_stop}")
    tracebacks = {name: text.count("Traceback") for name, text in report["logs"].items() if "Traceback" in text}
    log_lines = sum(len(text.splitlines()) for text in report["logs"].values())
    lines.append(f"gchat log lines (warning and up): {log_lines}; tracebacks: {tracebacks or 'none'}")
    lines.append(f"chatting {report['chat_seconds']:.1f}s, settled: {report['settled']} after "
                 f"{report['settle_seconds']:.1f}s; test body (MariaDB ready to verdict) {report['seconds']:.1f}s")
    lines.append("=" * 100)
    print("\n".join(lines))
    for anomaly in ledger.anomalies[:20]:
        print("anomaly:", anomaly)

    assert not ledger.anomalies, ledger.anomalies[:10]
    assert report["settled"], {"pending": {t.name: t.pending for t in tabs if t.pending},
                               "missing": {k: v[:10] for k, v in missing_by_tab.items() if v}}
    assert not ledger.refused, f"sends refused for good: {ledger.refused}"
    assert not ledger.gave_up, f"sends never acknowledged: {sorted(ledger.gave_up)[:10]}"
    assert len(acked) == len(ledger.messages)
    assert not not_stored, f"acknowledged but not stored exactly once: {not_stored[:10]}"
    assert not wrong_row, f"acknowledged as another row than the one stored: {wrong_row[:10]}"
    assert not stored_twice and not client_id_twice, (stored_twice[:10], client_id_twice[:10])
    assert not stored_not_acked, f"stored but never acknowledged: {stored_not_acked[:10]}"
    assert len(rows) == len(acked)
    assert refused_then_stored, "no send was refused with 'unavailable' and retried: the faults missed"
    assert all(stored_by_key[(acked[cid]["from"], cid)] == 1 for cid in refused_then_stored)
    assert dup_total == 0, "a tab shows a message twice (two ids for one client_id)"
    assert lost_total == 0, {k: v[:10] for k, v in missing_by_tab.items() if v}
    assert not order_problems, order_problems
    assert not outage_problems, outage_problems
    behind = [(label, unacked[:5], missing) for label, _, _, unacked, missing in report["checkpoints"]
              if unacked or missing]
    assert not behind, f"not caught up after a fault (in the same process): {behind}"
    assert all(tab.resets >= 2 for tab in tabs), {t.name: t.resets for t in tabs}  # one per gchat restart
    assert all(code == 0 and took < 6.0 for code, took in sigterm), f"SIGTERM: {sigterm}"
    assert final_stop is None or (final_stop[0] == 0 and final_stop[1] < 6.0), f"final SIGTERM: {final_stop}"
    assert start_while_down is not None
    code, out, err = start_while_down
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("gchat: db_url:"), start_while_down
    assert not tracebacks, tracebacks
    assert report["seconds"] < 120

