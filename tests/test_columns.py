"""Batches as columns: lossless for every record, and the same text as record by record."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvrxlog.core.lines import LineFormat
from nvrxlog.wire.columns import pack, unpack

_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=30) | st.sampled_from(["INFO", "a\nb", "\x1b[31m", ""])
_RANK = st.none() | st.integers(-1, 10**6)
_RECORD = st.fixed_dictionaries(
    {
        "seq": st.integers(0, 2**63),
        "ts": st.integers(0, 2**62),
        "level": _TEXT,
        "rank": _RANK,
        "local_rank": _RANK,
        "infra_rank": _RANK,
        "infra_local_rank": _RANK,
        "pid": st.integers(1, 2**22),
        "file": _TEXT,
        "line": st.integers(0, 10**6),
        "msg": _TEXT,
        "w": st.sampled_from(["w0", "w1", "w.2"]),
    },
    optional={"node": st.sampled_from(["n1", "../n2"])},
)
# What a damaged temp file or a foreign sender may hold: still valid JSON.
_ODD = st.dictionaries(st.sampled_from(["seq", "ts", "msg", "x"]), st.integers() | st.text() | st.none(), max_size=4)


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(st.lists(_RECORD, max_size=20))
def test_usual_records_travel_as_columns_and_come_back_the_same(records: list[dict]) -> None:
    """pack() makes columns of records of the usual shape; unpack() gives exactly them back."""
    body = pack(records)
    assert "r" not in body
    assert unpack(body) == records


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None)
@given(st.lists(_RECORD, max_size=10), _ODD, st.integers(0, 10))
def test_a_batch_with_any_odd_record_travels_as_records(records: list[dict], odd: dict, at: int) -> None:
    """One record of another shape anywhere: the batch is sent as the records themselves, unchanged."""
    records.insert(min(at, len(records)), odd)
    assert pack(records) == {"r": records}


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(st.lists(_RECORD, min_size=1, max_size=20), st.booleans())
def test_lines_made_column_by_column_equal_lines_made_one_by_one(records: list[dict], untrusted: bool) -> None:
    """The streamer's column path writes exactly what formatting each record alone writes (defanging included)."""
    for record in records:
        record.setdefault("node", "n0")
    columns = LineFormat(untrusted=untrusted).lines(records)
    one_by_one = LineFormat(untrusted=untrusted)
    assert columns == [one_by_one.line(r, r["node"]) for r in records]
