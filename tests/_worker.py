"""A simulated rank used by the tests: logs through setup_logger() and exits."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--pad", type=int, default=0, help="extra characters per message")
    parser.add_argument("--rate", type=float, default=0.0, help="records/s; 0 is flat out")
    parser.add_argument("--done-dir", help="create <done-dir>/<rank> when finished logging")
    parser.add_argument("--wait-ranks", type=int, default=0, help="wait for this many done files before exiting")
    parser.add_argument("--traceback", action="store_true", help="also log one exception")
    parser.add_argument("--big", type=int, default=0, help="also log one message of N 2-byte characters, halfway")
    parser.add_argument("--hang", action="store_true", help="after the done file, wait to be killed")
    args = parser.parse_args()

    from nvrxlog import setup_logger

    log = setup_logger()
    rank = os.environ.get("RANK", "?")
    pad = "x" * args.pad
    interval = 1.0 / args.rate if args.rate else 0.0
    next_at = time.monotonic()
    for i in range(args.count):
        log.info("r%s i%d %s", rank, i, pad)
        if args.big and i == args.count // 2:
            log.info("r%s big %s", rank, "é" * args.big)
        if interval:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the load, not synchronisation
    if args.traceback:
        try:
            raise ValueError(f"boom from rank {rank}")
        except ValueError:
            log.exception("r%s failed", rank)
    if args.done_dir:
        Path(args.done_dir, rank).touch()
    if args.hang:
        signal.pause()
    if args.wait_ranks:
        deadline = time.monotonic() + 120
        while len(os.listdir(args.done_dir)) < args.wait_ranks:
            if time.monotonic() > deadline:
                sys.exit("timed out waiting for the other ranks")
            time.sleep(0.01)


if __name__ == "__main__":
    main()
