"""How much the aggregator reads while the per-node file cannot be written.

While writes fail (a full log dir) every record read is held in memory until
they work again; reading on would hold every rank's whole backlog (in thread
mode inside a training process). The records are safe where they are, in the
writers' temp files, and are read only from checkpointed positions, so past
a bounded backlog the aggregator stops reading and picks up where it stopped
once a write succeeds. The rules are pure functions of the aggregator's state;
``Backlog`` keeps what they need from one cycle to the next.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

__all__ = ["MAX_HELD_BYTES", "MAX_HELD_RECORDS", "PROBE_RECORDS", "Backlog", "backlog_paused", "tails_to_read"]

#: Records held in memory past which reading stops while writes fail (a held record costs
#: about 1 KiB as a dict; in thread mode this is the training process's memory)...
MAX_HELD_RECORDS = 20_000
#: ... or bytes of them as read (the messages may be large: a rank's message is capped at 1 Mi characters).
MAX_HELD_BYTES = 16 << 20
#: While writes fail, each retry writes at most this many records: formatting the whole
#: backlog only to be told "no space" again would cost a core.
PROBE_RECORDS = 1_000


class _Cursor(Protocol):
    key: int


class _Tail(Protocol):
    more: bool
    cursor: _Cursor


T = TypeVar("T", bound=_Tail)


def backlog_paused(*, held: int, limit: int, held_bytes: float, byte_limit: int, write_failing: bool) -> bool:
    """Whether to stop reading: the last write failed and ``held`` records (``held_bytes``) already wait in memory.

    A backlog alone (a slow writer, a clock step) never pauses reading: only a
    successful write can end a pause, so one must be possible.
    """
    return write_failing and (held >= limit or held_bytes >= byte_limit)


def tails_to_read(tails: Iterable[T], *, paused: bool, oldest: float) -> list[T]:
    """The tails to poll this cycle: all of them, or while paused only those that block every held record.

    A tail with unread data whose position is at or before the ``oldest``
    held record holds the cutoff below everything held: unread, nothing could
    be written even once writes work again. One poll moves its position past
    its own records, so each such tail adds at most one read to the backlog.
    """
    if not paused:
        return list(tails)
    return [tail for tail in tails if tail.more and tail.cursor.key <= oldest]


class Backlog:
    """The aggregator's backlog from cycle to cycle: whether a cycle reads every tail, and when one last did.

    Records waiting in memory are weighed by the bytes per record read,
    averaged over recent cycles.
    """

    __slots__ = ("_byte_limit", "_limit", "_record_bytes", "read_all_at")

    def __init__(self, limit: int, byte_limit: int) -> None:
        self._limit = limit
        self._byte_limit = byte_limit
        self._record_bytes = 256.0
        #: When every tail was last polled: while paused, nothing read since then is safe to write.
        self.read_all_at = 0

    def paused(self, held: int, *, write_failing: bool, now: int) -> bool:
        """Whether the cycle at ``now`` polls only the tails that block, with ``held`` records waiting (see above)."""
        paused = backlog_paused(
            held=held,
            limit=self._limit,
            held_bytes=held * self._record_bytes,
            byte_limit=self._byte_limit,
            write_failing=write_failing,
        )
        if not paused:
            self.read_all_at = now
        return paused

    def read(self, read_bytes: int, records: int) -> None:
        """A cycle read ``records`` records in ``read_bytes`` bytes."""
        if records:
            self._record_bytes = (self._record_bytes + read_bytes / records) / 2
