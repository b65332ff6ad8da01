"""The base every nvrxlog handler shares: it cannot recurse and cannot raise."""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading

from nvrxlog.core import forks
from nvrxlog.core.fileio import open_own, write_all
from nvrxlog.core.report import ErrorCounter, describe

__all__ = ["SafeHandler", "SafeStreamHandler", "AppendFileHandler"]

# How many records logged while logging (by a filter, a message's str(), a
# signal handler or a finalizer run inside emit) one record may bring along;
# past that it is a loop, and the rest are dropped and counted.
MAX_DEFERRED = 100
# How a log file is opened for appending (open_own adds O_NOFOLLOW and O_CLOEXEC).
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND


class SafeHandler(logging.Handler):
    """A handler whose failures are counted and reported once per cause.

    Filters run under the handler's lock, so a filter, formatter or message
    that logs re-enters ``handle`` on the same thread; so does a signal
    handler or a finalizer (``__del__``) that logs and happens to run inside
    ``emit``. Writing such a record at once would cut into the record being
    written (its sequence number is taken, its bytes not yet copied), so it
    is queued and written right after it, filters skipped (they may be what
    logged it). A chain longer than ``MAX_DEFERRED`` is a loop: the rest is
    dropped and counted, never ``RecursionError``.
    """

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._safe_init()

    def _safe_init(self) -> None:
        self._busy = False
        self._deferred: list[logging.LogRecord] = []
        self._successor: SafeHandler | None = None  # set when closed by a set-up again
        self.errors = ErrorCounter(type(self).__name__)
        forks.register(self)

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        with self.lock:  # type: ignore[union-attr]
            if self._busy:
                self._deferred.append(record)
                return True
            self._busy = True
            try:
                if self.filters:
                    result = self.filter(record)
                    if not result:
                        return False
                    if isinstance(result, logging.LogRecord):
                        record = result
                self.emit(record)
            finally:
                try:
                    if self._deferred:  # almost never: a signal handler or finalizer logged meanwhile
                        self._write_deferred()
                finally:
                    self._busy = False
        return True

    def _write_deferred(self) -> None:
        # Also what a signal queued while the record was being filtered or
        # written. (One that lands after this loop and before _busy is reset
        # waits for the next record, or for close() of the node-local handler.)
        deferred = self._deferred
        budget = MAX_DEFERRED
        while deferred:
            record = deferred.pop(0)
            if budget <= 0:
                self.errors.report("recursion", "a record logged while logging was dropped (a loop)")
                continue
            budget -= 1
            self.emit(record)

    def close_into(self, successor: SafeHandler | None) -> None:
        """Close, and hand any record that still reaches this handler to ``successor`` (set-up again)."""
        with self.lock:  # type: ignore[union-attr]
            self.close()
            if successor is not None:
                self.handle = successor.handle  # type: ignore[method-assign]
                # A thread that took the old bound handle before this line waits
                # for our lock and then finds the handler closed: emit passes it on.
                self._successor = successor

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        cause = type(exc).__name__
        if isinstance(exc, OSError) and exc.errno is not None:
            cause = f"{cause}:{errno.errorcode.get(exc.errno, exc.errno)}"
        self.errors.report(cause, f"a record was dropped: {cause}: {describe(exc)}")

    def after_fork_in_child(self) -> None:
        """Make the handler the child's own: fresh lock, depth and counters.

        Another thread may have held the lock at the moment of the fork; in
        the child that thread does not exist and would never release it.
        """
        self.lock = threading.RLock()
        self._busy = False
        self._deferred = []
        self.errors.reinit_after_fork()


class SafeStreamHandler(SafeHandler, logging.StreamHandler):
    """``logging.StreamHandler`` with the guarantees of ``SafeHandler``."""

    def __init__(self, stream: object) -> None:
        logging.StreamHandler.__init__(self, stream)  # type: ignore[arg-type]
        self._safe_init()


class AppendFileHandler(SafeHandler):
    """Appends each formatted record to a file shared by many processes.

    One ``write(2)`` per record on an ``O_APPEND`` descriptor, so lines from
    different ranks never interleave inside a record.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        self._fd = open_own(self.path, _APPEND)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._fd < 0:
                if self._successor is not None:
                    self._successor.handle(record)
                    return
                # Closed by someone else (logging.shutdown() inside dictConfig): the file is still ours.
                self._fd = open_own(self.path, _APPEND)
            write_all(self._fd, (self.format(record) + "\n").encode("utf-8", "backslashreplace"))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        super().close()
