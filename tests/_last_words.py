"""A simulated rank for the tests of a job's end: crashes, kills, early exits, children holding the pipes."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["crash", "until", "children"])
    parser.add_argument("--dir", required=True, help="a directory the ranks share")
    parser.add_argument("--plain", action="store_true", help="stdlib logging only (the baseline without nvrxlog)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--child-seconds", type=float, default=3.0)
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    shared = Path(args.dir)
    if args.plain:
        logging.basicConfig(level=logging.INFO)
        log = logging.getLogger("plain")
    else:
        from nvrxlog import setup_logger

        log = setup_logger(capture=os.environ.get("TEST_CAPTURE") or None)

    if args.mode == "crash":
        # Rank 0 fails at step 50; the others are in a "collective" that fails once rank 0 is gone.
        if rank == 0:
            # Renamed into place, so the others never read it half-written (empty).
            (shared / "rank0.pid.tmp").write_text(str(os.getpid()))
            (shared / "rank0.pid.tmp").rename(shared / "rank0.pid")
        for step in range(args.steps):
            log.info("r%d step %d", rank, step)
            if step == 50:
                if rank == 0:
                    raise RuntimeError("rank 0 diverged at step 50")
                deadline = time.monotonic() + 60
                while not (shared / "rank0.pid").exists() or psutil.pid_exists(int((shared / "rank0.pid").read_text())):
                    if time.monotonic() > deadline:
                        sys.exit("rank 0 never went away")
                    time.sleep(0.02)
                raise TimeoutError(f"rank {rank}: allreduce timed out, rank 0 is gone")
    elif args.mode == "until":
        # Log at ~200 records/s until <dir>/stop (or stop.<rank>) exists, then one last line.
        i = 0
        deadline = time.monotonic() + 300  # a test that failed before stopping it must not leave it running
        while not (shared / "stop").exists() and not (shared / f"stop.{rank}").exists():
            if time.monotonic() > deadline:
                sys.exit("never told to stop")
            log.info("r%d i%d", rank, i)
            i += 1
            time.sleep(0.005)  # pacing the load
        (shared / f"count.{rank}").write_text(str(i))
        log.info("r%d last", rank)
    else:
        # A child that inherits stdout/stderr (the capture pipes) and outlives this rank,
        # like persistent data-loader workers or a tool started in the background.
        code = (
            "import time\n"
            f"for i in range({int(args.child_seconds * 5)}):\n"
            "    print('child line', i, flush=True)\n"
            "    time.sleep(0.2)\n"
            "print('child done', flush=True)\n"
        )
        subprocess.Popen([sys.executable, "-c", code])
        log.info("r%d started a child that outlives me", rank)


if __name__ == "__main__":
    main()
