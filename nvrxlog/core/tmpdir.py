"""Checking that a node-local temp directory is safe to use."""

from __future__ import annotations

import fcntl
import os
import stat

from nvrxlog.core.fileio import open_own
from nvrxlog.core.lock import Busy, FileLock
from nvrxlog.errors import AggregatorBusyError, TmpDirError

__all__ = ["LOCK_NAME", "AggregatorLock", "aggregator_alive", "foreign_owner", "prepare_tmp_dir"]

#: The aggregator of a tmpdir holds an exclusive flock on this file in it.
LOCK_NAME = ".nvrx-aggregator.lock"


def prepare_tmp_dir(path: str, *, create: bool = True) -> str:
    """Return the absolute ``path`` after checking it is a usable, safe directory.

    Created with mode 0700 when missing. A world-writable directory without
    the sticky bit is refused: anyone on the node could replace or delete
    another user's temp files there. A directory (or a symlink to one) that
    another user owns is refused too: its name is predictable
    (``/dev/shm/nvrx-$SLURM_JOB_ID``), so another user can create it first
    and then plant files and locks in it.
    """
    path = os.path.abspath(path)
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise TmpDirError(f"cannot create node-local tmpdir {path}: {exc.strerror}") from exc
    try:
        link = os.lstat(path)
        st = os.stat(path)
    except OSError as exc:
        raise TmpDirError(f"node-local tmpdir {path} is not usable: {exc.strerror}") from exc
    for what, owned in (("symlink", link), ("directory", st)):
        owner = foreign_owner(owned)
        if owner is not None:
            raise TmpDirError(
                f"node-local tmpdir {path}: the {what} is owned by uid {owner}, not by this user "
                f"(uid {os.geteuid()}); refusing it (another user may have created it first)"
            )
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


def foreign_owner(st: os.stat_result, uid: int | None = None) -> int | None:
    """The uid that owns ``st`` when it is not ``uid`` (default: this process's effective uid), else None."""
    uid = os.geteuid() if uid is None else uid
    return st.st_uid if st.st_uid != uid else None


def aggregator_alive(tmp_dir: str) -> bool:
    """True if a live aggregator holds the lock of ``tmp_dir`` (a lock that is not ours counts as none)."""
    try:
        # A lock planted by another user, or a symlink, is no aggregator of ours.
        fd = open_own(os.path.join(tmp_dir, LOCK_NAME), os.O_RDONLY)
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
            # A symlink or another user's file planted in place of the lock: it
            # would let them keep the job's aggregator from ever starting.
            raise TmpDirError(f"cannot use the aggregator lock: {exc.strerror}") from exc
