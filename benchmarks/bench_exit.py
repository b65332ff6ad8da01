"""What does nvrxlog add to the end of a job, and how fast do the last lines land?

A 4-rank job on one node (plain processes, thread mode, capture all) is run
with nvrxlog and, in the same run, with the standard library's logging only;
the table gives the wall time of each until every rank has exited, for a
normal end, local rank 0 crashing at step 50 (the others fail once it is
gone), and ranks whose child processes still hold stdout/stderr at exit.
Then: local rank 0 exits while the others keep logging; how long from a
rank's last record to its line in the per-node file (a successor writes it).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

from benchmarks._table import cli, machine, table

_RANK = r"""
import logging, os, subprocess, sys, time
mode, plain, shared = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
rank = int(os.environ["RANK"])
if plain:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    log = logging.getLogger("job")
else:
    from nvrxlog import setup_logger
    log = setup_logger(capture="all")
if mode == "children":
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
for step in range(60):
    log.info("rank %d step %d", rank, step)
    time.sleep(0.002)
    if mode == "crash" and step == 50:
        if rank == 0:
            open(os.path.join(shared, "crashed"), "w").close()
            raise RuntimeError("rank 0 diverged")
        while not os.path.exists(os.path.join(shared, "crashed")):
            time.sleep(0.005)
        time.sleep(0.2)  # the collective notices its peer is gone
        raise TimeoutError("allreduce: rank 0 is gone")
if mode == "late":
    if rank != 0:
        time.sleep(1.0)  # rank 0 is gone by now
        log.info("rank %d last line %d", rank, time.time_ns())
"""


def _start(work: str, mode: str, plain: bool, ranks: int = 4) -> list[subprocess.Popen]:
    shared = os.path.join(work, "shared")
    os.makedirs(shared, exist_ok=True)
    env = dict(
        os.environ,
        NVRX_NODE_LOCAL_TMPDIR=os.path.join(work, "tmp"),
        NVRX_LOG_DIR=os.path.join(work, "logs"),
        NVRX_NODE_ID="bench",
    )
    return [
        subprocess.Popen(
            [sys.executable, "-c", _RANK, mode, "1" if plain else "0", shared],
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for r in range(ranks)
    ]


def _job(work: str, mode: str, plain: bool) -> float:
    """Seconds until every rank of a 4-rank job has exited."""
    start = time.monotonic()
    for proc in _start(work, mode, plain):
        proc.wait(timeout=120)
    return time.monotonic() - start


def _last_line_latency(work: str) -> float:
    """Seconds from a rank's last record (logged after rank 0 left) to its line in the per-node file."""
    shared = os.path.join(work, "shared")
    os.makedirs(shared, exist_ok=True)
    path = os.path.join(work, "logs", "nvrx_log_bench.log")
    procs = _start(work, "late", plain=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not os.path.exists(path):
            time.sleep(0.01)
            continue
        with open(path, encoding="utf-8") as f:
            stamps = [int(line.rsplit(" ", 1)[1]) for line in f if " last line " in line]
        if len(stamps) == 3:
            # Seen by a reader polling every 10 ms, as `tail -f` would.
            latency = time.time() - max(stamps) / 1e9
            break
        time.sleep(0.01)  # polling the file as a reader would
    else:
        latency = float("nan")
    for proc in procs:
        proc.wait(timeout=60)
    return latency


def _wait_for_successor(tmp: str, timeout: float = 30.0) -> None:
    """Until no aggregator serves ``tmp`` (a successor exits once the ranks are gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(tmp in (p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
            return
        time.sleep(0.05)


def report(quick: bool) -> str:
    """Exit times with and without nvrxlog, and the late-line latency, as a markdown table."""
    runs = 1 if quick else 3
    rows = []
    jobs = (("normal", "normal end"), ("crash", "rank 0 crashes at step 50"), ("children", "children hold the pipes"))
    for mode, title in jobs:
        times = {True: [], False: []}
        for _ in range(runs):
            for plain in (True, False):
                work = tempfile.mkdtemp(prefix="nvrxlog-bench-exit-")
                try:
                    times[plain].append(_job(work, mode, plain))
                finally:
                    _wait_for_successor(os.path.join(work, "tmp"))
                    shutil.rmtree(work, ignore_errors=True)
        base, ours = statistics.median(times[True]), statistics.median(times[False])
        rows.append([title, f"{base:.2f} s", f"{ours:.2f} s", f"+{ours - base:.2f} s"])
    work = tempfile.mkdtemp(prefix="nvrxlog-bench-exit-")
    try:
        latency = _last_line_latency(work)
    finally:
        _wait_for_successor(os.path.join(work, "tmp"))
        shutil.rmtree(work, ignore_errors=True)
    text = f"job exit, 4 ranks, capture all ({machine()})\n\n"
    text += table(["job", "stdlib logging", "nvrxlog", "difference"], rows)
    text += f"\n\nlast record of a rank -> its line in the per-node file after rank 0 left: {latency * 1e3:.0f} ms"
    return text


if __name__ == "__main__":
    cli(__doc__, report)
