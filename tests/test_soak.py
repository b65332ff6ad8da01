"""A short soak: the benchmark's run, asserting only what it must (exactly once, the streamer's memory flat)."""

from __future__ import annotations

import pytest

from benchmarks import bench_soak


@pytest.mark.timeout(300)
def test_the_soak_delivers_every_honest_record_once_and_the_streamer_stays_flat() -> None:
    """Nodes, short-lived writers, a node killed and restarted, a hostile peer flooding: once each, RSS flat."""
    result = bench_soak.run(nodes=6, seconds=20, rate=200, short=5_000, restart_every=3.0)
    assert result["restarts"] >= 2 and result["hostile batches"] > 100
    assert result["missing"] == 0 and result["doubled"] == 0 and result["undelivered"] == 0, result
    rss = [mib for _, mib, _ in result["curve"]]
    third = max(1, len(rss) // 3)
    # Held records of the flood would grow it by hundreds of MiB; a flat curve stays within noise.
    assert max(rss[-third:]) < max(rss[:third]) + 64 and max(rss) < 200, rss
    assert result["checkpoint bytes"] < 16 << 10  # 5,000 writers came and went: none is kept
