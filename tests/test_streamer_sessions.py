"""The streamer's sessions (``nvrxlog.streamer.sessions``): credit, watermarks, idleness, cutoff and acks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvrxlog.streamer.sessions import Sessions

KIB = 1 << 10
MIB = 1 << 20


def _sessions(credit: int = 16 * MIB, idle: float = 30.0) -> Sessions:
    return Sessions(credit_bytes=credit, idle_timeout=idle)


# -- hello and credit -------------------------------------------------------------------


def test_hello_makes_a_session_with_no_notice() -> None:
    """A first hello creates the peer's session for the node, a zero watermark, and no notice."""
    s = _sessions()
    credit, notices = s.hello(b"p1", "n1", 5.0)
    assert notices == []
    session = s.get(b"p1")
    assert session is not None and session.node == "n1"
    assert s.watermarks == {"n1": 0}
    assert s.last_seen == {"n1": 5.0}
    assert s.nodes == 1
    assert s.get(b"unknown") is None


@pytest.mark.parametrize(
    ("budget", "peers", "expected"),
    [
        (4 * MIB, 1, 4 * MIB),
        (4 * MIB, 2, 2 * MIB),
        (4 * MIB, 4, 1 * MIB),
        (4 * MIB, 16, 256 * KIB),
        (4 * MIB, 100, 256 * KIB),  # clamped up
        (64 * MIB, 1, 8 * MIB),  # clamped down
        (64 * MIB, 8, 8 * MIB),
        (64 * MIB, 16, 4 * MIB),
        (0, 1, 256 * KIB),
    ],
)
def test_credit_is_the_budget_shared_by_sessions_and_clamped(budget: int, peers: int, expected: int) -> None:
    """The n-th hello's credit is budget // n, clamped to [256 KiB, 8 MiB]."""
    s = _sessions(budget)
    credit = 0
    for i in range(peers):
        credit, _ = s.hello(b"p%d" % i, f"n{i}", 0.0)
    assert credit == expected


