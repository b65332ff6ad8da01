"""While the per-node file cannot be written the aggregator holds a bounded backlog, and loses nothing."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import fill_disk, mounted_tmpfs, node_env, parse_text_records, start_worker, wait_for

from nvrxlog import NodeAggregator
from nvrxlog.node.backlog import backlog_paused, tails_to_read


def _tail(more: bool, key: int) -> SimpleNamespace:
    return SimpleNamespace(more=more, cursor=SimpleNamespace(key=key))


def test_reading_pauses_only_when_writes_fail_and_the_backlog_is_full() -> None:
    """backlog_paused: a failing write and a full backlog together; either alone keeps reading."""
    assert backlog_paused(held=10, limit=10, write_failing=True)
    assert not backlog_paused(held=9, limit=10, write_failing=True)
    assert not backlog_paused(held=10**6, limit=10, write_failing=False)


def test_paused_reading_takes_only_tails_that_block_every_held_record() -> None:
    """tails_to_read: all when not paused; when paused, only tails with unread data at or before the oldest held."""
    lagging, ahead, idle = _tail(True, 5), _tail(True, 50), _tail(False, 1)
    tails = [lagging, ahead, idle]
    assert tails_to_read(tails, paused=False, oldest=10) == tails
    assert tails_to_read(tails, paused=True, oldest=10) == [lagging]
    assert tails_to_read(tails, paused=True, oldest=5) == [lagging]
    assert tails_to_read(tails, paused=True, oldest=4) == []


@pytest.mark.timeout(240)
def test_full_log_dir_holds_a_bounded_backlog_and_every_record_arrives_once_space_returns(tmp_path: Path) -> None:
    """200k records logged while the node file's disk (a real tmpfs) is full: backlog bounded, then all exactly once."""
    count, limit = 200_000, 5_000
    # Reading stops at the first poll past the limit, and one poll reads at most 1 MiB of a file.
    bound = limit + 10_000
    with mounted_tmpfs(tmp_path / "logs", "64m") as logs:
        aggregator = NodeAggregator(str(tmp_path / "tmp"), str(logs), "node001", max_held=limit).start()
        try:
            filler = fill_disk(logs)
            # A first record whose write fails: from then on the aggregator knows the file cannot be written.
            first = start_worker("--count", 1, env=node_env(tmp_path, 1, NVRX_LOG_AGGREGATOR="external"))
            assert first.wait(timeout=60) == 0
            wait_for(lambda: aggregator.errors.counts["write:ENOSPC"], what="a write to fail")
            writer = start_worker("--count", count, env=node_env(tmp_path, 0, NVRX_LOG_AGGREGATOR="external"))
            peak = 0
            quiet_until = None
            deadline = time.monotonic() + 120
            # Watch the backlog while the rank logs and for two seconds after: unbounded, it reaches 200k.
            while quiet_until is None or time.monotonic() < quiet_until:
                peak = max(peak, aggregator.backlog)
                assert peak <= bound, f"backlog {peak} past {bound} while the disk is full"
                if quiet_until is None and writer.poll() is not None:
                    quiet_until = time.monotonic() + 2.0
                assert time.monotonic() < deadline, "the rank did not finish"
                time.sleep(0.01)
            assert writer.returncode == 0
            assert peak >= limit, "the backlog must have reached the limit for this test to mean anything"
            filler.unlink()
            out = logs / "nvrx_log_node001.log"
            wait_for(lambda: out.read_bytes().count(b"\n") >= count, timeout=120, what="every record written")
        finally:
            aggregator.stop()
        msgs = [r["msg"] for r in parse_text_records(out)]
    assert [m for m in msgs if m.startswith("r0 ")] == [f"r0 i{i} " for i in range(count)]
    assert [m for m in msgs if m.startswith("r1 ")] == ["r1 i0 "]
    assert aggregator.backlog == 0
