"""An append-only output file and its checkpoint, shared by the aggregator and the streamer.

The checkpoint records, per writer, the highest sequence number in the file,
and the file's size at that moment, saved atomically (the streamer adds its
batch floors, see ``streamer/floors.py``). After a ``kill -9`` the
file is cut back to that size and the writers' records are produced again,
the cursors skipping what the checkpoint covers: nothing lost, nothing doubled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import orjson

from nvrxlog.core.fileio import close_quietly, open_own, replace_file, write_all
from nvrxlog.core.lock import Busy, FileLock
from nvrxlog.errors import OutputError

__all__ = ["Checkpoint", "CheckpointedOutput", "load_checkpoint", "lock_path", "save_checkpoint"]

_VERSION = 1


@dataclass(slots=True)
class Checkpoint:
    """Positions that are durable in the output."""

    out: str = ""
    out_size: int = 0
    writers: dict[str, int] = field(default_factory=dict)
    out_id: str = ""  # "st_dev:st_ino" of the file it describes ("" in checkpoints from before it was kept)
    floors: dict[str, dict[str, int]] = field(default_factory=dict)  # the streamer's: node -> spool run -> seq
    keys: dict[str, int] = field(default_factory=dict)  # the streamer's: writer -> merge key of its last line

    def covers(self, path: str, file_id: str) -> bool:
        """This checkpoint describes the very file now at ``path`` (only then may recovery cut it back)."""
        return self.out == path and (not self.out_id or self.out_id == file_id)


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
                out_id=str(raw.get("out_id", "")),
                floors={
                    str(node): {str(run): int(seq) for run, seq in runs.items()}
                    for node, runs in raw.get("floors", {}).items()
                },
                keys={str(k): int(v) for k, v in raw.get("keys", {}).items()},
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
            "out_id": checkpoint.out_id,
            "floors": checkpoint.floors,
            "keys": checkpoint.keys,
        }
    )
    replace_file(path, data, durable=True)


def lock_path(path: str) -> str:
    """The lock file beside the output at ``path``."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


class CheckpointedOutput:
    """The output file at ``path`` with its checkpoint at ``checkpoint_path``.

    ``open()`` takes the output's lock and recovers (returns the writers'
    checkpointed seqs), ``write()`` appends whole or not at all, ``save()``
    checkpoints what is written, ``close()`` lets go of the file and the lock.
    One process at a time: two writers of one file (two streamers with one
    ``--out``, two jobs' aggregators with one log dir and node id) would each
    cut the other's lines at recovery and checkpoint over each other.
    """

    def __init__(self, path: str, checkpoint_path: str) -> None:
        self.path = path
        self.checkpoint_path = checkpoint_path
        self.problem: str | None = None  # what recovery found wrong with the checkpoint
        self.cut = 0  # bytes past the checkpoint that recovery cut off
        self._ckpt = Checkpoint()
        self._fd = -1
        self._lock = FileLock()

    def open(self) -> dict[str, int]:
        """Open for appending, cut back to what the checkpoint covers; the checkpointed seqs per writer.

        Bytes past the checkpoint were written by a process that died before
        it could checkpoint them; they are produced again, so keeping them
        would write them twice. A file the checkpoint does not cover yet
        (none was saved) is adopted as it is, and that is saved at once: a
        process that dies before its first checkpoint must not leave lines
        that its restart writes again. Raises ``OutputError`` when another
        process holds the output (after waiting briefly, so a predecessor
        handing over can let go), else ``OSError``.
        """
        self._take_lock()
        try:
            return self._recover()
        except BaseException:
            self._lock.release()
            raise

    def _take_lock(self) -> None:
        try:
            self._lock.take(lock_path(self.path))
        except Busy as busy:
            pid = f" (pid {busy.pid})" if busy.pid else ""
            raise OutputError(
                f"{self.path} is already written by another process{pid}; refusing to write it too "
                "(give each streamer its own --out, each job its own log dir or node id)"
            ) from None

    def _recover(self) -> dict[str, int]:
        self._ckpt, self.problem = load_checkpoint(self.checkpoint_path)
        ckpt = self._ckpt
        fd = open_own(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            st = os.fstat(fd)
            size, file_id = st.st_size, f"{st.st_dev}:{st.st_ino}"
            if not ckpt.covers(self.path, file_id):
                # Another file than the one checkpointed (replaced since): it is
                # adopted as it is and never cut back to a size that is not its own.
                if ckpt.out == self.path:
                    self.problem = f"{self.path} is not the file its checkpoint describes; adopted as it is"
                ckpt.out, ckpt.out_size, ckpt.writers, ckpt.floors, ckpt.keys = self.path, size, {}, {}, {}
                ckpt.out_id = file_id
                save_checkpoint(self.checkpoint_path, ckpt)
            ckpt.out_id = file_id
            self.cut = size - ckpt.out_size if size > ckpt.out_size else 0
            if self.cut:
                os.ftruncate(fd, ckpt.out_size)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        return dict(ckpt.writers)

    @property
    def floors(self) -> dict[str, dict[str, int]]:
        """The batch floors the checkpoint held when opened (the streamer's; empty for the aggregator's)."""
        return self._ckpt.floors

    @property
    def keys(self) -> dict[str, int]:
        """Per writer, the merge key of its last line, as the checkpoint held it (the streamer's)."""
        return self._ckpt.keys

    @property
    def size(self) -> int:
        """Bytes in the file now."""
        return os.lseek(self._fd, 0, os.SEEK_END)

    def write(self, data: bytes) -> None:
        """Append ``data`` whole, or raise ``OSError`` with the file as it was (a partial write cut off)."""
        before = self.size
        try:
            write_all(self._fd, data)
        except OSError:
            try:
                os.ftruncate(self._fd, before)
            except OSError:
                pass
            raise

    def save(
        self,
        writers: dict[str, int],
        floors: dict[str, dict[str, int]] | None = None,
        keys: dict[str, int] | None = None,
    ) -> None:
        """Checkpoint the file size now with the writers' seqs (``floors``, ``keys`` too), durably; raises ``OSError``.

        What the checkpoint covers is on disk first, and the checkpoint itself
        is when this returns: what follows a checkpoint (an ack, deleting the
        records' temp files) holds after a host crash too. Callers save once
        per flush interval, so that is one sync per interval (group commit).
        """
        os.fdatasync(self._fd)
        ckpt = self._ckpt
        ckpt.out = self.path
        ckpt.out_size = self.size
        ckpt.writers = writers
        if floors is not None:
            ckpt.floors = floors
        if keys is not None:
            ckpt.keys = keys
        save_checkpoint(self.checkpoint_path, ckpt)

    def close(self) -> None:
        """Close the file and let go of its lock (safe twice)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._lock.release()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the inherited descriptors, keeping the parent's lock (it still writes)."""
        self._fd = close_quietly(self._fd)
        self._lock.forget_after_fork()
