"""Filters and foreign handlers on the ``nvrx`` logger that log through it cannot recurse.

nvrxlog's own handlers guard themselves (``safe.py``), but a filter added to
the logger itself runs in ``Logger.handle``, before any handler: one that
logs through ``nvrx`` re-enters it until ``RecursionError`` reaches user code
(the shape of a crash users remember). Each filter added to the logger, and
each handler that is not nvrxlog's, is wrapped: a record logged from inside
it, on the same thread, is dropped and counted, reported once. A logger
without filters pays nothing per record.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from nvrxlog.core.report import ErrorCounter
from nvrxlog.rank.safe import SafeHandler

__all__ = ["guard_logger"]

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
