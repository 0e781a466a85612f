"""gchat's own tables (conversations, members, messages) on a real MariaDB and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pymysql
import pytest

from gchat.config import parse_db_url
from gchat.db import Database
from gchat.errors import Unavailable
from gchat.store import MAX_HISTORY_LIMIT, ChatStore, MemberState
from tests.conftest import PREFIX
from tests.services import db_connect

ENGINES = ("mariadb", "postgresql")
A, B, C = 101, 202, 303


@pytest.fixture
def db(test_db_url, site):  # site: empties the chat tables before each test
    database = Database(parse_db_url(test_db_url), prefix=PREFIX, pool_size=6, timeout=5)
    yield database
    database.close()


@pytest.fixture
def store(db):
    return ChatStore(db)


def count(site, sql: str, params: tuple = ()) -> int:
    return site.rows(sql, params)[0][0]


async def send(store: ChatStore, pair, sender: int, text: str, client_id: str | None = None):
    return await store.add_message(pair, sender, text, client_id, history=10)


# -- conversations -----------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_conversation_of_an_unordered_pair_is_unique(store, site):
    ab, _, _ = await store.open(A, B, 10)
    ba, _, _ = await store.open(B, A, 10)
    assert ab.id == ba.id
    assert (ab.low, ab.high) == (A, B)
    assert ab.has(A) and ab.has(B) and not ab.has(C)
    assert ab.peer_of(A) == B and ab.peer_of(B) == A
    ac, _, _ = await store.open(C, A, 10)
    assert ac.id != ab.id
    assert count(site, "SELECT COUNT(*) FROM {p}gchat_conversations") == 2
    assert await store.pair(ab.id) == ab
    assert await store.pair(ab.id + 1000) is None


def side_transaction(url: str, site):
    """A connection of the test's own with a transaction open (commit or roll back, then close)."""
    conn = db_connect(url, url.split("?")[0].rsplit("/", 1)[1])
    if site.engine == "postgresql":
        conn.autocommit = False  # psycopg: the next statement opens a transaction
    else:
        conn.begin()
    return conn


async def until_it_waits_on_a_lock(site, racing: asyncio.Future) -> None:
    """Until a statement of the test's database waits on a lock (``racing`` has not ended)."""
    deadline = time.monotonic() + 4
    while _lock_waits(site) < 1:
        assert time.monotonic() < deadline, "it never waited on the lock"
        assert not racing.done(), racing
        await asyncio.sleep(0.15)


class Gate:
    """Makes a race certain instead of likely: a transaction on a side connection holds a lock
    where the racing rows would go, so every racer gets past its reads and then waits on its
    INSERT; the gate opens once all of them are waiting. On MariaDB the lock is an InnoDB gap
    lock (``SELECT ... FOR UPDATE`` of the rows that are not there yet); PostgreSQL locks no
    row that does not exist, so there the side transaction locks the table against writes."""

    def __init__(self, url: str, site, table: str, where: str, params: tuple) -> None:
        self.site = site
        self.conn = side_transaction(url, site)
        with self.conn.cursor() as cur:
            if site.engine == "postgresql":
                cur.execute(f"LOCK TABLE {PREFIX}{table} IN SHARE MODE")
            else:
                cur.execute(f"SELECT id FROM {PREFIX}{table} WHERE {where} FOR UPDATE", params)

    def waiting(self) -> int:
        if self.site.engine == "postgresql":
            return count(self.site, "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND datname = current_database()")
        return count(self.site, "SELECT COUNT(*) FROM information_schema.innodb_trx t "
                                "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
                                "WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()")

    async def race(self, *coroutines):
        racing = asyncio.gather(*coroutines)
        try:
            deadline = time.monotonic() + 10
            while self.waiting() < len(coroutines):
                assert time.monotonic() < deadline, "the racers never all waited on the gate"
                assert not racing.done(), racing
                # InnoDB refreshes information_schema.innodb_trx only when it was not read in the
                # last 100 ms: polling faster would see the same stale rows for ever.
                await asyncio.sleep(0.15)
        finally:
            self.conn.commit()
            self.conn.close()
        return await racing


