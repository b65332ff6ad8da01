"""WriterCursor: duplicates dropped, gaps visible, merge keys that never go back."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nvrxlog.core.cursor import JUMP_FLOOR, WriterCursor, plausible_jump


def test_fresh_cursor_starts_before_seq_zero_with_key_zero() -> None:
    """A new cursor has taken nothing (seq -1) and its merge key is 0."""
    cursor = WriterCursor()
    assert (cursor.seq, cursor.key) == (-1, 0)
    assert repr(cursor) == "WriterCursor(seq=-1, key=0)"


def test_admit_new_seq_returns_its_time_and_advances() -> None:
    """A seq past the cursor is taken: its merge key is its time, and the cursor moves to it."""
    cursor = WriterCursor()
    assert cursor.admit(0, 1_000) == 1_000
    assert (cursor.seq, cursor.key) == (0, 1_000)
    assert cursor.admit(1, 2_000) == 2_000
    assert (cursor.seq, cursor.key) == (1, 2_000)


def test_admit_duplicate_returns_none_and_changes_nothing() -> None:
    """A seq at or below the cursor is a duplicate: None, and the cursor stays where it was."""
    cursor = WriterCursor(seq=5, key=500)
    assert cursor.admit(5, 9_999) is None
    assert cursor.admit(3, 9_999) is None
    assert cursor.admit(-1, 9_999) is None
    assert (cursor.seq, cursor.key) == (5, 500)


def test_cursor_restored_from_checkpoint_drops_what_it_covers() -> None:
    """A cursor built from a checkpointed seq drops records up to it and takes the next one."""
    cursor = WriterCursor(7)
    assert [cursor.admit(seq, 10 * seq) for seq in range(10)] == [None] * 8 + [80, 90]
    assert cursor.seq == 9


def test_gap_is_the_range_between_cursor_and_seq_read_before_the_call() -> None:
    """The missing records are cursor.seq+1 .. seq-1, read before admit; admit still takes the record."""
    cursor = WriterCursor()
    cursor.admit(0, 10)
    cursor.admit(1, 20)
    missing = range(cursor.seq + 1, 5)
    assert cursor.admit(5, 30) == 30
    assert list(missing) == [2, 3, 4]
    assert cursor.seq == 5
    # The next record in order leaves no gap.
    assert list(range(cursor.seq + 1, 6)) == []
    assert cursor.admit(6, 40) == 40


def test_merge_key_never_goes_back_when_time_steps_back() -> None:
    """A record older than the writer's last key gets that key; later records resume their own times."""
    cursor = WriterCursor()
    assert cursor.admit(0, 1_000) == 1_000
    assert cursor.admit(1, 400) == 1_000  # the clock stepped back
    assert cursor.key == 1_000
    assert cursor.seq == 1
    assert cursor.admit(2, 999) == 1_000
    assert cursor.admit(3, 1_000) == 1_000
    assert cursor.admit(4, 1_500) == 1_500
    assert cursor.key == 1_500


def test_negative_time_gets_the_initial_key() -> None:
    """With the default key 0, a record stamped before 0 is keyed 0."""
    cursor = WriterCursor()
    assert cursor.admit(0, -5) == 0
    assert cursor.key == 0


def test_admit_run_takes_a_run_that_plainly_follows() -> None:
    """A run whose first seq is past the cursor and first time not before its key is taken whole."""
    cursor = WriterCursor(seq=3, key=100)
    assert cursor.admit_run(4, 100, 9, 250) is True
    assert (cursor.seq, cursor.key) == (9, 250)


def test_admit_run_on_fresh_cursor() -> None:
    """A fresh cursor takes a run starting at seq 0."""
    cursor = WriterCursor()
    assert cursor.admit_run(0, 5, 2, 7) is True
    assert (cursor.seq, cursor.key) == (2, 7)
    assert cursor.admit(2, 99) is None
    assert cursor.admit(3, 6) == 7


def test_admit_run_takes_nothing_when_it_overlaps_the_cursor() -> None:
    """A run whose first seq is at or below the cursor (a resend) is refused and nothing moves."""
    cursor = WriterCursor(seq=3, key=100)
    assert cursor.admit_run(3, 200, 9, 300) is False
    assert cursor.admit_run(0, 200, 9, 300) is False
    assert (cursor.seq, cursor.key) == (3, 100)


