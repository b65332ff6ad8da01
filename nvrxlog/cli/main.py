"""The command line: ``nvrxlog aggregate | stream | tail | demo``.

Argument parsing, exit codes and one-line errors live here; the work is done
by the same classes the Python API exposes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from nvrxlog.errors import ConfigError, NvrxLogError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"nvrxlog: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nvrxlog", description="Per-node log aggregation for training jobs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    agg = sub.add_parser(
        "aggregate",
        help="run the node aggregator service",
        description="Merge every rank's temp files in --tmp-dir into the per-node file in --log-dir. "
        "Runs until SIGTERM/SIGINT or until --wait-file exists, then drains and exits 0.",
    )
    agg.add_argument("--tmp-dir", required=True, help="node-local temp dir (NVRX_NODE_LOCAL_TMPDIR)")
    agg.add_argument("--log-dir", required=True, help="where nvrx_log_<node>.log is written")
    agg.add_argument("--node-id", help="node name (default: NVRX_NODE_ID, SLURMD_NODENAME, hostname)")
    agg.add_argument("--streamer", help="tcp://HOST:PORT of the central streamer to forward to")
    agg.add_argument("--wait-file", help="drain and exit once this file exists")
    agg.add_argument("--json", action="store_true", help="write JSON lines instead of text")
    agg.add_argument("--spool-max-mb", type=float, default=1024, help="on-disk spool limit while forwarding")
    agg.add_argument("--warn-after", type=float, default=30.0, help="seconds without a streamer before one warning")
    agg.set_defaults(func=_aggregate)

    stream = sub.add_parser(
        "stream",
        help="run the central streamer",
        description="Receive every node's records, write the cluster-wide file and serve live views. "
        "Runs until SIGTERM/SIGINT, then flushes and exits 0.",
    )
    stream.add_argument("--bind", required=True, help="tcp://HOST:PORT to listen on (port 0: any free port)")
    stream.add_argument("--out", required=True, help="the cluster-wide log file")
    stream.add_argument("--json", action="store_true", help="write JSON lines instead of text")
    stream.add_argument("--forward", help="relay: also pass everything to this upstream streamer")
    stream.add_argument("--name", default="streamer", help="this streamer's name in its own lines")
    stream.add_argument("--idle-timeout", type=float, default=10.0, help="seconds before a silent node is gone")
    stream.add_argument(
        "--max-hold",
        type=float,
        default=1.0,
        help="seconds a lagging node may hold the others back before its lines are written late",
    )
    stream.add_argument("--curve-secret-key", help="server key file (zmq.auth): turns CurveZMQ on")
    stream.add_argument("--curve-clients-dir", help="directory of allowed client public keys")
    stream.add_argument("--forward-curve-server-key", help="upstream's public key file (with --forward)")
    stream.add_argument("--forward-curve-client-key", help="this relay's secret key file (with --forward)")
    stream.set_defaults(func=_stream)

    tail = sub.add_parser(
        "tail",
        help="live view of a running streamer",
        description="Print the streamer's records as they are written, filtered.",
    )
    tail.add_argument("--connect", required=True, help="the streamer's tcp://HOST:PORT")
    tail.add_argument("--ranks", help="only these ranks, e.g. 0-7,12 (workload rank, else infra rank)")
    tail.add_argument("--level", help="only this level and above, e.g. WARNING")
    tail.add_argument("--dedup", action="store_true", help="fold lines repeated across ranks into one")
    tail.add_argument("--dedup-window", type=float, default=1.0, help="seconds of lines folded together")
    tail.add_argument("--count", type=int, help="exit after printing this many lines")
    tail.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the streamer to answer")
    tail.set_defaults(func=_tail)

    demo = sub.add_parser(
        "demo",
        help="run a small simulated job on this machine",
        description="Simulated nodes with several ranks each, an aggregator per node; prints where the outputs are.",
    )
    demo.add_argument("--dir", help="work directory (default: a new temp directory)")
    demo.add_argument("--nodes", type=int, default=2)
    demo.add_argument("--ranks", type=int, default=4, help="ranks per node")
    demo.add_argument("--steps", type=int, default=50)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NvrxLogError as exc:
        print(f"nvrxlog: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _wait_for_stop(wait_file: str | None, alive: Callable[[], bool] = lambda: True) -> None:
    """Block until SIGTERM/SIGINT, until ``wait_file`` exists, or until ``alive()`` turns false."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A file (or a thread's death) has no event to wait on; checking twice a second is cheap.
    while not stop.wait(0.5):
        if wait_file and os.path.exists(wait_file):
            return
        if not alive():
            return


def _aggregate(args: argparse.Namespace) -> int:
    from nvrxlog.node.aggregator import NodeAggregator

    if args.spool_max_mb <= 0 or args.warn_after < 0:
        raise ConfigError("--spool-max-mb must be positive and --warn-after not negative")
    aggregator = NodeAggregator(
        args.tmp_dir,
        args.log_dir,
        args.node_id,
        args.streamer,
        json=args.json,
        spool_max_bytes=int(args.spool_max_mb * (1 << 20)),
        warn_after=args.warn_after,
    )
    aggregator.start()
    try:
        _wait_for_stop(args.wait_file, lambda: aggregator.running)
    finally:
        aggregator.stop(drain=True)
    if aggregator.failure is not None:
        raise NvrxLogError(f"the aggregator stopped after an unexpected error: {aggregator.failure!r}")
    return 0


def _stream(args: argparse.Namespace) -> int:
    from nvrxlog.streamer.service import Streamer
    from nvrxlog.wire.curve import CurveKeys

    forward_curve = None
    if args.forward_curve_server_key or args.forward_curve_client_key:
        if not (args.forward_curve_server_key and args.forward_curve_client_key):
            raise ConfigError("--forward-curve-server-key and --forward-curve-client-key go together")
        forward_curve = CurveKeys(
            server_public=args.forward_curve_server_key, client_secret=args.forward_curve_client_key
        )
    streamer = Streamer(
        args.bind,
        args.out,
        json=args.json,
        forward=args.forward,
        name=args.name,
        idle_timeout=args.idle_timeout,
        max_hold=args.max_hold,
        curve_secret_key=args.curve_secret_key,
        curve_clients_dir=args.curve_clients_dir,
        forward_curve=forward_curve,
    )
    streamer.start()
    print(f"nvrxlog stream: listening on {streamer.endpoint}, writing {streamer.out_path}", flush=True)
    try:
        _wait_for_stop(None, lambda: streamer.running)
    finally:
        streamer.stop()
    if streamer.failure is not None:
        raise NvrxLogError(f"the streamer stopped after an unexpected error: {streamer.failure!r}")
    return 0


def _tail(args: argparse.Namespace) -> int:
    from nvrxlog.cli.tail import run_tail

    return run_tail(args)


def _demo(args: argparse.Namespace) -> int:
    from nvrxlog.cli.demo import run_demo

    return run_demo(args.dir, nodes=args.nodes, ranks=args.ranks, steps=args.steps)
