"""Everything at once: the chaos run of the benchmarks, asserting only what it must (exactly once, bounded)."""

from __future__ import annotations

import pytest

from benchmarks import bench_chaos


@pytest.mark.timeout(300)
def test_the_chaos_run_delivers_every_record_exactly_once_to_both_files() -> None:
    """Signal handlers and finalizers logging, reset storms, a clock step, kill -9s, a full disk: exactly once."""
    result = bench_chaos.run(ranks=2, count=8_000)
    assert result["kills"] >= 1
    for name in ("per-node file", "cluster file"):
        assert result[name]["missing"] == 0 and result[name]["doubled"] == 0, (name, result[name])
    # Bounded: nothing here grows with the records sent (a leak would be hundreds of MiB).
    assert max(result["rss"]["aggregator"]) < 200 and max(result["rss"]["streamer"]) < 200
