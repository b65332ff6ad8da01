"""Checking that a node-local temp directory is safe to use."""

from __future__ import annotations

import fcntl
import os
import stat

from nvrxlog.core.lock import Busy, FileLock
from nvrxlog.errors import AggregatorBusyError, TmpDirError

__all__ = ["LOCK_NAME", "AggregatorLock", "aggregator_alive", "prepare_tmp_dir"]

#: The aggregator of a tmpdir holds an exclusive flock on this file in it.
LOCK_NAME = ".nvrx-aggregator.lock"


def prepare_tmp_dir(path: str, *, create: bool = True) -> str:
    """Return the absolute ``path`` after checking it is a usable, safe directory.

    Created with mode 0700 when missing. A world-writable directory without
    the sticky bit is refused: anyone on the node could replace or delete
    another user's temp files there.
    """
    path = os.path.abspath(path)
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise TmpDirError(f"cannot create node-local tmpdir {path}: {exc.strerror}") from exc
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TmpDirError(f"node-local tmpdir {path} is not usable: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise TmpDirError(f"node-local tmpdir {path} is not a directory")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise TmpDirError(
            f"node-local tmpdir {path} is world-writable without the sticky bit; "
            "refusing it (chmod +t or use a private directory)"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise TmpDirError(f"node-local tmpdir {path} is not writable")
    return path


def aggregator_alive(tmp_dir: str) -> bool:
    """True if a live aggregator holds the lock of ``tmp_dir``."""
    try:
        fd = os.open(os.path.join(tmp_dir, LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases our shared lock at once
    return False


class AggregatorLock(FileLock):
    """The exclusive lock that makes one aggregator per tmpdir.

    Writers take a shared lock on the same file for a moment to ask "is
    anyone there?" (``aggregator_alive``); taking it waits briefly so that
    does not look like a second aggregator.
    """

    def take(self, tmp_dir: str) -> None:  # type: ignore[override]
        """Take the lock of ``tmp_dir``; raises AggregatorBusyError or TmpDirError."""
        path = os.path.join(tmp_dir, LOCK_NAME)
        try:
            super().take(path)
        except Busy as busy:
            pid = f" (pid {busy.pid})" if busy.pid else ""
            raise AggregatorBusyError(f"another aggregator{pid} already serves {tmp_dir}") from None
        except OSError as exc:
            raise TmpDirError(f"cannot create {path}: {exc.strerror}") from exc
