"""Batch floors: per node and spool run, the highest batch seq written and acknowledged.

De-duplication per record needs, per writer, the highest seq written; that
state would grow with every writer ever seen (a data-loader worker, a
per-epoch subprocess), and it is rewritten into every checkpoint. A node
says when a writer has ended (``"e"`` in a batch: its last record is in that
batch or an earlier one), and once that batch is written and acknowledged
the streamer forgets the writer. What protects its records from a resend
after that is the floor: a batch at or below its spool run's floor is a
duplicate as a whole, whatever writers it holds.

A spool run (``"o"`` in every batch) is one opening of a node's spool: its
batch seqs only ever grow, and a spool deleted or reopened starts another
run, so a floor can never cover a batch it has not seen. A batch keeps the
run it was spooled in when it is resent by a later run, so an old run's
floor is kept a while: a node's few most recent runs, as many nodes as fit.
Once a batch of a newer run is acknowledged every older batch of that spool
is too (acknowledgements are cumulative in spool order), so an old run
evicted is one whose batches no longer come back.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nvrxlog.streamer.sessions import Expected

__all__ = ["BatchFloors", "MAX_RUN_BYTES", "settled"]

#: Spool runs kept per node (each aggregator or forwarder start is one).
RUNS_PER_NODE = 8
#: Floors kept in all: what the checkpoint holds stays small whatever peers send.
MAX_FLOORS = 16_384
#: A spool run's name is a short token; anything longer is not one.
MAX_RUN_BYTES = 64


def settled(batches: list[Expected]) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """What acknowledging ``batches`` settles: ``(run, seq)`` floors to raise, and the writers to retire.

    Only a batch with a spool run retires its writers: without a floor a
    resend of their records would be taken as new.
    """
    floors = [(batch.run, batch.seq) for batch in batches if batch.run]
    ended = [pair for batch in batches if batch.run for pair in batch.ended]
    return floors, ended


class BatchFloors:
    """Per node, per spool run, the highest batch seq acknowledged; recency-ordered and bounded."""

    def __init__(
        self,
        saved: dict[str, dict[str, int]] | None = None,
        *,
        runs_per_node: int = RUNS_PER_NODE,
        limit: int = MAX_FLOORS,
    ) -> None:
        self.runs_per_node = runs_per_node
        self.limit = limit
        #: The nodes whose floors are evicted last (the connected ones; set by the streamer).
        self.protected: Callable[[], Container[str]] = frozenset
        # node -> run -> seq; both levels least recently raised first (dicts keep insertion order).
        self._floors: dict[str, dict[str, int]] = {}
        self._count = 0
        for node, runs in (saved or {}).items():
            for run, seq in runs.items():
                self.raise_to(node, run, seq)

    def __len__(self) -> int:
        return self._count

    def covers(self, node: str, run: str, seq: int) -> bool:
        """True if batch ``seq`` of ``node``'s spool run ``run`` was written and acknowledged already."""
        runs = self._floors.get(node)
        return runs is not None and seq <= runs.get(run, -1)

    def raise_to(self, node: str, run: str, seq: int) -> None:
        """Batches up to ``seq`` of ``node``'s run ``run`` are acknowledged (a floor never goes down)."""
        runs = self._floors.pop(node, None)
        if runs is None:
            runs = {}
        old = runs.pop(run, None)
        if old is None:
            self._count += 1
        runs[run] = seq if old is None else max(old, seq)
        self._floors[node] = runs
        if len(runs) > self.runs_per_node:
            del runs[next(iter(runs))]
            self._count -= 1
        if self._count > self.limit:
            # Made-up names must not push out the floors of nodes that are connected:
            # theirs are the batches that come back.
            keep = self.protected()
            for oldest in [name for name in self._floors if name not in keep] or list(self._floors):
                if self._count <= self.limit:
                    break
                self._count -= len(self._floors.pop(oldest))

    def saved(self) -> dict[str, dict[str, int]]:
        """The floors as the checkpoint saves them, in recency order (live: encode it, do not keep it)."""
        return self._floors