@settings(max_examples=100, deadline=None)
@given(budget=st.integers(0, 1 << 34), peers=st.integers(1, 40))
def test_credit_always_within_bounds(budget: int, peers: int) -> None:
    """Whatever the budget and number of sessions, the credit is budget // sessions within [256 KiB, 8 MiB]."""
    s = _sessions(budget)
    for i in range(peers):
        credit, _ = s.hello(b"p%d" % i, f"n{i}", 0.0)
        assert 256 * KIB <= credit <= 8 * MIB
        assert credit == min(8 * MIB, max(256 * KIB, budget // (i + 1)))


def test_a_second_hello_from_the_same_node_replaces_the_old_peer() -> None:
    """A reconnect (new peer, same node) drops the old peer's session; the node counts once."""
    s = _sessions(4 * MIB)
    s.hello(b"old", "n1", 0.0)
    s.get(b"old").expect_ack(1, 10)  # type: ignore[union-attr]
    credit, _ = s.hello(b"new", "n1", 1.0)
    assert s.get(b"old") is None
    new = s.get(b"new")
    assert new is not None and new.node == "n1" and new.acks == []
    assert list(s.by_peer) == [b"new"]
    assert s.nodes == 1
    assert credit == 4 * MIB  # one session shares the budget, not two


def test_a_reconnecting_node_keeps_its_watermark() -> None:
    """A second hello for a node does not reset the watermark it already reported."""
    s = _sessions()
    s.hello(b"old", "n1", 0.0)
    s.advance("n1", 500)
    s.hello(b"new", "n1", 1.0)
    assert s.watermarks["n1"] == 500


# -- quit -------------------------------------------------------------------------------


def test_quit_forgets_the_node_and_says_it_finished() -> None:
    """quit removes the session, the watermark and last sign of life, and returns an INFO 'finished' notice."""
    s = _sessions()
    s.hello(b"p1", "n1", 0.0)
    s.hello(b"p2", "n2", 0.0)
    s.advance("n1", 100)
    s.advance("n2", 900)
    assert s.quit(b"p1") == [("node n1 finished", "INFO")]
    assert s.get(b"p1") is None
    assert "n1" not in s.watermarks
    assert "n1" not in s.last_seen
    assert s.watermarks == {"n2": 900}
    assert s.nodes == 1


def test_a_finished_node_no_longer_holds_the_cutoff_back() -> None:
    """After n1 quits, the cutoff follows the remaining nodes' watermarks."""
    s = _sessions()
    s.hello(b"p1", "n1", 0.0)
    s.hello(b"p2", "n2", 0.0)
    s.advance("n1", 100)
    s.advance("n2", 900)
    assert s.cutoff(1000, 1000) == 100
    s.quit(b"p1")
    assert s.cutoff(1000, 1000) == 900


def test_quit_from_an_unknown_peer_does_nothing() -> None:
    """A quit from a peer with no session returns no notice and changes nothing."""
    s = _sessions()
    s.hello(b"p1", "n1", 0.0)
    assert s.quit(b"nobody") == []
    assert s.get(b"p1") is not None
    assert s.watermarks == {"n1": 0}


def test_a_finished_node_is_never_marked_gone() -> None:
    """check_idle ignores nodes that quit cleanly, however long ago."""
    s = _sessions(idle=10.0)
    s.hello(b"p1", "n1", 0.0)
    s.quit(b"p1")
    assert s.check_idle(1000.0) == []
    assert s.gone == set()


# -- idleness ---------------------------------------------------------------------------


def test_check_idle_marks_silent_nodes_gone_with_a_warning() -> None:
    """A node silent strictly past the idle timeout is marked gone, once, with a WARNING notice."""
    s = _sessions(idle=10.0)
    s.hello(b"p1", "n1", 0.0)
    s.hello(b"p2", "n2", 5.0)
    assert s.check_idle(10.0) == []  # exactly the timeout: not yet
    notices = s.check_idle(12.0)
    assert notices == [("node n1 has been silent for 12s: marked gone", "WARNING")]
    assert s.gone == {"n1"}
    assert s.check_idle(13.0) == []  # not warned twice
    notices = s.check_idle(20.0)
    assert [level for _, level in notices] == ["WARNING"]
    assert "node n2" in notices[0][0] and "marked gone" in notices[0][0]
    assert s.gone == {"n1", "n2"}


def test_seen_brings_a_gone_node_back() -> None:
    """A gone node heard again is live again, with an INFO 'is back' notice; a live one gets no notice."""
    s = _sessions(idle=10.0)
    s.hello(b"p1", "n1", 0.0)
    assert s.seen("n1", 5.0) == []
    s.check_idle(16.0)
    assert s.gone == {"n1"}
    assert s.seen("n1", 17.0) == [("node n1 is back", "INFO")]
    assert s.gone == set()
    assert s.last_seen["n1"] == 17.0
    assert s.seen("n1", 18.0) == []


def test_a_hello_from_a_gone_node_says_it_is_back() -> None:
    """A gone node reconnecting (hello) is live again and the hello returns the 'is back' notice."""
    s = _sessions(idle=10.0)
    s.hello(b"p1", "n1", 0.0)
    s.check_idle(20.0)
    _, notices = s.hello(b"p2", "n1", 21.0)
    assert notices == [("node n1 is back", "INFO")]
    assert s.gone == set()


# -- watermarks and cutoff --------------------------------------------------------------


def test_advance_never_lowers_a_watermark() -> None:
    """advance keeps the highest watermark seen for a node."""
    s = _sessions()
    s.hello(b"p1", "n1", 0.0)
    s.advance("n1", 100)
    s.advance("n1", 50)
    assert s.watermarks["n1"] == 100
    s.advance("n1", 100)
    assert s.watermarks["n1"] == 100
    s.advance("n1", 101)
    assert s.watermarks["n1"] == 101


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-(10**12), 10**12), max_size=30))
def test_a_watermark_is_the_running_maximum(values: list[int]) -> None:
    """After any sequence of advances, the watermark is the largest value given (or 0, where it started)."""
    s = _sessions()
    s.hello(b"p1", "n1", 0.0)
    for value in values:
        s.advance("n1", value)
    assert s.watermarks["n1"] == max([0, *values])


def test_cutoff_is_the_lowest_live_watermark() -> None:
    """The cutoff is the lowest watermark of the nodes that are not gone."""
    s = _sessions(idle=10.0)
    s.hello(b"p1", "n1", 0.0)
    s.hello(b"p2", "n2", 0.0)
    s.hello(b"p3", "n3", 0.0)
    s.advance("n1", 5_000)
    s.advance("n2", 3_000)
    s.advance("n3", 8_000)
    assert s.cutoff(10_000, 10_000) == 3_000
    s.seen("n1", 15.0)
    s.seen("n3", 15.0)
    s.check_idle(15.0)  # n2 was last seen at 0
    assert s.gone == {"n2"}
    assert s.cutoff(10_000, 10_000) == 5_000


def test_cutoff_never_older_than_now_minus_hold() -> None:
    """A lagging node holds the cutoff back at most ``hold`` before now."""
    s = _sessions()
    s.hello(b"p1", "n1", 0.0)
    s.advance("n1", 1_000)
    assert s.cutoff(10_000, 2_000) == 8_000
    assert s.cutoff(10_000, 9_500) == 1_000


def test_cutoff_with_no_live_node_is_now() -> None:
    """No nodes (or only gone ones): nothing holds back, the cutoff is now."""
    s = _sessions(idle=1.0)
    assert s.cutoff(10_000, 5_000) == 10_000
    s.hello(b"p1", "n1", 0.0)
    s.check_idle(5.0)
    assert s.cutoff(10_000, 5_000) == 10_000


