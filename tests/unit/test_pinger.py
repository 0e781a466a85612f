"""The WebSocket pinger's ring, ticked by hand: every connection is visited once per interval
however many log in at once, the visits are spread over the interval, a connection that leaves
is not visited again, and the one timer runs only while there is someone to ping."""

from __future__ import annotations

import logging

import pytest

from gchat.transports.heartbeat import SLOTS, Pinger


class Conn:
    """A socket as the pinger sees it: ``answers`` False is a peer whose last ping went
    unanswered (its heartbeat closes it); ``fail`` a heartbeat that raises."""

    def __init__(self, beats: list[Conn], answers: bool = True, fail: bool = False) -> None:
        self.ping_slot = -1
        self.beats = beats
        self.answers = answers
        self.fail = fail

    def heartbeat(self) -> bool:
        self.beats.append(self)
        if self.fail:
            raise RuntimeError("write failed")
        return self.answers


def round_of(pinger: Pinger, beats: list[Conn]) -> list[int]:
    """Tick one whole interval; how many connections each tick visited."""
    seen: list[int] = []
    for _ in range(SLOTS):
        before = len(beats)
        pinger.tick()
        seen.append(len(beats) - before)
    return seen


@pytest.fixture
def beats() -> list[Conn]:
    return []


@pytest.mark.gen_test
async def test_a_crowd_that_logs_in_at_once_is_pinged_evenly_once_per_interval(beats):
    pinger = Pinger(25.0)
    crowd = [Conn(beats) for _ in range(SLOTS * 30)]
    for conn in crowd:
        pinger.add(conn)
    assert len(pinger) == len(crowd) and pinger.running
    for _ in range(3):
        assert round_of(pinger, beats) == [30] * SLOTS  # no tick pings more than its share
        assert sorted(map(id, beats)) == sorted(map(id, crowd))  # each one once
        beats.clear()
    pinger.stop()


@pytest.mark.gen_test
async def test_a_connection_that_leaves_is_not_visited_and_the_timer_stops_with_the_last(beats):
    pinger = Pinger(25.0)
    stays, leaves = Conn(beats), Conn(beats)
    pinger.add(stays)
    pinger.add(leaves)
    pinger.discard(leaves)
    pinger.discard(leaves)  # twice: nothing more happens
    assert sum(round_of(pinger, beats)) == 1 and beats == [stays]
    pinger.discard(stays)
    assert len(pinger) == 0 and not pinger.running  # an idle server has no timer ticking
    pinger.add(Conn(beats))
    assert pinger.running
    pinger.stop()


@pytest.mark.gen_test
async def test_a_timed_out_socket_is_counted_once_and_a_failing_heartbeat_stops_nobody(beats, caplog):
    pinger = Pinger(25.0)
    silent = [Conn(beats, answers=False) for _ in range(SLOTS * 3)]
    failing = Conn(beats, fail=True)
    for conn in [failing, *silent]:
        pinger.add(conn)
    with caplog.at_level(logging.ERROR, logger="gchat.websocket"):
        round_of(pinger, beats)
    assert len(beats) == len(silent) + 1 and pinger.timeouts == len(silent)
    assert [r.getMessage() for r in caplog.records] == ["a WebSocket heartbeat failed"]
    # The closed ones left the ring (their close may take seconds): not visited or counted again.
    beats.clear()
    round_of(pinger, beats)
    assert beats == [failing] and pinger.timeouts == len(silent) and len(pinger) == 1
    pinger.stop()
