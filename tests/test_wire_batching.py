"""Batches a streamer can always take: capped by records and by bytes; an oversized record is cut, marked."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nvrxlog.wire.batching import split_batches


def _records(sizes: list[int]) -> list[dict]:
    return [{"seq": i, "ts": i, "msg": "x" * n} for i, n in enumerate(sizes)]


def test_small_records_go_by_the_record_cap() -> None:
    """2,500 short records make batches of 1,000, 1,000 and 500, in order."""
    batches = split_batches(_records([10] * 2500))
    assert [len(b) for b in batches] == [1000, 1000, 500]
    assert [r["seq"] for b in batches for r in b] == list(range(2500))


def test_large_records_go_by_the_byte_cap() -> None:
    """Records of 300 KB each: about 4 MiB of (estimated) bytes per batch, never one over."""
    batches = split_batches(_records([300_000] * 20), max_bytes=4 << 20)
    assert all(sum(256 + 4 * len(r["msg"]) for r in b) <= 4 << 20 for b in batches)
    assert sum(len(b) for b in batches) == 20 and len(batches) > 1


def test_a_record_that_cannot_fit_alone_is_cut_with_a_marker() -> None:
    """One message larger than a batch: cut to fit, and the line says how much was cut."""
    [[record]] = split_batches(_records([2_000_000]), max_bytes=1 << 20)
    assert 256 + 4 * len(record["msg"]) <= 1 << 20
    assert record["msg"].endswith("characters to fit a batch]") and record["seq"] == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=50_000), max_size=300), st.integers(min_value=1, max_value=50))
def test_any_records_come_out_once_in_order_within_both_caps(sizes: list[int], max_records: int) -> None:
    """Whatever the sizes: every record once, in order, no batch over either cap, none empty."""
    batches = split_batches(_records(sizes), max_records=max_records, max_bytes=64 << 10)
    assert [r["seq"] for b in batches for r in b] == list(range(len(sizes)))
    assert all(0 < len(b) <= max_records for b in batches)
    assert all(sum(256 + 4 * len(r["msg"]) for r in b) <= 64 << 10 for b in batches)
