"""The streamer's merge: chunks as sorted columns, cut at a cutoff, merged by time."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from nvrxlog.streamer.merge import Chunk, MergeBuffer, Ready

INF = math.inf


def _it(ts: int, key: str, seq: int) -> tuple[int, str, int, dict, str]:
    return (ts, key, seq, {"ts": ts, "seq": seq, "w": key}, f"{key}#{seq}@{ts}\n")


def test_chunk_of_nothing_is_empty() -> None:
    """Chunk.of([]) is a chunk of five empty columns."""
    assert Chunk.of([]) == Chunk([], [], [], [], [])


def test_chunk_of_sorts_by_time_into_columns() -> None:
    """Chunk.of sorts the items by time and splits them into the five columns."""
    chunk = Chunk.of([_it(30, "a", 2), _it(10, "b", 0), _it(20, "a", 1)])
    assert chunk.ts == [10, 20, 30]
    assert chunk.keys == ["b", "a", "a"]
    assert chunk.seqs == [0, 1, 2]
    assert chunk.records == [
        {"ts": 10, "seq": 0, "w": "b"},
        {"ts": 20, "seq": 1, "w": "a"},
        {"ts": 30, "seq": 2, "w": "a"},
    ]
    assert chunk.lines == ["b#0@10\n", "a#1@20\n", "a#2@30\n"]


def test_chunk_of_is_stable_for_equal_times() -> None:
    """Items with equal times keep their given order (a writer's equal-time records stay in seq order)."""
    chunk = Chunk.of([_it(5, "a", 3), _it(5, "b", 9), _it(1, "c", 0), _it(5, "a", 4), _it(5, "b", 1)])
    assert list(zip(chunk.keys, chunk.seqs, strict=True)) == [("c", 0), ("a", 3), ("b", 9), ("a", 4), ("b", 1)]


def test_empty_buffer_takes_nothing() -> None:
    """An empty buffer is falsy and take gives (None, inf)."""
    buffer = MergeBuffer()
    assert not buffer
    assert buffer.take(INF) == (None, INF)


def test_empty_chunk_is_not_held() -> None:
    """Adding an empty chunk leaves the buffer empty."""
    buffer = MergeBuffer()
    buffer.add(Chunk.of([]))
    assert not buffer


def test_take_returns_everything_up_to_the_cutoff_and_the_oldest_held() -> None:
    """take(cutoff) gives the parts with ts <= cutoff and the oldest ts of what stays held."""
    buffer = MergeBuffer()
    buffer.add(Chunk.of([_it(10, "a", 0), _it(20, "a", 1), _it(30, "a", 2)]))
    buffer.add(Chunk.of([_it(25, "b", 0), _it(40, "b", 1)]))
    buffer.add(Chunk.of([_it(5, "c", 0)]))
    ready, oldest = buffer.take(20)
    assert ready is not None
    assert oldest == 25
    assert len(ready) == 3
    assert [part.ts for part in ready.parts] == [[10, 20], [5]]
    assert ready.merged("ts") == [5, 10, 20]
    assert ready.merged("lines") == ["c#0@5\n", "a#0@10\n", "a#1@20\n"]
    assert bool(buffer)
    ready, oldest = buffer.take(INF)
    assert ready is not None
    assert oldest == INF
    assert ready.merged("ts") == [25, 30, 40]
    assert ready.merged("seqs") == [0, 2, 1]
    assert not buffer


def test_take_below_everything_gives_none_and_keeps_all() -> None:
    """A cutoff below every held ts gives no Ready, the oldest ts held, and keeps the chunks."""
    buffer = MergeBuffer()
    buffer.add(Chunk.of([_it(10, "a", 0), _it(11, "a", 1)]))
    buffer.add(Chunk.of([_it(7, "b", 0)]))
    assert buffer.take(6) == (None, 7)
    ready, oldest = buffer.take(INF)
    assert ready is not None
    assert len(ready) == 3
    assert oldest == INF


def test_cutoff_equal_to_a_time_includes_it() -> None:
    """Records stamped exactly at the cutoff are ready."""
    buffer = MergeBuffer()
    buffer.add(Chunk.of([_it(10, "a", 0), _it(10, "a", 1), _it(11, "a", 2)]))
    ready, oldest = buffer.take(10)
    assert ready is not None
    assert ready.merged("seqs") == [0, 1]
    assert oldest == 11


def test_single_part_merged_is_that_part() -> None:
    """With one ready part, merged gives its column as it is."""
    chunk = Chunk.of([_it(2, "a", 0), _it(1, "b", 0)])
    ready = Ready([chunk])
    assert ready.merged("keys") == ["b", "a"]
    assert len(ready) == 2


def test_merged_across_chunks_is_in_time_order_and_keeps_each_writers_order() -> None:
    """Columns merged across chunks are in time order; equal times keep arrival order, so each writer's order holds."""
    first = Chunk.of([_it(10, "a", 0), _it(20, "a", 1), _it(15, "b", 0)])
    second = Chunk.of([_it(15, "b", 1), _it(20, "a", 2), _it(20, "b", 2)])
    third = Chunk.of([_it(20, "a", 3), _it(12, "c", 0)])
    ready = Ready([first, second, third])
    assert len(ready) == 8
    ts = ready.merged("ts")
    keys = ready.merged("keys")
    seqs = ready.merged("seqs")
    assert ts == [10, 12, 15, 15, 20, 20, 20, 20]
    assert list(zip(keys, seqs, strict=True)) == [
        ("a", 0),
        ("c", 0),
        ("b", 0),
        ("b", 1),
        ("a", 1),
        ("a", 2),
        ("b", 2),
        ("a", 3),
    ]
    # Every column is merged by the same order.
    assert [r["seq"] for r in ready.merged("records")] == seqs
    assert ready.merged("lines") == [f"{k}#{s}@{t}\n" for k, s, t in zip(keys, seqs, ts, strict=True)]


_ITEM = st.tuples(st.integers(0, 100), st.sampled_from(["a", "b", "c"]))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(_ITEM, max_size=12), max_size=8),
    st.lists(st.integers(-5, 110), max_size=6),
)
def test_random_cutoffs_then_inf_yield_every_record_once_in_order(
    chunks: list[list[tuple[int, str]]], cutoffs: list[int]
) -> None:
    """Taking at random cutoffs then inf yields every record exactly once, each take in time order and <= cutoff."""
    buffer = MergeBuffer()
    everything: list[tuple[int, str, int]] = []
    uid = 0
    for raw in chunks:
        items = []
        for ts, key in raw:
            items.append(_it(ts, key, uid))
            everything.append((ts, key, uid))
            uid += 1
        chunk = Chunk.of(items)
        assert chunk.ts == sorted(chunk.ts)
        buffer.add(chunk)
    taken: list[tuple[int, str, int]] = []
    for cutoff in [*cutoffs, INF]:
        before = list(taken)
        ready, oldest = buffer.take(cutoff)
        if ready is not None:
            ts = ready.merged("ts")
            assert ts == sorted(ts)
            assert all(t <= cutoff for t in ts)
            assert len(ready) == len(ts)
            taken.extend(zip(ts, ready.merged("keys"), ready.merged("seqs"), strict=True))
        held = [rec for rec in everything if rec not in taken]
        assert oldest == min((t for t, _, _ in held), default=INF)
        assert oldest > cutoff or not held
        assert (ready is None) == (taken == before)
    assert not buffer
    assert sorted(taken, key=lambda r: r[2]) == everything
    assert len(set(taken)) == len(taken)


