"""Capturing what does not go through ``logging``: other loggers, warnings, stdout/stderr, fds 1 and 2.

Modes (``setup_logger(capture=...)`` or ``NVRX_LOG_CAPTURE``, comma-separated):

- ``logging``: the root logger's records (other libraries) go to nvrxlog too;
- ``warnings``: ``warnings.warn`` becomes a WARNING record;
- ``stdio``: each line written to ``sys.stdout`` / ``sys.stderr`` is an INFO / WARNING record;
- ``fd``: file descriptors 1 and 2 themselves (C and C++ libraries, a crash's
  last words) are read by a helper process, which outlives a rank that dies;
- ``echo``: also write captured output to the original stdout/stderr.

``all`` (or ``1``, ``true``) means ``logging,warnings,fd``.
"""

from __future__ import annotations

import faulthandler
import io
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping

from nvrxlog.core import forks
from nvrxlog.core.report import report_to
from nvrxlog.errors import ConfigError
from nvrxlog.rank.adopt import Adoption, Thresholds
from nvrxlog.rank.progress import Frames, keep_from_last_frame
from nvrxlog.rank.tracebacks import Block, LineGrouper

__all__ = ["Capture", "parse_capture"]

MODES = frozenset({"logging", "warnings", "stdio", "fd", "echo"})
_ALL = frozenset({"logging", "warnings", "fd"})
# At exit, how long a rank lets its helper finish before going: the helper writes
# what is left as records on its own (an aggregator, or a successor, takes them),
# and processes that inherited the pipes (data-loader workers) may keep it alive.
_HELPER_WAIT_S = 0.3


def parse_capture(value: str | bool | Iterable[str] | None) -> frozenset[str]:
    """The set of capture modes a setting names; raises ConfigError for unknown ones."""
    if value is None or value is False:
        return frozenset()
    if value is True:
        return _ALL
    words = value.split(",") if isinstance(value, str) else list(value)
    modes: set[str] = set()
    for word in (w.strip().lower() for w in words):
        if word in ("", "0", "false", "no", "off"):
            continue
        if word in ("1", "true", "yes", "on", "all"):
            modes |= _ALL
        elif word in MODES:
            modes.add(word)
        else:
            raise ConfigError(f"unknown capture mode {word!r}; use {', '.join(sorted(MODES))} or all")
    return frozenset(modes)


def _strip_newline(record: logging.LogRecord) -> bool:
    # warnings.formatwarning ends with a newline, which would print as a blank
    # line; logging passes it as the message itself (bpo-46557).
    if isinstance(record.msg, str) and not record.args:
        record.msg = record.msg.rstrip("\n")
    return True


class _LineWriter(io.TextIOBase):
    """A text stream that turns each complete line into a record (and maybe echoes it)."""

    def __init__(self, logger: logging.Logger, level: int, name: str, echo: io.TextIOBase | None, fd: int) -> None:
        super().__init__()
        self.captured_fd = fd  # what it stands in for: logging capture's terminal handlers are told by it
        self._logger = logger
        self._level = level
        self._name = name
        self._echo = echo
        self._partial = ""
        self._grouper = LineGrouper()
        self._frames = Frames()
        self._lock = threading.Lock()
        forks.register(self)

    def after_fork_in_child(self) -> None:
        # Another thread may have held the lock at the fork; the child's first print would wait forever.
        self._lock = threading.Lock()
        # A line another thread of the parent was half-way through is the parent's to finish, not the child's.
        self._partial = ""
        self._grouper = LineGrouper()
        self._frames = Frames()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._echo is not None:
            self._echo.write(text)
        with self._lock:
            lines = (self._partial + text).split("\n")
            rest = lines.pop()
            shown = [frame for frame in map(self._frames.finished, lines) if frame is not None]
            if "\r" in rest:  # a progress bar: its latest frame now and then (progress.py)
                rest = keep_from_last_frame(rest)
                frame = self._frames.unfinished(rest)
                if frame is not None:
                    shown.append(frame)
            self._partial = rest
            blocks = [block for line in shown for block in self._grouper.feed(line)]
            if self._grouper.ended:
                # In-process there is no timer: a traceback is recorded once its exception line is in.
                blocks += self._grouper.flush()
        for block in blocks:
            self._emit(block)
        return len(text)

    def flush(self) -> None:
        if self._echo is not None:
            self._echo.flush()

    def close_and_emit_rest(self) -> None:
        """Emit a last line that never got its newline (no lost tail at exit)."""
        with self._lock:
            rest, self._partial = self._partial, ""
            last = self._frames.finished(rest) if rest else None
            blocks = self._grouper.feed(last) if last is not None else []
            blocks += self._grouper.flush()
        for block in blocks:
            self._emit(block)

    def _emit(self, block: Block) -> None:
        if block.is_traceback:
            level, name, line = logging.ERROR, block.file or self._name, block.line
        else:
            level, name, line = self._level, self._name, 0
        record = self._logger.makeRecord(self._logger.name, level, name, line, block.text, None, None)
        self._logger.handle(record)


