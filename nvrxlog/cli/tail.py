"""``nvrxlog tail``: subscribe to a streamer's live records and print them.

It says on stderr when it has connected, when the streamer has been silent
past a few of its heartbeats, and when it is heard again; SIGINT and SIGTERM
end it within a fraction of a second in every state. What it prints is
defanged like every output: a record cannot forge a line or drive the terminal.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

import orjson
import zmq

from nvrxlog.cli.view import Folder, RecordFilter, parse_ranks
from nvrxlog.core.lines import LineFormat
from nvrxlog.errors import ConfigError, TransportError
from nvrxlog.wire.endpoint import check_endpoint
from nvrxlog.wire.protocol import INFO, TAIL

__all__ = ["run_tail"]

_SLICE_MS = 100  # every wait is cut into slices this long, so a signal ends it promptly
_SILENT_AFTER = 3.5  # seconds without a record or heartbeat (the streamer beats every second)


def _pub_endpoint(context: zmq.Context, connect: str, timeout: float, stop: threading.Event) -> str | None:
    """Ask the streamer (on its main address) where its live PUB socket is; None if stopped meanwhile."""
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(connect)
        sock.send_multipart([TAIL])
        start = time.monotonic()
        deadline = start + timeout
        waiting_said = False
        while not sock.poll(_SLICE_MS):
            now = time.monotonic()
            if stop.is_set():
                return None
            if now > deadline:
                raise TransportError(f"no streamer answered at {connect} within {timeout:g}s")
            if not waiting_said and now - start >= 1.0 and deadline - now > 1.0:
                # A wait a person notices is said, with how long it may last (a quick failure is just its line).
                waiting_said = True
                _note(f"waiting for the streamer at {connect} to answer (up to {deadline - now:.0f}s more)")
        frames = sock.recv_multipart()
        if frames[0] != INFO or len(frames) < 2:
            raise TransportError(f"unexpected answer from {connect}: is it an nvrxlog streamer?")
        try:
            pub = str(orjson.loads(frames[1])["pub"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TransportError(f"unexpected answer from {connect}: {exc}") from exc
    finally:
        sock.close()
    # The streamer reports the address it bound (maybe 0.0.0.0): reach it by the host we used.
    host = connect.rsplit(":", 1)[0]
    return f"{host}:{pub.rsplit(':', 1)[1]}" if pub.startswith("tcp://") else pub


def _note(text: str) -> None:
    print(f"nvrxlog tail: {text}", file=sys.stderr, flush=True)


def run_tail(args: argparse.Namespace) -> int:
    """Print filtered live records until interrupted (or ``--count`` records)."""
    check_endpoint(args.connect, what="--connect")
    if args.ranks is not None and not args.ranks.strip():
        raise ConfigError("--ranks is empty: use e.g. 0-7,12")
    ranks = parse_ranks(args.ranks) if args.ranks else None
    level = logging.NOTSET
    if args.level:
        level = logging.getLevelName(args.level.upper())
        if not isinstance(level, int):
            raise ConfigError(f"unknown level {args.level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    keep = RecordFilter(ranks, level)
    lines = LineFormat(untrusted=True)
    folder = Folder(lines) if args.dedup else None
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    context = zmq.Context()
    printed = 0
    try:
        pub = _pub_endpoint(context, args.connect, args.timeout, stop)
        if pub is None:
            return 0
        sub = context.socket(zmq.SUB)
        sub.linger = 0
        sub.connect(pub)
        sub.subscribe(b"rec")
        sub.subscribe(b"hb")
        _note(f"connected to {args.connect} (live view at {pub}); Ctrl-C to stop")
        heard = time.monotonic()
        silent = False
        next_fold = time.monotonic() + args.dedup_window
        while not stop.is_set() and (args.count is None or printed < args.count):
            out: list[str] = []
            now = time.monotonic()
            if sub.poll(_SLICE_MS):
                topic, payload = sub.recv_multipart()
                heard = now
                if silent:
                    silent = False
                    _note(f"the streamer at {args.connect} is back")
                if topic == b"rec":
                    for record in orjson.loads(payload):
                        if keep(record):
                            if folder is not None:
                                folder.add(record)
                            else:
                                out.append(lines.line(record, str(record.get("node", "?"))))
            elif not silent and now - heard > _SILENT_AFTER:
                silent = True
                _note(f"the streamer at {args.connect} has been silent for {now - heard:.0f}s; still waiting")
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
