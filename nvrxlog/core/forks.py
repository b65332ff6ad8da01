"""The one at-fork registry: objects a forked child must re-initialise before it uses them.

Like CPython's logging, which keeps a weak set of handlers whose locks it
re-creates after ``fork()``: anything holding a lock, a descriptor or a
thread that belongs to the parent registers here, and in the child its
``after_fork_in_child()`` runs, in registration order, before the child's
code goes on. A lock held by another thread at the moment of the fork would
otherwise never be released in the child, whose copy of that thread does not
exist.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol

__all__ = ["ForkAware", "register"]


class ForkAware(Protocol):
    def after_fork_in_child(self) -> None: ...


_registry: weakref.WeakValueDictionary[int, ForkAware] = weakref.WeakValueDictionary()
_counter = iter(range(1 << 62))
_lock = threading.Lock()


def register(obj: ForkAware) -> None:
    """Call ``obj.after_fork_in_child()`` in every child forked while ``obj`` is alive."""
    with _lock:
        _registry[next(_counter)] = obj


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for _, obj in sorted(_registry.items()):
        try:
            obj.after_fork_in_child()
        except Exception:  # one object's failure must not stop the others
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)