class Capture:
    """Installs and removes the capture modes for one process."""

    def __init__(
        self,
        logger: logging.Logger,
        modes: frozenset[str],
        *,
        levels: Mapping[str, int] | None = None,
        report: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.logger = logger
        self.modes = modes
        self.echo = "echo" in modes
        self.levels = dict(levels or {})
        self._report = report
        self.original_stderr: io.TextIOBase = sys.stderr
        self.original_stdout: io.TextIOBase = sys.stdout
        self._adoption: Adoption | None = None
        self._saved_levels: dict[str, int] = {}  # NVRX_LOG_LEVELS: each named logger's own level before
        self._copies: tuple[io.TextIOBase, ...] = ()  # the terminal copies fd capture made (ours to close)
        self._owner_pid = os.getpid()
        self._root_handlers: list[logging.Handler] = []
        self._writers: list[_LineWriter] = []
        self._saved_streams = (sys.stdout, sys.stderr)
        self._saved_fds: tuple[int, int] | None = None
        self._helper: subprocess.Popen | None = None
        self._faulthandler = False

    def install_fds(self) -> None:
        """fd mode, before any handler exists: route fds 1 and 2 through the helper process."""
        if "fd" not in self.modes:
            return
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        saved = (os.dup(1), os.dup(2))
        # The helper writes records like any writer of the node, and like the
        # node's other ranks it makes sure an aggregator takes them (fdhelper.py).
        env = {k: v for k, v in os.environ.items() if k != "NVRX_LOG_CAPTURE"}
        self._helper = subprocess.Popen(
            [sys.executable, "-m", "nvrxlog.rank.fdhelper", str(out_r), str(err_r), "1" if self.echo else "0"],
            stdin=subprocess.DEVNULL,
            stdout=saved[0],
            stderr=saved[1],
            pass_fds=(out_r, err_r),
            env=env,
        )
        os.close(out_r)
        os.close(err_r)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(out_w)
        os.close(err_w)
        self._saved_fds = saved
        report_to(saved[1])
        self._dump_stacks_on_signals()
        # stdout is now a pipe, which Python would block-buffer: print() lines
        # should become records as they are printed, not at exit. And each
        # line must be one write(2) (atomic on a pipe): unbuffered
        # (PYTHONUNBUFFERED, common in SLURM jobs) print() writes every piece
        # on its own, and forked children's pieces would interleave.
        for stream in (sys.stdout, sys.stderr):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(line_buffering=True, write_through=False)
        # Our own stream handler must write where stderr really goes, not into the pipe.
        self.original_stderr = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
        self.original_stdout = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
        self._copies = (self.original_stderr, self.original_stdout)

    def _dump_stacks_on_signals(self) -> None:
        """A rank stopped by a fatal signal or SIGTERM leaves its Python stack in the pipe, as one record.

        faulthandler writes from the signal handler itself (in C), also while
        the rank is blocked in a collective, where a Python handler would
        never run; SIGTERM then goes on to its previous disposition. A
        faulthandler the program set up itself is left alone.
        """
        if faulthandler.is_enabled():
            return
        try:
            faulthandler.enable(file=2, all_threads=True)
            faulthandler.register(signal.SIGTERM, file=2, all_threads=True, chain=True)
            self._faulthandler = True
        except (AttributeError, OSError, RuntimeError, ValueError):
            pass  # a platform without it: the crash is still captured, only without the stack

    def terminal(self) -> io.TextIOBase | None:
        """Where stderr really goes while capture redirects it (None when it does not)."""
        if self._saved_fds is not None:
            return self.original_stderr
        if self._writers:
            return self._saved_streams[1]
        return None

    def install(self, handlers: list[logging.Handler]) -> None:
        """The in-process modes, once nvrxlog's handlers exist."""
        if "logging" in self.modes:
            for name, level in self.levels.items():
                lib = logging.getLogger(name)
                self._saved_levels[name] = lib.level  # given back when capture ends
                lib.setLevel(level)  # so records below its own level are made at all
            self._adoption = Adoption(
                self.logger,
                handlers,
                Thresholds(self.logger.level, self.levels),
                terminal=self._terminal_for if {"fd", "stdio"} & self.modes else None,
                report=self._report,
            )
            self._adoption.install()
        if "warnings" in self.modes:
            logging.captureWarnings(True)
            logging.getLogger("py.warnings").addFilter(_strip_newline)
            if "logging" not in self.modes:
                warn_logger = logging.getLogger("py.warnings")
                for handler in handlers:
                    warn_logger.addHandler(handler)
                    self._root_handlers.append(handler)
        if "stdio" in self.modes and "fd" not in self.modes:
            out, err = self._saved_streams
            self._writers = [
                _LineWriter(self.logger, logging.INFO, "<stdout>", out if self.echo else None, 1),
                _LineWriter(self.logger, logging.WARNING, "<stderr>", err if self.echo else None, 2),
            ]
            sys.stdout, sys.stderr = self._writers  # type: ignore[assignment]

    def _terminal_for(self, fd: int) -> io.TextIOBase | None:
        # With echo, other libraries' terminal handlers print where the terminal really is; without, nowhere.
        if not self.echo:
            return None
        if self._saved_fds is not None:
            return self.original_stdout if fd == 1 else self.original_stderr
        return self._saved_streams[0 if fd == 1 else 1]

    def uninstall(self) -> None:
        """Restore everything; the helper drains what is left in the pipes before this returns."""
        if os.getpid() != self._owner_pid:
            return
        if self._adoption is not None:
            self._adoption.uninstall()
            self._adoption = None
        for name, level in self._saved_levels.items():
            logging.getLogger(name).setLevel(level)
        self._saved_levels = {}
        for writer in self._writers:
            writer.close_and_emit_rest()
        if self._writers:
            sys.stdout, sys.stderr = self._saved_streams
            self._writers = []
        for handler in self._root_handlers:
            logging.getLogger().removeHandler(handler)
            logging.getLogger("py.warnings").removeHandler(handler)
        self._root_handlers = []
        if "warnings" in self.modes:
            logging.captureWarnings(False)
            logging.getLogger("py.warnings").removeFilter(_strip_newline)
        if self._faulthandler:
            faulthandler.unregister(signal.SIGTERM)
            faulthandler.disable()
            self._faulthandler = False
        if self._saved_fds is not None:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            out, err = self._saved_fds
            os.dup2(out, 1)  # our write ends close: the helper reads to EOF and exits
            os.dup2(err, 2)
            report_to(2)
            os.close(out)
            os.close(err)
            self._saved_fds = None
            if self._helper is not None:
                try:
                    self._helper.wait(_HELPER_WAIT_S)
                except subprocess.TimeoutExpired:
                    pass  # a child still holds the pipe; the helper finishes when it does, on its own

    def close_streams(self) -> None:
        """Close the copies of the terminal made for fd capture, once no handler writes to them any more."""
        if os.getpid() != self._owner_pid:
            return
        copies, self._copies = self._copies, ()
        for stream in copies:
            stream.close()