@pytest.fixture
def gate(test_db_url, site):
    return lambda table, where, params: Gate(test_db_url, site, table, where, params)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("racers", [2, 4])
@pytest.mark.parametrize("one_millisecond", [False, True], ids=["", "same-ms"])
async def test_racing_opens_of_one_pair_give_one_conversation(store, site, gate, racers, one_millisecond,
                                                              monkeypatch):
    if one_millisecond:
        # Two racers opening the same side within one millisecond write the same values: the
        # second's UPDATE changes nothing, and its view must still come from the latest row, not
        # from a snapshot older than the conversation (the flake this case makes certain).
        monkeypatch.setattr("gchat.store.now_ms", lambda: 1_800_000_000_000)
    gate = gate("gchat_conversations", "user_low = %s AND user_high = %s", (A, B))
    results = await gate.race(*(store.open(A, B, 10) if i % 2 else store.open(B, A, 10) for i in range(racers)))
    assert len({pair.id for pair, _, _ in results}) == 1
    assert all(state.open for _, state, _ in results)
    assert count(site, "SELECT COUNT(*) FROM {p}gchat_conversations") == 1
    assert count(site, "SELECT COUNT(*) FROM {p}gchat_members") == 2


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_opens_of_one_pair_give_one_conversation(store, site):
    # Both users click each other's name at the same moment, for many pairs at once.
    pairs = [(1000 + 2 * i, 1001 + 2 * i) for i in range(12)]
    results = await asyncio.gather(*(store.open(a, b, 10) for a, b in pairs),
                                   *(store.open(b, a, 10) for a, b in pairs))
    by_pair: dict[tuple[int, int], set[int]] = {}
    for pair, _, _ in results:
        by_pair.setdefault((pair.low, pair.high), set()).add(pair.id)
    assert all(len(ids) == 1 for ids in by_pair.values()), by_pair
    assert count(site, "SELECT COUNT(*) FROM {p}gchat_conversations") == len(pairs)
    assert count(site, "SELECT COUNT(*) FROM {p}gchat_members") == 2 * len(pairs)
    for _pair, state, _ in results:
        assert state.open


@pytest.mark.gen_test(timeout=30)
async def test_many_concurrent_opens_of_one_pair(store, site):
    results = await asyncio.gather(*(store.open(A, B, 10) if i % 2 else store.open(B, A, 10) for i in range(8)))
    assert len({pair.id for pair, _, _ in results}) == 1
    assert count(site, "SELECT COUNT(*) FROM {p}gchat_conversations") == 1


# -- member state --------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_member_state_is_stored_and_returned(store):
    pair, mine, messages = await store.open(A, B, 10)
    assert mine == MemberState(open=True, minimized=False, unread=0, last_read=0)
    assert messages == []
    assert await store.state(pair.id, B) == MemberState(False, False, 0, 0)  # B has not opened it
    assert await store.set_minimized(pair.id, A, True) == MemberState(True, True, 0, 0)
    assert await store.state(pair.id, A) == MemberState(True, True, 0, 0)
    assert await store.set_minimized(pair.id, A, False) == MemberState(True, False, 0, 0)
    assert await store.set_open(pair.id, A, False) == MemberState(False, False, 0, 0)
    assert await store.set_open(pair.id, A, True) == MemberState(True, False, 0, 0)
    # Opening again un-minimises.
    await store.set_minimized(pair.id, A, True)
    _, again, _ = await store.open(A, B, 10)
    assert again == MemberState(True, False, 0, 0)


@pytest.mark.gen_test
async def test_open_views_lists_the_open_windows_with_their_messages(store):
    ab, _, _ = await store.open(A, B, 10)
    ac, _, _ = await store.open(A, C, 10)
    first = await send(store, ab, A, "to B")
    views = await store.open_views(A, 10)
    assert [pair.id for pair, _, _ in views] == [ab.id, ac.id]
    assert views[0][2] == [first.message]
    await store.set_open(ac.id, A, False)
    assert [pair.id for pair, _, _ in await store.open_views(A, 10)] == [ab.id]
    # The peer's window was opened by the message.
    assert [pair.id for pair, _, _ in await store.open_views(B, 10)] == [ab.id]
    assert await store.open_views(C, 10) == []


