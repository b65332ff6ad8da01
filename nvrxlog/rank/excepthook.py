"""An uncaught exception becomes one ERROR record, at the file and line where it was raised.

``sys.excepthook`` and ``threading.excepthook`` are chained: the hooks that
were there before still run (the terminal gets its traceback, torchrun's
``@record`` its error file), but with ``sys.stderr`` pointed at the real
terminal, so capture does not record the same traceback a second time.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

from nvrxlog.core.report import describe

__all__ = ["ExceptHooks", "raised_at"]


def raised_at(tb: TracebackType | None) -> tuple[str, int]:
    """``(file name, line)`` of the innermost frame of ``tb``: where the exception was raised."""
    if tb is None:
        return "<unknown>", 0
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.basename(tb.tb_frame.f_code.co_filename), tb.tb_lineno


class ExceptHooks:
    """Installs the two hooks for ``logger``; ``terminal()`` says where the previous hooks should print."""

    def __init__(self, logger: logging.Logger, terminal: Callable[[], TextIO | None]) -> None:
        self._logger = logger
        self._terminal = terminal
        self._previous_sys: Callable[..., Any] | None = None
        self._previous_thread: Callable[..., Any] | None = None

    def install(self) -> None:
        self._previous_sys = sys.excepthook
        self._previous_thread = threading.excepthook
        sys.excepthook = self._sys_hook
        threading.excepthook = self._thread_hook

    def uninstall(self) -> None:
        """Put the previous hooks back, unless someone replaced ours meanwhile (then theirs stay)."""
        if sys.excepthook == self._sys_hook and self._previous_sys is not None:
            sys.excepthook = self._previous_sys
        if threading.excepthook == self._thread_hook and self._previous_thread is not None:
            threading.excepthook = self._previous_thread

    def _log(
        self, exc_type: type[BaseException], exc: BaseException | None, tb: TracebackType | None, where: str
    ) -> None:
        try:
            level = logging.WARNING if issubclass(exc_type, KeyboardInterrupt) else logging.ERROR
            file, line = raised_at(tb)
            record = self._logger.makeRecord(
                self._logger.name,
                level,
                file,
                line,
                "uncaught %s%s: %s",
                (exc_type.__name__, where, describe(exc)[:500]),
                (exc_type, exc, tb) if exc is not None else None,
            )
            record.filename = file  # makeRecord keeps the path it was given as the file's name
            self._logger.handle(record)
        except Exception:  # a hook that fails must not hide the original error
            pass

    def _sys_hook(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        self._log(exc_type, exc, tb, "")
        self._chain(self._previous_sys, exc_type, exc, tb)

    def _thread_hook(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return  # what threading's own hook does: a thread's sys.exit() is not an error
        name = args.thread.name if args.thread is not None else "?"
        self._log(args.exc_type, args.exc_value, args.exc_traceback, f" in thread {name}")
        self._chain(self._previous_thread, args)

    def _chain(self, previous: Callable[..., Any] | None, *args: Any) -> None:
        if previous is None:
            return
        terminal = self._terminal()
        saved = sys.stderr
        if terminal is not None:
            sys.stderr = terminal
        try:
            previous(*args)
        finally:
            sys.stderr = saved
