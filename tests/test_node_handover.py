"""The hand-over's decisions and the aggregator's notices, checked with plain data."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from nvrxlog.node.handover import QuietClock, successor_needed
from nvrxlog.node.notices import Notices


def _forwarder(pending_batches: int) -> SimpleNamespace:
    return SimpleNamespace(spool=SimpleNamespace(pending_batches=pending_batches))


def test_a_successor_is_needed_while_a_writer_lives_or_records_are_undelivered() -> None:
    """successor_needed: a live writer, an unacknowledged batch or records waiting for the spool; else not."""
    assert successor_needed(["w"], None, 0)
    assert successor_needed([], _forwarder(1), 0)
    assert successor_needed([], _forwarder(0), 3)
    assert not successor_needed([], _forwarder(0), 0)
    assert not successor_needed([], None, 3)  # no forwarder: nothing to deliver


def test_the_quiet_clock_counts_from_the_first_quiet_look_and_restarts_when_busy() -> None:
    """QuietClock: 0 at the first quiet look, then the time since it; a busy look starts over; patience runs out."""
    clock = QuietClock(started=100.0)
    assert clock.quiet_for(False, 101.0) == 0.0
    assert clock.quiet_for(False, 103.5) == 2.5
    assert clock.quiet_for(True, 104.0) == 0.0
    assert clock.quiet_for(False, 105.0) == 0.0
    assert clock.quiet_for(False, 106.0) == 1.0
    assert not clock.gave_up(160.0)
    assert clock.gave_up(160.5)


def test_notices_are_taken_in_order_with_their_own_sequence_and_stamp() -> None:
    """Notices: taken as merge items in the order queued, numbered on, stamped now unless given a time."""
    stats: Counter[str] = Counter()
    notices = Notices(stats)
    notices.add("first")
    notices.add("second", 7)
    assert notices and stats["notices"] == 2
    items = notices.take(now=50)
    assert not notices
    assert [item[:3] for item in items] == [(50, -1, 1), (7, -1, 2)]
    assert [item[3]["msg"] for item in items] == ["nvrxlog aggregator: first", "nvrxlog aggregator: second"]
    assert notices.last("bye")["seq"] == 3