# -- messages ----------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_message_fields_and_millisecond_time(store):
    pair, _, _ = await store.open(A, B, 10)
    before = int(time.time() * 1000)
    stored = await send(store, pair, A, "hello", "c-1")
    after = int(time.time() * 1000)
    message = stored.message
    assert not stored.duplicate
    assert (message.conversation, message.sender, message.text, message.client_id) == (pair.id, A, "hello", "c-1")
    assert before <= message.time <= after, "time is Unix milliseconds"
    assert message.as_dict() == {"id": message.id, "conversation": pair.id, "from": A, "text": "hello",
                                 "time": message.time, "client_id": "c-1"}
    assert await store.history(pair.id, None, 10) == [message]


@pytest.mark.gen_test
async def test_same_client_id_twice_stores_one_message(store, site):
    pair, _, _ = await store.open(A, B, 10)
    first = await send(store, pair, A, "once", "retry-me")
    second = await send(store, pair, A, "once (retried)", "retry-me")
    assert not first.duplicate
    assert second.duplicate
    assert second.message == first.message
    assert count(site, "SELECT COUNT(*) FROM {p}gchat_messages") == 1
    assert (await store.state(pair.id, B)).unread == 1, "a retry does not count twice"


@pytest.mark.gen_test(timeout=30)
async def test_racing_sends_with_one_client_id_store_one_message(store, db, site, gate):
    # One store writes its sends one batch at a time, so a real race is between two gchat
    # processes: two stores over the same database.
    other_process = ChatStore(db)
    pair, _, _ = await store.open(A, B, 10)
    gate = gate("gchat_messages", "sender = %s AND client_id = %s", (A, b"raced"))
    results = await gate.race(send(store, pair, A, "try 0", "raced"), send(other_process, pair, A, "try 1", "raced"))
    assert len({r.message.id for r in results}) == 1
    assert sorted(r.duplicate for r in results) == [False, True]
    assert count(site, "SELECT COUNT(*) FROM {p}gchat_messages") == 1
    assert (await store.state(pair.id, B)).unread == 1


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_sends_with_one_client_id_store_one_message(store, site):
    pair, _, _ = await store.open(A, B, 10)
    for round_ in range(8):
        client_id = f"race-{round_}"
        results = await asyncio.gather(*(send(store, pair, A, f"try {i}", client_id) for i in range(2)))
        assert len({r.message.id for r in results}) == 1
        assert sorted(r.duplicate for r in results) == [False, True]
        assert count(site, "SELECT COUNT(*) FROM {p}gchat_messages WHERE client_id = %s", (client_id,)) == 1
    assert (await store.state(pair.id, B)).unread == 8


@pytest.mark.gen_test(timeout=30)
async def test_both_members_sending_at_once_store_every_message(store, site):
    pair, _, _ = await store.open(A, B, 10)
    await store.open(B, A, 10)
    await asyncio.gather(*(send(store, pair, A if i % 2 else B, f"m{i}", f"x{i}") for i in range(20)))
    assert count(site, "SELECT COUNT(*) FROM {p}gchat_messages") == 20


@pytest.mark.gen_test
@pytest.mark.parametrize("first,second", [("pad", "pad "), ("pad ", "pad"), ("pad", "pad  "), ("Case", "case"),
                                          ("x", "X "), ("\u00e9", "e\u0301")],
                         ids=["trailing space", "space first", "two spaces", "case", "case and space", "nfc-nfd"])
async def test_client_ids_are_compared_exactly(store, site, first, second):
    """Issue 12, hole 5: on MariaDB's utf8mb4_bin (a PAD SPACE collation) "pad " was "pad", so
    the second send was answered with the first message as a retry, and lost."""
    pair, _, _ = await store.open(A, B, 10)
    one = await send(store, pair, A, "first", first)
    two = await send(store, pair, A, "second", second)
    assert not two.duplicate, f"{second!r} was taken for a retry of {first!r}"
    assert two.message.id != one.message.id and two.message.text == "second"
    assert (one.message.client_id, two.message.client_id) == (first, second)
    assert [(m.text, m.client_id) for m in await store.history(pair.id, None, 10)] == [
        ("first", first), ("second", second)]
    # Each is still its own retry key.
    again = await send(store, pair, A, "second, retried", second)
    assert again.duplicate and again.message == two.message
    assert count(site, "SELECT COUNT(*) FROM {p}gchat_messages") == 2
    assert (await store.state(pair.id, B)).unread == 2


