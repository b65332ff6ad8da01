"""In a rank that does not host the node's aggregator: start one if none is there for a while.

Local rank 0 hosts the aggregator thread; if it is killed (SIGKILL, OOM) no
exit handler runs and no successor is handed the node. Every other rank
looks at the tmpdir's lock every few seconds (a shared ``flock`` probe, a
few microseconds); once no aggregator has held it for a grace period, it
starts a detached successor. Ranks wait different grace periods, so the first
successor usually holds the lock before the next rank would start another,
and a successor that finds the lock taken exits quietly.
"""

from __future__ import annotations

import threading
import time

from nvrxlog.core import forks
from nvrxlog.core.report import ErrorCounter
from nvrxlog.core.tmpdir import aggregator_alive
from nvrxlog.node.handover import spawn_successor

__all__ = ["AggregatorWatch", "GRACE_S"]

GRACE_S = 5.0  # plus 1 s per local rank
_EVERY_S = 2.0


class AggregatorWatch:
    """A daemon thread that starts a successor aggregator when the node has none."""

    def __init__(
        self,
        tmp_dir: str,
        command: list[str],
        *,
        local_rank: int | None,
        grace: float = GRACE_S,
        every: float = _EVERY_S,
    ) -> None:
        self.tmp_dir = tmp_dir
        self.command = command
        self.started = 0  # successors started
        self._grace = grace + 1.0 * (local_rank or 0)
        self._every = every
        self._stop = threading.Event()
        self._errors = ErrorCounter("aggregator watch")
        self._thread: threading.Thread | None = threading.Thread(target=self._run, name="nvrxlog-watch", daemon=True)
        self._thread.start()
        forks.register(self)

    def stop(self) -> None:
        """Stop watching (safe twice)."""
        self._stop.set()

    def after_fork_in_child(self) -> None:
        # The thread is the parent's; a forked child (a data-loader worker) does not watch.
        self._thread = None
        self._stop = threading.Event()
        self._stop.set()

    def _run(self) -> None:
        seen = time.monotonic()
        while not self._stop.wait(self._every):
            now = time.monotonic()
            if aggregator_alive(self.tmp_dir):
                seen = now
                continue
            if now - seen < self._grace or self._stop.is_set():
                continue
            seen = now  # give the successor (or another rank's) time to take the lock
            try:
                spawn_successor(self.command)
                self.started += 1
            except OSError as exc:
                self._errors.once(
                    f"no aggregator serves {self.tmp_dir} and none could be started ({exc.strerror}); "
                    f"records stay there: run `nvrxlog aggregate --tmp-dir {self.tmp_dir} --once`"
                )