@st.composite
def _writer_streams(draw: st.DrawFn) -> list[list[tuple[int, str, int]]]:
    """Per writer, non-decreasing times cut into consecutive pieces, one piece per chunk, writers interleaved."""
    n_chunks = draw(st.integers(1, 6))
    pieces: list[dict[str, list[tuple[int, str, int]]]] = [{} for _ in range(n_chunks)]
    for writer in ("a", "b", "c"):
        steps = draw(st.lists(st.integers(0, 5), max_size=20))
        t = draw(st.integers(0, 20))
        records = []
        for seq, step in enumerate(steps):
            t += step
            records.append((t, writer, seq))
        bounds = sorted(draw(st.lists(st.integers(0, len(records)), min_size=n_chunks - 1, max_size=n_chunks - 1)))
        for i, (lo, hi) in enumerate(zip([0, *bounds], [*bounds, len(records)], strict=True)):
            pieces[i][writer] = records[lo:hi]
    chunks = []
    for piece in pieces:
        # Interleave the writers at random, each writer's records staying in its order (as in a batch).
        queues = {writer: list(records) for writer, records in piece.items() if records}
        chunk = []
        while queues:
            writer = draw(st.sampled_from(sorted(queues)))
            chunk.append(queues[writer].pop(0))
            if not queues[writer]:
                del queues[writer]
        chunks.append(chunk)
    return chunks


@settings(max_examples=200, deadline=None)
@given(_writer_streams(), st.lists(st.integers(0, 120), max_size=5))
def test_each_writers_records_keep_their_order(chunks: list[list[tuple[int, str, int]]], cutoffs: list[int]) -> None:
    """When each writer's times never decrease across chunks in arrival order, its records come out in seq order."""
    buffer = MergeBuffer()
    for raw in chunks:
        buffer.add(Chunk.of([_it(*r) for r in raw]))
    out: list[tuple[str, int]] = []
    for cutoff in [*sorted(cutoffs), INF]:
        ready, _ = buffer.take(cutoff)
        if ready is not None:
            out.extend(zip(ready.merged("keys"), ready.merged("seqs"), strict=True))
    for writer in ("a", "b", "c"):
        mine = [seq for key, seq in out if key == writer]
        assert mine == list(range(len(mine)))
    assert len(out) == sum(len(raw) for raw in chunks)
