"""The forwarder's loss ledger: batches the spool dropped, until the streamer has been told.

A loss is stated in the cluster file by a notice batch that is itself
spooled, so it could be dropped in turn: each loss stays in the ledger (and
on disk) until the batch reporting it is acknowledged.
"""

from __future__ import annotations

from nvrxlog.wire.spool import Dropped

__all__ = ["LossLedger"]


class LossLedger:
    """Unreported losses, and the one report in flight."""

    def __init__(self, lost: list[Dropped] | None = None) -> None:
        self.entries: list[Dropped] = list(lost or [])
        self._report: tuple[int, int] | None = None  # (batch seq of the report, entries it covers)

    @property
    def records(self) -> int:
        """Records lost and not yet reported as acknowledged."""
        return sum(d.records for d in self.entries)

    def add(self, dropped: list[Dropped]) -> None:
        """Batches the spool just dropped."""
        self.entries.extend(dropped)

    def report_text(self) -> str | None:
        """The text of a report to spool now: every unreported loss; None if none or one is in flight."""
        if not self.entries or self._report is not None:
            return None
        ranges = "; ".join(f"batches {d.first}-{d.last} ({d.records} records): {d.why}" for d in self.entries)
        return f"nvrxlog forwarder: records lost on the way to the streamer: {ranges}"

    def reported(self, batch_seq: int) -> None:
        """The report of every current entry went into the spool as batch ``batch_seq``."""
        self._report = (batch_seq, len(self.entries))

    def acknowledged(self, acked: int) -> bool:
        """The streamer acknowledged batches up to ``acked``; True if that cleared reported entries."""
        if self._report is None or acked < self._report[0]:
            return False
        del self.entries[: self._report[1]]
        self._report = None
        return True
