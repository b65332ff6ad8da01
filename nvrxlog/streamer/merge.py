"""Records held for a time-ordered merge: sorted columns per batch, cut at a cutoff.

A batch's records are kept as columns (merge key, writer key, seq, record,
output line) sorted by merge key, so cutting at a cutoff is a bisection and merging the
ready parts of many batches is one sort of integers, all in C: the streamer
does this for every record it receives.
"""

from __future__ import annotations

import bisect
from itertools import chain
from operator import itemgetter
from typing import NamedTuple

__all__ = ["Chunk", "MergeBuffer", "Ready"]


class Chunk(NamedTuple):
    """Columns of one batch's records, in merge-key order."""

    ts: list[int]  # merge keys: per writer never decreasing
    keys: list[str]  # "node|writer"
    seqs: list[int]
    records: list[dict]
    lines: list[str]  # the output line of each record

    @staticmethod
    def of(items: list[tuple[int, str, int, dict, str]]) -> Chunk:
        """A chunk from ``(ts, key, seq, record, line)`` tuples in any order.

        The sort is by time only and stable, so records of one writer with
        equal times keep their order.
        """
        items.sort(key=_first)
        return Chunk(*map(list, zip(*items, strict=True))) if items else Chunk([], [], [], [], [])


_first = itemgetter(0)


class MergeBuffer:
    """Chunks waiting until the cutoff passes them, in arrival order."""

    def __init__(self) -> None:
        self._chunks: list[Chunk] = []

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def add(self, chunk: Chunk) -> None:
        """Hold ``chunk`` (sorted by ``ts``) until a cutoff reaches it."""
        if chunk.ts:
            self._chunks.append(chunk)

    def put_back(self, ready: Ready) -> None:
        """Hold again what ``take`` gave (it could not be written), ahead of what arrived since."""
        self._chunks[:0] = ready.parts

    def take(self, cutoff: float) -> tuple[Ready | None, float]:
        """Everything with ``ts <= cutoff``; and the oldest ``ts`` still held."""
        ready: list[Chunk] = []
        held: list[Chunk] = []
        oldest_held = float("inf")
        for chunk in self._chunks:
            ts = chunk.ts
            cut = bisect.bisect_right(ts, cutoff)
            if cut == len(ts):
                ready.append(chunk)
                continue
            if cut:
                ready.append(Chunk(*(column[:cut] for column in chunk)))
                chunk = Chunk(*(column[cut:] for column in chunk))
            held.append(chunk)
            oldest_held = min(oldest_held, chunk.ts[0])
        self._chunks = held
        return (Ready(ready) if ready else None), oldest_held


class Ready:
    """The ready parts of the held chunks, in arrival order, merged by time on demand.

    The merge is stable and the parts are in arrival order, so a writer's
    records (whose keys never decrease) come out in its order. Only the
    columns asked for are merged: per-writer and per-part facts (highest
    seq, newest time) need no merge at all.
    """

    def __init__(self, parts: list[Chunk]) -> None:
        self.parts = parts
        self._gather: itemgetter | None = None

    def __len__(self) -> int:
        return sum(len(part.ts) for part in self.parts)

    def merged(self, name: str) -> list:
        """Column ``name`` of all parts, in time order."""
        if len(self.parts) == 1:
            return getattr(self.parts[0], name)
        if self._gather is None:
            ts = list(chain.from_iterable(part.ts for part in self.parts))
            order = sorted(range(len(ts)), key=ts.__getitem__)  # timsort: merges the parts' runs
            self._gather = itemgetter(*order)
        return list(self._gather(list(chain.from_iterable(getattr(part, name) for part in self.parts))))
