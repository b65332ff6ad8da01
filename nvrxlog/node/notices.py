"""The aggregator's own lines: what it has to say about the node goes into the per-node file.

A gap in a writer's records, a file it cannot read, a forwarder restarted:
the job's story is kept in the per-node file, so the parts that notice such
things (the tails, the writers, the forwarding, the forwarder's own thread)
queue a line here. The aggregator's thread takes the queued lines once a
cycle and holds them with the records, so they are merged by time like any
other record; they have their own writer key and sequence, so the streamer
de-duplicates them like any other writer's.
"""

from __future__ import annotations

import time
from collections import Counter, deque

from nvrxlog.core.record import notice_record

__all__ = ["Notices"]

_PREFIX = "nvrxlog aggregator: "


class Notices:
    """Lines queued from any thread, taken as merge items by the aggregator's thread."""

    __slots__ = ("_queue", "_seq", "_stats", "key")

    def __init__(self, stats: Counter[str]) -> None:
        #: The writer key the notices are forwarded under: one per aggregator run.
        self.key = f"aggregator.{time.time_ns()}"
        self._queue: deque[tuple[str, int | None]] = deque()  # append and popleft are safe across threads
        self._seq = 0
        self._stats = stats

    def __bool__(self) -> bool:
        return bool(self._queue)

    def add(self, text: str, ts: int | None = None) -> None:
        """Queue ``text`` as a line of the per-node file, stamped ``ts`` (default: when it is taken)."""
        self._stats["notices"] += 1
        self._queue.append((text, ts))

    def take(self, now: int) -> list[tuple]:
        """The queued lines as merge items ``(ts, -1, seq, record)``, in the order they were queued."""
        items = []
        queue = self._queue
        while queue:
            text, ts = queue.popleft()
            self._seq += 1
            ts = now if ts is None else ts
            items.append((ts, -1, self._seq, notice_record(self._seq, ts, _PREFIX + text)))
        return items

    def last(self, text: str) -> dict:
        """A record of ``text`` stamped now, for a line written after the last merge (nothing is queued)."""
        return notice_record(self._seq + 1, time.time_ns(), _PREFIX + text)
