"""Retention: which finished temp files a writer deletes unconsumed, and the loss it states."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvrxlog.rank.retention import ABSENT_GRACE_NS, BEHIND_BACKLOG_BYTES, ClosedFile, Loss, Retention

MiB = 1 << 20
START = 1_000_000_000_000


def _retention(count: int, *, max_files: int = 3, max_file_bytes: int = 16 * MiB) -> Retention:
    """A retention with ``count`` closed files f0.. of 10 records each."""
    retention = Retention(max_files=max_files, max_file_bytes=max_file_bytes, start_ns=START)
    for i in range(count):
        retention.closed(f"f{i}", 10 * i, 10 * i + 9)
    return retention


def _never_consumed(path: str) -> bool:
    return False


def _alive() -> bool:
    return True


def _dead() -> bool:
    return False


def _not_asked() -> bool:
    raise AssertionError("aggregator_alive asked with fewer than max_files files")


def _paths(files: Iterable[ClosedFile]) -> list[str]:
    return [f.path for f in files]


def test_behind_files_is_the_backlog_in_files_but_at_least_max_files() -> None:
    """behind_files is BEHIND_BACKLOG_BYTES // max_file_bytes, never fewer than max_files."""
    assert 256 * MiB == BEHIND_BACKLOG_BYTES
    assert _retention(0, max_files=3, max_file_bytes=16 * MiB).behind_files == 16
    assert _retention(0, max_files=3, max_file_bytes=300 * MiB).behind_files == 3
    assert _retention(0, max_files=40, max_file_bytes=16 * MiB).behind_files == 40


def test_closed_files_are_kept_oldest_first() -> None:
    """closed() appends files in the order they were finished."""
    retention = _retention(3)
    assert list(retention.files) == [ClosedFile("f0", 0, 9), ClosedFile("f1", 10, 19), ClosedFile("f2", 20, 29)]


def test_consumed_files_are_forgotten_first() -> None:
    """The consumed prefix is forgotten (not returned as dropped), and with fewer than max_files left nothing more."""
    retention = _retention(5)
    consumed = {"f0", "f1", "f2"}
    dropped = retention.to_drop(START + 10 * ABSENT_GRACE_NS, consumed.__contains__, _not_asked)
    assert dropped == []
    assert _paths(retention.files) == ["f3", "f4"]


def test_consumed_check_stops_at_the_first_unconsumed_file() -> None:
    """Only a consumed prefix is forgotten: a consumed file after an unconsumed one stays."""
    retention = _retention(3)
    consumed = {"f0", "f2"}
    assert retention.to_drop(START, consumed.__contains__, _not_asked) == []
    assert _paths(retention.files) == ["f1", "f2"]


def test_nothing_dropped_below_max_files_even_when_absent_long() -> None:
    """With fewer than max_files unconsumed files nothing is dropped, however long the aggregator is gone."""
    retention = _retention(2, max_files=3)
    assert retention.to_drop(START + 100 * ABSENT_GRACE_NS, _never_consumed, _not_asked) == []
    assert len(retention.files) == 2


def test_alive_aggregator_keeps_up_to_behind_files() -> None:
    """While an aggregator is alive, files beyond behind_files are dropped oldest first, and no more."""
    retention = _retention(20, max_files=3, max_file_bytes=16 * MiB)
    assert retention.behind_files == 16
    now = START + 100 * ABSENT_GRACE_NS
    dropped = retention.to_drop(now, _never_consumed, _alive)
    assert _paths(dropped) == ["f0", "f1", "f2", "f3"]
    assert len(retention.files) == 16
    assert retention.files[0].path == "f4"
    # Dropped files are forgotten: asking again drops nothing.
    assert retention.to_drop(now, _never_consumed, _alive) == []


def test_alive_aggregator_with_backlog_below_behind_files_drops_nothing() -> None:
    """With an aggregator alive and past max_files but within behind_files, nothing is dropped."""
    retention = _retention(10, max_files=3, max_file_bytes=16 * MiB)
    assert retention.to_drop(START, _never_consumed, _alive) == []
    assert len(retention.files) == 10


def test_within_grace_at_start_nothing_is_dropped() -> None:
    """At job start an aggregator not yet seen is not absent until the grace period passed."""
    retention = _retention(10)
    assert retention.to_drop(START + ABSENT_GRACE_NS, _never_consumed, _dead) == []
    assert len(retention.files) == 10


