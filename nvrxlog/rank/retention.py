"""Retention: which of a writer's finished temp files may be deleted before they are consumed.

Retention bounds the tmpdir only when the aggregator is absent or far
behind: while one is alive, a writer keeps up to a large backlog; once none
has been seen for a grace period, it keeps ``max_files``. Whatever is deleted
unconsumed is a loss the writer states exactly (a seq range), never silently.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["ClosedFile", "Loss", "Retention", "ABSENT_GRACE_NS", "BEHIND_BACKLOG_BYTES"]

# While an aggregator is alive but behind, keep this much unconsumed backlog
# before deleting anything: retention is for an absent aggregator, not a busy one.
BEHIND_BACKLOG_BYTES = 256 << 20
# At job start the ranks begin logging before local rank 0 has its aggregator
# up; an aggregator only counts as absent once none was seen for this long.
ABSENT_GRACE_NS = 30_000_000_000


class ClosedFile(NamedTuple):
    """A finished temp file and the records in it."""

    path: str
    first_seq: int
    last_seq: int


class Loss(NamedTuple):
    """Records deleted unconsumed: seq ``first``..``last`` in ``files`` files."""

    first: int
    last: int
    files: int

    @property
    def records(self) -> int:
        return self.last - self.first + 1


class Retention:
    """A writer's finished files, oldest first, and the rule for dropping them."""

    def __init__(self, *, max_files: int, max_file_bytes: int, start_ns: int) -> None:
        self.max_files = max_files
        self.behind_files = max(max_files, BEHIND_BACKLOG_BYTES // max_file_bytes)
        self.files: deque[ClosedFile] = deque()
        self._aggregator_seen_ns = start_ns

    def closed(self, path: str, first_seq: int, last_seq: int) -> None:
        """The writer finished a file."""
        self.files.append(ClosedFile(path, first_seq, last_seq))

    def to_drop(
        self, now: int, consumed: Callable[[str], bool], aggregator_alive: Callable[[], bool]
    ) -> list[ClosedFile]:
        """The files to delete now, oldest first (forgotten here once returned).

        The aggregator deletes a writer's files in order once consumed, so
        consumed files are always a prefix: they are forgotten first. Only
        with ``max_files`` or more left is the aggregator asked after (a lock probe).
        """
        files = self.files
        while files and consumed(files[0].path):
            files.popleft()
        if len(files) < self.max_files:
            return []
        if aggregator_alive():
            self._aggregator_seen_ns = now
        absent = now - self._aggregator_seen_ns > ABSENT_GRACE_NS
        allowed = self.max_files - 1 if absent else self.behind_files
        return [files.popleft() for _ in range(max(0, len(files) - allowed))]

    @staticmethod
    def loss(dropped: list[ClosedFile]) -> Loss | None:
        """What deleting ``dropped`` lost (they are consecutive), or None."""
        if not dropped:
            return None
        return Loss(dropped[0].first_seq, dropped[-1].last_seq, len(dropped))
