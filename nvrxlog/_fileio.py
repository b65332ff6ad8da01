"""Writing to raw file descriptors."""

from __future__ import annotations

import os

__all__ = ["write_all"]


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, however many ``write(2)`` calls that takes; raises OSError."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
