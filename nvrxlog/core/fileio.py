"""Writing to raw file descriptors."""

from __future__ import annotations

import os

__all__ = ["close_quietly", "pwrite_all", "write_all"]


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
