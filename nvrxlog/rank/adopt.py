"""Logging capture: every logger's records reach nvrxlog once, at their own level and source.

Libraries such as ``transformers`` and ``lightning`` keep a terminal handler
of their own and set ``propagate=False``, so a handler on the root logger
never sees their records. Rather than chase handlers, capture takes the end
of the logger walk itself: ``Logger.callHandlers`` is replaced (for as long
as capture is on) by the same loop that also hands the record to nvrxlog
where the walk stops, unless it stopped at the ``nvrx`` logger, whose
handlers are nvrxlog's. That reaches loggers and handlers created later,
and ``dictConfig``/``basicConfig(force=True)`` cannot remove it.

Other libraries' terminal handlers (a ``StreamHandler`` on stdout or
stderr) would print each record into the captured descriptors a second
time. While fd or stdio capture is on, they write to the real terminal
instead with ``echo`` (the user sees their lines once, in their format), or
nowhere without it: their records are in the node file either way.

Captured records are held to nvrxlog's level (``NVRX_LOG_DEBUG``) unless
``NVRX_LOG_LEVELS`` names another for a logger and its children.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

__all__ = ["Adoption", "Thresholds"]

_original_call_handlers = logging.Logger.callHandlers
_original_add_handler = logging.Logger.addHandler

# The one adoption in force (capture is per process); None when off.
_active: Adoption | None = None


class Thresholds:
    """The level a captured record needs, per logger name: the longest configured prefix, else the default."""

    def __init__(self, default: int, levels: Mapping[str, int]) -> None:
        self.default = default
        self._levels = dict(levels)
        self._cache: dict[str, int] = {}

    def __call__(self, name: str) -> int:
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        level, probe = self.default, name
        while probe:
            if probe in self._levels:
                level = self._levels[probe]
                break
            probe = probe.rpartition(".")[0]
        if len(self._cache) < 4096:  # logger names are few; a flood of made-up ones is not cached
            self._cache[name] = level
        return level


def _call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
    # The stdlib loop (logging.Logger.callHandlers), plus nvrxlog at the end of the walk.
    c: logging.Logger | None = self
    found = 0
    while c:
        for hdlr in c.handlers:
            found += 1
            if record.levelno >= hdlr.level:
                hdlr.handle(record)
        if not c.propagate:
            break
        c = c.parent
    adoption = _active
    if adoption is not None and c is not adoption.own:
        found += 1
        adoption.take(record)
    if found == 0:
        if logging.lastResort:
            if record.levelno >= logging.lastResort.level:
                logging.lastResort.handle(record)
        elif logging.raiseExceptions and not self.manager.emittedNoHandlerWarning:
            sys.stderr.write(f'No handlers could be found for logger "{self.name}"\n')
            self.manager.emittedNoHandlerWarning = True


def _add_handler(self: logging.Logger, hdlr: logging.Handler) -> None:
    _original_add_handler(self, hdlr)
    adoption = _active
    if adoption is not None:
        adoption.redirect(hdlr)


class Adoption:
    """Installs logging capture for one process (see the module docstring)."""

    def __init__(
        self,
        own: logging.Logger,
        handlers: list[logging.Handler],
        thresholds: Thresholds,
        *,
        terminal: Callable[[int], TextIO | None] | None,
        report: Callable[[str], None],
    ) -> None:
        self.own = own
        self._handlers = tuple(handlers)
        self._threshold = thresholds
        self._terminal = terminal  # fd (1 or 2) -> where its terminal handlers write; None: leave them be
        self._report = report
        self._redirected: dict[logging.StreamHandler, Any] = {}

    def take(self, record: logging.LogRecord) -> None:
        """A record whose walk ended elsewhere than at nvrxlog's logger."""
        if record.levelno < self._threshold(record.name):
            return
        for handler in self._handlers:
            handler.handle(record)

    def install(self) -> None:
        global _active
        _active = self
        logging.Logger.callHandlers = _call_handlers  # type: ignore[method-assign]
        logging.Logger.addHandler = _add_handler  # type: ignore[method-assign]
        # RootLogger inherits both; the loggers that exist now have their handlers already.
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            if isinstance(logger, logging.Logger):
                for handler in list(logger.handlers):
                    self.redirect(handler)

    def uninstall(self) -> None:
        global _active
        if _active is self:
            _active = None
            logging.Logger.callHandlers = _original_call_handlers  # type: ignore[method-assign]
            logging.Logger.addHandler = _original_add_handler  # type: ignore[method-assign]
        # Taken first: another thread's addHandler may redirect one more meanwhile.
        redirected, self._redirected = self._redirected, {}
        for handler, stream in redirected.items():
            try:
                handler.setStream(stream)
            except Exception:
                pass  # the stream was closed meanwhile: nothing to give back

    def redirect(self, handler: logging.Handler) -> None:
        """A foreign terminal handler writes to the real terminal (or nowhere), not into the captured fds."""
        if self._terminal is None or handler in self._handlers or handler in self._redirected:
            return
        if type(handler) is not logging.StreamHandler and not _is_plain_stream_subclass(handler):
            return
        fd = _terminal_fd(handler.stream)  # type: ignore[attr-defined]
        if fd is None:
            return
        old = handler.stream  # type: ignore[attr-defined]
        try:
            target = self._terminal(fd) or _devnull()
            if target is not old:
                handler.setStream(target)  # type: ignore[attr-defined]
                self._redirected[handler] = old
        except Exception as exc:  # a closed stream, no /dev/null: the library's handler is left as it was
            self._report(f"cannot keep a terminal handler of another library off the captured output: {exc}")


def _is_plain_stream_subclass(handler: logging.Handler) -> bool:
    # Subclasses that only format differently (colour, tqdm-aware writers set a
    # stream too) still write to their stream; a FileHandler writes a file.
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def _terminal_fd(stream: object) -> int | None:
    """1 or 2 if ``stream`` writes to stdout or stderr (the fds capture redirects), else None."""
    captured = getattr(stream, "captured_fd", None)  # stdio capture's line writers
    if captured is not None:
        return captured
    if stream is sys.stdout or stream is sys.__stdout__:
        return 1
    if stream is sys.stderr or stream is sys.__stderr__:
        return 2
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None
    return fd if fd in (1, 2) else None


_null: TextIO | None = None


def _devnull() -> TextIO:
    global _null
    if _null is None or _null.closed:
        _null = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - kept for the process's lifetime
    return _null
