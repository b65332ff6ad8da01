"""A forwarder's connection to its streamer as named states: no sockets, only decisions.

::

    HELLO ──welcome──► READY ──silent past liveness──► (reconnect) HELLO
      ▲                  │
      └──reset, turned away──┘      any state ──refused──► REFUSED (final)

The forwarder's thread owns the socket and asks the link what to do next
(say hello? room to send? ping? reconnect?), passing the time in, so every
decision can be tested with plain numbers.
"""

from __future__ import annotations

import enum
from collections import deque

from nvrxlog.wire.protocol import MAX_MESSAGE_BYTES

__all__ = ["Link", "LinkState", "WATERMARK_EVERY", "reconnect_delay"]

WATERMARK_EVERY = 0.05  # seconds between watermark-only pings while the node is caught up
_HELLO_EVERY = 0.25
# A hello the socket would not take (no connection yet: it queues nothing) is
# tried again this soon, so a node starts sending as soon as it can connect.
_HELLO_RETRY = 0.01


class LinkState(enum.Enum):
    """Where the node stands with the streamer."""

    HELLO = "saying hello"  # not (or no longer) known to the streamer
    READY = "welcomed"  # may send within its credit
    REFUSED = "refused"  # the streamer will not serve this node (another protocol version)


_MAX_BACKOFF_S = 32.0


def reconnect_delay(failures: int) -> float:
    """Seconds before saying hello again after ``failures`` sessions lost in a row (0 for the first)."""
    return 0.0 if failures <= 0 else min(0.1 * 2 ** (failures - 1), _MAX_BACKOFF_S)