def test_absent_aggregator_keeps_max_files_minus_one_dropping_oldest() -> None:
    """With no aggregator seen for longer than the grace, files beyond max_files-1 are dropped oldest first."""
    retention = _retention(6, max_files=3)
    dropped = retention.to_drop(START + ABSENT_GRACE_NS + 1, _never_consumed, _dead)
    assert _paths(dropped) == ["f0", "f1", "f2", "f3"]
    assert _paths(retention.files) == ["f4", "f5"]


def test_absent_at_exactly_max_files_drops_one() -> None:
    """With exactly max_files files and the aggregator absent, the oldest one is dropped."""
    retention = _retention(3, max_files=3)
    dropped = retention.to_drop(START + ABSENT_GRACE_NS + 1, _never_consumed, _dead)
    assert _paths(dropped) == ["f0"]
    assert _paths(retention.files) == ["f1", "f2"]


def test_grace_counts_from_the_last_time_the_aggregator_was_seen() -> None:
    """An aggregator seen alive resets the grace: absent only once unseen for longer than ABSENT_GRACE_NS."""
    retention = _retention(5, max_files=3)
    seen_at = START + 5 * ABSENT_GRACE_NS
    assert retention.to_drop(seen_at, _never_consumed, _alive) == []
    assert retention.to_drop(seen_at + ABSENT_GRACE_NS, _never_consumed, _dead) == []
    dropped = retention.to_drop(seen_at + ABSENT_GRACE_NS + 1, _never_consumed, _dead)
    assert _paths(dropped) == ["f0", "f1", "f2"]


def test_consumed_and_absent_together() -> None:
    """Consumed files are forgotten before the count; only unconsumed ones beyond max_files-1 are dropped."""
    retention = _retention(6, max_files=3)
    consumed = {"f0", "f1"}
    dropped = retention.to_drop(START + 2 * ABSENT_GRACE_NS, consumed.__contains__, _dead)
    assert _paths(dropped) == ["f2", "f3"]
    assert _paths(retention.files) == ["f4", "f5"]


def test_loss_states_the_seq_range_and_file_count() -> None:
    """loss() of dropped files is their first file's first seq to last file's last seq, and how many files."""
    dropped = [ClosedFile("a", 100, 149), ClosedFile("b", 150, 199), ClosedFile("c", 200, 204)]
    loss = Retention.loss(dropped)
    assert loss == Loss(first=100, last=204, files=3)
    assert loss is not None
    assert loss.records == 105


def test_loss_of_nothing_is_none() -> None:
    """Nothing dropped is no loss."""
    assert Retention.loss([]) is None


def test_loss_of_a_single_file() -> None:
    """A single dropped file's loss is its own range."""
    loss = Retention.loss([ClosedFile("a", 7, 7)])
    assert loss == Loss(7, 7, 1)
    assert loss is not None
    assert loss.records == 1


def test_loss_after_to_drop_matches_what_was_dropped() -> None:
    """The loss of what to_drop returned covers exactly the dropped files' records."""
    retention = _retention(6, max_files=3)
    loss = Retention.loss(retention.to_drop(START + ABSENT_GRACE_NS + 1, _never_consumed, _dead))
    assert loss == Loss(0, 39, 4)
    assert loss is not None
    assert loss.records == 40


@pytest.mark.parametrize("alive", [True, False])
@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(0, 40),
    n_consumed=st.integers(0, 40),
    max_files=st.integers(1, 10),
    file_mib=st.sampled_from([8, 16, 64, 512]),
    elapsed=st.integers(0, 3 * ABSENT_GRACE_NS),
)
def test_to_drop_property(
    alive: bool, count: int, n_consumed: int, max_files: int, file_mib: int, elapsed: int
) -> None:
    """to_drop drops the oldest unconsumed files and keeps exactly as many as the rule allows."""
    retention = _retention(count, max_files=max_files, max_file_bytes=file_mib * MiB)
    consumed = {f"f{i}" for i in range(min(n_consumed, count))}
    unconsumed = _paths(retention.files)[len(consumed) :]
    asked: list[bool] = []

    def probe() -> bool:
        asked.append(True)
        return alive

    dropped = retention.to_drop(START + elapsed, consumed.__contains__, probe)
    kept = _paths(retention.files)
    assert _paths(dropped) + kept == unconsumed  # oldest dropped, the rest kept in order
    if len(unconsumed) < max_files:
        assert dropped == []
        assert asked == []
        return
    assert asked == [True]
    if alive or elapsed <= ABSENT_GRACE_NS:
        assert len(kept) == min(len(unconsumed), retention.behind_files)
    else:
        assert len(kept) == max_files - 1
    loss = Retention.loss(dropped)
    if dropped:
        assert loss == Loss(dropped[0].first_seq, dropped[-1].last_seq, len(dropped))
    else:
        assert loss is None
