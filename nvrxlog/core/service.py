"""What every component run by a background thread shares (aggregator, streamer)."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

__all__ = ["Service"]


class Service:
    """A lifecycle around one background thread: ``start()``, ``stop()``, ``running``, ``failure``.

    Subclasses set ``_thread`` in ``start()`` and ``_failure`` if the thread
    dies of an unexpected error; ``with`` starts and stops them.
    """

    _thread: threading.Thread | None = None
    _failure: BaseException | None = None

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> Any:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """True while the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def failure(self) -> BaseException | None:
        """The unexpected error that stopped the thread, if one did."""
        return self._failure

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
