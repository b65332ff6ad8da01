"""Nodes' clocks at the streamer (``nvrxlog.streamer.clocks``): offsets applied, far-ahead stamps merged by arrival."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvrxlog.streamer.clocks import FUTURE_NS, NodeClock, corrected, corrected_ts, merge_keys

S = 10**9
MS = 1_000_000
T0 = 1_700_000_000_000_000_000
HOUR = 3600 * S


# -- the offset applied --------------------------------------------------------------


def test_noise_is_not_applied_and_no_notice_is_written() -> None:
    """A node within a millisecond (or its round trip) of the streamer is not corrected at all."""
    clock = NodeClock()
    assert clock.report("n1", 400_000, 100_000) == (0, [])
    assert clock.report("n1", 3 * MS, 5 * MS) == (0, [])  # within its own round trip
    assert clock.offset == 0


def test_an_hour_ahead_is_applied_and_told_once() -> None:
    """An hour ahead (offset -1 h) is corrected and told once; a better estimate moves the offset silently."""
    clock = NodeClock()
    moved, notices = clock.report("node1", -HOUR, 200_000)
    assert moved == -HOUR and clock.offset == -HOUR
    assert notices == [
        ("node node1's clock is +3600.0 s ahead of the streamer's; its lines are merged on corrected time", "WARNING")
    ]
    assert clock.report("node1", -HOUR + 2 * MS, 100_000) == (2 * MS, [])
    assert clock.report("node1", -HOUR + 2 * MS + 10_000, 100_000) == (0, [])  # noise: stays


def test_a_clock_behind_a_change_past_a_second_and_a_return_are_told() -> None:
    """Behind is said as behind; an offset changing by over a second is told again; back within a second, too."""
    clock = NodeClock()
    assert clock.report("n1", 5 * S, 0)[1][0][0].startswith("node n1's clock is 5.0 s behind the streamer's")
    assert clock.report("n1", 5 * S + S // 2, 0)[1] == []
    assert "7.0 s behind" in clock.report("n1", 7 * S, 0)[1][0][0]
    assert clock.report("n1", 0, 0) == (
        -7 * S,
        [("node n1's clock agrees with the streamer's again (within 1 s)", "INFO")],
    )


@pytest.mark.parametrize(
    ("offset", "rtt", "error"),
    [(1.5, 0, TypeError), (0, None, TypeError), ("1", 0, TypeError), (2**61, 0, ValueError), (0, -1, ValueError)],
)
def test_a_report_that_is_no_clock_is_malformed(offset: object, rtt: object, error: type) -> None:
    """Non-int, absurd (past ~36 years) or negative-rtt reports raise; nothing is applied."""
    clock = NodeClock()
    with pytest.raises(error):
        clock.report("n1", offset, rtt)
    assert clock.offset == 0


# -- stamps --------------------------------------------------------------------------


def test_correction_is_a_whole_column_and_nothing_at_zero() -> None:
    """A zero offset returns the column itself; otherwise each stamp is shifted, and kept within what a stamp can be."""
    stamps = [T0, T0 + 5]
    assert corrected(stamps, 0) is stamps
    assert corrected(stamps, -HOUR) == [T0 - HOUR, T0 + 5 - HOUR]
    assert corrected([2**64 - 10, -(2**63) + 5], 2**60) == [2**64 - 1, -(2**63) + 5 + 2**60]
    assert corrected_ts(2**64 - 10, 2**60) == 2**64 - 1 and corrected_ts(-(2**63), -5) == -(2**63)


def test_stamps_too_far_ahead_merge_at_their_arrival() -> None:
    """Up to FUTURE_NS past arrival a stamp is its own merge key; past that, the arrival is, and it is counted."""
    now = T0
    stamps = [now - 5, now + FUTURE_NS]
    assert merge_keys(stamps, now) == (stamps, 0)
    assert merge_keys(stamps, now)[0] is stamps
    assert merge_keys([now - 5, now + FUTURE_NS + 1, now + 10 * HOUR], now) == ([now - 5, now, now], 2)
    assert merge_keys([], now) == ([], 0)


@given(st.lists(st.integers(T0 - HOUR, T0 + 10 * HOUR), max_size=50))
def test_no_merge_key_is_past_the_limit_and_stamps_under_it_are_kept(stamps: list[int]) -> None:
    """Every merge key is at most arrival + FUTURE_NS, and a stamp under that keeps its own."""
    keys, ahead = merge_keys(stamps, T0)
    assert all(k <= T0 + FUTURE_NS for k in keys)
    assert ahead == sum(ts > T0 + FUTURE_NS for ts in stamps)
    assert all(k == ts for k, ts in zip(keys, stamps, strict=True) if ts <= T0 + FUTURE_NS)
