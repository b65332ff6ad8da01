"""Following one writer's temp files: whole records only, rotation in order.

A tail reads its writer's current file from where it stopped, hands over only
complete lines (a line without its newline is still being written; a mapped
file reads as NUL where nothing is written yet), and moves
to the next file only after it knows the writer has moved on (a later file
exists, so the earlier one is final) or has died. Records are de-duplicated and
checked for gaps by the writer's sequence number, which is also what the
aggregator checkpoints: a restart re-reads the files that are left and skips
what was already written (``core/cursor.py`` decides).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import psutil

from nvrxlog.core.cursor import WriterCursor
from nvrxlog.core.record import WriterId, decode_lines, file_name, text_messages

__all__ = ["WriterTail", "writer_is_dead", "MAX_LINE_BYTES"]

# The handler caps a message at 1 Mi characters; escaped as JSON that is at
# most a few MiB. Anything longer without a newline is not a record.
MAX_LINE_BYTES = 16 << 20
_READ_CHUNK = 1 << 20
# The first read of a poll: a live writer's mapped file reads as NULs past its
# records, so an idle poll costs a read of this size, not of _READ_CHUNK.
_PROBE = 4 << 10

#: Reports a problem as a line in the output: ``notice(text, ts=None)``.
Notice = Callable[..., None]


@dataclass(slots=True)
class _Finished:
    path: str
    last_seq: int


def writer_is_dead(writer: WriterId) -> bool:
    """True once ``writer``'s process is gone (or its pid now belongs to another)."""
    try:
        proc = psutil.Process(writer.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        # A pid reused by a process started after this writer is not our writer.
        return proc.create_time() > writer.start_ns / 1e9 + 1.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.AccessDenied:
        return False


class WriterTail:
    """Reads one writer's files in index order; see the module docstring."""

    def __init__(
        self,
        writer: WriterId,
        tid: int,
        tmp_dir: str,
        notice: Notice,
        last_seq: int = -1,
        stats: Counter[str] | None = None,
    ) -> None:
        self.writer = writer
        self.key = str(writer)  # stable across restarts: what the streamer de-duplicates by
        self.tid = tid  # small unique int: merge tuples compare it, never the records
        self.tmp_dir = tmp_dir
        self._notice = notice
        self._stats: Counter[str] = Counter() if stats is None else stats  # "missing_records" counted here
        self.files: dict[int, str] = {}  # index -> name, not yet opened
        self.cursor = WriterCursor(last_seq)  # what was handed over (or written before a restart)
        self.emitted_seq = last_seq  # highest seq written to the output
        self.rank: object = None  # the workload rank its records carry (for summaries)
        self.dead = False
        self.more = False  # the last poll stopped at its budget with data left
        self.checked_at = 0  # when the aggregator last asked whether the writer lives
        self._index = -1
        self._fd = -1
        self._path = ""
        self._partial = b""
        self._skipping = False  # inside an over-long line, dropping to its end
        self._finished: list[_Finished] = []

    @property
    def done(self) -> bool:
        """Dead, every file read, and every file deleted: nothing left to do."""
        return self.dead and self._fd < 0 and not self.files and not self._finished

    def add_file(self, index: int, name: str) -> None:
        """Tell the tail that file ``index`` of its writer exists."""
        if index > self._index and index not in self.files:
            self.files[index] = name

    def poll(self, out: list, budget: int = 1 << 20) -> int:
        """Append ``(key, tid, seq, record)`` per new complete record; return bytes read.

        Reads at most about ``budget`` bytes, so a large backlog is taken in
        bounded steps; ``more`` tells whether unread data is left.
        """
        total = 0
        self.more = False
        while True:
            if self._fd < 0 and not self._open_next():
                return total
            # A later file means this one is final; a dead writer writes no more.
            final = bool(self.files) or self.dead
            got, at_end = self._read_available(out, budget - total, final)
            total += got
            if not at_end:
                self.more = True
                return total
            if final:
                self._finish_current()
                continue
            return total

    def _open_next(self) -> bool:
        # A directory listing that races file creation can miss file N while
        # already showing N+1, so the listing only says "a later file exists";
        # which file comes next is decided by probing names in index order.
        # A writer's existing files are contiguous: both the writer's retention
        # and release() delete a prefix.
        if not self.files:
            return False
        if self._index < 0:
            index = min(self.files)
            while index > 0 and os.path.lexists(self._path_of(index - 1)):
                index -= 1
        else:
            index = self._index + 1
        last = max(self.files)
        while index <= last:
            name = self.files.pop(index, None) or os.path.basename(self._path_of(index))
            self._index = index
            try:
                self._fd = os.open(os.path.join(self.tmp_dir, name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:
                # Deleted by the writer's retention before we got to it; the
                # sequence gap reports exactly which records went with it.
                index += 1
                continue
            except OSError as exc:
                self._notice(f"cannot read temp file {name}: {exc}; skipped")
                index += 1
                continue
            self._path = os.path.join(self.tmp_dir, name)
            self._partial = b""
            self._skipping = False
            for stale in [i for i in self.files if i <= index]:
                del self.files[stale]
            return True
        return False

    def _path_of(self, index: int) -> str:
        return os.path.join(self.tmp_dir, file_name(self.writer, index))

    def _read_available(self, out: list, budget: int, final: bool) -> tuple[int, bool]:
        """Read up to ``budget`` bytes; return ``(bytes read, reached the end)``.

        A writer's NUL is where it has not written yet: the read stops there
        and resumes there next time. In a ``final`` file the NULs are what a
        writer that died in mapped mode left unwritten, and are dropped.
        """
        fd = self._fd
        if fd < 0:
            return 0, True
        chunks = [self._partial] if self._partial else []
        total = 0
        at_end = False
        want = _PROBE
        while total < budget:
            want = min(want, budget - total)
            chunk = os.read(fd, want)
            short = len(chunk) < want
            nul = chunk.find(b"\0")
            if nul >= 0:
                if final:
                    chunk = chunk.replace(b"\0", b"")
                else:
                    os.lseek(fd, nul - len(chunk), os.SEEK_CUR)
                    chunk = chunk[:nul]
                    short = True
            total += len(chunk)
            if chunk:
                chunks.append(chunk)
            if short:
                at_end = True
                break
            want = _READ_CHUNK
        if not total:
            return 0, at_end
        data = b"".join(chunks)
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self._partial = b""
                return total, at_end
            self._skipping = False
            data = data[nl + 1 : cut]
        else:
            data = data[:cut]
        if len(self._partial) > MAX_LINE_BYTES:
            self._notice(
                f"a line over {MAX_LINE_BYTES} bytes without a newline in {os.path.basename(self._path)}; dropped"
            )
            self._partial = b""
            self._skipping = True
        if data:
            self._take(data.split(b"\n")[:-1], out)
        return total, at_end

    def _take(self, lines: list[bytes], out: list) -> None:
        lines = [line for line in lines if line] if b"" in lines else lines
        values, bad = decode_lines(lines)
        samples = [line[:120] for line in bad]
        not_text = text_messages(values)
        if not_text:
            self._stats["bad_messages"] += not_text
            name = os.path.basename(self._path)
            self._notice(f"{not_text} record(s) in {name} had a msg that is not text; shown cut short")
        if values and self.rank is None and type(values[0]) is dict:
            self.rank = values[0].get("rank")
        cursor = self.cursor
        admit = cursor.admit
        append = out.append
        tid = self.tid
        for record in values:
            try:
                seq = record["seq"]
                key = record["ts"]
                # Valid JSON is not enough: the merge orders and de-duplicates by these two ints.
                if type(seq) is not int or type(key) is not int:
                    raise TypeError
            except (KeyError, TypeError, IndexError):
                samples.append(orjson.dumps(record)[:120])
                continue
            missing = seq - cursor.seq - 1
            key = admit(seq, key)
            if key is None:
                continue  # already written before a restart
            if missing:
                self._stats["missing_records"] += missing
                # Stamped like the record after the gap, so it reads in place.
                self._notice(f"records seq {seq - missing}-{seq - 1} ({missing}) of {self.writer} are missing", key)
            append((key, tid, seq, record))
        if samples:
            self._notice(
                f"skipped {len(samples)} malformed line(s) in {os.path.basename(self._path)} (first: {samples[0]!r})"
            )

    def _finish_current(self) -> None:
        if self._fd >= 0:
            if self._partial:
                self._notice(
                    f"a half-written record ({len(self._partial)} bytes) at the end of "
                    f"{os.path.basename(self._path)} was left by its writer; skipped"
                )
            os.close(self._fd)
            self._fd = -1
            self._finished.append(_Finished(self._path, self.cursor.seq))
        self._partial = b""
        self._skipping = False

    def release(self, checkpointed_seq: int) -> None:
        """Delete finished files whose every record is in a written checkpoint."""
        keep = []
        for finished in self._finished:
            if finished.last_seq <= checkpointed_seq:
                try:
                    os.unlink(finished.path)
                except FileNotFoundError:
                    pass
            else:
                keep.append(finished)
        self._finished = keep

    def close(self) -> None:
        """Close the open file, if any (files stay on disk)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
