"""The command line: ``nvrxlog aggregate | stream | tail | keys | demo``.

Argument parsing, exit codes and one-line errors live here; the work is done
by the same classes the Python API exposes. Every option a variable names
takes its default from that variable.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from nvrxlog.config import LogConfig
from nvrxlog.errors import ConfigError, NvrxLogError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"nvrxlog: {message}\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action) or ""


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _not_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is less than 1")
    return value


def _build_parser() -> argparse.ArgumentParser:
    from nvrxlog import __version__

    env = LogConfig.from_env()
    parser = _Parser(prog="nvrxlog", description="Per-node log aggregation for training jobs.")
    parser.add_argument("--version", action="version", version=f"nvrxlog {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    agg = sub.add_parser(
        "aggregate",
        help="run the node aggregator service",
        formatter_class=_Help,
        description="Merge every rank's temp files in --tmp-dir into the per-node file in --log-dir "
        "(and forward to a streamer). Runs until SIGTERM/SIGINT or until --wait-file exists, then drains "
        "and exits 0. Options default to the NVRX_* variables the ranks use.",
    )
    agg.add_argument("--tmp-dir", default=env.node_local_tmp_dir, help="node-local temp dir (NVRX_NODE_LOCAL_TMPDIR)")
    agg.add_argument("--log-dir", default=env.log_dir, help="where nvrx_log_<node>.log is written (NVRX_LOG_DIR)")
    agg.add_argument("--node-id", default=env.node_id, help="node name (NVRX_NODE_ID, SLURMD_NODENAME, hostname)")
    agg.add_argument("--streamer", default=env.streamer, help="tcp://HOST:PORT to forward to (NVRX_LOG_STREAMER)")
    agg.add_argument(
        "--curve-server-key",
        default=env.curve_server_key,
        help="streamer's public key file (NVRX_LOG_CURVE_SERVER_KEY)",
    )
    agg.add_argument(
        "--curve-client-key",
        default=env.curve_client_key,
        help="this node's secret key file (NVRX_LOG_CURVE_CLIENT_KEY)",
    )
    agg.add_argument("--wait-file", help="drain and exit once this file exists")
    agg.add_argument("--once", action="store_true", help="write what is in the tmpdir now, then exit")
    agg.add_argument(
        "--until-idle", action="store_true", help="exit once every writer on the node is gone and all is written"
    )
    agg.add_argument(
        "--take-over", action="store_true", help="wait (up to 30 s) for another aggregator of the tmpdir to let go"
    )
    agg.add_argument("--json", action="store_true", help="write JSON lines instead of text")
    agg.add_argument("--spool-max-mb", type=_positive, default=1024, help="on-disk spool limit while forwarding (MiB)")
    agg.add_argument(
        "--warn-after", type=_not_negative, default=30.0, help="seconds without a streamer before a warning"
    )
    agg.set_defaults(func=_aggregate)

    stream = sub.add_parser(
        "stream",
        help="run the central streamer",
        formatter_class=_Help,
        description="Receive every node's records, write the cluster-wide file and serve live views. "
        "Runs until SIGTERM/SIGINT, then flushes and exits 0.",
    )
    stream.add_argument("--bind", required=True, help="tcp://HOST:PORT to listen on (port 0: any free port)")
    stream.add_argument("--out", required=True, help="the cluster-wide log file")
    stream.add_argument("--json", action="store_true", help="write JSON lines instead of text")
    stream.add_argument("--forward", help="relay: also pass everything to this upstream streamer")
    stream.add_argument("--name", default="streamer", help="this streamer's name in its own lines")
    stream.add_argument("--idle-timeout", type=_positive, default=10.0, help="seconds before a silent node is gone")
    stream.add_argument(
        "--max-hold",
        type=_not_negative,
        default=1.0,
        help="seconds a lagging node may hold the others back before its lines are written late",
    )
    stream.add_argument("--curve-secret-key", help="this streamer's secret key file (nvrxlog keys): turns CURVE on")
    stream.add_argument("--curve-clients-dir", help="directory of allowed client public keys (*.key)")
    stream.add_argument("--forward-curve-server-key", help="upstream's public key file (with --forward)")
    stream.add_argument("--forward-curve-client-key", help="this relay's secret key file (with --forward)")
    stream.set_defaults(func=_stream)

    tail = sub.add_parser(
        "tail",
        help="live view of a running streamer",
        formatter_class=_Help,
        description="Print the streamer's records as they are written, filtered. Says when it connected and "
        "when the streamer has gone silent; Ctrl-C ends it.",
    )
    tail.add_argument("--connect", required=True, help="the streamer's tcp://HOST:PORT")
    tail.add_argument("--ranks", help="only these ranks, e.g. 0-7,12 (workload rank, else infra rank)")
    tail.add_argument("--level", help="only this level and above, e.g. WARNING")
    tail.add_argument("--dedup", action="store_true", help="fold lines repeated across ranks into one")
    tail.add_argument("--dedup-window", type=_positive, default=1.0, help="seconds of lines folded together")
    tail.add_argument("--count", type=_at_least_one, help="exit after printing this many records")
    tail.add_argument("--timeout", type=_positive, default=10.0, help="seconds to wait for the streamer to answer")
    tail.set_defaults(func=_tail)

    keys = sub.add_parser(
        "keys",
        help="write a CurveZMQ key pair",
        formatter_class=_Help,
        description="Write NAME.key (public: give it to the other side) and NAME.key_secret (keep it) into DIR.",
    )
    keys.add_argument("dir", help="directory for the key files (created if missing)")
    keys.add_argument("--name", default="nvrxlog", help="file name stem of the pair")
    keys.set_defaults(func=_keys)

    demo = sub.add_parser(
        "demo",
        help="run a small simulated job on this machine",
        formatter_class=_Help,
        description="A streamer and simulated nodes with several ranks each, an aggregator per node; "
        "prints where the outputs are.",
    )
    demo.add_argument("--dir", help="work directory (default: a new temp directory)")
    demo.add_argument("--nodes", type=_at_least_one, default=2, help="simulated nodes")
    demo.add_argument("--ranks", type=_at_least_one, default=4, help="ranks per node")
    demo.add_argument("--steps", type=_at_least_one, default=50, help="training steps each rank logs")
    demo.add_argument("--live", action="store_true", help="show the cluster's records live while the job runs")
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


def _say(text: str) -> None:
    print(f"nvrxlog {text}", flush=True)


def _directory(path: str, what: str) -> str:
    """``path`` as an absolute directory that exists or can be made; ConfigError otherwise."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what} {path} is not a directory")
    return path


