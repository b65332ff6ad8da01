"""The forwarder's link state machine (``nvrxlog.wire.link``) driven with plain numbers for time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvrxlog.wire.link import WATERMARK_EVERY, Link, LinkState, reconnect_delay


def _ready(credit: int = 1000, *, heartbeat: float = 1.0, liveness: float = 5.0, now: float = 0.0) -> Link:
    link = Link(heartbeat=heartbeat, liveness=liveness, now=now)
    assert link.welcome(credit)
    return link


# -- hello ------------------------------------------------------------------------------


def test_a_new_link_says_hello_at_once() -> None:
    """A fresh link is in HELLO, not ready, and a hello is due immediately."""
    link = Link(heartbeat=1.0, liveness=5.0, now=100.0)
    assert link.state is LinkState.HELLO
    assert not link.ready
    assert link.hello_due(100.0)


@pytest.mark.parametrize(("heartbeat", "every"), [(1.0, 0.25), (5.0, 0.25), (0.1, 0.1), (0.25, 0.25)])
def test_hello_repeats_only_every_min_of_quarter_second_and_heartbeat(heartbeat: float, every: float) -> None:
    """After a hello, the next is due exactly min(0.25, heartbeat) later and not before."""
    link = Link(heartbeat=heartbeat, liveness=5.0, now=0.0)
    link.said_hello(0.0)
    assert not link.hello_due(0.0)
    assert not link.hello_due(every * 0.99)
    assert link.hello_due(every)
    assert link.hello_due(every * 3)


@settings(max_examples=100, deadline=None)
@given(
    heartbeat=st.floats(0.01, 10.0),
    start=st.floats(0.0, 1e6),
    gaps=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30),
)
def test_hellos_are_never_closer_than_the_hello_interval(heartbeat: float, start: float, gaps: list[float]) -> None:
    """Sending a hello whenever one is due never sends two closer than min(0.25, heartbeat)."""
    link = Link(heartbeat=heartbeat, liveness=5.0, now=start)
    every = min(0.25, heartbeat)
    now = start
    sent: list[float] = []
    for gap in gaps:
        if link.hello_due(now):
            sent.append(now)
            link.said_hello(now)
        now += gap
    assert sent and sent[0] == start
    assert all(b - a >= every for a, b in zip(sent, sent[1:], strict=False))


def test_no_hello_is_due_once_welcomed() -> None:
    """A welcomed link never asks for a hello, however long it waits."""
    link = _ready()
    assert not link.hello_due(0.0)
    assert not link.hello_due(1e9)


# -- welcome ----------------------------------------------------------------------------


def test_welcome_moves_hello_to_ready_once() -> None:
    """The first welcome starts a session (True, READY, credit set); a second one returns False and changes nothing."""
    link = Link()
    assert link.welcome(4096) is True
    assert link.state is LinkState.READY
    assert link.ready
    assert link.credit == 4096
    link.sent(3, 100, 0.0)
    assert link.welcome(9999) is False
    assert link.credit == 4096
    assert link.in_flight_bytes == 100


def test_welcome_with_no_credit_still_allows_one_message() -> None:
    """A welcome with credit 0 (or less) gives a credit of 1 byte, so something can always be sent."""
    link = Link()
    link.welcome(0)
    assert link.credit == 1
    assert link.has_room()


def test_welcome_forgets_what_was_in_flight_before() -> None:
    """A welcome after a reset starts the session with nothing counted in flight."""
    link = _ready(1000)
    link.sent(1, 400, 0.0)
    link.reset(0.0)
    assert link.welcome(1000)
    assert link.in_flight_bytes == 0
    assert link.has_room()


# -- credit -----------------------------------------------------------------------------


def test_has_room_respects_the_credit() -> None:
    """There is room while the bytes in flight are below the credit, and none at or past it."""
    link = _ready(1000)
    assert link.has_room()
    link.sent(1, 600, 0.0)
    assert link.in_flight_bytes == 600
    assert link.has_room()
    link.sent(2, 399, 0.0)
    assert link.in_flight_bytes == 999
    assert link.has_room()
    link.sent(3, 1, 0.0)
    assert link.in_flight_bytes == 1000
    assert not link.has_room()


def test_has_room_is_false_before_the_welcome() -> None:
    """Without a welcome there is no room, whatever is in flight."""
    link = Link()
    assert not link.has_room()


def test_acked_frees_the_bytes_of_messages_up_to_seq() -> None:
    """acked(seq) frees exactly the messages whose last batch is <= seq, in order."""
    link = _ready(1000)
    link.sent(2, 100, 0.0)
    link.sent(5, 200, 0.0)
    link.sent(9, 400, 0.0)
    link.acked(1)
    assert link.in_flight_bytes == 700
    link.acked(4)
    assert link.in_flight_bytes == 600
    link.acked(5)
    assert link.in_flight_bytes == 400
    link.acked(8)
    assert link.in_flight_bytes == 400
    link.acked(100)
    assert link.in_flight_bytes == 0
    link.acked(200)
    assert link.in_flight_bytes == 0


def test_acked_gives_room_back() -> None:
    """A full link regains room when its oldest message is acknowledged."""
    link = _ready(300)
    link.sent(1, 200, 0.0)
    link.sent(2, 200, 0.0)
    assert not link.has_room()
    link.acked(1)
    assert link.has_room()


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 10_000), max_size=20),
    ack=st.integers(-1, 25),
)
def test_in_flight_bytes_are_the_sizes_of_messages_past_the_ack(sizes: list[int], ack: int) -> None:
    """After sending messages 1..n and acking up to ``ack``, in-flight bytes are the sizes of messages > ack."""
    link = _ready(10**9)
    for seq, size in enumerate(sizes, start=1):
        link.sent(seq, size, 0.0)
    assert link.in_flight_bytes == sum(sizes)
    link.acked(ack)
    assert link.in_flight_bytes == sum(size for seq, size in enumerate(sizes, start=1) if seq > ack)


@pytest.mark.parametrize("forget", ["send_failed", "reset", "reconnected"])
def test_send_failed_reset_and_reconnected_forget_in_flight(forget: str) -> None:
    """send_failed, reset and reconnected all drop every in-flight message (it will be resent)."""
    link = _ready(1000)
    link.sent(1, 300, 0.0)
    link.sent(2, 700, 0.0)
    assert not link.has_room()
    if forget == "send_failed":
        link.send_failed()
    else:
        getattr(link, forget)(5.0)
    assert link.in_flight_bytes == 0
    # The forgotten messages are gone: a later ack has nothing to subtract.
    link.acked(10)
    assert link.in_flight_bytes == 0


def test_send_failed_keeps_the_link_ready() -> None:
    """A failed send only forgets in-flight messages; the session stays READY with room."""
    link = _ready(100)
    link.sent(1, 100, 0.0)
    link.send_failed()
    assert link.state is LinkState.READY
    assert link.has_room()


def test_reset_says_hello_again_at_once() -> None:
    """After a reset the link is back in HELLO and a hello is due immediately, even right after the last one."""
    link = Link()
    link.said_hello(0.0)
    link.welcome(100)
    link.reset(0.0)
    assert link.state is LinkState.HELLO
    assert link.hello_due(0.01)
    assert link.welcome(100)


def test_reconnected_says_hello_again_and_restarts_the_hello_round() -> None:
    """reconnected(now) goes back to HELLO, makes a hello due at once and starts the waiting clock at now."""
    link = _ready(100)
    link.said_hello(49.9)
    link.reconnected(50.0)
    assert link.state is LinkState.HELLO
    assert link.hello_due(50.0)
    assert link.hello_since == 50.0
    assert not link.waited_past(60.0, 30.0)
    assert link.waited_past(80.5, 30.0)


def test_turned_away_says_hello_again_ever_less_often_until_welcomed() -> None:
    """Refused for now (another session holds the name): hello again after doubling pauses, never final."""
    link = Link()
    hellos = []
    now = 0.0
    while now < 10.0:
        if link.hello_due(now):
            link.said_hello(now)
            hellos.append(now)
            link.turned_away(now)
        now = round(now + 0.01, 2)
    assert link.state is LinkState.HELLO
    gaps = [b - a for a, b in zip(hellos, hellos[1:], strict=False)]
    assert len(hellos) < 12 and gaps == sorted(gaps)  # backs off, not a hello every 0.25 s
    assert link.welcome(100) and link.ready


# -- liveness ---------------------------------------------------------------------------


def test_silent_only_when_ready_and_nothing_heard_past_liveness() -> None:
    """silent(now) is True only past ``liveness`` seconds since the last thing heard, and only when READY."""
    link = Link(heartbeat=1.0, liveness=5.0, now=0.0)
    assert not link.silent(100.0)  # HELLO: never silent
    link.welcome(100)
    link.heard(10.0)
    assert not link.silent(14.0)
    assert not link.silent(15.0)  # exactly liveness: not yet
    assert link.silent(15.01)
    link.heard(15.5)
    assert not link.silent(16.0)
    assert link.silent(20.6)


def test_a_refused_link_is_never_silent() -> None:
    """A refused link does not ask to reconnect, however long nothing is heard."""
    link = _ready()
    link.refuse("version")
    assert not link.silent(1e9)


# -- refusal ----------------------------------------------------------------------------


def test_refuse_is_final() -> None:
    """After refuse, reset and welcome leave the link REFUSED; no hello, no room, no ping."""
    link = _ready(1000)
    link.sent(1, 10, 0.0)
    link.refuse("protocol 9 is not protocol 1")
    assert link.state is LinkState.REFUSED
    assert link.refusal == "protocol 9 is not protocol 1"
    assert link.in_flight_bytes == 0
    link.reset(0.0)
    assert link.state is LinkState.REFUSED
    assert link.welcome(1000) is False
    assert link.state is LinkState.REFUSED
    assert not link.ready
    assert not link.hello_due(1e9)
    assert not link.has_room()
    assert link.ping(1e9, 5, True) is None
    assert not link.waited_past(1e9, 1.0)


def test_refuse_from_hello() -> None:
    """A link refused before any welcome is REFUSED too, and a reset does not bring it back."""
    link = Link()
    link.refuse("no")
    link.reset(0.0)
    assert link.state is LinkState.REFUSED
    assert not link.hello_due(10.0)


# -- pings ------------------------------------------------------------------------------


def test_ping_is_none_when_not_ready() -> None:
    """No ping of any kind goes out before the welcome."""
    link = Link(heartbeat=1.0)
    assert link.ping(0.0, 0, True) is None
    assert link.ping(100.0, 5, True) is None
    assert link.ping(100.0, 5, False) is None


def test_caught_up_sends_the_watermark_at_once_after_welcome() -> None:
    """Caught up and never having sent anything, the first ping carries the watermark."""
    link = _ready(heartbeat=1.0)
    assert link.ping(0.0, 1234, True) == b"1234"


def test_caught_up_sends_a_moved_watermark_every_watermark_interval() -> None:
    """Caught up: a watermark that moved goes out once WATERMARK_EVERY has passed since the last send."""
    link = _ready(heartbeat=1.0)
    assert link.ping(0.0, 100, True) == b"100"
    assert link.ping(WATERMARK_EVERY / 2, 200, True) is None  # too soon
    assert link.ping(WATERMARK_EVERY, 200, True) == b"200"
    assert link.last_sent == WATERMARK_EVERY


def test_caught_up_with_an_unmoved_watermark_pings_only_after_a_heartbeat() -> None:
    """Caught up with the same watermark: nothing until a whole heartbeat since the last send, then the watermark."""
    link = _ready(heartbeat=1.0)
    assert link.ping(10.0, 100, True) == b"100"
    assert link.ping(10.5, 100, True) is None
    assert link.ping(10.99, 100, True) is None
    assert link.ping(11.0, 100, True) == b"100"


def test_a_watermark_going_back_is_not_a_move() -> None:
    """A lower watermark than the last one sent is only sent on the heartbeat."""
    link = _ready(heartbeat=1.0)
    assert link.ping(0.0, 100, True) == b"100"
    assert link.ping(0.5, 50, True) is None
    assert link.ping(1.0, 50, True) == b"50"


def test_a_batch_sent_delays_the_next_ping() -> None:
    """Sending a batch counts as sending: the watermark ping waits WATERMARK_EVERY after it."""
    link = _ready(heartbeat=1.0)
    link.sent(1, 10, 0.0)
    assert link.ping(WATERMARK_EVERY / 2, 7, True) is None
    assert link.ping(WATERMARK_EVERY, 7, True) == b"7"


def test_not_caught_up_sends_only_a_bare_heartbeat() -> None:
    """Batches still to send: only a bare b'' ping, and only a heartbeat after the last send."""
    link = _ready(heartbeat=1.0)
    link.sent(1, 10, 5.0)
    assert link.ping(5.5, 999, False) is None
    assert link.ping(5.99, 999, False) is None
    assert link.ping(6.0, 999, False) == b""
    assert link.ping(6.5, 999, False) is None
    assert link.ping(7.0, 999, False) == b""


@settings(max_examples=100, deadline=None)
@given(
    heartbeat=st.floats(0.1, 5.0),
    steps=st.lists(
        st.tuples(st.floats(0.0, 2.0), st.integers(0, 1000), st.booleans(), st.booleans()), min_size=1, max_size=40
    ),
)
def test_pings_follow_their_rules_at_every_step(heartbeat: float, steps: list[tuple[float, int, bool, bool]]) -> None:
    """Against a model: each ping is a moved watermark after WATERMARK_EVERY, or any after a heartbeat."""
    link = _ready(heartbeat=heartbeat)
    now = 0.0
    last_sent = float("-inf")
    sent_watermark = 0
    for gap, watermark, all_sent, send_batch in steps:
        now += gap
        if send_batch:
            link.sent(1, 1, now)
            last_sent = now
            continue
        ping = link.ping(now, watermark, all_sent)
        since = now - last_sent
        if all_sent:
            if (watermark > sent_watermark and since >= WATERMARK_EVERY) or since >= heartbeat:
                assert ping == str(watermark).encode()
                sent_watermark, last_sent = watermark, now
            else:
                assert ping is None
        elif since >= heartbeat:
            assert ping == b""
            last_sent = now
        else:
            assert ping is None


def test_poll_timeout_follows_the_state() -> None:
    """Ready links poll every WATERMARK_EVERY; saying hello, every min(0.25, heartbeat)."""
    assert Link(heartbeat=1.0).poll_timeout() == 0.25
    assert Link(heartbeat=0.1).poll_timeout() == 0.1
    assert _ready().poll_timeout() == WATERMARK_EVERY


# -- waiting for a welcome --------------------------------------------------------------


def test_waited_past_counts_from_the_start_of_the_hello_round() -> None:
    """waited_past(now, limit) is True only in HELLO and strictly more than ``limit`` after the link began."""
    link = Link(now=10.0)
    assert not link.waited_past(40.0, 30.0)
    assert link.waited_past(40.01, 30.0)
    link.welcome(10)
    assert not link.waited_past(1000.0, 30.0)


def test_waited_past_restarts_after_a_reset() -> None:
    """A reset long after the welcome starts a new hello round: waited_past is not True right away."""
    link = Link(now=0.0)
    link.welcome(100)
    link.heard(99.0)
    link.reset(100.0)  # the streamer answered RESET (it restarted)
    assert not link.waited_past(100.5, 30.0)


def test_a_burst_of_resets_from_a_restarted_streamer_is_one_lost_session() -> None:
    """Every message in flight to a restarted streamer comes back RESET: only one counts, no growing pause."""
    link = Link(now=0.0)
    link.welcome(1 << 20)
    for _ in range(20):
        link.reset(10.0)
    assert link.failures == 1 and link.hello_due(10.0)
    link.said_hello(10.0)
    assert link.welcome(1 << 20)


def test_a_hello_the_socket_would_not_take_is_tried_again_soon() -> None:
    """A hello not taken (no connection yet) is due again within 10 ms, and the link polls that often meanwhile."""
    link = Link(heartbeat=1.0)
    link.said_hello(0.0, taken=False)
    assert link.poll_timeout() <= 0.01
    assert not link.hello_due(0.005) and link.hello_due(0.011)
    link.said_hello(0.011, taken=True)
    assert not link.hello_due(0.2) and link.hello_due(0.262)
    assert link.poll_timeout() == 0.25


def test_lost_sessions_back_off_doubling_to_32_seconds_and_an_ack_resets_it() -> None:
    """A streamer that keeps dropping the node is asked again after 0, 0.1, 0.2 ... s, at most 32 s; an ack ends it."""
    assert [reconnect_delay(n) for n in range(4)] == [0.0, 0.1, 0.2, 0.4]
    assert reconnect_delay(30) == 32.0
    link = Link(now=0.0)
    link.welcome(1 << 20)
    link.reset(10.0)
    assert link.hello_due(10.0), "the first loss (a streamer restart) is answered at once"
    link.said_hello(10.0)
    link.welcome(1 << 20)
    link.reset(11.0)
    assert not link.hello_due(11.05) and link.hello_due(11.1)
    link.said_hello(11.1)
    link.welcome(1 << 20)
    link.reconnected(12.0)
    assert not link.hello_due(12.1) and link.hello_due(12.2)
    assert link.poll_timeout(12.0) >= 0.2 - 1e-9
    link.said_hello(12.2)
    link.welcome(1 << 20)
    link.sent(5, 100, 12.3)
    link.acked(5)
    link.reset(13.0)
    assert link.hello_due(13.0), "after an ack the link is healthy again"
