"""The aggregator's checkpoint: what has been written, saved atomically.

It records, per writer, the highest sequence number written to the output,
and the output's size at that moment. After a ``kill -9`` the output is cut
back to that size and the writers' remaining files are re-read from their
start, skipping what the checkpoint covers: nothing lost, nothing doubled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import orjson

__all__ = ["Checkpoint", "load_checkpoint", "open_output", "save_checkpoint"]

_VERSION = 1


@dataclass(slots=True)
class Checkpoint:
    """Positions that are durable in the output."""

    out: str = ""
    out_size: int = 0
    writers: dict[str, int] = field(default_factory=dict)


def load_checkpoint(path: str) -> tuple[Checkpoint, str | None]:
    """The saved checkpoint (or an empty one) and a problem description, if any."""
    try:
        with open(path, "rb") as f:
            raw = orjson.loads(f.read())
        if raw.get("version") != _VERSION:
            return Checkpoint(), f"checkpoint {path} has an unknown version; starting afresh"
        return (
            Checkpoint(
                out=str(raw["out"]),
                out_size=int(raw["out_size"]),
                writers={str(k): int(v) for k, v in raw["writers"].items()},
            ),
            None,
        )
    except FileNotFoundError:
        return Checkpoint(), None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return Checkpoint(), f"checkpoint {path} is unreadable ({exc}); starting afresh"


def save_checkpoint(path: str, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` so that a reader sees the old or the new one, never half."""
    data = orjson.dumps(
        {
            "version": _VERSION,
            "out": checkpoint.out,
            "out_size": checkpoint.out_size,
            "writers": checkpoint.writers,
        }
    )
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def open_output(path: str, checkpoint: Checkpoint, checkpoint_path: str) -> tuple[int, int]:
    """Open the output ``path`` for appending, cut back to what ``checkpoint`` covers.

    Bytes past the checkpoint were written by a process that died before it
    could checkpoint them; they are produced again, so keeping them would write
    them twice. An output the checkpoint does not cover yet (none was saved) is
    adopted as it is, and that is saved at once: a process that dies before
    its first checkpoint must not leave lines that its restart writes again.
    Returns ``(fd, bytes cut)``; raises ``OSError``.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        if checkpoint.out != path:
            checkpoint.out, checkpoint.out_size, checkpoint.writers = path, size, {}
            save_checkpoint(checkpoint_path, checkpoint)
        cut = size - checkpoint.out_size if size > checkpoint.out_size else 0
        if cut:
            os.ftruncate(fd, checkpoint.out_size)
    except OSError:
        os.close(fd)
        raise
    return fd, cut