def _curve_keys(server: str | None, client: str | None, options: str):  # noqa: ANN202
    from nvrxlog.wire.curve import CurveKeys

    if not server and not client:
        return None
    if not (server and client):
        raise ConfigError(f"{options} go together")
    keys = CurveKeys(server_public=server, client_secret=client)
    keys.load()  # a key problem is one clear line now
    return keys


def _aggregate(args: argparse.Namespace) -> int:
    from nvrxlog.cli.summary import summary_line
    from nvrxlog.errors import AggregatorBusyError
    from nvrxlog.node.aggregator import NodeAggregator
    from nvrxlog.node.handover import TAKE_OVER_WAIT_S
    from nvrxlog.wire.endpoint import check_endpoint

    if not args.tmp_dir:
        raise ConfigError("no tmpdir: give --tmp-dir or set NVRX_NODE_LOCAL_TMPDIR")
    log_dir = _directory(args.log_dir, "--log-dir")
    _directory(args.tmp_dir, "--tmp-dir")
    if args.streamer:
        check_endpoint(args.streamer, what="--streamer")
    curve = _curve_keys(args.curve_server_key, args.curve_client_key, "--curve-server-key and --curve-client-key")
    aggregator = NodeAggregator(
        args.tmp_dir,
        log_dir,
        args.node_id,
        args.streamer,
        json=args.json,
        spool_max_bytes=int(args.spool_max_mb * (1 << 20)),
        warn_after=args.warn_after,
        curve=curve,
        exit_when_idle=args.until_idle,
        lock_wait=TAKE_OVER_WAIT_S if args.take_over else 1.0,
    )
    try:
        aggregator.start()
    except AggregatorBusyError:
        if args.take_over:
            return 0  # another successor got there first: one aggregator per tmpdir
        raise
    forwarding = f", forwarding to {args.streamer}" + (" (CURVE)" if curve else "") if args.streamer else ""
    _say(
        f"aggregate: node {aggregator.node_id}, reading {aggregator.tmp_dir}, writing {aggregator.out_path}{forwarding}"
    )
    try:
        if not args.once:
            _wait_for_stop(args.wait_file, lambda: aggregator.running)
    finally:
        aggregator.stop(drain=True, last=True)
    stats = aggregator.stats
    _say(f"aggregate: stopped; {aggregator.out_path}")
    print(f"  {summary_line(aggregator.per_rank, aggregator.levels)}")
    trouble = []
    if stats["missing_records"]:
        trouble.append(f"{stats['missing_records']:,} records missing (sequence gaps; the file says which)")
    if stats.get("undelivered"):
        trouble.append(f"{stats['undelivered']:,} records not yet acknowledged by the streamer (spooled)")
    if stats.get("spool_dropped"):
        trouble.append(f"{stats['spool_dropped']:,} records dropped from the full spool (--spool-max-mb)")
    for line in trouble:
        print(f"  {line}")
    if aggregator.failure is not None:
        raise NvrxLogError(f"the aggregator stopped after an unexpected error: {aggregator.failure!r}")
    return 0


