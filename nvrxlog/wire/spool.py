"""The forwarder's on-disk spool: batches waiting for the streamer's acknowledgement.

Batches are appended as orjson lines (``{"b": seq, "c": watermark, "n": count,
"o": run, ...}``, the records packed as columns by ``columns``) to segment
files; a segment is deleted once every batch in it is acknowledged. The
spool is bounded: past ``max_bytes`` its oldest segment is dropped and the
batch range it held is returned so the loss can be stated exactly.

``run`` names this opening of the spool (random, new each time, unlike the
``identity`` kept across restarts): seqs only grow within a run, so the
streamer may drop a resent batch at or below the highest it acknowledged of
that run whatever happened to the spool since (deleted, its acknowledged
position lost and seqs reused); a resent batch keeps the run it was spooled in."""

from __future__ import annotations

import os
import re
import secrets
import threading
from dataclasses import dataclass
from typing import BinaryIO

import orjson

from nvrxlog.core.fileio import open_own, replace_file, sync_directory, write_all
from nvrxlog.core.record import bounded_record
from nvrxlog.wire.columns import pack

__all__ = ["Spool", "Dropped"]

_SEGMENT = re.compile(r"^seg-(\d{12})\.nvs$")
_ACKED = "acked"
_LOST = "lost.json"
_IDENTITY = "id"
_LIMIT = "limit"
_IDENTITY_FORM = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class Dropped:
    """Batches lost on the way (to the spool limit, unless ``why`` says otherwise)."""

    first: int
    last: int
    records: int
    why: str = "the spool limit"


@dataclass(slots=True)
class _Segment:
    """One segment file and what it holds."""

    path: str
    size: int  # bytes of whole batches
    last: int  # seq of its last batch (first - 1 while empty)
    counts: dict[int, int]  # batch seq -> records of the job in it


def _batch_line(seq: int, watermark: int, count: int, run: str, ended: list | tuple, body: dict) -> bytes:
    head = {"b": seq, "c": watermark, "n": count, "o": run}
    if ended:
        head["e"] = ended
    return orjson.dumps({**head, **body}) + b"\n"


