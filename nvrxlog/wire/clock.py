"""How far the streamer's clock is from this node's, estimated NTP-style, with no sockets.

The node stamps its hello and its pings with its own clock (``t0``); the
streamer answers with ``t0`` echoed and its own clock on receipt (``t1``);
the node notes its clock when the answer arrives (``t3``). If the two legs
took equally long, the streamer read ``t1`` when the node's clock read
``(t0 + t3) / 2``, so::

    offset = t1 - (t0 + t3) / 2      # the streamer's clock minus ours
    rtt    = t3 - t0                 # the error is at most rtt / 2

A sample whose request waited in a queue (the streamer busy writing) is off
by half that wait, and has a long round trip to show for it: of the last few
samples, the one with the shortest round trip is the estimate (NTP's clock
filter). The window is short so that a clock step (``ntpd`` stepping ours,
or the streamer's) is followed within a few heartbeats.

The node reports its estimate in its next ping; the streamer corrects the
node's stamps by it (``streamer/clocks.py``).
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

__all__ = ["ClockEstimate", "Sample", "sample"]

#: Samples kept for the min-rtt filter (pings go out every 50 ms to 1 s).
WINDOW = 8
#: A round trip longer than this is no measurement (a stalled process, a step of our clock in between).
MAX_RTT_NS = 10 * 10**9


class Sample(NamedTuple):
    """One request/answer exchange: the streamer's clock minus ours, and the round trip (ns)."""

    offset: int
    rtt: int


def sample(t0: int, t1: int, t3: int) -> Sample | None:
    """The sample of an exchange sent at ``t0`` (ours), read at ``t1`` (theirs), answered at ``t3`` (ours).

    None if the round trip is negative (our clock stepped back in between)
    or too long to say anything.
    """
    rtt = t3 - t0
    if not 0 <= rtt <= MAX_RTT_NS:
        return None
    return Sample(t1 - (t0 + t3) // 2, rtt)


class ClockEstimate:
    """The best of the last ``window`` samples: the one with the shortest round trip."""

    __slots__ = ("_samples", "best")

    def __init__(self, window: int = WINDOW) -> None:
        self._samples: deque[Sample] = deque(maxlen=window)
        #: The estimate, None until a first exchange completes.
        self.best: Sample | None = None

    def add(self, t0: object, t1: object, t3: int) -> bool:
        """Take the exchange (``t0``, ``t1`` as the streamer echoed them); True if the estimate changed.

        Anything but ints (an older streamer, a damaged reply) is no sample.
        """
        if type(t0) is not int or type(t1) is not int:
            return False
        new = sample(t0, t1, t3)
        if new is None:
            return False
        self._samples.append(new)
        best = min(self._samples, key=_rtt)
        changed = best != self.best
        self.best = best
        return changed

    def report(self, now_ns: int) -> dict[str, int]:
        """The clock part of a ping sent at ``now_ns``: its stamp, and the estimate once there is one."""
        if self.best is None:
            return {"t": now_ns}
        return {"t": now_ns, "o": self.best.offset, "r": self.best.rtt}


def _rtt(s: Sample) -> int:
    return s.rtt
