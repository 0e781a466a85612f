"""Per-user limits with a clock the test moves: token buckets, the one-minute window for new
conversations, the per-user tables and their bound, and the kinds the commands use."""

from __future__ import annotations

import pytest

from gchat.config import Settings
from gchat.errors import GchatError
from gchat.limits import PerUser, RateLimits, TokenBucket, WindowCounter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_spends_a_burst_then_refills_at_its_rate():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert not bucket.full
    clock.now += 0.5  # one token back at 2 per second
    assert bucket.take() and not bucket.take()
    clock.now += 10
    assert bucket.full and bucket.idle
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False], "never more than the burst"


def test_window_counter_allows_a_number_per_window_and_slides():
    clock = Clock()
    window = WindowCounter(limit=2, window=60.0, clock=clock)
    assert window.allow() and window.allow() and not window.allow()
    clock.now += 59.9
    assert not window.allow()
    clock.now += 0.2
    assert window.allow(), "the first one left the window"
    assert not window.idle
    clock.now += 61
    assert window.idle


def test_per_user_tables_are_separate_and_bounded():
    clock = Clock()
    table = PerUser(lambda: TokenBucket(1.0, 1, clock), max_users=3)
    assert table.allow(1) and not table.allow(1)
    assert table.allow(2), "another user has a bucket of their own"
    table.allow(3)
    table.allow(4)
    assert len(table) == 4
    clock.now += 10  # 1 to 4 are full again: at rest
    assert table.allow(4)  # but 4 is busy again
    table.allow(5)  # over the bound: the ones at rest are dropped, the busy one is kept
    assert len(table) == 2
    assert not table.allow(4), "user 4's bucket was kept, empty"


def limits(clock: Clock, **changes: object) -> RateLimits:
    return RateLimits(Settings().replace(send_rate=1.0, send_burst=2, opens_per_minute=2, **changes), clock)


@pytest.mark.parametrize("kind,allowed", [("send", 2), ("typing", 2), ("open", 2)])
def test_each_kind_refuses_with_rate_limited_beyond_its_allowance(kind, allowed):
    rate = limits(Clock())
    for _ in range(allowed):
        rate.check(kind, 7)
    with pytest.raises(GchatError) as refused:
        rate.check(kind, 7)
    assert refused.value.code == "rate_limited" and refused.value.message
    rate.check(kind, 8)  # other users are not affected


def test_typing_does_not_spend_the_send_allowance():
    rate = limits(Clock())
    for _ in range(2):
        rate.check("typing", 7)
    rate.check("send", 7)
    rate.check("send", 7)
    with pytest.raises(GchatError):
        rate.check("send", 7)
