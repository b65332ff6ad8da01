"""``nvrxlog tail``: subscribe to a streamer's live records and print them."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

import orjson
import zmq

from nvrxlog.cli.view import Folder, RecordFilter, parse_ranks
from nvrxlog.core.lines import LineFormat
from nvrxlog.errors import ConfigError, TransportError
from nvrxlog.wire.protocol import INFO, TAIL

__all__ = ["run_tail"]


def _pub_endpoint(context: zmq.Context, connect: str, timeout: float) -> str:
    """Ask the streamer (on its main address) where its live PUB socket is."""
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(connect)
        sock.send_multipart([TAIL])
        if not sock.poll(timeout * 1000):
            raise TransportError(f"no streamer answered at {connect} within {timeout:.0f}s")
        frames = sock.recv_multipart()
        if frames[0] != INFO:
            raise TransportError(f"unexpected answer from {connect}")
        pub = orjson.loads(frames[1])["pub"]
    finally:
        sock.close()
    # The streamer reports the address it bound (maybe 0.0.0.0): reach it by the host we used.
    host = connect.rsplit(":", 1)[0]
    return f"{host}:{pub.rsplit(':', 1)[1]}" if pub.startswith("tcp://") else pub


def run_tail(args: argparse.Namespace) -> int:
    """Print filtered live records until interrupted (or ``--count`` lines)."""
    ranks = parse_ranks(args.ranks) if args.ranks else None
    level = logging.NOTSET
    if args.level:
        level = logging.getLevelName(args.level.upper())
        if not isinstance(level, int):
            raise ConfigError(f"unknown level {args.level!r}")
    keep = RecordFilter(ranks, level)
    lines = LineFormat()
    folder = Folder(lines) if args.dedup else None
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    context = zmq.Context()
    printed = 0
    try:
        sub = context.socket(zmq.SUB)
        sub.linger = 0
        sub.connect(_pub_endpoint(context, args.connect, args.timeout))
        sub.subscribe(b"rec")
        next_fold = time.monotonic() + args.dedup_window
        while not stop and (args.count is None or printed < args.count):
            out: list[str] = []
            if sub.poll(100):
                _, payload = sub.recv_multipart()
                for record in orjson.loads(payload):
                    if keep(record):
                        if folder is not None:
                            folder.add(record)
                        else:
                            out.append(lines.line(record, str(record.get("node", "?"))))
            if folder is not None and time.monotonic() >= next_fold:
                out.extend(folder.flush())
                next_fold = time.monotonic() + args.dedup_window
            for line in out:
                sys.stdout.write(line if line.endswith("\n") else line + "\n")
                printed += 1
                if args.count is not None and printed >= args.count:
                    break
            sys.stdout.flush()
    finally:
        context.destroy(linger=0)
    return 0