def _stream(args: argparse.Namespace) -> int:
    from nvrxlog.cli.summary import node_lines, plural
    from nvrxlog.streamer.service import Streamer
    from nvrxlog.wire.endpoint import check_endpoint, same_endpoint

    check_endpoint(args.bind, bind=True, what="--bind")
    if args.curve_clients_dir and not args.curve_secret_key:
        raise ConfigError("--curve-clients-dir needs --curve-secret-key: without it CURVE is off and anyone may send")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(os.path.abspath(args.out)):
        raise ConfigError(f"--out {os.path.abspath(args.out)} is a directory; name a file in it")
    _directory(out_dir, "the directory of --out")
    if args.forward:
        check_endpoint(args.forward, what="--forward")
        if same_endpoint(args.forward, args.bind):
            raise ConfigError(f"--forward {args.forward} is this streamer's own --bind: a relay forwards upward")
    forward_curve = _curve_keys(
        args.forward_curve_server_key,
        args.forward_curve_client_key,
        "--forward-curve-server-key and --forward-curve-client-key",
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
    curve = " (CURVE)" if args.curve_secret_key else ""
    relay = f", relaying to {args.forward}" if args.forward else ""
    print(f"nvrxlog stream: listening on {streamer.endpoint}{curve}, writing {streamer.out_path}{relay}", flush=True)
    try:
        _wait_for_stop(None, lambda: streamer.running)
    finally:
        streamer.stop()
    stats = streamer.stats
    nodes = {node for node, _ in streamer.per_rank}
    # The nodes' records, not the streamer's own notice lines (stats["records"] counts both).
    total = sum(streamer.per_rank.values())
    _say(f"stream: stopped; {plural(total, 'record')} from {plural(len(nodes), 'node')} in {streamer.out_path}")
    for line in node_lines(streamer.per_rank, streamer.levels):
        print(f"  {line}")
    for key, text in (
        ("duplicates", "resent records dropped as duplicates"),
        ("late", "records written late (their node lagged past --max-hold)"),
        ("bad_frames", "malformed messages or records dropped"),
        ("future_stamps", "records stamped over 1 s past the streamer's clock (corrected), merged by arrival"),
        ("refused", "hellos refused (protocol version, size, a node already connected)"),
        ("over_credit", "batches refused from peers that sent past their credit"),
        ("implausible_seqs", "records refused: a seq further ahead than their writer could be"),
    ):
        if stats.get(key):
            print(f"  {stats[key]:,} {text}")
    if streamer.failure is not None:
        raise NvrxLogError(f"the streamer stopped after an unexpected error: {streamer.failure!r}")
    return 0


def _tail(args: argparse.Namespace) -> int:
    from nvrxlog.cli.tail import run_tail

    return run_tail(args)


def _keys(args: argparse.Namespace) -> int:
    import zmq.auth

    from nvrxlog.config import sanitize_name

    name = sanitize_name(args.name)
    directory = _directory(args.dir, "key directory")
    public = os.path.join(directory, f"{name}.key")
    secret = os.path.join(directory, f"{name}.key_secret")
    for path in (public, secret):
        if os.path.exists(path):
            raise ConfigError(f"{path} exists; not overwriting a key (choose another --name or directory)")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        zmq.auth.create_certificates(directory, name)
        os.chmod(secret, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write keys in {directory}: {exc.strerror}") from exc
    print(f"nvrxlog keys: public {public} (share it), secret {secret} (keep it)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from nvrxlog.cli.demo import run_demo

    return run_demo(args.dir, nodes=args.nodes, ranks=args.ranks, steps=args.steps, live=args.live)
