"""Nodes' clocks at the streamer (``nvrxlog.streamer.clocks``): offsets applied, far-ahead stamps merged by arrival."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_streamer_ingest import T0, new_ingest, payload, rec
from test_streamer_intake import PEER, _intake, _notices

from nvrxlog.streamer.clocks import FUTURE_NS, NodeClock, corrected, corrected_ts, merge_keys
from nvrxlog.streamer.sessions import Sessions
from nvrxlog.wire.protocol import BATCH, PING, hello

S = 10**9
MS = 1_000_000
HOUR = 3600 * S
FORMS = pytest.mark.parametrize("form", ["columns", "r"])


# -- the offset applied --------------------------------------------------------------


def test_noise_is_not_applied_and_no_notice_is_written() -> None:
    """A node within a millisecond (or its round trip) of the streamer is not corrected at all."""
    clock = NodeClock()
    assert clock.report("n1", 400_000, 100_000) == (0, [])
    assert clock.report("n1", 3 * MS, 5 * MS) == (0, [])  # within its own round trip
    assert clock.offset == 0


def test_an_hour_ahead_is_applied_and_told_once() -> None:
    """An hour ahead (offset -1 h) is corrected and told once; a better estimate moves the offset silently."""
    clock = NodeClock()
    moved, notices = clock.report("node1", -HOUR, 200_000)
    assert moved == -HOUR and clock.offset == -HOUR
    assert notices == [
        (
            "node node1's clock is +3600.0 s ahead of the streamer's; its lines are merged and shown on corrected "
            "time (its own file keeps its stamps)",
            "WARNING",
        )
    ]
    assert clock.report("node1", -HOUR + 2 * MS, 100_000) == (2 * MS, [])
    assert clock.report("node1", -HOUR + 2 * MS + 10_000, 100_000) == (0, [])  # noise: stays


def test_a_clock_behind_a_change_past_a_second_and_a_return_are_told() -> None:
    """Behind is said as behind; an offset changing by over a second is told again; back within a second, too."""
    clock = NodeClock()
    assert clock.report("n1", 5 * S, 0)[1][0][0].startswith("node n1's clock is 5.0 s behind the streamer's")
    assert clock.report("n1", 5 * S + S // 2, 0)[1] == []
    assert "7.0 s behind" in clock.report("n1", 7 * S, 0)[1][0][0]
    assert clock.report("n1", 0, 0) == (
        -7 * S,
        [("node n1's clock agrees with the streamer's again (within 1 s)", "INFO")],
    )


def test_a_clock_changing_at_every_ping_is_told_ten_times_then_only_applied() -> None:
    """A peer whose offset swings by seconds at every ping is told of ten times (the last says so), then silently."""
    clock = NodeClock()
    told = [clock.report("n1", (i % 2) * 5 * S, 0)[1] for i in range(1, 30)]
    assert sum(map(len, told)) == 10 and told[9][0][0].endswith("; further changes of its clock are not told")
    assert clock.offset == 5 * S, "every change is still applied"


@pytest.mark.parametrize(
    ("offset", "rtt", "error"),
    [(1.5, 0, TypeError), (0, None, TypeError), ("1", 0, TypeError), (2**61, 0, ValueError), (0, -1, ValueError)],
)
def test_a_report_that_is_no_clock_is_malformed(offset: object, rtt: object, error: type) -> None:
    """Non-int, absurd (past ~36 years) or negative-rtt reports raise; nothing is applied."""
    clock = NodeClock()
    with pytest.raises(error):
        clock.report("n1", offset, rtt)
    assert clock.offset == 0


# -- stamps --------------------------------------------------------------------------


def test_correction_is_a_whole_column_and_nothing_at_zero() -> None:
    """A zero offset returns the column itself; otherwise each stamp is shifted, and kept within what a stamp can be."""
    stamps = [T0, T0 + 5]
    assert corrected(stamps, 0) is stamps
    assert corrected(stamps, -HOUR) == [T0 - HOUR, T0 + 5 - HOUR]
    assert corrected([2**64 - 10, -(2**63) + 5], 2**60) == [2**64 - 1, -(2**63) + 5 + 2**60]
    assert corrected_ts(2**64 - 10, 2**60) == 2**64 - 1 and corrected_ts(-(2**63), -5) == -(2**63)


def test_stamps_too_far_ahead_merge_at_their_arrival() -> None:
    """Up to FUTURE_NS past arrival a stamp is its own merge key; past that, the arrival is, and it is counted."""
    now = T0
    stamps = [now - 5, now + FUTURE_NS]
    assert merge_keys(stamps, now) == (stamps, 0)
    assert merge_keys(stamps, now)[0] is stamps
    assert merge_keys([now - 5, now + FUTURE_NS + 1, now + 10 * HOUR], now) == ([now - 5, now, now], 2)
    assert merge_keys([], now) == ([], 0)


@given(st.lists(st.integers(T0 - HOUR, T0 + 10 * HOUR), max_size=50))
def test_no_merge_key_is_past_the_limit_and_stamps_under_it_are_kept(stamps: list[int]) -> None:
    """Every merge key is at most arrival + FUTURE_NS, and a stamp under that keeps its own."""
    keys, ahead = merge_keys(stamps, T0)
    assert all(k <= T0 + FUTURE_NS for k in keys)
    assert ahead == sum(ts > T0 + FUTURE_NS for ts in stamps)
    assert all(k == ts for k, ts in zip(keys, stamps, strict=True) if ts <= T0 + FUTURE_NS)


# -- sessions: watermarks in the streamer's time ---------------------------------------


def test_a_skewed_nodes_watermarks_are_corrected_and_move_with_its_offset() -> None:
    """An hour-ahead node's watermark counts on the streamer's time, so it no longer sets the cutoff an hour off."""
    s = Sessions(credit_bytes=1 << 20, idle_timeout=30.0)
    s.hello(b"p0", "n0", 0.0)
    s.hello(b"p1", "n1", 0.0)
    s.advance("n0", T0)
    s.advance("n1", T0 + HOUR + 100)  # before its report: taken as it is
    assert s.report_clock("n1", -HOUR, 0)
    assert s.watermarks["n1"] == T0 + 100  # moved with the offset
    s.advance("n1", T0 + HOUR + 200)
    assert s.watermarks["n1"] == T0 + 200 and s.offset("n1") == -HOUR and s.offset("n0") == 0
    assert s.cutoff(T0 + 300, 10**9) == T0  # n0 is now the lowest
    s.quit(b"p1")
    assert "n1" not in s.clocks


# -- ingest ----------------------------------------------------------------------------


@FORMS
def test_ingest_corrects_stamps_shown_and_merged(form: str) -> None:
    """With an offset, lines, records and merge keys are all on the streamer's time."""
    ingest = new_ingest(keep_records=lambda: True)
    batch = ingest.batch(
        "n1", payload(1, [rec(0, T0 + HOUR), rec(1, T0 + HOUR + 5)], form=form), offset=-HOUR, arrival=T0
    )
    assert batch.chunk.ts == [T0, T0 + 5] and batch.newest == T0 + 5 and batch.future == 0
    assert [r["ts"] for r in batch.chunk.records] == [T0, T0 + 5]
    assert (
        batch.chunk.lines == new_ingest().batch("n1", payload(1, [rec(0, T0), rec(1, T0 + 5)], form=form)).chunk.lines
    )


