"""A writer's rotated temp files, written through a shared mapping or with ``write(2)``.

A record goes into a shared file mapping of the current temp file: a copy into
the page cache, which is the kernel's the moment it is made (a rank killed the
next instant loses nothing), at a fraction of a ``write(2)``. The mapping
covers a chunk reserved with ``posix_fallocate`` first, so a full tmpfs is an
error at reservation, never a SIGBUS on a store. Where a file cannot be
reserved or mapped, records go in with ``write(2)`` instead.

Unwritten bytes of a mapped file read as NUL and a record never contains one
(JSON escapes control characters), so readers stop at the first NUL; a file is
cut to its records before the next one is created, so "a later file exists"
means "this one is final".
"""

from __future__ import annotations

import mmap
import os
import time

from nvrxlog.core.fileio import close_quietly, pwrite_all, write_all
from nvrxlog.core.record import WriterId, file_name
from nvrxlog.core.tmpdir import aggregator_alive
from nvrxlog.rank.retention import Loss, Retention

__all__ = ["MAP_CHUNK_BYTES", "TempFiles"]

# Reserved and mapped at a time: what a writer holds in the tmpdir beyond its
# records (a data loader worker that logs twice should not pin 10 MiB of /dev/shm).
MAP_CHUNK_BYTES = 1 << 20


class TempFiles:
    """The current temp file of one writer: its mapped chunk, rotation and retention.

    ``map`` is the mapped chunk, positioned where the next record goes; the
    handler copies a record into it directly and calls ``write`` for
    everything else (no file yet, the end of a chunk, rotation, ``write(2)`` mode).
    """

    def __init__(self, tmp_dir: str, writer: WriterId, *, max_bytes: int, retention: Retention) -> None:
        self.tmp_dir = tmp_dir
        self.writer = writer
        self.retention = retention
        self.map: mmap.mmap | None = None
        self._max_bytes = max_bytes
        self._fd = -1
        self._path = ""
        self._base = 0  # file offset of the mapped chunk
        self._reserved = 0  # bytes of the current file reserved by posix_fallocate
        self._index = -1
        self._room = 0  # what is left of the file's size limit, in write(2) mode
        self._first_seq = 0
        self._torn = False

    def write(self, data: bytes, seq: int) -> Loss | None:
        """Append record ``seq`` (``data``) off the fast path; what retention lost if the file rotated."""
        if self._fd < 0:
            self._open_next(seq)
        if self.map is not None:
            chunk = self.map
            used = self._base + chunk.tell()
            end = used + len(data)
            # A record that reaches the size limit is the file's last: it goes
            # in with write(2) after the file is cut to its records.
            if end < self._max_bytes:
                if end - self._base <= len(chunk):  # a file just opened
                    chunk.write(data)
                    return None
                if self._map_at(end):  # past the chunk: move the mapping on
                    pwrite_all(self._fd, data, used)
                    return None
            self._unmap(used)
        if self._torn:
            # The previous record was cut short by a failed write: start on a
            # fresh line so the fragment stays a separate, recognisable bad line.
            data = b"\n" + data
        written = os.write(self._fd, data)
        if written != len(data):
            # Set before the rest is written: if that raises, the next record
            # must know (and starts on a fresh line).
            self._torn = True
            write_all(self._fd, memoryview(data)[written:])
        self._torn = False
        self._room -= len(data)
        if self._room <= 0:
            return self._rotate(seq + 1)
        return None

    def close(self) -> None:
        """Cut the current file to its records and close it (the file stays for the aggregator)."""
        if self._fd < 0:
            return
        try:
            if self.map is not None:
                self._unmap(self._base + self.map.tell())
        finally:
            os.close(self._fd)
            self._fd = -1

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the parent's file and mapping, untouched.

        Writing to them would interleave two processes in one file, and
        cutting the file to size would cut the parent's records off.
        """
        if self.map is not None:
            try:
                self.map.close()
            except (OSError, BufferError):
                pass
            self.map = None
        self._fd = close_quietly(self._fd)

    # -- files and chunks -----------------------------------------------------------

    def _open_next(self, first_seq: int) -> None:
        self._index += 1
        path = os.path.join(self.tmp_dir, file_name(self.writer, self._index))
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._path = path
        self._room = self._max_bytes
        self._reserved = 0
        self._first_seq = first_seq
        if not self._map_at(0):
            self._unmap(0)

    def _map_at(self, used: int) -> bool:
        """Map the chunk holding file offset ``used``, reserving it first; False if that failed.

        A tmpdir that cannot reserve or map a chunk is full or does not
        support it; the caller then leaves the file in ``write(2)`` mode.
        """
        base = used - used % mmap.ALLOCATIONGRANULARITY
        length = min(MAP_CHUNK_BYTES, self._max_bytes - base)
        try:
            if base + length > self._reserved:
                os.posix_fallocate(self._fd, self._reserved, base + length - self._reserved)
                self._reserved = base + length
            mapped = mmap.mmap(self._fd, length, offset=base)
        except (OSError, ValueError):
            return False
        if self.map is not None:
            self.map.close()
        mapped.seek(used - base)
        self.map = mapped
        self._base = base
        return True

    def _unmap(self, used: int) -> None:
        """Leave mapped mode: the file holds exactly its records, and write(2) appends after them."""
        if self.map is not None:
            self.map.close()
            self.map = None
        self._reserved = 0
        # Also after a failed reservation, which may have grown the file.
        os.ftruncate(self._fd, used)
        os.lseek(self._fd, used, os.SEEK_SET)
        self._room = self._max_bytes - used

    def _rotate(self, next_seq: int) -> Loss | None:
        self.close()
        self.retention.closed(self._path, self._first_seq, next_seq - 1)
        self._open_next(next_seq)
        deleted = []
        for dropped in self.retention.to_drop(time.time_ns(), _consumed, lambda: aggregator_alive(self.tmp_dir)):
            try:
                os.unlink(dropped.path)
            except FileNotFoundError:
                continue  # consumed between the check and now: nothing lost
            deleted.append(dropped)
        return Retention.loss(deleted)


def _consumed(path: str) -> bool:
    return not os.path.exists(path)