@pytest.mark.gen_test
async def test_exact_client_ids_in_one_batch(store, site):
    # Several sends in one multi-row INSERT: the unique key, not a lookup, decides there.
    pair, _, _ = await store.open(A, B, 10)
    ids = ["pad", "pad ", "PAD", "pad\t", "pad\x00", "\ud800 lone surrogate"]
    results = await asyncio.gather(*(send(store, pair, A, f"m{i}", cid) for i, cid in enumerate(ids)))
    assert [r.duplicate for r in results] == [False] * len(ids)
    assert [m.client_id for m in await store.history(pair.id, None, 10)] == ids
    assert count(site, "SELECT COUNT(*) FROM {p}gchat_messages") == len(ids)
    retried = await asyncio.gather(*(send(store, pair, A, "again", cid) for cid in reversed(ids)))
    assert all(r.duplicate for r in retried)
    assert [r.message.client_id for r in retried] == list(reversed(ids))


@pytest.mark.gen_test
async def test_different_senders_may_reuse_a_client_id(store, site):
    pair, _, _ = await store.open(A, B, 10)
    from_a = await send(store, pair, A, "from A", "same")
    from_b = await send(store, pair, B, "from B", "same")
    assert not from_a.duplicate and not from_b.duplicate
    assert from_a.message.id != from_b.message.id
    # Also in another conversation, by the same sender: client_id is unique per sender.
    other, _, _ = await store.open(A, C, 10)
    again = await send(store, other, A, "elsewhere", "same")
    assert again.duplicate and again.message == from_a.message
    # No client_id: every send is stored.
    await send(store, pair, A, "no id")
    await send(store, pair, A, "no id")
    assert count(site, "SELECT COUNT(*) FROM {p}gchat_messages") == 4


@pytest.mark.gen_test
@pytest.mark.parametrize("text", [
    "😀 emoji",
    "𝄞 musical symbol, 𠜎 CJK extension B",
    "👩‍👩‍👧 family (ZWJ sequence) 🇵🇹",
    "Ünïcödé — “quotes” ½ 漢字",
])
async def test_four_byte_characters_round_trip(store, site, text):
    pair, _, _ = await store.open(A, B, 10)
    stored = await send(store, pair, A, text)
    assert stored.message.text == text
    assert [m.text for m in await store.history(pair.id, None, 10)] == [text]
    raw = site.rows("SELECT text FROM {p}gchat_messages WHERE id = %s", (stored.message.id,))[0][0]
    assert raw == text


@pytest.mark.gen_test
@pytest.mark.parametrize("char", ["x", "é", "😀"])
async def test_1333_characters_store_whole(store, char):
    pair, _, _ = await store.open(A, B, 10)
    text = char * 1333
    stored = await send(store, pair, A, text)
    [back] = await store.history(pair.id, None, 10)
    assert back.text == text
    assert len(back.text) == 1333
    assert back == stored.message


@pytest.mark.gen_test(timeout=30)
async def test_history_pages_backwards_oldest_first_capped_at_50(store):
    pair, _, _ = await store.open(A, B, 10)
    ids = []
    for i in range(60):
        ids.append((await send(store, pair, A if i % 2 else B, f"message {i}")).message.id)
    assert ids == sorted(ids)

    latest = await store.history(pair.id, None, 1000)
    assert len(latest) == MAX_HISTORY_LIMIT == 50
    assert [m.id for m in latest] == ids[-50:]

    page = await store.history(pair.id, ids[30], 5)
    assert [m.id for m in page] == ids[25:30]
    assert [m.text for m in page] == [f"message {i}" for i in range(25, 30)]
    older = await store.history(pair.id, page[0].id, 5)
    assert [m.id for m in older] == ids[20:25]

    assert [m.id for m in await store.history(pair.id, ids[55], 500)] == ids[5:55]
    assert [m.id for m in await store.history(pair.id, ids[3], 50)] == ids[:3]
    assert await store.history(pair.id, ids[0], 10) == []
    assert [m.id for m in await store.history(pair.id, ids[10], 0)] == [ids[9]]  # at least one


