"""While the per-node file cannot be written the aggregator holds a bounded backlog, and loses nothing."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import fill_disk, mounted_tmpfs, node_env, parse_text_records, start_worker, wait_for

from nvrxlog import NodeAggregator
from nvrxlog.node.backlog import Backlog, backlog_paused, tails_to_read


def _tail(more: bool, key: int) -> SimpleNamespace:
    return SimpleNamespace(more=more, cursor=SimpleNamespace(key=key))


def test_reading_pauses_only_when_writes_fail_and_the_backlog_is_full() -> None:
    """backlog_paused: a failing write and a backlog full by records or by bytes; either alone keeps reading."""
    limits = {"limit": 10, "byte_limit": 1000}
    assert backlog_paused(held=10, held_bytes=0, write_failing=True, **limits)
    assert backlog_paused(held=1, held_bytes=1000, write_failing=True, **limits)
    assert not backlog_paused(held=9, held_bytes=999, write_failing=True, **limits)
    assert not backlog_paused(held=10**6, held_bytes=10**9, write_failing=False, **limits)


def test_the_backlog_weighs_records_by_the_bytes_read_and_remembers_the_last_full_read() -> None:
    """Backlog: held records weigh the average bytes per record read; only an unpaused cycle moves read_all_at."""
    backlog = Backlog(limit=10**6, byte_limit=10_000)
    assert not backlog.paused(20, write_failing=True, now=5)  # 20 records at 256 bytes each
    assert backlog.read_all_at == 5
    backlog.read(0, 0)  # nothing read: the average stays
    backlog.read(100_000, 100)  # (256 + 1000) / 2 bytes per record from now on
    assert backlog.paused(20, write_failing=True, now=9)
    assert backlog.read_all_at == 5
    assert not backlog.paused(20, write_failing=False, now=11)
    assert backlog.read_all_at == 11


def test_paused_reading_takes_only_tails_that_block_every_held_record() -> None:
    """tails_to_read: all when not paused; when paused, only tails with unread data at or before the oldest held."""
    lagging, ahead, idle = _tail(True, 5), _tail(True, 50), _tail(False, 1)
    tails = [lagging, ahead, idle]
    assert tails_to_read(tails, paused=False, oldest=10) == tails
    assert tails_to_read(tails, paused=True, oldest=10) == [lagging]
    assert tails_to_read(tails, paused=True, oldest=5) == [lagging]
    assert tails_to_read(tails, paused=True, oldest=4) == []


def _peak_backlog_on_a_full_disk(tmp_path: Path, count: int, pad: int, **limits: int) -> tuple[int, list[str]]:
    """Rank 0 logs ``count`` records while the node file's disk (a real tmpfs) is full; then space returns.

    Returns the largest backlog seen while the disk was full and every message
    of the node file once all are written.
    """
    with mounted_tmpfs(tmp_path / "logs", "256m") as logs:
        aggregator = NodeAggregator(str(tmp_path / "tmp"), str(logs), "node001", **limits).start()
        try:
            filler = fill_disk(logs)
            # A first record whose write fails: from then on the aggregator knows the file cannot be written.
            first = start_worker("--count", 1, env=node_env(tmp_path, 1, NVRX_LOG_AGGREGATOR="external"))
            assert first.wait(timeout=60) == 0
            wait_for(lambda: aggregator.errors.counts["write:ENOSPC"], what="a write to fail")
            env = node_env(tmp_path, 0, NVRX_LOG_AGGREGATOR="external")
            writer = start_worker("--count", count, "--pad", pad, env=env)
            peak = 0
            quiet_until = None
            deadline = time.monotonic() + 120
            # Watch the backlog while the rank logs and for two seconds after (unbounded, it takes everything).
            while quiet_until is None or time.monotonic() < quiet_until:
                peak = max(peak, aggregator.backlog)
                if quiet_until is None and writer.poll() is not None:
                    quiet_until = time.monotonic() + 2.0
                assert time.monotonic() < deadline, "the rank did not finish"
                time.sleep(0.01)
            assert writer.returncode == 0
            filler.unlink()
            out = logs / "nvrx_log_node001.log"
            wait_for(lambda: out.read_bytes().count(b"\n") >= count, timeout=120, what="every record written")
        finally:
            aggregator.stop()
        msgs = [r["msg"] for r in parse_text_records(out)]
    assert aggregator.backlog == 0
    assert [m for m in msgs if m.startswith("r1 ")] == ["r1 i0 "]
    return peak, msgs


@pytest.mark.timeout(240)
def test_full_log_dir_holds_a_bounded_backlog_and_every_record_arrives_once_space_returns(tmp_path: Path) -> None:
    """200k records logged while the node file's disk is full: at most ~max_held held, then all exactly once."""
    count, limit = 200_000, 5_000
    peak, msgs = _peak_backlog_on_a_full_disk(tmp_path, count, 0, max_held=limit)
    # Reading stops at the first poll past the limit, and one poll reads at most 1 MiB of a file.
    assert limit <= peak <= limit + 10_000, peak
    assert [m for m in msgs if m.startswith("r0 ")] == [f"r0 i{i} " for i in range(count)]


@pytest.mark.timeout(240)
def test_large_records_are_bounded_by_bytes_held_not_only_by_count(tmp_path: Path) -> None:
    """3,000 records of 20 KB while the disk is full: held bytes stay near max_held_bytes; then all exactly once."""
    count, pad, byte_limit = 3_000, 20_000, 8 << 20
    peak, msgs = _peak_backlog_on_a_full_disk(tmp_path, count, pad, max_held_bytes=byte_limit)
    # One poll past the limit reads at most 1 MiB: about 50 more records of this size.
    assert peak * pad <= byte_limit + (4 << 20), peak
    assert [m for m in msgs if m.startswith("r0 ")] == [f"r0 i{i} {'x' * pad}" for i in range(count)]