@FORMS
def test_ingest_merges_records_stamped_too_far_ahead_by_arrival(form: str) -> None:
    """Records stamped past arrival + FUTURE_NS merge at arrival, keep their stamps in the line, and are counted."""
    ingest = new_ingest(keep_records=lambda: True)
    far = T0 + 10 * HOUR
    batch = ingest.batch("n1", payload(1, [rec(0, T0 - 5), rec(1, far), rec(2, far + 1)], form=form), arrival=T0)
    assert batch.chunk.ts == [T0 - 5, T0, T0] and batch.newest == T0 and batch.future == 2
    assert [r["ts"] for r in batch.chunk.records] == [T0 - 5, far, far + 1]
    assert batch.chunk.seqs == [0, 1, 2], "one writer's order kept"
    # A resend of what is held: its ack waits for no more than this arrival.
    again = ingest.batch("n1", payload(1, [rec(1, far), rec(2, far + 1)], form=form), arrival=T0 + 7)
    assert again.chunk.ts == [] and again.newest == T0 + 7 and again.future == 0


# -- intake: the messages ------------------------------------------------------------------


def test_a_stamped_hello_is_welcomed_with_the_stamp_and_the_streamers_clock() -> None:
    """A hello with "t" gets "t0" (its "t") and "t1" (the streamer's clock) back; one without gets neither."""
    intake = _intake()
    welcome = orjson.loads(intake.handle([PEER, *hello("n1", now_ns=T0)], 1.0)[2])
    assert welcome["t0"] == T0 and type(welcome["t1"]) is int and welcome["credit"] == 1 << 20
    assert orjson.loads(intake.handle([b"p2", *hello("n2")], 1.0)[2]) == {"credit": 524288, "max": 64 << 20}


def test_a_ping_with_a_clock_is_echoed_and_its_offset_corrects_its_watermark() -> None:
    """[P, watermark, clock]: the offset is applied first, the watermark corrected, the stamp echoed in the pong."""
    intake = _intake()
    intake.handle([PEER, *hello("n1")], 1.0)
    clock = orjson.dumps({"t": T0 + HOUR, "o": -HOUR, "r": 1000})
    reply = intake.handle([PEER, PING, b"%d" % (T0 + HOUR + 9), clock], 2.0)
    assert reply[:2] == [PEER, PING] and orjson.loads(reply[2])["t0"] == T0 + HOUR
    assert intake.sessions.watermarks["n1"] == T0 + 9
    assert any("clock is +3600.0 s ahead" in text for text in _notices(intake))
    # No watermark (b""), no estimate yet: only echoed.
    assert orjson.loads(intake.handle([PEER, PING, b"", b'{"t":5}'], 2.0)[2])["t0"] == 5
    assert intake.sessions.watermarks["n1"] == T0 + 9


@pytest.mark.parametrize("clock", [b"[1]", b'{"t": 1, "o": "x", "r": 0}', b"{broken"])
def test_a_ping_whose_clock_is_malformed_is_a_bad_frame(clock: bytes) -> None:
    """A clock part that is not an object of ints is counted as a bad message; nothing is applied."""
    intake = _intake()
    intake.handle([PEER, *hello("n1")], 1.0)
    assert intake.handle([PEER, PING, b"%d" % T0, clock], 2.0) is None
    assert intake.stats["bad_frames"] == 1 and intake.sessions.offset("n1") == 0


def test_batches_stamped_ahead_are_said_once_per_node_and_counted() -> None:
    """Every batch's far-ahead records are counted; the cluster file says so once for the node."""
    intake = _intake()
    intake.handle([PEER, *hello("n1")], 1.0)
    far = T0 + 10**18
    for b in (1, 2):
        intake.handle([PEER, BATCH, payload(b, [rec(b, far + b)])], 2.0)
    assert intake.stats["future_stamps"] == 2
    ready, _ = intake.pending.take(float("inf"))
    told = [line for line in ready.merged("lines") if "stamped more than 1 s ahead" in line]
    assert len(told) == 1 and "records from n1" in told[0]
