"""Each node's clock as the streamer sees it, with no sockets: the correction of its stamps, and stamps too far ahead.

A node estimates how far the streamer's clock is from its own (NTP-style,
``wire/clock.py``) and reports that offset in its pings. The streamer adds
it to everything the node stamps: its records' times and its watermarks. So
the merge, the cutoff and the acks are all in the streamer's time, and a
node whose clock runs an hour ahead is merged with the others as it logs,
not an hour later. The cluster file shows the corrected time (it reads in
time order, and a relay passes corrected times up, so a tree of streamers
corrects hop by hop); the node's own file keeps the node's own stamps.
An offset past a second is said once in the cluster file.

Whatever a node's clock or offset, no record waits for the merge because of
its stamp alone: one stamped more than ``FUTURE_NS`` past the streamer's
clock (after correction; a node that reports no offset is not corrected) is
merged by its arrival time instead, and shown with its own stamp. Otherwise
a clock that cannot be corrected (an old peer, a step on the node the
estimate has not seen yet), or a client stamping years ahead, would have its
records held, never written nor acknowledged, costing memory without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from nvrxlog.core.watermark import CLOCK_SLACK_NS

__all__ = ["FUTURE_NS", "NodeClock", "corrected", "corrected_ts", "future_limit", "merge_keys"]

#: A stamp past the streamer's clock by more than this is merged by arrival.
FUTURE_NS = CLOCK_SLACK_NS
#: An estimate that moves less than this (or than its round trip) is noise: what is applied stays.
NOISE_NS = 1_000_000
#: An offset past this is told in the cluster file.
NOTICE_NS = 10**9
#: Changes told per node: a peer reporting a new offset in every ping cannot flood the file.
_TOLD_CHANGES = 10
#: A report past this (about 36 years) is no clock: malformed.
MAX_OFFSET_NS = 1 << 60
# What a stamp can be (what orjson reads and writes): a corrected stamp stays in it.
_MIN_TS, _MAX_TS = -(1 << 63), (1 << 64) - 1


@dataclass(slots=True)
class NodeClock:
    """One node's clock: the offset applied to its stamps, and what the cluster file was told."""

    offset: int = 0  # ns to add to the node's stamps for the streamer's time (0: unknown, or within noise)
    told: int = 0  # the offset the cluster file last told of (0: none)
    tellings: int = 0  # how many times it was told
    future: int = 0  # its records merged by arrival, stamped too far ahead

    def report(self, node: str, offset: object, rtt: object) -> tuple[int, list[tuple[str, str]]]:
        """The node's estimate (ns); how far the applied offset moved, and the notices to write.

        Raises TypeError/ValueError for a report that is not a pair of ints
        in range: the ping carrying it is a malformed message.
        """
        if type(offset) is not int or type(rtt) is not int:
            raise TypeError("a clock report needs an int offset 'o' and round trip 'r'")
        if abs(offset) > MAX_OFFSET_NS or rtt < 0:
            raise ValueError(f"a clock report of offset {offset} ns, round trip {rtt} ns is no clock")
        if abs(offset - self.offset) <= max(NOISE_NS, rtt):
            return 0, []
        moved, self.offset = offset - self.offset, offset
        return moved, self._notices(node)

    def _notices(self, node: str) -> list[tuple[str, str]]:
        """Tell of an offset past a second, or of one that changed by more than a second since told."""
        if abs(self.offset - self.told) <= NOTICE_NS or self.tellings >= _TOLD_CHANGES:
            return []
        self.tellings += 1
        more = "; further changes of its clock are not told" if self.tellings == _TOLD_CHANGES else ""
        self.told = self.offset if abs(self.offset) > NOTICE_NS else 0
        if not self.told:
            return [(f"node {node}'s clock agrees with the streamer's again (within 1 s){more}", "INFO")]
        ahead = -self.offset / 1e9  # the offset is the streamer's clock minus the node's
        where = f"{ahead:+.1f} s ahead of" if ahead > 0 else f"{-ahead:.1f} s behind"
        text = f"node {node}'s clock is {where} the streamer's; its lines are merged and shown on corrected time"
        return [(f"{text} (its own file keeps its stamps){more}", "WARNING")]


def corrected(stamps: list[int], offset: int) -> list[int]:
    """A column of a node's stamps in the streamer's time (``stamps`` itself when there is nothing to add)."""
    if not offset:
        return stamps
    shifted = list(map(offset.__add__, stamps))  # in C: the column, not a loop in Python
    if max(shifted) > _MAX_TS or min(shifted) < _MIN_TS:
        shifted = [min(max(ts, _MIN_TS), _MAX_TS) for ts in shifted]
    return shifted


def corrected_ts(ts: int, offset: int) -> int:
    """One stamp in the streamer's time (``corrected`` for a record at a time)."""
    return min(max(ts + offset, _MIN_TS), _MAX_TS)


def future_limit(arrival: int) -> int:
    """The latest corrected stamp that merges at itself for a record arriving at ``arrival``; later ones merge at it."""
    return arrival + FUTURE_NS


def merge_keys(stamps: list[int], arrival: int) -> tuple[list[int], int]:
    """Merge keys for corrected ``stamps`` that arrived at ``arrival``, and how many are stamped too far ahead.

    Past ``future_limit(arrival)`` a stamp merges at ``arrival``; the others
    at their stamp (``stamps`` itself when none is that far ahead).
    """
    limit = future_limit(arrival)
    if not stamps or max(stamps) <= limit:
        return stamps, 0
    keys = [ts if ts <= limit else arrival for ts in stamps]
    return keys, sum(map(limit.__lt__, stamps))  # counted in C
