"""The watermark rule: what a stage may promise after a flush, and per batch."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from nvrxlog.core.watermark import batch_watermarks, handed_over

INF = math.inf


def test_final_flush_with_nothing_held_promises_now() -> None:
    """A flush of everything (cutoff inf) with nothing held hands over everything up to now."""
    result = handed_over(INF, INF, 1_234)
    assert result == 1_234
    assert type(result) is int


def test_final_flush_with_something_held_stops_before_it() -> None:
    """A flush of everything with a record still held promises only up to just before that record."""
    assert handed_over(INF, 1_000, 5_000) == 999
    assert handed_over(INF, 9_000, 5_000) == 5_000


def test_partial_flush_with_nothing_held_promises_the_cutoff() -> None:
    """A flush up to a cutoff with nothing held promises the cutoff (not now)."""
    result = handed_over(700, INF, 5_000)
    assert result == 700
    assert type(result) is int


def test_partial_flush_promises_below_the_oldest_held() -> None:
    """A flush up to a cutoff promises min(cutoff, oldest held - 1)."""
    assert handed_over(700, 500, 5_000) == 499  # a record at 500 was put back
    assert handed_over(700, 701, 5_000) == 700
    assert handed_over(700, 900, 5_000) == 700


def test_float_cutoff_becomes_an_int() -> None:
    """A float cutoff is returned as an int watermark."""
    result = handed_over(700.0, INF, 5_000)
    assert result == 700
    assert type(result) is int


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.just(INF), st.integers(0, 10**15)),
    st.one_of(st.just(INF), st.integers(0, 10**15)),
    st.integers(0, 10**15),
)
def test_handed_over_is_below_everything_still_held(cutoff: float, oldest: float, now: int) -> None:
    """The watermark never reaches a held record nor passes the cutoff (or now, when flushing all)."""
    mark = handed_over(cutoff, oldest, now)
    assert mark < oldest
    assert mark <= (now if cutoff == INF else cutoff)
    assert mark == min(now if cutoff == INF else cutoff, oldest - 1)


def test_batch_watermarks_empty() -> None:
    """No batches, no watermarks."""
    assert batch_watermarks([], 100) == []


def test_single_batch_gets_the_watermark() -> None:
    """The only batch carries the watermark, whatever its first time."""
    assert batch_watermarks([50], 100) == [100]
    assert batch_watermarks([500], 100) == [100]


def test_earlier_batches_stop_before_later_batches() -> None:
    """Earlier batches promise only up to just before the earliest record of any later batch."""
    assert batch_watermarks([10, 20, 30], 100) == [19, 29, 100]
    # A later batch holding an older record holds back every batch before it.
    assert batch_watermarks([10, 40, 5, 30], 100) == [4, 4, 29, 100]
    # An earlier batch never promises more than the watermark.
    assert batch_watermarks([10, 500, 600], 100) == [100, 100, 100]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**6), max_size=30), st.integers(0, 10**6))
def test_batch_watermarks_property(first_times: list[int], watermark: int) -> None:
    """The last batch gets the watermark; each earlier one is the largest value below every later batch's first."""
    marks = batch_watermarks(first_times, watermark)
    assert len(marks) == len(first_times)
    if not first_times:
        return
    assert marks[-1] == watermark
    for i, mark in enumerate(marks):
        later = first_times[i + 1 :]
        assert mark <= watermark
        assert all(mark < first for first in later)
        assert mark == min([watermark, *(first - 1 for first in later)])
    assert marks == sorted(marks)  # promises never go back from one batch to the next
