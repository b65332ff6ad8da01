"""setup_logger() and the one place that holds nvrxlog's global state."""

from __future__ import annotations

import atexit
import dataclasses
import logging
import sys
import threading
from collections.abc import Iterable

from nvrxlog.config import LogConfig
from nvrxlog.core import forks
from nvrxlog.core.lines import RankFormatter
from nvrxlog.core.report import ErrorCounter
from nvrxlog.core.tmpdir import prepare_tmp_dir
from nvrxlog.errors import AggregatorBusyError, ConfigError, NvrxLogError
from nvrxlog.node.aggregator import NodeAggregator
from nvrxlog.rank.capture import Capture, parse_capture
from nvrxlog.rank.excepthook import ExceptHooks
from nvrxlog.rank.guard import guard_logger, keep_enabled
from nvrxlog.rank.handler import NodeLocalHandler
from nvrxlog.rank.safe import AppendFileHandler, SafeHandler, SafeStreamHandler
from nvrxlog.rank.watchdog import AggregatorWatch, start_if_absent
from nvrxlog.wire.curve import CurveKeys
from nvrxlog.wire.endpoint import check_endpoint

__all__ = ["setup_logger", "reset_state", "LOGGER_NAME"]

LOGGER_NAME = "nvrx"


class _State:
    """What setup_logger configured in this process (reset by tests and force_reset)."""

    def __init__(self) -> None:
        self.configured = False
        self.handlers: list[logging.Handler] = []
        self.aggregator: NodeAggregator | None = None
        self.capture: Capture | None = None
        self.hooks: ExceptHooks | None = None
        self.watch: AggregatorWatch | None = None
        self.config: LogConfig | None = None
        self.reported: set[str] = set()
        # False in the fd helper: it is one more writer of its rank's node, never its host.
        self.may_host = True
        self.tmp_dir: str | None = None  # node-local mode's tmpdir
        self.successor: list[str] | None = None  # thread mode: how to start an aggregator for it

    def after_fork_in_child(self) -> None:
        global _lock
        _lock = threading.RLock()
        # The aggregator thread is the parent's: the child neither runs nor joins it.
        # Its capture is the parent's too (the child's output still flows into it).
        self.aggregator = None
        self.capture = None
        self.hooks = None  # the hooks stay installed in the child: its crash is a record too
        self.watch = None  # the parent watches
        _errors.reinit_after_fork()


_state = _State()
forks.register(_state)
_lock = threading.RLock()
_errors = ErrorCounter("setup_logger")


def setup_logger(
    node_local_tmp_dir: str | None = None,
    force_reset: bool = False,
    node_local_tmp_prefix: str | None = None,
    log_file: str | None = None,
    capture: str | bool | Iterable[str] | None = None,
) -> logging.Logger:
    """Configure and return the ``nvrx`` logger for this process.

    Regular mode (no tmpdir) writes to stderr, or stdout with
    ``NVRX_LOG_TO_STDOUT=1``. Node-local mode (``node_local_tmp_dir`` or
    ``NVRX_NODE_LOCAL_TMPDIR``) appends records to this process's temp files;
    the node's local rank 0 also starts the aggregator thread unless
    ``NVRX_LOG_AGGREGATOR=external``. ``log_file`` additionally appends every
    rank's lines to one shared file with an ``srun -l`` style rank prefix.

    ``capture`` (default: ``NVRX_LOG_CAPTURE``, off) also routes what does not
    go through ``logging`` into nvrxlog: ``"logging"`` (other libraries'
    loggers), ``"warnings"``, ``"stdio"`` (``sys.stdout``/``sys.stderr`` lines),
    ``"fd"`` (file descriptors 1 and 2, so C libraries and a crash's last words),
    ``"echo"`` (keep writing to the terminal too); ``True`` or ``"all"`` means
    logging, warnings and fd.

    A second call returns the configured logger unchanged unless
    ``force_reset`` is true. Problems with the environment or the tmpdir are
    reported once on stderr and never raised: logging falls back to stderr.
    """
    logger = logging.getLogger(LOGGER_NAME)
    with _lock:
        if _state.configured and not force_reset:
            return logger
        # The old handlers keep taking records until the new ones replace them
        # in one assignment: a thread logging meanwhile loses nothing.
        watch, old_capture = _stop_capture_and_hooks()
        if watch is not None:
            watch.stop()
        aggregator, _state.aggregator = _state.aggregator, None
        old_handlers, _state.handlers = _state.handlers, []
        config = LogConfig.from_env()
        _state.config = config
        logger.setLevel(logging.DEBUG if config.debug else logging.INFO)
        logger.propagate = False  # the root logger's handlers would print every line twice
        logger.disabled = False  # a dictConfig before this call (disable_existing_loggers) switched it off

        try:
            modes = parse_capture(capture if capture is not None else config.capture)
        except ConfigError as exc:
            _report_once(f"capture is off: {exc}")
            modes = frozenset()
        grabber = Capture(logger, modes, levels=dict(config.levels), report=_tell) if modes else None
        if grabber is not None:
            try:
                grabber.install_fds()
            except OSError as exc:
                _report_once(f"fd capture is off: {exc}")
                grabber = Capture(logger, modes - {"fd"}, levels=dict(config.levels), report=_tell)
            _state.capture = grabber
        stderr = grabber.original_stderr if grabber is not None else sys.stderr

        tmp_dir = node_local_tmp_dir or config.node_local_tmp_dir
        handler: logging.Handler | None = None
        if tmp_dir:
            try:
                tmp_dir = prepare_tmp_dir(tmp_dir)
                handler = NodeLocalHandler(tmp_dir, config, prefix=node_local_tmp_prefix)
            except (NvrxLogError, OSError) as exc:
                _report_once(f"node-local logging is off, writing to stderr instead: {exc}")
                tmp_dir = None
        if handler is None:
            # Regular mode writes to the terminal; log_file (below) is in addition.
            handler = SafeStreamHandler(sys.stdout if config.to_stdout else stderr)
            handler.setFormatter(RankFormatter(config))
        if handler is not None:
            _state.handlers.append(handler)  # attached, with the others, by _swap_handlers
        if log_file is not None:
            try:
                shared = AppendFileHandler(log_file)
                shared.setFormatter(RankFormatter(config, rank_prefix=True))
                _state.handlers.append(shared)
            except OSError as exc:
                _report_once(f"cannot open log_file {log_file}: {exc.strerror}; not writing it")
        _swap_handlers(logger, old_handlers, _state.handlers)
        _retire(old_handlers, _state.handlers, aggregator, at_exit=False)
        if old_capture is not None:
            old_capture.close_streams()
        guard_logger(logger)
        keep_enabled(logger, _tell)
        _state.configured = True
        if grabber is not None:
            grabber.install(list(_state.handlers))
        if tmp_dir:
            # A crash is one ERROR record in the node file (not only a traceback on a terminal).
            _state.hooks = ExceptHooks(logger, lambda: _state.capture.terminal() if _state.capture else None)
            _state.hooks.install()

        _state.tmp_dir = tmp_dir or None
        _state.successor = None
        if tmp_dir and config.aggregator == "thread":
            _start_aggregator(tmp_dir, config, host=_state.may_host and config.node_local_rank in (0, None))
        for problem in config.problems:
            if problem not in _state.reported:
                _state.reported.add(problem)
                # On stderr, where the user looks, and in the node's file, where the record stays.
                if tmp_dir:
                    _report_once(f"configuration: {problem}")
                logger.warning("nvrxlog configuration: %s", problem)
    return logger


def _start_aggregator(tmp_dir: str, config: LogConfig, *, host: bool) -> None:
    streamer = config.streamer
    if streamer is not None:
        try:
            check_endpoint(streamer, resolve=False, what="NVRX_LOG_STREAMER")
        except ConfigError as exc:
            # Forwarding is optional; the per-node file is not.
            _report_once(f"{exc}; not forwarding, the per-node file is written as usual")
            streamer = None
    if config.curve_half_set:
        streamer = None  # reported with the configuration's problems
    curve = None
    if config.curve_server_key and config.curve_client_key:
        curve = CurveKeys(server_public=config.curve_server_key, client_secret=config.curve_client_key)
    aggregator = NodeAggregator(tmp_dir, config.log_dir, config.node_id, streamer, curve=curve)
    _state.successor = aggregator.successor_command()
    if host:
        try:
            aggregator.start()
            _state.aggregator = aggregator
            return
        except AggregatorBusyError:
            pass  # another process on this node aggregates; that is fine
        except NvrxLogError as exc:
            _report_once(f"the node aggregator could not start: {exc}; records stay in {tmp_dir}")
    # Not the host: watch that the node keeps an aggregator when its host is gone.
    _state.watch = AggregatorWatch(tmp_dir, _state.successor, local_rank=config.node_local_rank)


def _stop_capture_and_hooks() -> tuple[AggregatorWatch | None, Capture | None]:
    """Uninstall the hooks and capture (the fd helper drains its pipes into records); return the watch, capture.

    The capture's copies of the terminal stay open: the old handlers may
    write to them until they are replaced (``close_streams`` after that).
    """
    hooks, _state.hooks = _state.hooks, None
    if hooks is not None:
        hooks.uninstall()
    grabber, _state.capture = _state.capture, None
    if grabber is not None:
        grabber.uninstall()
    watch, _state.watch = _state.watch, None
    return watch, grabber


def _swap_handlers(logger: logging.Logger, old: list[logging.Handler], new: list[logging.Handler]) -> None:
    # One assignment: there is no moment when the logger has neither (another thread may be logging).
    logger.handlers = [h for h in logger.handlers if h not in old] + new


def _retire(
    old: list[logging.Handler], new: list[logging.Handler], aggregator: NodeAggregator | None, *, at_exit: bool
) -> None:
    """Close the replaced handlers, then stop the aggregator that served them."""
    for handler in old:
        # A thread that picked the old handler just before the swap still reaches the new one.
        successor = next((h for h in new if type(h) is type(handler)), None)
        if isinstance(handler, SafeHandler):
            handler.close_into(successor if isinstance(successor, SafeHandler) else None)
        else:
            handler.close()
        if aggregator is not None and isinstance(handler, NodeLocalHandler):
            aggregator.writer_closed(handler.writer)
    if aggregator is not None:
        # At exit the node's other writers may go on: a successor takes over
        # rather than this process waiting for them (or for the network).
        exit_wait = _state.config.exit_wait if _state.config is not None else None
        aggregator.stop(drain=True, timeout=exit_wait if at_exit else None, hand_over=at_exit)


def _teardown(logger: logging.Logger, *, at_exit: bool = False) -> None:
    watch, capture = _stop_capture_and_hooks()
    if watch is not None:
        watch.stop()
    aggregator, _state.aggregator = _state.aggregator, None
    old, _state.handlers = _state.handlers, []
    late = _late_writer(old) if at_exit else None
    _swap_handlers(logger, old, [late] if late is not None else [])
    _retire(old, [late] if late is not None else [], aggregator, at_exit=at_exit)
    if capture is not None:
        capture.close_streams()
    if watch is not None and at_exit:
        watch.last_look()
    _state.configured = False


def _late_writer(retiring: list[logging.Handler]) -> NodeLocalHandler | None:
    """At exit, after the last drain: a writer for what atexit handlers that run after ours still log.

    It costs nothing unless one does; its first record makes sure an
    aggregator will take it (a successor, if none serves the node). It
    carries the ranks the retiring writer had found by then.
    """
    tmp_dir, config = _state.tmp_dir, _state.config
    if tmp_dir is None or config is None:
        return None
    old = next((h for h in retiring if isinstance(h, NodeLocalHandler)), None)
    if old is not None:
        rank, local_rank, _, _ = old.ranks
        config = dataclasses.replace(config, rank=rank, local_rank=local_rank)
    try:
        handler = NodeLocalHandler(tmp_dir, config)
    except (NvrxLogError, OSError):
        return None
    command = _state.successor
    errors = ErrorCounter("setup_logger")
    emit = vars(handler).get("emit")  # the ranks still unknown: the handler's own emit that looks them up

    def first(record: logging.LogRecord) -> None:
        if emit is None:
            vars(handler).pop("emit", None)
        else:
            handler.emit = emit  # type: ignore[method-assign]
        handler.emit(record)
        if command is not None:
            try:
                start_if_absent(tmp_dir, command, errors)
            except Exception as exc:  # at interpreter shutdown anything may fail: never into the caller
                errors.once(f"cannot start an aggregator for what was logged at exit: {exc}")

    handler.emit = first  # type: ignore[method-assign]
    return handler


def never_host() -> None:
    """This process (the fd helper) writes into a node's tmpdir but never hosts its aggregator."""
    _state.may_host = False


def reset_state() -> None:
    """Undo setup_logger in this process: remove handlers, stop the aggregator."""
    with _lock:
        _teardown(logging.getLogger(LOGGER_NAME))
        _state.reported.clear()


def running_aggregator() -> NodeAggregator | None:
    """The aggregator setup_logger started in this process, if any."""
    return _state.aggregator


def _report_once(text: str) -> None:
    _errors.once(text)


def _tell(text: str) -> None:
    """Once on the terminal and once in the node's file: something the user must know about their set-up."""
    if _errors.once(text):
        logging.getLogger(LOGGER_NAME).warning("nvrxlog: %s", text)


@atexit.register
def _drain_at_exit() -> None:
    # Records a rank logged (or printed) just before exiting must still reach the node file.
    if _state.aggregator is not None or _state.capture is not None or _state.watch is not None:
        with _lock:
            _teardown(logging.getLogger(LOGGER_NAME), at_exit=True)