class Link:
    """Credit, batches in flight and the timers of one node's link to the streamer."""

    def __init__(self, *, heartbeat: float = 1.0, liveness: float = 5.0, now: float = 0.0) -> None:
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.state = LinkState.HELLO
        self.credit = 0
        #: The largest message the streamer takes (announced in its welcome).
        self.max_message = MAX_MESSAGE_BYTES
        self.refusal = ""
        self._in_flight: deque[tuple[int, int]] = deque()  # (last batch seq, bytes) per message sent
        self.in_flight_bytes = 0
        self.last_recv = now
        self.hello_since = now  # when this round of saying hello began
        self._last_hello = float("-inf")
        self._hello_taken = True
        self.last_sent = float("-inf")
        self._sent_watermark = 0
        # Sessions lost since the last acknowledgement: a streamer that keeps
        # dropping us (a batch it cannot take, a restart loop) is asked again
        # after a doubling pause, not at once, forever (Paranoid Pirate).
        self.failures = 0
        self._hello_not_before = float("-inf")

    @property
    def ready(self) -> bool:
        """Welcomed: batches may be sent."""
        return self.state is LinkState.READY

    # -- events ---------------------------------------------------------------------

    def hello_due(self, now: float) -> bool:
        """True when a hello should go out now (repeated until welcomed)."""
        every = _HELLO_RETRY if not self._hello_taken else min(_HELLO_EVERY, self.heartbeat)
        return self.state is LinkState.HELLO and now - self._last_hello >= every and now >= self._hello_not_before

    def said_hello(self, now: float, taken: bool = True) -> None:
        """A hello was handed to the socket at ``now`` (``taken``: it accepted it)."""
        self._last_hello = now
        self._hello_taken = taken

    def heard(self, now: float) -> None:
        """Anything arrived from the streamer."""
        self.last_recv = now

    def welcome(self, credit: int, max_message: int = MAX_MESSAGE_BYTES) -> bool:
        """The streamer welcomed us; True if this starts a session (resend everything unacknowledged)."""
        if self.state is not LinkState.HELLO:
            return False
        self.state = LinkState.READY
        self.credit = max(1, credit)
        self.max_message = max_message
        self._forget_in_flight()
        return True

    def reset(self, now: float) -> None:
        """The streamer does not know us (it restarted): hello again at once, then resend.

        Every message sent to a restarted streamer is answered RESET, so many
        arrive together; only one that ends a session counts as its loss (the
        rest, arriving while saying hello, are that same loss).
        """
        if self.state is LinkState.READY:
            self._new_round(now)

    def turned_away(self, now: float) -> None:
        """The streamer cannot serve us yet (another session holds our name): hello again after a pause."""
        if self.state is not LinkState.REFUSED:
            # It answered: not an unreachable streamer (the refusal is said instead).
            self._new_round(now, at_once=False)

    def refuse(self, reason: str) -> None:
        """The streamer will never serve us; forwarding stops (records stay spooled)."""
        self.state = LinkState.REFUSED
        self.refusal = reason
        self._forget_in_flight()

    def silent(self, now: float) -> bool:
        """Welcomed, but nothing heard for longer than ``liveness``: time to reconnect."""
        return self.state is LinkState.READY and now - self.last_recv > self.liveness

    def reconnected(self, now: float) -> None:
        """A fresh connection: say hello again and resend what is unacknowledged."""
        if self.state is not LinkState.REFUSED:  # final
            self._new_round(now)

    def _new_round(self, now: float, *, at_once: bool = True) -> None:
        """A session lost: a new round of hellos from ``now`` (``at_once``: the first as soon as the pause allows)."""
        self.state = LinkState.HELLO
        self.hello_since = now
        if at_once:
            self._last_hello = float("-inf")
        self._forget_in_flight()
        self._back_off(now)

    def _back_off(self, now: float) -> None:
        # The first loss of a session is answered at once (a streamer restart); then 0.1 s, doubling to 32 s.
        self._hello_not_before = now + reconnect_delay(self.failures)
        self.failures += 1

    def waited_past(self, now: float, limit: float) -> bool:
        """Still not welcomed ``limit`` seconds after this round of hellos began."""
        return self.state is LinkState.HELLO and now - self.hello_since > limit

    # -- sending --------------------------------------------------------------------

    def has_room(self) -> bool:
        """Welcomed, and less than the credit is in flight."""
        return self.state is LinkState.READY and self.in_flight_bytes < self.credit

    def sent(self, last_seq: int, size: int, now: float) -> None:
        """A message holding batches up to ``last_seq`` (``size`` bytes) went out."""
        self._in_flight.append((last_seq, size))
        self.in_flight_bytes += size
        self.last_sent = now

    def send_failed(self) -> None:
        """The pipe is full or gone: everything unacknowledged will be resent."""
        self._forget_in_flight()

    def acked(self, seq: int) -> None:
        """Batches up to ``seq`` are acknowledged: their bytes no longer count against the credit."""
        while self._in_flight and self._in_flight[0][0] <= seq:
            self.in_flight_bytes -= self._in_flight.popleft()[1]
        self.failures = 0  # the link works: the next loss is answered at once again

    def ping(self, now: float, watermark: int, all_sent: bool) -> bytes | None:
        """The payload of a ping due now (``b""`` for a bare heartbeat), or None.

        Caught up (every batch sent), the watermark alone tells the streamer
        it need not wait for us: sent when it moved (often enough to keep
        lines live) and at least every heartbeat. Otherwise batches carry the
        watermark, and only a bare heartbeat goes out when nothing else did.
        """
        if self.state is not LinkState.READY:
            return None
        since = now - self.last_sent
        if all_sent:
            if (watermark > self._sent_watermark and since >= WATERMARK_EVERY) or since >= self.heartbeat:
                self._sent_watermark = watermark
                self.last_sent = now
                return b"%d" % watermark
            return None
        if since >= self.heartbeat:
            self.last_sent = now
            return b""
        return None

    def poll_timeout(self, now: float | None = None) -> float:
        """Seconds to sleep in poll before the next decision."""
        if self.state is LinkState.READY:
            return WATERMARK_EVERY
        wait = _HELLO_RETRY if not self._hello_taken else min(_HELLO_EVERY, self.heartbeat)
        if now is not None:
            wait = max(wait, min(self._hello_not_before - now, _MAX_BACKOFF_S))
        return wait

    def _forget_in_flight(self) -> None:
        self._in_flight.clear()
        self.in_flight_bytes = 0
