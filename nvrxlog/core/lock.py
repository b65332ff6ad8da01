"""An exclusive ``flock`` on a file: one process at a time owns what the file guards.

Used for a tmpdir (one aggregator per tmpdir) and for an output (one writer
per per-node or cluster file). The holder writes its pid into the file, so
whoever is refused can say who holds it. ``flock`` is released by the kernel
when the holder dies, even by ``kill -9``: a lock is never left stale.
"""

from __future__ import annotations

import fcntl
import os
import time

from nvrxlog.core.fileio import close_quietly, open_own

__all__ = ["Busy", "FileLock"]


class Busy(Exception):
    """The lock is held by another process (``pid`` if it said, else None); callers translate it."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(pid)
        self.pid = pid


class FileLock:
    """An exclusive lock on one file; ``take`` waits up to ``wait_s`` for it."""

    wait_s = 1.0

    def __init__(self) -> None:
        self._fd = -1

    @property
    def held(self) -> bool:
        """This object holds the lock now."""
        return self._fd >= 0

    def take(self, path: str) -> None:
        """Take the lock on ``path`` (created 0600); raises ``Busy`` past ``wait_s``, ``OSError`` if unusable.

        Brief holders (a writer's shared probe, a predecessor letting go) are
        waited for; flock has no timeout, so it is retried.
        """
        fd = open_own(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pid = _holder(fd)
                    os.close(fd)
                    raise Busy(pid) from None
                time.sleep(0.005)  # not synchronisation: flock cannot wait with a timeout
            except OSError:
                os.close(fd)
                raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only the pid is not named
        self._fd = fd

    def release(self) -> None:
        """Release the lock (safe twice)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def forget_after_fork(self) -> None:
        """In a forked child: close our copy without unlocking (the parent's descriptor keeps the lock)."""
        self._fd = close_quietly(self._fd)


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
