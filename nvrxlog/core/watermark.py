"""The one watermark rule: what a stage may promise downstream after a flush.

A watermark T says "every record up to time T has been handed over". After a
flush that wrote everything up to ``cutoff``, records still held (the oldest at
``oldest_held``) or yet to come must all be later than T. The aggregator, the
streamer (as a relay) and the spool's batches all promise by this rule.
"""

from __future__ import annotations

__all__ = ["INF", "batch_watermarks", "clock_stepped_back", "handed_over"]


#: A cutoff past every record: a final flush writes everything.
INF = float("inf")


def handed_over(cutoff: float, oldest_held: float, now: int) -> int:
    """The watermark after a flush up to ``cutoff`` (``inf``: everything) with ``oldest_held`` still held."""
    if cutoff == INF:
        cutoff = now
    return int(min(cutoff, oldest_held - 1))


def batch_watermarks(first_times: list[int], watermark: int) -> list[int]:
    """Watermarks for consecutive batches whose earliest records are at ``first_times``.

    The last batch carries ``watermark``; every earlier one promises only up to
    just before the earliest record of the batches after it.
    """
    marks = []
    later = watermark
    for first in reversed(first_times):
        marks.append(later)
        later = min(later, first - 1)
    marks.reverse()
    return marks


# A clock that merely runs a little ahead of another stays within this.
CLOCK_SLACK_NS = 10**9


def clock_stepped_back(oldest_held: float, now: int, window: int) -> bool:
    """True if what is held is stamped in the future: the node's clock stepped back (an NTP step).

    Held records wait for ``now - window`` to pass them; stamped past ``now +
    window`` (and a second's slack), they would wait for as long as the step
    was. Time is not sane across such a step: they are written by arrival.
    """
    return now + window + CLOCK_SLACK_NS < oldest_held < INF  # INF: nothing is held
