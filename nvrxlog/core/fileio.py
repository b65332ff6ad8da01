"""Writing to raw file descriptors, and opening the files nvrxlog writes without following a planted link."""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["close_quietly", "open_own", "pwrite_all", "replace_file", "write_all"]

# A log dir may be group-writable (or shared): a name in it pre-created as a
# symlink must never make nvrxlog append to, or cut, the link's target.
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def open_own(path: str, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a symlink and refuses anything but a regular file we own.

    Raises ``OSError`` whose ``strerror`` says in one line what was found.
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{path} is a symlink; refusing to follow it", path) from None
        raise
    try:
        st = os.fstat(fd)
        problem = own_file_problem(st.st_mode, st.st_uid, os.geteuid())
    except OSError:
        os.close(fd)
        raise
    if problem is not None:
        os.close(fd)
        raise OSError(errno.EPERM, f"{path} is {problem}; refusing to write it", path)
    return fd


def own_file_problem(mode: int, uid: int, our_uid: int) -> str | None:
    """What makes a file unfit to be written as ours (not regular, someone else's), or None."""
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if uid != our_uid:
        return f"owned by uid {uid}, not by us (uid {our_uid})"
    return None


def replace_file(path: str, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` as ``path`` atomically: a reader sees the old or the new content, never half.

    The temporary file is created new (``O_EXCL``, never through a link); one
    left by a crash, or planted, is removed and created again. With
    ``durable`` the new content, and the rename, are on disk when this
    returns (they survive a host crash, not only a process's).
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    for attempt in (1, 2):
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
            break
        except FileExistsError:
            if attempt == 2:
                raise
            os.unlink(tmp)  # unlinking a link leaves its target alone
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            sync_directory(os.path.dirname(path) or ".")
    except OSError:
        try:
            os.unlink(tmp)  # a full disk: a half temp file would only take more of the space
        except OSError:
            pass
        raise


def sync_directory(path: str) -> None:
    """Make a rename or a new file in directory ``path`` durable; raises ``OSError``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, however many ``write(2)`` calls that takes; raises OSError."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` to ``fd`` at ``offset`` (``pwrite(2)``, the file position untouched); raises OSError."""
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def close_quietly(fd: int) -> int:
    """Close ``fd`` if it is open (>= 0), ignoring errors; return -1 to store in its place."""
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
    return -1
