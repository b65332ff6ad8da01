"""NodeAggregator: tail every writer, merge by time, write the per-node file (and forward it).

The service around the node's stages: its lifecycle, its thread and the
cycle that chains them. ``writers`` (with ``scanner``) finds writers' files,
``tail`` reads each writer's records (``core/cursor`` de-duplicates them and
finds gaps), ``merge`` holds them back for the time-ordered merge, ``notices``
adds the aggregator's own lines, and ``output`` writes and checkpoints the
per-node file. When forwarding (``forwarding``), each written batch is spooled
for the ``wire`` forwarder before the checkpoint that covers it. At a rank's
exit, ``handover`` starts a successor that goes on where this one stopped.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

from nvrxlog.config import DEFAULT_LOG_DIR, LogConfig, sanitize_name
from nvrxlog.core import forks
from nvrxlog.core.record import WriterId
from nvrxlog.core.report import ErrorCounter, describe
from nvrxlog.core.service import Service
from nvrxlog.core.tmpdir import AggregatorLock, prepare_tmp_dir
from nvrxlog.core.watermark import INF, clock_stepped_back, handed_over
from nvrxlog.errors import ConfigError, LifecycleError, OutputError
from nvrxlog.node.backlog import MAX_HELD_BYTES, MAX_HELD_RECORDS, PROBE_RECORDS, Backlog
from nvrxlog.node.forwarding import Forwarding
from nvrxlog.node.handover import (
    IDLE_EXIT_S,
    QuietClock,
    left_behind_text,
    start_successor,
    successor_command,
    successor_needed,
)
from nvrxlog.node.merge import HoldBack
from nvrxlog.node.notices import Notices
from nvrxlog.node.output import NodeOutput
from nvrxlog.node.writers import Writers

if TYPE_CHECKING:
    from nvrxlog.wire.curve import CurveKeys
    from nvrxlog.wire.forwarder import Forwarder

__all__ = ["NodeAggregator", "node_log_path"]


def node_log_path(log_dir: str, node_id: str) -> str:
    """Where the per-node file of ``node_id`` lives."""
    return os.path.join(log_dir, f"nvrx_log_{sanitize_name(node_id)}.log")


class NodeAggregator(Service):
    """Merges every rank's temp files on this node into one per-node file.

    ``start()`` takes the tmpdir's lock (one aggregator per tmpdir) and runs a
    daemon thread; ``stop(drain=True)`` returns once every record written
    before the call is in the per-node file. Usable as a context manager.
    With ``exit_when_idle`` (a successor) it stops by itself once every
    writer on the node is gone and everything is written and delivered;
    ``lock_wait`` is how long ``start()`` waits for the tmpdir's lock.
    While the per-node file cannot be written, reading stops once
    ``max_held`` records or ``max_held_bytes`` wait in memory (see ``node/backlog.py``).
    """

    def __init__(
        self,
        tmp_dir: str,
        log_dir: str | None = None,
        node_id: str | None = None,
        streamer: str | None = None,
        *,
        json: bool = False,
        merge_window: float = 0.1,
        idle_interval: float = 0.05,
        busy_interval: float = 0.005,
        checkpoint_interval: float = 0.1,
        spool_max_bytes: int = 1 << 30,
        warn_after: float = 30.0,
        drain_timeout: float = 10.0,
        curve: CurveKeys | None = None,
        exit_when_idle: bool = False,
        lock_wait: float = 1.0,
        max_held: int = MAX_HELD_RECORDS,
        max_held_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        if merge_window < 0 or idle_interval <= 0 or busy_interval < 0 or checkpoint_interval < 0:
            raise ConfigError("intervals and the merge window must not be negative")
        config = LogConfig.from_env() if node_id is None or log_dir is None else None
        self.tmp_dir = os.path.abspath(tmp_dir)
        self.log_dir = os.path.abspath(log_dir or (config.log_dir if config else DEFAULT_LOG_DIR))
        self.node_id = sanitize_name(node_id) if node_id else config.node_id  # type: ignore[union-attr]
        self.streamer = streamer
        self.out_path = node_log_path(self.log_dir, self.node_id)
        # Next to the file it describes, not in the tmpdir: when the tmpdir is
        # full the checkpoint must still be saved, or no consumed file is ever
        # deleted and the space never comes back.
        self.checkpoint_path = os.path.join(self.log_dir, f".nvrx_log_{self.node_id}.ckpt")
        self.started = threading.Event()
        self.stats: Counter[str] = Counter()
        self.errors = ErrorCounter(f"aggregator {self.node_id}")
        self.json = json
        self._window_ns = int(merge_window * 1e9)
        self._idle_s = idle_interval
        self._busy_s = busy_interval
        self._forwarding: Forwarding | None = None
        self._forward_options = {"spool_max_bytes": spool_max_bytes, "warn_after": warn_after, "curve": curve}
        self._drain_timeout = drain_timeout
        self._wake = threading.Event()
        self._stopping = False
        self._drain = True
        self._thread: threading.Thread | None = None
        self._owner_pid = os.getpid()
        self._lock = AggregatorLock()
        self._lock.wait_s = lock_wait
        self._exit_when_idle = exit_when_idle
        self._quiet = QuietClock(time.monotonic())
        #: The detached process that took over at stop(hand_over=True), if one did.
        self.successor: object | None = None
        self._notices = Notices(self.stats)  # the forwarder's thread adds too
        self._writers = Writers(self.tmp_dir, self._notices.add, self.errors, self.stats)
        self._out = NodeOutput(
            self.out_path,
            self.checkpoint_path,
            self.node_id,
            json=json,
            checkpoint_interval_ns=int(checkpoint_interval * 1e9),
            writers=self._writers,
            errors=self.errors,
            stats=self.stats,
            notice_key=self._notices.key,
        )
        #: Records written per rank and per level: the summary a service prints at exit.
        self.per_rank = self._out.per_rank
        self.levels = self._out.levels
        self._held = HoldBack()
        self._backlog = Backlog(max_held, max_held_bytes)
        self._failure: BaseException | None = None
        forks.register(self)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> NodeAggregator:
        """Take the tmpdir's lock, recover from the checkpoint and start the thread.

        Raises ``TmpDirError`` for an unusable tmpdir, ``OutputError`` for an
        unusable log dir or per-node file, and ``AggregatorBusyError`` when
        another aggregator serves the tmpdir.
        """
        if self._thread is not None:
            raise LifecycleError("NodeAggregator.start() called twice")
        self.tmp_dir = prepare_tmp_dir(self.tmp_dir)
        self._writers.moved(self.tmp_dir)
        try:
            os.makedirs(self.log_dir, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create log dir {self.log_dir}: {exc.strerror}") from exc
        self._lock.take(self.tmp_dir)
        try:
            self._out.open(self._notices.add)
        except BaseException:
            self._out.file.close()
            self._lock.release()
            raise
        if self.streamer:
            # Forwarding is optional: a problem with it is reported, the per-node file goes on.
            spool = os.path.join(self.log_dir, f".nvrx_spool_{self.node_id}")
            self._forwarding = Forwarding(
                self.streamer,
                self.node_id,
                spool,
                notice=self._notices.add,
                errors=self.errors,
                stats=self.stats,
                **self._forward_options,
            )
            self._forwarding.start()
        self._thread = threading.Thread(target=self._run, name=f"nvrxlog-aggregator-{self.node_id}", daemon=True)
        self._thread.start()
        self.started.set()
        return self

    def writer_closed(self, writer: WriterId) -> None:
        """Tell the aggregator that ``writer`` (a handler in this process) wrote its last record."""
        self._writers.closed.add(str(writer))

    def stop(
        self, drain: bool = True, timeout: float | None = None, hand_over: bool = False, last: bool = False
    ) -> bool:
        """Stop the thread; with ``drain``, first write everything logged so far.

        With ``hand_over`` (a rank that hosts the aggregator is exiting), the
        node's aggregation goes on without this process: if any other writer
        on the node is alive, or the streamer has not acknowledged
        everything, a detached successor (``nvrxlog aggregate --until-idle``)
        takes the tmpdir's lock as soon as this one lets go of it, and this
        call does not wait for the network. With ``last`` (a service's end:
        no aggregator follows), writers still alive are named in the file.
        Returns True when the thread has finished. Safe to call twice, and a no-op in a forked child (the
        thread belongs to the parent).
        """
        if self._thread is None or os.getpid() != self._owner_pid:
            return True
        self._drain = drain
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Still draining when the wait ran out. The thread keeps its
            # forwarder and output (taking them now would pull them from under
            # it); at a hand-over the lock goes with this process, and a
            # successor waiting for it writes what is left.
            self.errors.once(f"the node aggregator did not finish draining within {timeout}s")
            if hand_over:
                self.successor = start_successor(self.successor_command(), self.errors)
            return False
        successor = None
        if (
            hand_over
            and self._failure is None
            and successor_needed(self.live_writers(), self._forwarder, self._spool_waiting())
        ):
            successor = start_successor(self.successor_command(), self.errors)
        if successor is None and (hand_over or last):
            self.note_left_behind()
        forwarding, self._forwarding = self._forwarding, None
        if forwarding is not None:
            # Everything written is spooled. A successor resends what is not
            # acknowledged yet; without one, wait a bounded time for the streamer.
            timeout = 0.2 if successor is not None else self._drain_timeout if drain else 0.0
            forwarding.stop(timeout, report=successor is None)
        # Only now: a successor must not open the spool while our forwarder still uses it.
        self._out.file.close()
        self._lock.release()
        self.successor = successor
        return True

    def successor_command(self) -> list[str]:
        """The command line of a process that can take this node's aggregation over."""
        curve = self._forward_options["curve"]
        return successor_command(self.tmp_dir, self.log_dir, self.node_id, self.streamer, curve, json=self.json)

    def live_writers(self) -> list[WriterId]:
        """Writers on the node that were alive at the last look (after a drain: still writing)."""
        return self._writers.live()

    def note_left_behind(self) -> list[WriterId]:
        """After a drain that no successor follows: say what writers still alive may leave in the tmpdir.

        The per-node file gets a line and stderr gets it once; returns those writers.
        """
        live = self.live_writers()
        if live:
            text = left_behind_text(live, self.tmp_dir, self.log_dir, self.node_id)
            self.errors.once(text)
            self._out.write_last(self._notices.last(text))  # if the file cannot take it, stderr has it
        return live

    @property
    def backlog(self) -> int:
        """Records read from the temp files but not yet in the per-node file."""
        return len(self._held)

    @property
    def _forwarder(self) -> Forwarder | None:
        return self._forwarding.forwarder if self._forwarding is not None else None

    # -- the loop --------------------------------------------------------------------

    def _run(self) -> None:
        delay = self._busy_s
        try:
            while not self._stopping:
                try:
                    got = self._cycle(final=False)
                except Exception as exc:  # never let the thread die silently
                    self.errors.report(type(exc).__name__, f"cycle failed: {describe(exc)}")
                    got = False
                    delay = self._idle_s
                delay = self._busy_s if got else min(max(delay * 2, 0.001), self._idle_s)
                wait = delay
                # While writes fail, held records are overdue: retry at the idle pace, not at once.
                if self._held and not self._out.failing:
                    due = (self._held.oldest + self._window_ns - time.time_ns()) / 1e9
                    wait = min(wait, max(due, 0.0005))
                self._wake.wait(wait)
                self._wake.clear()
                if self._exit_when_idle and self._idle_for(got) >= IDLE_EXIT_S:
                    self._stopping = True  # every writer is gone and everything is written
            if self._drain:
                # A drain takes everything, in bounded steps.
                self._cycle(final=True)
                # Unless the file cannot be written: what is unread stays safe in the tmpdir.
                while self._writers.more and not self._stuck():
                    self._cycle(final=True)
        except BaseException as exc:
            self._failure = exc
            self.errors.report("fatal", f"stopped after an unexpected error: {describe(exc)}")
        finally:
            self._writers.close()
            if self._failure is not None:
                self._out.file.close()
                self._lock.release()

    def _spool_waiting(self) -> int:
        return self._forwarding.waiting if self._forwarding is not None else 0

    def _stuck(self) -> bool:
        # The per-node file or the spool cannot take records now.
        return self._out.failing or self._spool_waiting() > 0

    def _idle_for(self, got: bool) -> float:
        """Seconds since the node last had a live writer or anything left to write or deliver."""
        now = time.monotonic()
        forwarder = self._forwarder
        unsent = forwarder is not None and forwarder.spool.pending_batches and not self._quiet.gave_up(now)
        return self._quiet.quiet_for(bool(got or self._held or self._notices or self._writers.busy or unsent), now)

    def _cycle(self, *, final: bool) -> bool:
        now = time.time_ns()
        forwarding = self._forwarding
        if forwarding is not None:
            mono = time.monotonic()
            forwarding.check(mono)
            forwarding.flush(mono)
        self._writers.scan(now, force=final)
        batch: list[tuple] = []
        cutoff = INF if final else now - self._window_ns
        held = self._held
        backlog = self._backlog
        paused = backlog.paused(len(held) + self._spool_waiting(), write_failing=self._stuck(), now=now)
        if paused:
            # Tails not read now may hold records from before the cutoff:
            # nothing read since the last full read is safe to write either.
            cutoff = min(cutoff, backlog.read_all_at - self._window_ns)
        read, limit, died = self._writers.read(batch, now, final=final, paused=paused, oldest=held.oldest)
        cutoff = min(cutoff, limit)
        backlog.read(read, len(batch))
        out = self._out
        if died:
            out.unsaved = True  # their finished files wait for a checkpoint
        held.add(batch)
        if self._notices:
            held.add(self._notices.take(now))
        if clock_stepped_back(held.oldest, now, self._window_ns):
            cutoff = INF  # by arrival: waiting for the clock to catch up would hold them for the step's length
            self._writers.clock_stepped_back(now)
            self._notices.add(
                f"the clock stepped back by about {(held.oldest - now) / 1e9:.0f}s; records held across "
                "the step are written in the order they arrived"
            )
        ready = held.take(cutoff)
        if ready and out.failing and len(ready) > PROBE_RECORDS:
            held.put_back(ready[PROBE_RECORDS:])
            ready = ready[:PROBE_RECORDS]
            cutoff = held.oldest - 1  # what is promised downstream: only what is written
        if ready and not out.write(ready, handed_over(cutoff, INF, now), forwarding):
            # The file is as it was: hold the records again, so the retry neither loses nor doubles them.
            held.put_back(ready)
        waiting = self._spool_waiting()
        if self._forwarder is not None and not waiting:
            # Everything up to the cutoff is out; held (or put back) records are not.
            self._forwarder.watermark = handed_over(cutoff, held.oldest, now)
        out.checkpoint(now, final=final, spooling=waiting > 0, sync=self._sync_spool, forwarding=forwarding)
        return bool(read)

    def _sync_spool(self) -> None:
        forwarder = self._forwarder
        if forwarder is not None:
            forwarder.spool.sync()

    def after_fork_in_child(self) -> None:
        """Drop the parent's descriptors without unlocking: the thread did not survive the fork."""
        self._lock.forget_after_fork()
        self._out.file.forget_after_fork()
        self._writers.close()
