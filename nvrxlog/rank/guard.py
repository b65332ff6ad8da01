"""The ``nvrx`` logger cannot be made to recurse, or be switched off by someone else's logging config.

nvrxlog's own handlers guard themselves (``safe.py``), but a filter added to
the logger itself runs in ``Logger.handle``, before any handler: one that
logs through ``nvrx`` re-enters it until ``RecursionError`` reaches user code
(the shape of a crash users remember). Each filter added to the logger, and
each handler that is not nvrxlog's, is wrapped: a record logged from inside
it, on the same thread, is dropped and counted, reported once. A logger
without filters pays nothing per record.

``logging.config.dictConfig`` and ``fileConfig`` disable every existing
logger they do not name (their default): nvrxlog's stays enabled, and the
user hears once, on the terminal and in the node file, what else was.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from nvrxlog.core.report import ErrorCounter
from nvrxlog.rank.safe import SafeHandler

__all__ = ["guard_logger", "keep_enabled"]

_errors = ErrorCounter("nvrx logger")
_DROPPED = "a record logged from inside a filter or handler of the nvrx logger was dropped (it would recurse)"


class _Guarded:
    """A filter that runs its filter at most once per thread at a time."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> Any:
        local = self._local
        if getattr(local, "busy", False):
            _errors.report("recursion", _DROPPED)
            return False
        local.busy = True
        try:
            inner = self.inner
            return inner.filter(record) if hasattr(inner, "filter") else inner(record)
        finally:
            local.busy = False

    # removeFilter(original) must still find it.
    def __eq__(self, other: object) -> bool:
        return other is self or other is self.inner or (isinstance(other, _Guarded) and other.inner is self.inner)

    def __hash__(self) -> int:
        return id(self.inner)


def _guard_handler(handler: logging.Handler) -> None:
    if isinstance(handler, SafeHandler) or getattr(handler, "_nvrx_guarded", False):
        return
    handle = handler.handle
    local = threading.local()

    def guarded(record: logging.LogRecord) -> Any:
        if getattr(local, "busy", False):
            _errors.report("recursion", _DROPPED)
            return False
        local.busy = True
        try:
            return handle(record)
        finally:
            local.busy = False

    handler.handle = guarded  # type: ignore[method-assign]
    handler._nvrx_guarded = True  # type: ignore[attr-defined]


def guard_logger(logger: logging.Logger) -> None:
    """Wrap ``logger``'s filters and foreign handlers, now and whenever one is added (safe twice)."""
    logger.filters[:] = [f if isinstance(f, _Guarded) else _Guarded(f) for f in logger.filters]
    for handler in logger.handlers:
        _guard_handler(handler)
    if "addFilter" in vars(logger):
        return
    cls = type(logger)  # looked up at each call: logging capture replaces addHandler while it is on

    def guarded_add_filter(f: Any) -> None:
        cls.addFilter(logger, f if isinstance(f, _Guarded) else _Guarded(f))

    def guarded_add_handler(h: logging.Handler) -> None:
        _guard_handler(h)
        cls.addHandler(logger, h)

    logger.addFilter = guarded_add_filter  # type: ignore[method-assign]
    logger.addHandler = guarded_add_handler  # type: ignore[method-assign]


_reconfigured: Callable[[str], None] | None = None  # how the current set-up tells the user


def keep_enabled(logger: logging.Logger, tell: Callable[[str], None]) -> None:
    """Keep ``logger`` (and its children) enabled through dictConfig/fileConfig from now on (safe twice)."""
    global _reconfigured
    import logging.config  # its hook must be in place before anyone configures

    _reconfigured = tell
    current = getattr(logging.config, "_handle_existing_loggers", None)
    if current is None or getattr(current, "_nvrx", False):
        return

    def handle_existing(existing: list[str], child_loggers: list[str], disable_existing: bool) -> None:
        current(existing, child_loggers, disable_existing)
        ours = [n for n in existing if n == logger.name or n.startswith(logger.name + ".")]
        for name in ours:
            logging.getLogger(name).disabled = False
        others = [n for n in existing if n not in ours]
        if disable_existing and others and _reconfigured is not None:
            _reconfigured(
                f"a logging configuration (dictConfig/fileConfig, disable_existing_loggers=True) disabled "
                f"{len(others)} existing logger(s) (e.g. {', '.join(others[:3])}); nvrxlog's logger stays "
                "enabled; pass disable_existing_loggers=False to keep the others"
            )

    handle_existing._nvrx = True  # type: ignore[attr-defined]
    logging.config._handle_existing_loggers = handle_existing  # type: ignore[attr-defined]
