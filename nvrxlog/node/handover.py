"""Handing the node's aggregation to a detached successor when its host process goes.

The aggregator runs as a thread in local rank 0, but the node's other
writers (ranks, data-loader workers, the capture helper) may outlive it. A
successor is ``nvrxlog aggregate --until-idle --take-over`` in a session of
its own: it waits for the tmpdir's lock (the one-aggregator rule holds at
every moment), resumes from the checkpoint (so the hand-over loses and
doubles nothing), and exits once every writer is gone and everything is
written and delivered. Under SLURM the step's SIGTERM makes it drain and exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nvrxlog.core.record import WriterId
    from nvrxlog.wire.curve import CurveKeys

__all__ = ["left_behind_text", "spawn_successor", "successor_command"]

# How long a successor waits for the tmpdir's lock: its predecessor lets go
# after its last drain, which takes a fraction of this.
TAKE_OVER_WAIT_S = 30.0


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


def left_behind_text(live: list[WriterId], tmp_dir: str, log_dir: str, node_id: str) -> str:
    """What to say when no successor follows and writers still ``live`` may log more into ``tmp_dir``."""
    names = ", ".join(str(w) for w in live[:8]) + (" ..." if len(live) > 8 else "")
    return (
        f"{len(live)} writer(s) still alive may log more into {tmp_dir} ({names}); no aggregator "
        f"will take it: run `nvrxlog aggregate --tmp-dir {tmp_dir} --log-dir {log_dir} "
        f"--node-id {node_id} --once` on this node to write it"
    )
