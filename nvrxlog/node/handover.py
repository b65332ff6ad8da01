"""Handing the node's aggregation to a detached successor when its host process goes.

The aggregator runs as a thread in local rank 0, but the node's other
writers (ranks, data-loader workers, the capture helper) may outlive it. A
successor is ``nvrxlog aggregate --until-idle --take-over`` in a session of
its own: it waits for the tmpdir's lock (the one-aggregator rule holds at
every moment), resumes from the checkpoint (so the hand-over loses and
doubles nothing), and exits once every writer is gone and everything is
written and delivered. Under SLURM the step's SIGTERM makes it drain and exit.

Here: the successor's command line and its start, what to say when no
successor follows, and the successor's own end (``QuietClock``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nvrxlog.core.record import WriterId
    from nvrxlog.core.report import ErrorCounter
    from nvrxlog.wire.curve import CurveKeys
    from nvrxlog.wire.forwarder import Forwarder

__all__ = [
    "IDLE_EXIT_S",
    "QuietClock",
    "left_behind_text",
    "spawn_successor",
    "start_successor",
    "successor_command",
    "successor_needed",
]

# How long a successor waits for the tmpdir's lock: its predecessor lets go
# after its last drain, which takes a fraction of this.
TAKE_OVER_WAIT_S = 30.0
#: A successor stops once no writer has lived and nothing was left for this long.
IDLE_EXIT_S = 1.0
# A successor does not wait for a streamer forever: past this, records stay spooled (and it says so).
_SPOOL_PATIENCE_S = 60.0


def successor_command(
    tmp_dir: str,
    log_dir: str,
    node_id: str,
    streamer: str | None,
    curve: CurveKeys | None,
    *,
    json: bool = False,
) -> list[str]:
    """The command line of a successor for this node."""
    command = [sys.executable, "-m", "nvrxlog", "aggregate", "--tmp-dir", tmp_dir, "--log-dir", log_dir]
    command += ["--node-id", node_id, "--until-idle", "--take-over"]
    if streamer:
        command += ["--streamer", streamer]
    if curve is not None:
        command += ["--curve-server-key", curve.server_public, "--curve-client-key", curve.client_secret]
    if json:
        command.append("--json")
    return command


def spawn_successor(command: list[str]) -> subprocess.Popen:
    """Start a detached successor; raises OSError if it cannot be started.

    It holds none of the rank's descriptors: not a capture pipe (the capture
    helper would wait for it), nor the job's stdout/stderr (whoever reads
    them, a pipe to ``tee`` or a test, would wait for it too). What it has to
    say goes into the per-node file.
    """
    env = {k: v for k, v in os.environ.items() if k != "NVRX_LOG_CAPTURE"}
    return subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not stopped with the rank's process group by a Ctrl-C
        close_fds=True,
    )


def successor_needed(live: list[WriterId], forwarder: Forwarder | None, spool_waiting: int) -> bool:
    """Whether the node's aggregation must go on once this process is gone.

    It must while a writer lives (it may log more), or while records are not
    delivered: batches the streamer has not acknowledged, or records still
    waiting for the spool (``spool_waiting``).
    """
    return bool(live) or (forwarder is not None and bool(forwarder.spool.pending_batches or spool_waiting))


def start_successor(command: list[str], errors: ErrorCounter) -> subprocess.Popen | None:
    """Start a detached successor running ``command``; None (reported once in ``errors``) if it cannot start."""
    try:
        return spawn_successor(command)
    except OSError as exc:
        errors.once(f"cannot start a successor aggregator ({exc.strerror})")
        return None


def left_behind_text(live: list[WriterId], tmp_dir: str, log_dir: str, node_id: str) -> str:
    """What to say when no successor follows and writers still ``live`` may log more into ``tmp_dir``."""
    names = ", ".join(str(w) for w in live[:8]) + (" ..." if len(live) > 8 else "")
    return (
        f"{len(live)} writer(s) still alive may log more into {tmp_dir} ({names}); no aggregator "
        f"will take it: run `nvrxlog aggregate --tmp-dir {tmp_dir} --log-dir {log_dir} "
        f"--node-id {node_id} --once` on this node to write it"
    )


class QuietClock:
    """How long a successor's node has been quiet: no live writer, nothing left to write or deliver.

    Times are ``time.monotonic()`` seconds; ``started`` is when the successor was made.
    """

    __slots__ = ("_quiet_since", "_started")

    def __init__(self, started: float) -> None:
        self._started = started
        self._quiet_since: float | None = None

    def gave_up(self, now: float) -> bool:
        """Past its patience, records the streamer has not acknowledged no longer keep a successor running."""
        return now - self._started > _SPOOL_PATIENCE_S

    def quiet_for(self, busy: bool, now: float) -> float:
        """Seconds the node has been quiet, given whether it is ``busy`` now (0 on the first quiet look)."""
        if busy or self._quiet_since is None:
            self._quiet_since = now if not busy else None
            return 0.0
        return now - self._quiet_since