@pytest.mark.gen_test
async def test_history_belongs_to_its_conversation(store):
    ab, _, _ = await store.open(A, B, 10)
    ac, _, _ = await store.open(A, C, 10)
    await send(store, ab, A, "for B")
    await send(store, ac, A, "for C")
    assert [m.text for m in await store.history(ab.id, None, 10)] == ["for B"]
    assert [m.text for m in await store.history(ac.id, None, 10)] == ["for C"]


@pytest.mark.gen_test
async def test_open_returns_the_last_messages_up_to_history(store):
    pair, _, _ = await store.open(A, B, 10)
    sent = [(await send(store, pair, A, f"m{i}")).message for i in range(5)]
    _, _, messages = await store.open(B, A, 3)
    assert messages == sent[-3:]


# -- unread ----------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_unread_counts_go_up_for_the_peer_and_mark_seen_brings_them_down(store):
    pair, _, _ = await store.open(A, B, 10)
    first = await send(store, pair, A, "one")
    assert first.peer_opened == MemberState(True, False, 1, 0), "the peer's window opens with the first message"
    assert first.peer_messages == [first.message]
    second = await send(store, pair, A, "two")
    assert second.peer_opened is None, "already open for the peer"
    third = await send(store, pair, A, "three")
    assert (await store.state(pair.id, B)).unread == 3
    assert (await store.state(pair.id, A)).unread == 0, "one's own messages are never unread"

    state, changed = await store.mark_seen(pair.id, B, second.message.id)
    assert changed and state.unread == 1 and state.last_read == second.message.id
    state, changed = await store.mark_seen(pair.id, B, second.message.id)
    assert not changed and state.unread == 1
    state, changed = await store.mark_seen(pair.id, B, first.message.id)  # older: last_read never goes back
    assert not changed and state.last_read == second.message.id
    state, changed = await store.mark_seen(pair.id, B, third.message.id)
    assert changed and state == MemberState(True, False, 0, third.message.id)

    # B answers: A's unread goes up, B's stays 0.
    await send(store, pair, B, "hi")
    assert (await store.state(pair.id, A)).unread == 1
    assert (await store.state(pair.id, B)).unread == 0


async def while_a_message_is_half_stored(url: str, site, pair, coroutine):
    """Run ``coroutine`` while A's message "two" to B is half stored, as the message writer stores
    one, on a side connection: the message row written and B's unread count raised (which holds
    B's member row), not committed. Commits once ``coroutine`` waits on a lock; its result."""
    side = side_transaction(url, site)
    try:
        with side.cursor() as cur:
            cur.execute(f"INSERT INTO {PREFIX}gchat_messages (conversation, sender, text, client_id, time) "
                        "VALUES (%s, %s, %s, NULL, %s)", (pair.id, A, "two", int(time.time() * 1000)))
            cur.execute(f"UPDATE {PREFIX}gchat_members SET unread = unread + 1 WHERE conversation = %s "
                        "AND userid = %s", (pair.id, B))
        racing = asyncio.ensure_future(coroutine)
        await until_it_waits_on_a_lock(site, racing)
    finally:
        side.commit()
        side.close()
    return await racing


@pytest.mark.gen_test(timeout=30)
async def test_a_message_stored_while_a_read_is_recorded_stays_unread(store, site, test_db_url):
    """B reads up to "one" while "two" is being stored: once that commits, "two" is unread for B,
    in the view the read returns and in the table; it is never lost by a count taken before it
    was there."""
    pair, _, _ = await store.open(A, B, 10)
    await store.open(B, A, 10)
    one = await send(store, pair, A, "one")
    state, changed, read = await while_a_message_is_half_stored(
        test_db_url, site, pair, store.record_read(pair.id, B, one.message.id))
    assert changed and read is not None and read.message == one.message.id
    assert state.unread == 1, "the message stored meanwhile is unread"
    two = count(site, "SELECT MAX(id) FROM {p}gchat_messages WHERE conversation = %s", (pair.id,))
    assert state.newest == two, "the view says it counted up to that message"
    assert (await store.state(pair.id, B)).unread == 1