def test_a_new_node_holds_the_cutoff_at_now_minus_hold_until_it_reports() -> None:
    """A node that said hello but reported no watermark keeps the cutoff at now - hold; its first watermark frees it."""
    s = _sessions()
    s.hello(b"p1", "n1", 0.0)
    s.advance("n1", 9_000)
    assert s.cutoff(10_000, 2_000) == 9_000
    s.hello(b"p2", "n2", 0.0)
    assert s.cutoff(10_000, 2_000) == 8_000
    assert s.cutoff(20_000, 2_000) == 18_000
    s.advance("n2", 9_500)
    assert s.cutoff(10_000, 2_000) == 9_000


# -- acknowledgements -------------------------------------------------------------------


def test_acks_due_acknowledges_batches_written_up_to_the_cutoff() -> None:
    """acks_due gives (peer, last seq) of the batches whose newest time is <= cutoff, and forgets them."""
    s = _sessions()
    s.hello(b"p1", "n1", 0.0)
    s.hello(b"p2", "n2", 0.0)
    for seq, newest in [(1, 100), (2, 200), (3, 300)]:
        s.get(b"p1").expect_ack(seq, newest)  # type: ignore[union-attr]
    s.get(b"p2").expect_ack(7, 250)  # type: ignore[union-attr]
    assert s.has_unacked()
    assert s.acks_due(99) == []
    assert s.acks_due(200) == [(b"p1", 2)]
    assert [batch[:3] for batch in s.get(b"p1").acks] == [(3, 300, 0)]  # type: ignore[union-attr]
    assert s.acks_due(200) == []
    assert sorted(s.acks_due(300)) == [(b"p1", 3), (b"p2", 7)]
    assert not s.has_unacked()
    assert s.acks_due(10**9) == []


def test_a_batch_with_nothing_to_write_is_acked_at_once() -> None:
    """A batch whose newest time is -1 (all duplicates already written) is due at any cutoff."""
    s = _sessions()
    s.hello(b"p1", "n1", 0.0)
    s.get(b"p1").expect_ack(4, -1)  # type: ignore[union-attr]
    assert s.acks_due(0) == [(b"p1", 4)]


def test_acks_are_given_in_order_only() -> None:
    """A later batch under the cutoff waits for an earlier one that is not: acks cover a prefix."""
    s = _sessions()
    s.hello(b"p1", "n1", 0.0)
    for seq, newest in [(1, 100), (2, 500), (3, 50)]:
        s.get(b"p1").expect_ack(seq, newest)  # type: ignore[union-attr]
    assert s.acks_due(200) == [(b"p1", 1)]
    assert [batch[:3] for batch in s.get(b"p1").acks] == [(2, 500, 0), (3, 50, 0)]  # type: ignore[union-attr]
    assert s.acks_due(500) == [(b"p1", 3)]


@settings(max_examples=100, deadline=None)
@given(
    newest=st.lists(st.integers(-1, 1000), max_size=20),
    cutoffs=st.lists(st.integers(0, 1000), min_size=1, max_size=5),
)
def test_acks_due_acknowledges_the_longest_written_prefix(newest: list[int], cutoffs: list[int]) -> None:
    """Each call acks the last seq of the longest prefix whose newest times are all <= cutoff, and drops it."""
    s = _sessions()
    s.hello(b"p", "n", 0.0)
    pending = [(seq, ts, 10) for seq, ts in enumerate(newest, start=1)]
    for seq, ts, size in pending:
        s.get(b"p").expect_ack(seq, ts, size)  # type: ignore[union-attr]
    for cutoff in cutoffs:
        done = 0
        while done < len(pending) and pending[done][1] <= cutoff:
            done += 1
        expected = [(b"p", pending[done - 1][0])] if done else []
        assert s.acks_due(cutoff) == expected
        pending = pending[done:]
        assert [batch[:3] for batch in s.get(b"p").acks] == pending  # type: ignore[union-attr]
        assert s.get(b"p").in_flight == 10 * len(pending)  # type: ignore[union-attr]


def test_a_session_is_over_credit_only_past_what_a_node_keeping_to_it_can_send() -> None:
    """Bytes received and not acked count against the session's credit; acks give them back."""
    s = _sessions(4 * MIB)
    credit, _ = s.hello(b"p", "n", 0.0)
    session = s.get(b"p")
    assert session is not None and session.credit == credit == 4 * MIB
    # A node sends while under its credit: one more message of a few MiB is honest.
    session.expect_ack(1, 100, credit - 1)
    assert not session.over_credit(6 * MIB)
    assert session.over_credit(64 * MIB)
    assert s.acks_due(100) == [(b"p", 1)]
    assert session.in_flight == 0 and not session.over_credit(16 * MIB)
