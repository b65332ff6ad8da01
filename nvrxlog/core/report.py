"""Last-resort reporting that never goes back through ``logging``.

Used by handlers and the aggregator when logging itself is what failed: one
line per distinct cause on file descriptor 2, then only counting.
"""

from __future__ import annotations

import os
import reprlib
import threading
from collections import Counter

__all__ = ["ErrorCounter", "describe", "report_to", "safe_repr"]

# Where last-resort lines go: fd 2, or the real terminal while fd capture has
# pointed fd 2 into its pipe (a line about nvrxlog itself is for the user's eyes).
_fd = 2

# Bounded in depth, length and size, so showing any value (a 1,000-deep list
# from the network, a huge object) costs little and cannot recurse.
_safe_repr = reprlib.Repr()
_safe_repr.maxstring = 200
_safe_repr.maxother = 200


def report_to(fd: int) -> None:
    """Send last-resort lines to ``fd`` from now on (2 again when capture ends)."""
    global _fd
    _fd = fd


class ErrorCounter:
    """Counts failures by cause and prints the first of each cause once."""

    def __init__(self, who: str) -> None:
        self._who = who
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def report(self, cause: str, detail: str) -> bool:
        """Count one failure of ``cause``; print it if it is the first. Never raises."""
        return self._count(cause, f"{detail} (further '{cause}' failures are counted, not printed)")

    def once(self, text: str) -> bool:
        """Print ``text`` the first time it is reported, as one line; then only count it. Never raises."""
        return self._count(text, text)

    def _count(self, key: str, line: str) -> bool:
        with self._lock:
            first = key not in self.counts
            self.counts[key] += 1
        if first:
            _write_stderr(f"nvrxlog: {self._who}: {line}\n")
        return first

    def reinit_after_fork(self) -> None:
        """Fresh lock and counts in a forked child: the parent's are not ours."""
        self._lock = threading.Lock()
        self.counts = Counter()


def describe(exc: BaseException | None) -> str:
    """``str(exc)`` that cannot itself raise."""
    try:
        return str(exc)
    except Exception:
        return "<unprintable>"


def safe_repr(obj: object) -> str:
    """A short ``repr`` of anything, that cannot itself raise."""
    try:
        return _safe_repr.repr(obj)
    except Exception:
        return f"<{type(obj).__name__} with a failing repr>"


def _write_stderr(line: str) -> None:
    try:
        os.write(_fd, line.encode("utf-8", "backslashreplace"))
    except OSError:
        pass  # stderr itself is gone: counting is all that is left
