"""The aggregator's forwarder, kept running: forwarding is optional, the per-node file is not.

Starting a forwarder can fail (a CURVE key file that does not load, a spool
directory that cannot be made) and a running forwarder's thread can die of an
unexpected error (a full disk under its spool). Either way the problem is
reported once and the aggregator goes on writing the per-node file. A
configuration problem does not fix itself, so forwarding stays off; anything
else is retried, backing off, since disks empty and directories come back.
A forwarder restarted after its thread died resends from its spool on disk
what the streamer has not acknowledged (the streamer drops duplicates).

Records written to the per-node file are spooled here; when the spool cannot
take them (its disk is full) they wait, in order, and are retried. The
aggregator does not checkpoint while any wait, so they are never counted as
done before they are safely spooled, and counts them in its bounded backlog.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nvrxlog.core.report import ErrorCounter, describe
from nvrxlog.errors import ConfigError

if TYPE_CHECKING:
    from nvrxlog.wire.forwarder import Forwarder

__all__ = ["Forwarding", "restart_delay"]

_FIRST_DELAY_S = 0.5
_MAX_DELAY_S = 32.0
# Retrying the spool packs the waiting records again: not on every cycle.
_SPOOL_RETRY_S = 0.25


def restart_delay(failures: int, *, first: float = _FIRST_DELAY_S, cap: float = _MAX_DELAY_S) -> float:
    """Seconds before the next start after ``failures`` (>= 1) failures in a row: doubling, up to ``cap``."""
    return min(first * 2 ** max(failures - 1, 0), cap)


class Forwarding:
    """Owns the aggregator's current forwarder: starts it, restarts it when its thread died, stops it.

    Used by the aggregator's thread only (and by ``stop`` after that thread ended).
    At ``stop`` it counts in ``stats`` the records the spool dropped and those undelivered.
    """

    def __init__(
        self,
        streamer: str,
        node_id: str,
        spool_dir: str,
        *,
        notice: Callable[[str], None],
        errors: ErrorCounter,
        stats: Counter[str],
        **options: Any,
    ) -> None:
        self.streamer = streamer
        self.node_id = node_id
        self.spool_dir = spool_dir
        #: The running forwarder, a dead one kept until its restart (its spool still takes batches), or None.
        self.forwarder: Forwarder | None = None
        self._notice = notice
        self._errors = errors
        self._stats = stats
        self._options = options
        self._failures = 0
        self._retry_at: float | None = None  # None: nothing to retry (running, or off for good)
        # (records, watermark, writers ended) the spool could not take yet.
        self._waiting: deque[tuple[list, int, list]] = deque()
        self._waiting_records = 0
        self._spool_retry_at = 0.0
        self._spool_failing = False

    def start(self, now: float | None = None) -> bool:
        """Try to start a forwarder; True if one runs. A failure is reported and, unless it is a setting, retried."""
        now = time.monotonic() if now is None else now
        self._retry_at = None
        try:
            from nvrxlog.wire.forwarder import Forwarder  # ZeroMQ only where forwarding is used

            curve = self._options.get("curve")
            if curve is not None:
                curve.load()  # a key problem is a clear line now, not a dead thread later
            forwarder = Forwarder(
                self.streamer, self.node_id, self.spool_dir, notice=self._notice, errors=self._errors, **self._options
            )
            self.forwarder = forwarder.start()
        except ConfigError as exc:
            self.forwarder = None
            self._say(f"not forwarding to {self.streamer}: {describe(exc)}; the per-node file is written as usual")
            return False
        except Exception as exc:  # an OSError from the spool, a TransportError: may well pass
            self.forwarder = None
            self._failed(now, f"cannot start forwarding to {self.streamer}: {describe(exc)}")
            return False
        if self._failures:
            self._notice(f"forwarding to {self.streamer} restarted")
        return True

    def check(self, now: float) -> None:
        """Restart a forwarder whose thread died, or retry a start, once its backoff has passed."""
        forwarder = self.forwarder
        if forwarder is not None and self._retry_at is None:
            if forwarder.running or forwarder.failure is None:
                if forwarder.running and self._failures and forwarder.link.ready:
                    self._failures = 0  # it talks to the streamer again: the next failure starts afresh
                return  # running, or ended on purpose (refused by the streamer): not ours to undo
            self._failed(now, f"the forwarder to {self.streamer} stopped: {describe(forwarder.failure)}")
        if self._retry_at is not None and now >= self._retry_at:
            dead, self.forwarder = self.forwarder, None
            if dead is not None:
                dead.stop(0)  # its thread has ended; this closes its spool so the next one can open it
            self.start(now)

    @property
    def waiting(self) -> int:
        """Records written to the per-node file that the spool has not taken yet."""
        return self._waiting_records

    def submit(self, records: list, watermark: int, now: float, ended: list | None = None) -> None:
        """Spool ``records`` (all up to ``watermark``) after any still waiting; they wait if the spool fails.

        ``ended``: writers whose every record is now submitted (see ``Forwarder.submit``).
        """
        if self.forwarder is None:
            return  # forwarding is off (and said so): the per-node file is all there is
        self._waiting.append((records, watermark, ended or []))
        self._waiting_records += len(records)
        self.flush(now)  # at once unless the spool failed less than a retry interval ago

    def flush(self, now: float) -> None:
        """Spool what waits, in order, unless a retry is not due yet."""
        if not self._waiting or now < self._spool_retry_at:
            return
        forwarder = self.forwarder
        if forwarder is None:
            # A restart that failed: what waits was never spooled and now never will be.
            self._say(f"{self._waiting_records} records are in the per-node file but not forwarded to {self.streamer}")
            self._waiting.clear()
            self._waiting_records = 0
            return
        while self._waiting:
            records, watermark, ended = self._waiting[0]
            try:
                forwarder.submit(records, watermark, ended)
            except OSError as exc:
                self._spool_retry_at = now + _SPOOL_RETRY_S
                if not self._spool_failing:
                    self._spool_failing = True
                    self._errors.report("spool", f"cannot spool for {self.streamer}: {exc.strerror}; retrying")
                    self._notice(
                        f"cannot spool records for {self.streamer} in {self.spool_dir}: {exc.strerror}; "
                        "they are in this file, wait in memory and are retried (nothing is checkpointed meanwhile)"
                    )
                return
            self._waiting.popleft()
            self._waiting_records -= len(records)
        if self._spool_failing:
            self._spool_failing = False
            self._notice(f"spooling for {self.streamer} works again")

    def stop(self, timeout: float, *, report: bool = True) -> int | None:
        """Stop the forwarder, waiting up to ``timeout`` s for acknowledgements; records undelivered (None: none ran).

        Records still waiting for the spool count as undelivered: they are
        not checkpointed, so the next run writes and spools them again. With
        ``report``, undelivered records are reported once (no successor follows).
        """
        forwarder, self.forwarder = self.forwarder, None
        self._retry_at = None
        waiting, self._waiting_records = self._waiting_records, 0
        self._waiting.clear()
        if forwarder is None:
            return None
        self._stats["spool_dropped"] = forwarder.stats["dropped"]
        undelivered = forwarder.stop(timeout) + waiting
        self._stats["undelivered"] = undelivered
        if undelivered and report:
            self._errors.report(
                "undelivered",
                f"{undelivered} records were not acknowledged by the streamer {self.streamer}; they stay "
                f"spooled in {self.spool_dir} (or, if it could not take them, in the tmpdir) for the next run",
            )
        return undelivered

    def _failed(self, now: float, text: str) -> None:
        self._failures += 1
        delay = restart_delay(self._failures)
        self._retry_at = now + delay
        self._say(f"{text}; retrying (backing off up to {_MAX_DELAY_S:g}s), the per-node file is written as usual")

    def _say(self, text: str) -> None:
        # stderr once per distinct line, and the per-node file, where the job's story is kept.
        if self._errors.once(text):
            self._notice(text)