@pytest.mark.gen_test(timeout=30)
async def test_a_close_counts_as_read_what_was_stored_before_it(store, site, test_db_url):
    """B closes the window while "two" is being stored: once that commits, the close reads it
    too (its last read is "two", nothing unread); the close never leaves a message after the
    last read one that is not counted."""
    pair, _, _ = await store.open(A, B, 10)
    await store.open(B, A, 10)
    await send(store, pair, A, "one")
    state = await while_a_message_is_half_stored(test_db_url, site, pair, store.set_open(pair.id, B, False))
    two = count(site, "SELECT MAX(id) FROM {p}gchat_messages WHERE conversation = %s", (pair.id,))
    assert state == MemberState(False, False, 0, two)
    again = await send(store, pair, A, "three")
    assert again.peer_opened == MemberState(True, False, 1, two), "the next message is the one unread"


@pytest.mark.gen_test
async def test_closing_a_window_clears_unread(store):
    pair, _, _ = await store.open(A, B, 10)
    for i in range(4):
        last = await send(store, pair, A, f"m{i}")
    assert (await store.state(pair.id, B)).unread == 4
    state = await store.set_open(pair.id, B, False)
    assert state == MemberState(False, False, 0, last.message.id)
    # The next message opens it again with one unread.
    again = await send(store, pair, A, "are you there?")
    assert again.peer_opened == MemberState(True, False, 1, last.message.id)


# -- deadlocks -----------------------------------------------------------------------------------------


DEADLOCK = "Deadlock found when trying to get lock; try restarting transaction"


def deadlock(engine: str) -> Exception:
    """What the driver raises for a deadlock victim: MySQL's 1213, PostgreSQL's 40P01 (and 40001)."""
    if engine == "postgresql":
        return psycopg.errors.DeadlockDetected("deadlock detected")
    return pymysql.err.OperationalError(1213, DEADLOCK)


@pytest.mark.gen_test
async def test_a_deadlock_victim_is_run_again_and_is_no_outage(db, engine):
    """Racing member updates can make InnoDB (1213) or PostgreSQL (40P01) pick a transaction as
    deadlock victim: the whole unit of work is rolled back and must simply run again, without
    the 'unreachable' fuse."""
    calls = []

    def work(q):
        calls.append(1)
        q.execute("INSERT INTO {gchat_conversations} (user_low, user_high, timecreated) VALUES (%s, %s, 0)",
                  (len(calls), 999))
        if len(calls) == 1:
            raise deadlock(engine)
        return "done"

    assert await db.run(work) == "done"
    assert len(calls) == 2
    rows = await db.run(lambda q: q.all("SELECT user_low FROM {gchat_conversations} WHERE user_high = 999"))
    assert rows == [(2,)], "the victim's first attempt was rolled back"

    def always(q):
        raise deadlock(engine)

    with pytest.raises(Unavailable):
        await db.run(always)
    assert await db.run(lambda q: q.scalar("SELECT 1")) == 1, "a deadlock is not an outage"


@pytest.mark.gen_test
async def test_work_after_close_is_refused_as_unavailable(db, store):
    """A request still being answered while gchat shuts down (the database closed under it)
    gets "unavailable", which every transport answers as such, not an internal error."""
    pair, _, _ = await store.open(A, B, 10)
    db.close()
    with pytest.raises(Unavailable, match="shutting down"):
        await store.state(pair.id, A)
    with pytest.raises(Unavailable):
        await send(store, pair, A, "too late")