def test_admit_run_takes_nothing_when_its_first_time_is_before_the_key() -> None:
    """A run starting earlier than the writer's merge key is refused and nothing moves."""
    cursor = WriterCursor(seq=3, key=100)
    assert cursor.admit_run(4, 99, 9, 300) is False
    assert (cursor.seq, cursor.key) == (3, 100)


def test_admit_run_past_a_gap_is_taken_per_its_contract() -> None:
    """A run starting past cursor+1 still plainly follows (its first seq is past the cursor)."""
    cursor = WriterCursor(seq=3, key=100)
    assert cursor.admit_run(10, 150, 12, 160) is True
    assert (cursor.seq, cursor.key) == (12, 160)


@st.composite
def _deliveries(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, int]]]:
    """Times for seqs 0..n and a delivery order: first arrivals increasing, resends anywhere after."""
    ts = draw(st.lists(st.integers(0, 10**12), min_size=1, max_size=40))
    delivered: list[tuple[int, int]] = []
    for seq in range(len(ts)):
        for _ in range(draw(st.integers(0, 3))):
            if seq:
                old = draw(st.integers(0, seq - 1))
                delivered.append((old, ts[old]))
        delivered.append((seq, ts[seq]))
    tail = draw(st.lists(st.integers(0, len(ts) - 1), max_size=10))
    delivered.extend((old, ts[old]) for old in tail)
    return ts, delivered


@settings(max_examples=200, deadline=None)
@given(_deliveries())
def test_resends_admit_each_seq_once_with_non_decreasing_keys(case: tuple[list[int], list[tuple[int, int]]]) -> None:
    """Whatever resends interleave, each seq is admitted exactly once, in order, with non-decreasing keys."""
    ts, delivered = case
    cursor = WriterCursor()
    admitted: list[tuple[int, int]] = []
    for seq, t in delivered:
        before = cursor.seq
        key = cursor.admit(seq, t)
        if key is None:
            assert seq <= before
        else:
            assert seq == before + 1  # no gap: first arrivals come in order
            admitted.append((seq, key))
    assert [seq for seq, _ in admitted] == list(range(len(ts)))
    keys = [key for _, key in admitted]
    assert keys == sorted(keys)
    # Each key is the running maximum of the times: its own time unless the clock stepped back.
    assert keys == [max(ts[: i + 1]) for i in range(len(ts))]
    assert cursor.seq == len(ts) - 1
    assert cursor.key == max(ts)


# -- plausible jumps ---------------------------------------------------------------------

NOW = 1_700_000_000 * 10**9


def test_a_small_skip_or_a_first_record_is_always_plausible() -> None:
    """Skipping up to JUMP_FLOOR seqs needs no time; a writer's first record may have any seq."""
    assert plausible_jump(100, NOW, 100 + JUMP_FLOOR, NOW, NOW)
    assert plausible_jump(-1, 0, 10**15, NOW, NOW)


def test_a_skip_takes_time_in_the_stamps() -> None:
    """Lost records were written one by one: a skip needs its stamp that much later (10M records a second)."""
    assert not plausible_jump(100, NOW, 100 + JUMP_FLOOR + 1, NOW, NOW)
    assert plausible_jump(100, NOW, 100 + JUMP_FLOOR + 10_000_000, NOW + 10**9, NOW + 10**9)
    assert not plausible_jump(100, NOW, 100 + JUMP_FLOOR + 10_000_001, NOW + 10**9, NOW + 10**9)


def test_a_stamp_in_the_future_buys_no_room() -> None:
    """A peer cannot stamp a record ten years ahead to make a huge seq plausible."""
    ten_years = 10 * 365 * 86_400 * 10**9
    assert not plausible_jump(100, NOW, 10**15, NOW + ten_years, NOW)
    assert plausible_jump(100, NOW - 10**11, 100 + 10**9, NOW, NOW)  # 100 s of writing: a billion at most


@settings(max_examples=200, deadline=None)
@given(
    last=st.integers(0, 10**12),
    rate=st.integers(1, 10_000_000),
    seconds=st.floats(0, 10**5),
)
def test_an_honest_writer_s_gap_is_always_plausible(last: int, rate: int, seconds: float) -> None:
    """A writer at up to 10M records/s that lost ``seconds`` of records (stamped after them) is believed."""
    elapsed = int(seconds * 1e9)
    seq = last + 1 + int(rate * seconds)
    assert plausible_jump(last, NOW, seq, NOW + elapsed, NOW + elapsed + 5)