class Spool:
    """Append-only segments of batches; thread-safe (one appender, one reader)."""

    def __init__(self, directory: str, *, max_bytes: int = 1 << 30, segment_bytes: int = 4 << 20) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max(max_bytes // 4, 4096))
        self._lock = threading.Lock()
        #: This opening of the spool, in every batch appended (see the module docstring).
        self.run = secrets.token_hex(8)
        os.makedirs(directory, exist_ok=True)
        #: This spool's identity, made with it and kept across restarts: the
        #: streamer tells this node's sessions from another's claiming its name.
        self.identity = self._load_identity()
        self.acked = self._load_acked()
        self._saved_acked: int | None = self.acked  # what the file holds (None: unknown)
        self._segments: dict[int, _Segment] = {}  # by the seq of the segment's first batch
        self.next_seq = self.acked + 1
        for name in sorted(os.listdir(directory)):
            match = _SEGMENT.match(name)
            if match and not os.path.islink(os.path.join(directory, name)):  # a planted link is not a segment
                self._recover_segment(int(match[1]), os.path.join(directory, name))
        self._fd = -1
        self._current = -1
        self._unsynced = False  # appended since the last sync
        self._new_segment = False  # a segment made since the last sync (its name is in the directory only)
        self._cursor = self.acked + 1  # the next batch seq to hand out for sending
        self._reader: tuple[int, int] | None = None  # (segment first seq, offset)
        self._rfile: BinaryIO | None = None
        self._rfile_first = -1

    # -- appending (the aggregator's thread) ----------------------------------------

    def append(
        self, records: list, watermark: int, *, count: int | None = None, ended: list | tuple = ()
    ) -> tuple[int, list[Dropped]]:
        """Spool one batch; return its seq and any batches dropped to stay in bounds.

        Raises OSError with the spool as it was (the batch not in it).

        ``watermark``: the node has now handed over every record up to this time.
        ``count``: how many of ``records`` are the job's own (default: all).
        ``ended``: writers whose last record is in this batch or an earlier one.
        """
        body = pack(records)
        with self._lock:
            seq = self.next_seq
            n = len(records) if count is None else count
            try:
                data = _batch_line(seq, watermark, n, self.run, ended, body)
            except TypeError:  # a field nested past orjson's limit (from a file or a peer): spooled bounded
                bounded = pack([bounded_record(record) for record in records])
                data = _batch_line(seq, watermark, n, self.run, ended, bounded)
            if self._fd < 0 or self._segments[self._current].size >= self.segment_bytes:
                self._roll(seq)
            segment = self._segments[self._current]
            try:
                write_all(self._fd, data)
            except OSError:
                # A full disk can cut the batch mid-line; the next one would
                # be glued to it and both lost. Cut back to the whole batches;
                # the seq is not used, so a retry takes it.
                try:
                    os.ftruncate(self._fd, segment.size)
                except OSError:
                    pass
                raise
            self.next_seq += 1
            self._unsynced = True
            segment.size += len(data)
            segment.last = seq
            segment.counts[seq] = n
            return seq, self._enforce_limit()

    def _roll(self, seq: int) -> None:
        if self._fd >= 0:
            if self._unsynced:
                os.fdatasync(self._fd)  # ``sync`` sees only the segment being written
            os.close(self._fd)
            self._fd = -1  # if the open below fails, the next append tries again (never a stale fd)
        path = os.path.join(self.directory, f"seg-{seq:012d}.nvs")
        self._fd = open_own(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments[seq] = _Segment(path, 0, seq - 1, {})
        self._current = seq
        self._new_segment = True

    def sync(self) -> None:
        """Make every batch appended so far durable (it survives a host crash); raises OSError.

        The node's checkpoint counts spooled records as forwarded and lets
        their temp files be deleted, so it must follow this; one sync per
        checkpoint interval, however many batches (group commit).
        """
        with self._lock:
            if self._unsynced and self._fd >= 0:
                os.fdatasync(self._fd)
            if self._new_segment:
                sync_directory(self.directory)
            self._unsynced = self._new_segment = False

    def _enforce_limit(self) -> list[Dropped]:
        dropped = []
        while sum(s.size for s in self._segments.values()) > self.max_bytes and len(self._segments) > 1:
            first = min(self._segments)
            segment = self._segments.pop(first)
            os.unlink(segment.path)
            last = segment.last
            if last > self.acked:
                lost = sum(n for seq, n in segment.counts.items() if seq > self.acked)
                dropped.append(Dropped(max(first, self.acked + 1), last, lost))
                self.acked = last
                self._cursor = max(self._cursor, last + 1)
                self._reader = None
        return dropped

    # -- sending and acknowledging (the forwarder's thread) -------------------------

    def rewind(self) -> None:
        """Hand out again from the first unacknowledged batch (after a reconnect)."""
        with self._lock:
            self._cursor = self.acked + 1
            self._reader = None

    def next_batch(self) -> tuple[int, bytes] | None:
        """The next batch to send, as ``(seq, payload)``, or None when all are out."""
        with self._lock:
            if self._cursor >= self.next_seq:
                return None
            while True:
                if self._reader is None:
                    self._reader = self._locate(self._cursor)
                    if self._reader is None:
                        return None
                first, offset = self._reader
                segment = self._segments.get(first)
                if segment is None:  # dropped or acknowledged meanwhile
                    self._reader = None
                    continue
                f = self._reader_file(first, segment.path)
                f.seek(offset)
                line = f.readline()
                if not line and first != self._current:
                    # The end of a finished segment: go on with the next one.
                    following = self._locate(self._cursor)
                    if following is None or following[0] == first:
                        return None
                    self._reader = following
                    continue
                if not line.endswith(b"\n"):
                    return None  # nothing more yet in the segment being written
                self._reader = (first, offset + len(line))
                seq = _seq_of(line)
                if seq is None or seq < self._cursor:
                    continue  # a batch before the cursor (already acknowledged)
                self._cursor = seq + 1
                return seq, line[:-1]

    def _reader_file(self, first: int, path: str) -> BinaryIO:
        # Kept open while the reader stays in one segment: one open per segment, not per batch.
        if self._rfile is None or self._rfile_first != first:
            if self._rfile is not None:
                self._rfile.close()
            self._rfile = open(path, "rb")  # noqa: SIM115  (closed on move, in close())
            self._rfile_first = first
        return self._rfile

    def _locate(self, seq: int) -> tuple[int, int] | None:
        starts = sorted(first for first, s in self._segments.items() if s.last >= seq)
        return (starts[0], 0) if starts else None

    def ack(self, seq: int) -> OSError | None:
        """Everything up to ``seq`` is durable at the streamer: free its segments, save the position.

        Returns the error if the position could not be saved (a full disk):
        it is kept in memory, so forwarding goes on, and ``save_acked``
        retries. Until it is saved a restart resends those batches, which the
        streamer drops as duplicates: nothing is lost, nothing doubled.
        """
        with self._lock:
            if seq > self.acked:
                self.acked = min(seq, self.next_seq - 1)
                for first in sorted(self._segments):
                    segment = self._segments[first]
                    if segment.last <= self.acked and first != self._current:
                        del self._segments[first]
                        _unlink(segment.path)  # first: it frees the space the save may need
                self._saved_acked = None
            return self._save_acked()

    def save_acked(self) -> OSError | None:
        """Retry saving an acknowledged position that could not be saved; the error if it still cannot."""
        with self._lock:
            return self._save_acked()

    @property
    def acked_unsaved(self) -> bool:
        """True while the acknowledged position in memory is ahead of the one on disk."""
        return self._saved_acked != self.acked

    def _save_acked(self) -> OSError | None:
        if self._saved_acked == self.acked:
            return None
        try:
            replace_file(os.path.join(self.directory, _ACKED), str(self.acked).encode())
        except OSError as exc:
            return exc
        self._saved_acked = self.acked
        return None

    @property
    def unacked(self) -> int:
        """Records spooled but not yet acknowledged."""
        with self._lock:
            acked = self.acked
            return sum(n for s in self._segments.values() for seq, n in s.counts.items() if seq > acked)

    @property
    def all_sent(self) -> bool:
        """True when every spooled batch has been handed out for sending."""
        with self._lock:
            return self._cursor >= self.next_seq

    @property
    def pending_batches(self) -> int:
        """Batches not yet acknowledged."""
        return self.next_seq - 1 - self.acked

    def load_limit(self, default: int) -> int:
        """The message limit the streamer last announced (batches spooled before its welcome are cut to it)."""
        try:
            with open(os.path.join(self.directory, _LIMIT)) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return default

    def save_limit(self, limit: int) -> None:
        """Keep the announced message limit for the next run; raises OSError."""
        replace_file(os.path.join(self.directory, _LIMIT), str(limit).encode())

    def load_lost(self) -> list[Dropped]:
        """Losses not yet reported to the streamer (kept across restarts)."""
        try:
            with open(os.path.join(self.directory, _LOST), "rb") as f:
                return [Dropped(*x) for x in orjson.loads(f.read())]
        except (OSError, ValueError, TypeError):
            return []

    def save_lost(self, lost: list[Dropped]) -> None:
        """Persist the unreported losses atomically."""
        replace_file(
            os.path.join(self.directory, _LOST), orjson.dumps([(d.first, d.last, d.records, d.why) for d in lost])
        )

    def close(self) -> None:
        """Close the open segment (the files stay for the next run)."""
        with self._lock:
            if self._fd >= 0:
                if self._unsynced:
                    # The next spool opened here syncs only its own appends, and the node's
                    # next checkpoint counts on these too (a forwarder restarted between).
                    try:
                        os.fdatasync(self._fd)
                    except OSError:
                        pass  # a disk failing: closing still lets go of the file
                os.close(self._fd)
                self._fd = -1
            if self._rfile is not None:
                self._rfile.close()
                self._rfile = None
            self._save_acked()  # a last try; if it fails the next run resends, deduplicated
            for first in [f for f, s in self._segments.items() if s.last <= self.acked]:
                _unlink(self._segments.pop(first).path)

    # -- recovery -------------------------------------------------------------------

    def _load_identity(self) -> str:
        path = os.path.join(self.directory, _IDENTITY)
        try:
            with open(path) as f:
                identity = f.read().strip()
            if _IDENTITY_FORM.match(identity):
                return identity
        except (OSError, ValueError):
            pass
        identity = secrets.token_hex(16)
        try:
            replace_file(path, identity.encode(), durable=True)
        except OSError:
            # A full disk: this run still has one identity; a restart makes
            # another, and waits out the old session (see protocol.py).
            pass
        return identity

    def _load_acked(self) -> int:
        try:
            with open(os.path.join(self.directory, _ACKED)) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _recover_segment(self, first: int, path: str) -> None:
        last, size = first - 1, 0
        counts: dict[int, int] = {}
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn by a crash mid-append: that batch was never acknowledged nor sent whole
                try:
                    batch = orjson.loads(line)
                    seq, count = int(batch["b"]), int(batch["n"])
                except (ValueError, KeyError, TypeError):
                    break
                size += len(line)
                last = seq
                counts[seq] = count
        if size != os.path.getsize(path):
            os.truncate(path, size)
        if last < first or last <= self.acked:
            os.unlink(path)
            return
        self._segments[first] = _Segment(path, size, last, counts)
        self.next_seq = max(self.next_seq, last + 1)


def _unlink(path: str) -> None:
    # A segment someone deleted by hand (to free a full disk) is as good as freed.
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _seq_of(line: bytes) -> int | None:
    # Batches start with {"b":<seq>, so the seq is read without decoding the records.
    if not line.startswith(b'{"b":'):
        return None
    end = line.find(b",", 5)
    try:
        return int(line[5:end])
    except ValueError:
        return None
