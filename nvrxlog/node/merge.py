"""The node's time-ordered merge: records held back behind a short window, taken in order.

Each record is held as ``(merge key, tail id, seq, record)``; tuples compare
by key, then by the small tail id and the seq, never by the record. Records
whose key is at or below the cutoff are ready; a writer whose files still
hold unread data lowers the cutoff to what it has given so far, since its
unread records may be older than what others gave.
"""

from __future__ import annotations

import bisect
from operator import itemgetter

__all__ = ["HoldBack"]

_key = itemgetter(0)


class HoldBack:
    """Records waiting for the cutoff, kept sorted."""

    def __init__(self) -> None:
        self._held: list[tuple] = []

    def __len__(self) -> int:
        return len(self._held)

    @property
    def oldest(self) -> float:
        """The merge key of the oldest record held (``inf`` when empty)."""
        return self._held[0][0] if self._held else float("inf")

    def add(self, items: list[tuple]) -> None:
        """Hold ``items`` until a cutoff reaches them."""
        if items:
            self._held.extend(items)
            self._held.sort()

    def take(self, cutoff: float) -> list[tuple]:
        """Every record with a merge key at or below ``cutoff``, in order."""
        held = self._held
        n = len(held) if cutoff == float("inf") else bisect.bisect_right(held, cutoff, key=_key)
        ready = held[:n]
        del held[:n]
        return ready

    def put_back(self, items: list[tuple]) -> None:
        """Hold again records just taken but not written (their write failed), ahead of the rest.

        Right after ``take`` they are all older than what is held, so the order stays sorted.
        """
        self._held[:0] = items
