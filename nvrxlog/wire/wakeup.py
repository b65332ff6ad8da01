"""Waking a thread that sleeps in a ZeroMQ poll, from any other thread."""

from __future__ import annotations

import os

__all__ = ["Wakeup"]


class Wakeup:
    """An eventfd a ``zmq.Poller`` can watch: ``poke()`` from anywhere, ``drain()`` in the poller's thread."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def fileno(self) -> int:
        """The descriptor to register with a poller."""
        return self._fd

    def poke(self) -> None:
        """Make the poller return (never blocks, never raises)."""
        try:
            os.eventfd_write(self._fd, 1)
        except OSError:
            pass  # the counter is saturated: the thread is awake anyway

    def drain(self) -> None:
        """Reset after waking, so the next poll sleeps again."""
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass
