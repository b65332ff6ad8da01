"""The streamer's flush: what the cutoff passed is merged, written, shown, forwarded, checkpointed, acked.

An ack means written and checkpointed, so the order is fixed: write the
ready records in time order (``output.py``), show them live and pass them
up (a relay), checkpoint, and only then say which batches are acknowledged;
what those acknowledgements settle (floors raised, ended writers retired,
see ``floors.py``) goes into the next checkpoint, and a relay tells its own
upstream that those writers ended, after every record of theirs it spooled.
When the output cannot be written (a full disk) everything is held and
nothing acknowledged until it can: the nodes keep (and spool) their
batches, and credit bounds what is held here. No socket is used here but
the live view's; the caller sends the acks.
"""

from __future__ import annotations

import errno
import time

from nvrxlog.core.report import ErrorCounter
from nvrxlog.core.watermark import INF, handed_over
from nvrxlog.streamer.intake import Intake
from nvrxlog.streamer.live import LiveView
from nvrxlog.streamer.merge import Ready
from nvrxlog.streamer.output import ClusterOutput
from nvrxlog.wire.forwarder import Forwarder

__all__ = ["Flush"]


class Flush:
    """Writes what is ready from ``intake``'s merge buffer to ``cluster``; ``forwarder`` is a relay's way up."""

    def __init__(
        self,
        cluster: ClusterOutput,
        intake: Intake,
        live: LiveView,
        *,
        out_path: str,
        hold_ns: int,
        stats: dict[str, int],
        errors: ErrorCounter,
    ) -> None:
        self.forwarder: Forwarder | None = None
        self._cluster = cluster
        self._intake = intake
        self._live = live
        self._out_path = out_path
        self._hold_ns = hold_ns
        self._stats = stats
        self._errors = errors
        self._held_since: float | None = None  # since when the output cannot be written
        # A relay's records written but not yet spooled: (records, watermark, writers ended).
        self._unspooled: list[tuple[list, int, list]] = []

    def __call__(self, *, final: bool) -> list[tuple[bytes, int]]:
        """Write what the cutoff (everything, if ``final``) passed; ``(peer, last batch seq)`` to acknowledge."""
        self._intake.take_foreign_notices()
        pending, sessions = self._intake.pending, self._intake.sessions
        cutoff = INF if final else sessions.cutoff(time.time_ns(), self._hold_ns)
        ready, oldest_held = pending.take(cutoff)
        if ready is not None and not self._write(ready, handed_over(cutoff, INF, time.time_ns())):
            pending.put_back(ready)
            return []  # holding: nothing acknowledged or forwarded past what is written
        if not self._spool():
            return []  # a relay whose spool is full: nothing acknowledged past what it could not take
        # Only writing changes what is durable; an idle flush saves nothing.
        # Acks below stay safe: a batch is acked once its newest record is
        # under the cutoff, so written by this flush or an earlier one, and
        # checkpointed (or this returns before any ack).
        if not self._save():
            return []
        if self.forwarder is not None:
            self.forwarder.watermark = handed_over(cutoff, oldest_held, time.time_ns())
        acknowledged: list = []
        acks = sessions.acks_due(cutoff, acknowledged)
        if acknowledged:
            self._settle(acknowledged, final=final)
        return acks

    def _settle(self, acknowledged: list, *, final: bool) -> None:
        """Raise floors and retire the writers that ended; a relay passes their end up, after their records."""
        moved, retired = self._intake.settle(acknowledged)
        if moved:
            self._cluster.unsaved = True  # the next flush saves the floors (and the writers gone), even writing nothing
        if retired and self.forwarder is not None:
            self._unspooled.append(([], 0, [[writer, node] for node, writer in retired]))
            self._spool()  # if it cannot, the next flush holds until it can
        if final:
            self._save()  # the last flush: what it settled is not lost to the next run

    def unwritten(self) -> None:
        """After the final flush: say how many records are still held (the output could not take them)."""
        pending = self._intake.pending
        if pending:
            self._errors.once(
                f"{len(pending.take(INF)[0] or [])} records could not be written to {self._out_path} "
                "at stop; they were not acknowledged, so their nodes send them again to the next streamer"
            )

    def _save(self) -> bool:
        """Checkpoint what is written (if anything is new); False while that fails."""
        if self._cluster.unsaved:
            try:
                if self.forwarder is not None:
                    self.forwarder.spool.sync()  # a relay's acks say its records are safe in its spool too
                self._cluster.checkpoint()
            except OSError as exc:
                self._hold(exc)
                return False
        if self._held_since is not None:
            held, self._held_since = time.monotonic() - self._held_since, None
            self._intake.notice(
                f"{self._out_path} is writable again after {held:.0f}s; what arrived meanwhile was held"
            )
        return True

    def _hold(self, exc: OSError, what: str | None = None) -> None:
        """The output cannot be written (a full disk): say so once, and hold until it can.

        Nothing is acknowledged meanwhile, so the nodes keep (and spool)
        their batches, and credit bounds what is held here.
        """
        self._stats["write_failures"] += 1
        if self._held_since is None:
            self._held_since = time.monotonic()
            self._errors.report(
                f"out:{errno.errorcode.get(exc.errno or 0, exc.errno)}",
                f"cannot write {what or self._out_path}: {exc.strerror}; holding (nothing acknowledged) until it can",
            )

    def _write(self, ready: Ready, watermark: int) -> bool:
        try:
            self._cluster.write(ready)
        except OSError as exc:  # the file is as it was
            self._hold(exc)
            return False
        self._stats["records"] = self._cluster.records
        self._stats["late"] = self._cluster.late
        watching = self._live.watching_records()
        if not watching and self.forwarder is None:
            return True
        records = ready.merged("records")
        if watching:
            self._live.publish(records)
        if self.forwarder is not None:
            self._unspooled.append((records, watermark, []))
            self._spool()
        return True

    def _spool(self) -> bool:
        """Hand the relay's forwarder what is written and not spooled yet, in order; False while it cannot.

        A spool that cannot take records (a full disk) holds the relay like
        its own output: nothing is checkpointed or acknowledged past them, so
        a restart writes and spools them again (upstream drops what it has).
        """
        forwarder = self.forwarder
        while self._unspooled and forwarder is not None:
            records, watermark, ended = self._unspooled[0]
            try:
                forwarder.submit(records, watermark, ended)
            except OSError as exc:
                self._hold(exc, forwarder.spool.directory)
                return False
            self._unspooled.pop(0)
        return True
