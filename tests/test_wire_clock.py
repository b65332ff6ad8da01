"""The node's estimate of the streamer's clock (``nvrxlog.wire.clock``); the forwarder reports it before batches."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import zmq
from conftest import raw_record
from hypothesis import given
from hypothesis import strategies as st

from nvrxlog.wire.clock import MAX_RTT_NS, WINDOW, ClockEstimate, Sample, sample
from nvrxlog.wire.forwarder import Forwarder
from nvrxlog.wire.protocol import BATCH, HELLO, PING, WELCOME

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def test_a_symmetric_exchange_gives_the_exact_offset_and_its_round_trip() -> None:
    """Sent at 0, read by a streamer 3,600 s ahead 2 ms later, answered 4 ms after sending: offset 3,600 s, rtt 4 ms."""
    assert sample(T0, T0 + 3600 * 10**9 + 2 * MS, T0 + 4 * MS) == Sample(3600 * 10**9, 4 * MS)
    assert sample(T0, T0 - 5 * 10**9 + MS, T0 + 2 * MS) == Sample(-5 * 10**9, 2 * MS)


@given(
    offset=st.integers(-(10**18), 10**18),
    out=st.integers(0, 10**9),
    back=st.integers(0, 10**9),
)
def test_the_error_is_at_most_half_the_round_trip(offset: int, out: int, back: int) -> None:
    """However unequal the two legs, the estimate is within rtt/2 of the true offset."""
    t0 = T0
    t1 = t0 + out + offset  # the streamer's clock on receipt
    t3 = t0 + out + back
    got = sample(t0, t1, t3)
    assert got is not None and got.rtt == out + back
    assert abs(got.offset - offset) <= got.rtt // 2 + 1


def test_a_negative_or_overlong_round_trip_is_no_sample() -> None:
    """Our clock stepping back in between (rtt < 0) or a round trip past the limit says nothing."""
    assert sample(T0, T0, T0 - 1) is None
    assert sample(T0, T0, T0 + MAX_RTT_NS + 1) is None
    assert sample(T0, T0, T0 + MAX_RTT_NS) is not None


def test_the_estimate_is_the_sample_with_the_shortest_round_trip() -> None:
    """Of the samples in the window, the one with the lowest rtt wins; a later, slower one does not replace it."""
    clock = ClockEstimate()
    assert clock.best is None
    assert clock.add(T0, T0 + 10 * MS, T0 + 10 * MS)  # rtt 10 ms: queued at the streamer, offset +5 ms
    assert clock.best == Sample(5 * MS, 10 * MS)
    assert clock.add(T0, T0 + MS // 2, T0 + MS)  # rtt 1 ms: the better one
    assert clock.best == Sample(0, MS)
    assert not clock.add(T0, T0 + 20 * MS, T0 + 30 * MS)  # slower: the estimate stays
    assert clock.best == Sample(0, MS)


def test_the_window_forgets_old_samples_so_a_step_is_followed() -> None:
    """Once ``WINDOW`` newer samples came, the old best is gone: the streamer's clock stepped by 1 s is followed."""
    clock = ClockEstimate()
    clock.add(T0, T0, T0)  # rtt 0: unbeatable
    for i in range(WINDOW - 1):
        clock.add(T0, T0 + 10**9 + MS, T0 + 2 * MS)
        assert clock.best == Sample(0, 0), i
    clock.add(T0, T0 + 10**9 + MS, T0 + 2 * MS)
    assert clock.best == Sample(10**9, 2 * MS)


def test_answers_without_clock_fields_are_no_sample() -> None:
    """An older streamer's welcome or pong (no t0/t1) or a damaged one leaves the estimate unknown."""
    clock = ClockEstimate()
    assert not clock.add(None, None, T0)
    assert not clock.add("1", T0, T0)
    assert not clock.add(T0, 1.5, T0)
    assert clock.best is None


def test_the_report_carries_the_stamp_and_the_estimate_once_known() -> None:
    """A ping's clock part is the stamp alone until an exchange completes, then also offset and rtt."""
    clock = ClockEstimate()
    assert clock.report(T0) == {"t": T0}
    clock.add(T0, T0 + 7 * MS, T0 + 2 * MS)
    assert clock.report(T0 + 9) == {"t": T0 + 9, "o": 6 * MS, "r": 2 * MS}


@pytest.mark.timeout(30)
def test_the_forwarder_reports_its_offset_before_the_first_batch(tmp_path: Path) -> None:
    """Welcomed by a streamer an hour ahead, a forwarder's next message is a ping with that offset, then its batch."""
    hour = 3600 * 10**9
    with zmq.Context() as context:
        router = context.socket(zmq.ROUTER)
        router.linger = 0
        port = router.bind_to_random_port("tcp://127.0.0.1")
        forwarder = Forwarder(f"tcp://127.0.0.1:{port}", "n1", str(tmp_path / "spool"), context=context)
        forwarder.submit([raw_record(0, "r0 i0")], time.time_ns())
        forwarder.start()
        try:
            assert router.poll(10_000)
            peer, kind, body = router.recv_multipart()
            assert kind == HELLO
            t0 = orjson.loads(body)["t"]
            router.send_multipart([peer, WELCOME, orjson.dumps({"credit": 1 << 20, "t0": t0, "t1": t0 + hour})])
            assert router.poll(10_000)
            frames = router.recv_multipart()
            assert frames[1:3] == [PING, b""], "no watermark: the batch is not sent yet"
            report = orjson.loads(frames[3])
            assert abs(report["o"] - hour) <= report["r"] // 2 + 1 and 0 <= report["r"] < 10**9
            assert router.poll(10_000)
            assert router.recv_multipart()[1] == BATCH
        finally:
            forwarder.stop(0)
            router.close()