@pytest.mark.gen_test(timeout=30)
async def test_a_batch_to_a_closed_window_opens_it_once_and_counts_every_message(store, db, site):
    pair, _, _ = await store.open(A, B, 10)  # open for A only: B's window is closed
    before = db.queries
    results = await asyncio.gather(*(send(store, pair, A, f"burst {i}", f"b{i}") for i in range(6)))
    ids = [r.message.id for r in results]
    assert ids == sorted(ids) and len(set(ids)) == 6  # arrival order, consecutive ids
    opened = [r for r in results if r.peer_opened is not None]
    assert len(opened) == 1 and opened[0].peer_opened.open
    state = await store.state(pair.id, B)
    assert state.open and state.unread == 6
    assert count(site, "SELECT COUNT(*) FROM {p}gchat_messages") == 6
    rows = site.rows("SELECT id, text FROM {p}gchat_messages ORDER BY id")
    assert [(r.message.id, r.message.text) for r in results] == [tuple(row) for row in rows]
    # One batch after the first message's own: far fewer statements than two per message.
    assert db.queries - before < 2 * 6 + 4


# -- the write path: several batches at once, order kept per conversation ---------------------------


@pytest.mark.gen_test(timeout=30)
async def test_a_send_does_not_wait_for_a_batch_of_another_conversation(store, site, test_db_url):
    """A batch held up in the database (here by a lock on the peer's member row) holds up its own
    conversation only: a send in another conversation is committed meanwhile."""
    slow, _, _ = await store.open(A, B, 10)
    await store.open(B, A, 10)
    fast, _, _ = await store.open(A, C, 10)
    await store.open(C, A, 10)
    side = side_transaction(test_db_url, site)
    try:
        with side.cursor() as cur:
            cur.execute(f"SELECT unread FROM {PREFIX}gchat_members WHERE conversation = %s AND userid = %s FOR UPDATE",
                        (slow.id, B))
        held = asyncio.ensure_future(send(store, slow, A, "held up", "held"))
        await until_it_waits_on_a_lock(site, held)
        other = await asyncio.wait_for(send(store, fast, A, "not held up", "free"), 4)
        assert not other.duplicate and other.message.conversation == fast.id
        assert not held.done(), "the held-up send finished before its lock was released"
        assert count(site, "SELECT COUNT(*) FROM {p}gchat_messages WHERE conversation = %s", (fast.id,)) == 1
    finally:
        side.commit()
        side.close()
    first = await held
    assert first.message.text == "held up" and first.message.id != other.message.id
    assert (await store.state(slow.id, B)).unread == 1


def _lock_waits(site) -> int:
    if site.engine == "postgresql":
        return count(site, "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                           "AND datname = current_database()")
    return count(site, "SELECT COUNT(*) FROM information_schema.innodb_trx t "
                       "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
                       "WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()")


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_batches_keep_each_conversations_order(store, site):
    """Many sends to many conversations at once (several batches in the database together):
    every message is stored once, and within each conversation ids follow the order of the
    sends, as do the results each sender gets."""
    assert store.writer.lanes > 1
    pairs = []
    for i in range(8):
        pair, _, _ = await store.open(1000 + i, 2000 + i, 10)
        await store.open(2000 + i, 1000 + i, 10)
        pairs.append(pair)
    rounds = 4
    for r in range(rounds):
        sends = [send(store, pair, pair.low if (n + r) % 3 else pair.high, f"{pair.id}:{r}:{n}", f"{pair.id}-{r}-{n}")
                 for n in range(12) for pair in pairs]
        results = await asyncio.gather(*sends)
        assert not any(result.duplicate for result in results)
        for pair in pairs:
            mine = [res.message for res in results if res.message.conversation == pair.id]
            assert [m.text for m in mine] == [f"{pair.id}:{r}:{n}" for n in range(12)]
            assert [m.id for m in mine] == sorted(m.id for m in mine)
    for pair in pairs:
        stored = site.rows("SELECT text FROM {p}gchat_messages WHERE conversation = %s ORDER BY id", (pair.id,))
        assert [row[0] for row in stored] == [f"{pair.id}:{r}:{n}" for r in range(rounds) for n in range(12)]
        assert (await store.state(pair.id, pair.low)).unread + (await store.state(pair.id, pair.high)).unread \
            == rounds * 12
