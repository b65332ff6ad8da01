"""In a writer that does not host the node's aggregator: start one when the node has none.

Local rank 0 hosts the aggregator thread; if it is killed (SIGKILL, OOM) no
exit handler runs and no successor is handed the node. Two things cover it:

- every other rank looks at the tmpdir's lock now and then (a shared
  ``flock`` probe, a few microseconds); once no aggregator has held it for
  a grace period, it starts a detached successor. Ranks wait different
  grace periods, so the first successor usually holds the lock before the
  next rank would start another, and a successor that finds the lock
  taken exits quietly;
- a writer that ends (its exit, or the fd helper of a rank stopped by a
  signal) looks once more, with no grace: its last records must not wait
  in the tmpdir for a watcher that may be gone too (torchrun stops every
  rank moments after one died).
"""

from __future__ import annotations

import threading
import time

from nvrxlog.core import forks
from nvrxlog.core.report import ErrorCounter
from nvrxlog.core.tmpdir import aggregator_alive
from nvrxlog.node.handover import spawn_successor

__all__ = ["AggregatorWatch", "GRACE_S", "start_if_absent"]

# Before the first aggregator is seen, the host rank may still be starting.
GRACE_S = 5.0  # plus 1 s per local rank
# Once one was seen, only a hand-over (a successor starting, well under a
# second) leaves the lock free; a rank killed mid-run is noticed in this long.
GRACE_AFTER_SEEN_S = 1.5  # plus 0.25 s per local rank
_EVERY_S = 0.5


def start_if_absent(tmp_dir: str, command: list[str], errors: ErrorCounter) -> bool:
    """Start a successor aggregator if none holds ``tmp_dir``'s lock; True if one was started.

    A successor that finds another holding the lock waits for it, then finds
    nothing left and exits: starting one too many costs a process, never a record.
    """
    if aggregator_alive(tmp_dir):
        return False
    try:
        spawn_successor(command)
    except OSError as exc:
        errors.once(
            f"no aggregator serves {tmp_dir} and none could be started ({exc.strerror}); "
            f"records stay there: run `nvrxlog aggregate --tmp-dir {tmp_dir} --once`"
        )
        return False
    return True


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
        rank = local_rank or 0
        self._grace = grace + 1.0 * rank
        self._grace_after_seen = GRACE_AFTER_SEEN_S + 0.25 * rank
        self._every = every
        self._stop = threading.Event()
        self._errors = ErrorCounter("aggregator watch")
        self._thread: threading.Thread | None = threading.Thread(target=self._run, name="nvrxlog-watch", daemon=True)
        self._thread.start()
        forks.register(self)

    def stop(self) -> None:
        """Stop watching (safe twice)."""
        self._stop.set()

    def last_look(self) -> None:
        """This writer is ending: make sure an aggregator will take what it wrote."""
        self.stop()
        if self._thread is not None and start_if_absent(self.tmp_dir, self.command, self._errors):
            self.started += 1

    def after_fork_in_child(self) -> None:
        # The thread is the parent's; a forked child (a data-loader worker) does not watch.
        self._thread = None
        self._stop = threading.Event()
        self._stop.set()

    def _run(self) -> None:
        seen = time.monotonic()
        grace = self._grace
        while not self._stop.wait(self._every):
            now = time.monotonic()
            if aggregator_alive(self.tmp_dir):
                seen = now
                grace = self._grace_after_seen
                continue
            if now - seen < grace or self._stop.is_set():
                continue
            seen = now  # give the successor (or another rank's) time to take the lock
            grace = self._grace  # a successor starting under load may take a while
            if start_if_absent(self.tmp_dir, self.command, self._errors):
                self.started += 1
