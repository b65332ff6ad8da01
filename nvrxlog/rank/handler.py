"""The per-rank handler: one encode per record, copied into the process's own
rotated temp files under the node-local tmpdir.

A record goes into a shared file mapping of the current temp file: a copy into
the page cache, which is the kernel's the moment it is made (a rank killed the
next instant loses nothing), at a fraction of a ``write(2)``. The mapping
covers a chunk reserved with ``posix_fallocate`` first, so a full tmpfs is an
error at reservation, never a SIGBUS on a store. Where a file cannot be
reserved or mapped, the handler writes with ``write(2)`` instead.

Unwritten bytes of a mapped file read as NUL and a record never contains one
(JSON escapes control characters), so readers stop at the first NUL; the
writer truncates a file to its records before it moves on to the next file.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import orjson

from nvrxlog.config import LogConfig, sanitize_name
from nvrxlog.core.fileio import pwrite_all, write_all
from nvrxlog.core.record import WriterId, file_name
from nvrxlog.core.tmpdir import aggregator_alive
from nvrxlog.rank.message import MAX_MESSAGE_CHARS, full_message, unformattable
from nvrxlog.rank.safe import SafeHandler

__all__ = ["NodeLocalHandler"]

_QUOTE_CACHE = 1024
# While an aggregator is alive but behind, keep this much unconsumed backlog
# before deleting anything: retention is for an absent aggregator, not a busy one.
BEHIND_BACKLOG_BYTES = 256 << 20
# At job start the ranks begin logging before local rank 0 has its aggregator
# up; an aggregator only counts as absent once none was seen for this long.
ABSENT_GRACE_NS = 30_000_000_000
# Reserved and mapped at a time: what a writer holds in the tmpdir beyond its
# records (a data loader worker that logs twice should not pin 10 MiB of /dev/shm).
MAP_CHUNK_BYTES = 1 << 20


class _ClosedFile(NamedTuple):
    path: str
    first_seq: int
    last_seq: int


class NodeLocalHandler(SafeHandler):
    """Appends each record as one orjson line to this process's own temp file.

    A record is in the kernel when ``emit`` returns (see the module
    docstring for how it gets there). Files rotate by size;
    unconsumed files are deleted (and the loss written as a record) only when
    no aggregator holds the tmpdir's lock, or when one is far behind.
    """

    def __init__(
        self,
        tmp_dir: str,
        config: LogConfig,
        *,
        prefix: str | None = None,
    ) -> None:
        super().__init__()
        self.tmp_dir = tmp_dir
        self._config = config
        self._user_prefix = sanitize_name(prefix) if prefix else None
        self._max_bytes = config.max_file_size_kb * 1024
        self._max_files = config.max_log_files
        self._behind_files = max(self._max_files, BEHIND_BACKLOG_BYTES // self._max_bytes)
        self._ranks = (config.rank, config.local_rank, config.infra_rank, config.infra_local_rank)
        self._start_writer()

    # -- writer identity and files -------------------------------------------------

    def _start_writer(self) -> None:
        pid = os.getpid()
        self.writer = WriterId(
            prefix=self._user_prefix or str(pid),
            local_rank=self._config.node_local_rank,
            pid=pid,
            start_ns=time.time_ns(),
        )
        self._fd = -1
        # The mapped chunk of the current file; its position is where the next
        # record goes. None (no file, or write(2) mode) sends records to _write_slow.
        self._map: mmap.mmap | None = None
        self._base = 0  # file offset of the mapped chunk
        self._reserved = 0  # bytes of the current file reserved by posix_fallocate
        self._index = -1
        self._room = 0  # what is left of the file's size limit, in write(2) mode
        self._seq = 0
        self._file_first_seq = 0
        self._torn = False
        self._closed_files: deque[_ClosedFile] = deque()
        self._aggregator_seen_ns = self.writer.start_ns
        self._quoted: dict[str, bytes] = {}
        rank, local_rank, infra_rank, infra_local_rank = self._ranks
        constant = orjson.dumps(
            {
                "rank": rank,
                "local_rank": local_rank,
                "infra_rank": infra_rank,
                "infra_local_rank": infra_local_rank,
                "pid": pid,
            }
        )[1:-1]
        # One record: {"seq","ts","level","file","line", <constant>, "msg"}\n
        self._template = b'{"seq":%d,"ts":%d,"level":%b,"file":%b,"line":%d,' + constant + b',"msg":%b}\n'
        self.lost_records = 0

    def _open_next(self, first_seq: int) -> int:
        self._index += 1
        path = os.path.join(self.tmp_dir, file_name(self.writer, self._index))
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._path = path
        self._room = self._max_bytes
        self._reserved = 0
        self._file_first_seq = first_seq
        if not self._map_at(0):
            self._unmap(0)
        return self._fd

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
        if self._map is not None:
            self._map.close()
        mapped.seek(used - base)
        self._map = mapped
        self._base = base
        return True

    def _unmap(self, used: int) -> None:
        """Leave mapped mode: the file holds exactly its records, and write(2) appends after them."""
        if self._map is not None:
            self._map.close()
            self._map = None
        self._reserved = 0
        # Also after a failed reservation, which may have grown the file.
        os.ftruncate(self._fd, used)
        os.lseek(self._fd, used, os.SEEK_SET)
        self._room = self._max_bytes - used

    def _close_file(self) -> None:
        try:
            if self._map is not None:
                self._unmap(self._base + self._map.tell())
        finally:
            os.close(self._fd)
            self._fd = -1

    def _rotate(self) -> None:
        self._close_file()
        self._closed_files.append(_ClosedFile(self._path, self._file_first_seq, self._seq - 1))
        self._open_next(self._seq)
        self._enforce_retention()

    def _enforce_retention(self) -> None:
        files = self._closed_files
        # The aggregator deletes a writer's files in order once consumed, so
        # consumed files are always a prefix of this deque.
        while files and not os.path.exists(files[0].path):
            files.popleft()
        if len(files) < self._max_files:
            return
        now = time.time_ns()
        if aggregator_alive(self.tmp_dir):
            self._aggregator_seen_ns = now
        absent = now - self._aggregator_seen_ns > ABSENT_GRACE_NS
        allowed = self._max_files - 1 if absent else self._behind_files
        if len(files) <= allowed:
            return
        first = files[0].first_seq
        last = first - 1
        count = 0
        while len(files) > allowed:
            dropped = files.popleft()
            try:
                os.unlink(dropped.path)
            except FileNotFoundError:
                continue  # consumed between the check and now: nothing lost
            last = dropped.last_seq
            count += 1
        if count:
            lost = last - first + 1
            self.lost_records += lost
            text = (
                f"nvrxlog: deleted {count} unconsumed temp file(s) of this process, "
                f"records seq {first}-{last} ({lost}) are lost: the node aggregator "
                f"is absent or far behind (NVRX_LOG_MAX_LOG_FILES={self._max_files})"
            )
            self.errors.report("retention", text)
            notice = logging.makeLogRecord(
                {
                    "name": "nvrx",
                    "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": text,
                    "filename": "nvrxlog",
                    "lineno": 0,
                }
            )
            self.emit(notice)  # into the file just opened; far below a rotation

    # -- logging.Handler -----------------------------------------------------------

    def emit(self, record: logging.LogRecord, _dumps: Callable[[object], bytes] = orjson.dumps) -> None:
        # The hot path of every training step: one frame, one encode of the
        # message, one copy into the mapped file. The writer's constant fields
        # are encoded once (in _template) and level and file names once each
        # (in _quoted).
        # Anything unusual (first file, the end of a chunk, rotation, write(2)
        # mode, surrogates, exceptions) leaves this path for a helper.
        try:
            try:
                msg = record.getMessage()
            except RecursionError:
                raise
            except Exception as exc:
                msg = unformattable(record, exc, self.errors)
            if record.exc_info or record.exc_text or record.stack_info or len(msg) > MAX_MESSAGE_CHARS:
                msg = full_message(record, msg, self.errors)
            try:
                body = _dumps(msg)
            except TypeError:  # lone surrogates (e.g. from undecodable file names)
                body = _dumps(_escape_surrogates(msg))
            seq = self._seq
            self._seq = seq + 1
            level = record.levelname
            file = record.filename
            quoted = self._quoted
            data = self._template % (
                seq,
                int(record.created * 1e9),
                quoted[level] if level in quoted else self._quote(level),
                quoted[file] if file in quoted else self._quote(file),
                record.lineno,
                body,
            )
            try:
                self._map.write(data)  # type: ignore[union-attr]
            except (AttributeError, ValueError):  # no chunk mapped (None), or it is full: nothing written
                self._write_slow(data)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _quote(self, text: str) -> bytes:
        quoted = orjson.dumps(_escape_surrogates(text))
        if len(self._quoted) < _QUOTE_CACHE:  # bounded: names come from source files
            self._quoted[text] = quoted
        return quoted

    def _write_slow(self, data: bytes) -> None:
        if self._fd < 0:
            self._open_next(self._seq - 1)  # the record in hand is already numbered
        if self._map is not None:
            chunk = self._map
            used = self._base + chunk.tell()
            end = used + len(data)
            # A record that reaches the size limit is the file's last: it goes
            # in with write(2) after the file is cut to its records.
            if end < self._max_bytes:
                if end - self._base <= len(chunk):  # a file just opened
                    chunk.write(data)
                    return
                if self._map_at(end):  # past the chunk: move the mapping on
                    pwrite_all(self._fd, data, used)
                    return
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
            self._rotate()

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._fd >= 0:
                try:
                    self._close_file()
                except OSError:
                    pass
        super().close()

    def after_fork_in_child(self) -> None:
        """Start a writer of the child's own (new files, seq from 0)."""
        super().after_fork_in_child()
        # The inherited descriptor and mapping are the parent's file: writing
        # to it would interleave two processes in one file, and cutting it to
        # size would cut the parent's records off. Let go of both, untouched.
        if self._map is not None:
            try:
                self._map.close()
            except (OSError, BufferError):
                pass
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._start_writer()


def _escape_surrogates(text: str) -> str:
    # Lone surrogates (e.g. from undecodable file names) are not UTF-8.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
