"""The forwarder's loss ledger (``nvrxlog.wire.losses``): losses stay until the report of them is acknowledged."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvrxlog.wire.losses import LossLedger
from nvrxlog.wire.spool import Dropped


def test_dropped_holds_its_range_and_count_and_is_frozen() -> None:
    """Dropped(first, last, records) keeps its fields, compares by value and cannot be changed."""
    d = Dropped(3, 7, 40)
    assert (d.first, d.last, d.records) == (3, 7, 40)
    assert d == Dropped(3, 7, 40)
    assert d != Dropped(3, 7, 41)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.records = 1  # type: ignore[misc]


def test_an_empty_ledger_has_nothing_to_report() -> None:
    """No losses: no report, zero records, and an ack clears nothing."""
    ledger = LossLedger()
    assert ledger.report_text() is None
    assert ledger.records == 0
    assert ledger.acknowledged(100) is False


def test_the_ledger_starts_from_losses_loaded_from_disk() -> None:
    """Losses passed in (kept across a restart) are entries to report, copied not shared."""
    lost = [Dropped(1, 2, 5)]
    ledger = LossLedger(lost)
    assert ledger.entries == [Dropped(1, 2, 5)]
    ledger.add([Dropped(3, 3, 1)])
    assert lost == [Dropped(1, 2, 5)]


def test_report_text_names_every_unreported_loss() -> None:
    """The report lists each entry's batch range and record count, in order."""
    ledger = LossLedger([Dropped(1, 4, 10)])
    ledger.add([Dropped(9, 9, 2), Dropped(12, 20, 300)])
    text = ledger.report_text()
    assert text is not None
    assert "batches 1-4 (10 records)" in text
    assert "batches 9-9 (2 records)" in text
    assert "batches 12-20 (300 records)" in text
    assert text.index("1-4") < text.index("9-9") < text.index("12-20")
    assert text.startswith("nvrxlog forwarder: records lost")


def test_no_second_report_while_one_is_in_flight() -> None:
    """Once reported, no further report text is given until the report is acknowledged, even for new losses."""
    ledger = LossLedger([Dropped(1, 1, 1)])
    assert ledger.report_text() is not None
    ledger.reported(50)
    assert ledger.report_text() is None
    ledger.add([Dropped(2, 2, 3)])
    assert ledger.report_text() is None
    assert ledger.acknowledged(50)
    text = ledger.report_text()
    assert text is not None
    assert "batches 2-2 (3 records)" in text
    assert "1-1" not in text


def test_an_ack_before_the_report_batch_clears_nothing() -> None:
    """acknowledged(acked) with acked below the report's batch seq keeps every entry and the report in flight."""
    ledger = LossLedger([Dropped(1, 2, 7)])
    ledger.reported(10)
    assert ledger.acknowledged(9) is False
    assert ledger.entries == [Dropped(1, 2, 7)]
    assert ledger.records == 7
    assert ledger.report_text() is None  # still in flight


def test_acknowledged_clears_only_the_entries_the_report_covered() -> None:
    """Losses added after the report stay once the report is acknowledged (at or past its batch seq)."""
    ledger = LossLedger()
    ledger.add([Dropped(1, 2, 7), Dropped(5, 6, 8)])
    ledger.reported(10)
    ledger.add([Dropped(11, 12, 100)])
    assert ledger.acknowledged(10) is True
    assert ledger.entries == [Dropped(11, 12, 100)]
    assert ledger.records == 100
    # That report is done: the next ack clears nothing more.
    assert ledger.acknowledged(1000) is False
    assert ledger.entries == [Dropped(11, 12, 100)]


def test_an_ack_past_the_report_batch_clears_it_too() -> None:
    """An ack beyond the report's batch seq acknowledges the report as well."""
    ledger = LossLedger([Dropped(1, 1, 4)])
    ledger.reported(3)
    assert ledger.acknowledged(99) is True
    assert ledger.entries == []
    assert ledger.report_text() is None


def test_records_sums_the_entries() -> None:
    """records is the sum of the records of every entry still in the ledger."""
    ledger = LossLedger([Dropped(1, 1, 4)])
    ledger.add([Dropped(2, 5, 6), Dropped(7, 7, 0)])
    assert ledger.records == 10


_DROPS = st.lists(st.builds(Dropped, st.integers(1, 10**6), st.integers(1, 10**6), st.integers(0, 10**6)), max_size=5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), _DROPS),
            st.tuples(st.just("report"), st.integers(1, 50)),
            st.tuples(st.just("ack"), st.integers(0, 60)),
        ),
        max_size=30,
    )
)
def test_the_ledger_matches_a_model(ops: list[tuple]) -> None:
    """Against a model: reports cover a prefix, clear it only when acked at or past their batch, records sum up."""
    ledger = LossLedger()
    entries: list[Dropped] = []
    report: tuple[int, int] | None = None
    for op, arg in ops:
        if op == "add":
            ledger.add(arg)
            entries.extend(arg)
        elif op == "report":
            text = ledger.report_text()
            if not entries or report is not None:
                assert text is None
                continue
            assert text is not None
            for d in entries:
                assert f"batches {d.first}-{d.last} ({d.records} records)" in text
            ledger.reported(arg)
            report = (arg, len(entries))
        else:
            cleared = ledger.acknowledged(arg)
            if report is not None and arg >= report[0]:
                assert cleared is True
                del entries[: report[1]]
                report = None
            else:
                assert cleared is False
        assert ledger.entries == entries
        assert ledger.records == sum(d.records for d in entries)
