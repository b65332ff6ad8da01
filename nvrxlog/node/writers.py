"""The node's writers: found by the scanner, each followed by a tail, asked now and then whether it lives.

The aggregator's reading side. ``read`` polls the tails (all of them, or
while the backlog is paused only those that block it, see ``backlog``) and
says how far the merge may go: a writer with unread data may still hold
records older than anything the others gave. ``release`` deletes what a
saved checkpoint covers and forgets writers that are done (and says which,
so the streamer forgets them too: state bounded by the writers alive).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from nvrxlog.core.record import WriterId
from nvrxlog.core.report import ErrorCounter
from nvrxlog.core.watermark import INF
from nvrxlog.node.backlog import tails_to_read
from nvrxlog.node.scanner import TmpDirScanner
from nvrxlog.node.tail import WriterTail, writer_is_dead

__all__ = ["Writers"]

_DEAD_CHECK_NS = 1_000_000_000


class Writers:
    """Every writer's tail on this node, by key and by tail id; used by the aggregator's thread."""

    def __init__(self, tmp_dir: str, notice: Callable[..., None], errors: ErrorCounter, stats: Counter[str]) -> None:
        self.tmp_dir = tmp_dir
        self.tails: dict[str, WriterTail] = {}
        self.by_tid: dict[int, WriterTail] = {}
        #: What the checkpoint found written, per writer: a restarted tail skips it.
        self.written: dict[str, int] = {}
        #: Writers in this process that said they wrote their last record (dead without asking the OS).
        self.closed: set[str] = set()
        self._scanner = TmpDirScanner(tmp_dir)
        self._notice = notice
        self._errors = errors
        self._stats = stats
        self._next_tid = 0

    def moved(self, tmp_dir: str) -> None:
        """The tmpdir's resolved path (known once it is checked)."""
        self.tmp_dir = self._scanner.tmp_dir = tmp_dir

    def scan(self, now: int, *, force: bool) -> None:
        """Add the files that appeared in the tmpdir; report entries that are not ours to read."""
        try:
            found, skipped = self._scanner.scan(now, force=force)
        except OSError as exc:
            self._errors.report("scan", f"cannot list {self.tmp_dir}: {exc.strerror}")
            return
        for writer, index, name in found:
            key = str(writer)
            tail = self.tails.get(key)
            if tail is None:
                tail = WriterTail(
                    writer, self._next_tid, self.tmp_dir, self._notice, self.written.get(key, -1), self._stats
                )
                self._next_tid += 1
                self.tails[key] = tail
                self.by_tid[tail.tid] = tail
            tail.add_file(index, name)
        if skipped:
            self._stats["skipped_entries"] += len(skipped)
            noun = "entry" if len(skipped) == 1 else "entries"
            self._notice(f"skipped {len(skipped)} {noun} in the tmpdir: {', '.join(skipped[:10])}")

    def clock_stepped_back(self, now: int) -> None:
        """After a step back of the clock: each writer's merge key starts again from its records' times."""
        for tail in self.tails.values():
            tail.cursor.key = min(tail.cursor.key, now)

    def read(self, out: list, now: int, *, final: bool, paused: bool, oldest: float) -> tuple[int, float, bool]:
        """Poll the tails into ``out``: ``(bytes read, how far the merge may go, whether a writer was found dead)``."""
        read = 0
        limit = INF
        died = False
        if paused:
            # Tails not polled now keep the data they had left.
            for tail in self.tails.values():
                if tail.more:
                    limit = min(limit, tail.cursor.key)
        closed = self.closed
        for tail in tails_to_read(self.tails.values(), paused=paused, oldest=oldest):
            got = tail.poll(out)
            read += got
            # Asking the OS whether a writer lives costs more than a read, so
            # only writers that had nothing to say are asked, at most once a
            # second; the final drain asks every writer.
            if not tail.dead and (final or not got and now - tail.checked_at >= _DEAD_CHECK_NS):
                tail.checked_at = now
                if tail.key in closed or writer_is_dead(tail.writer):
                    tail.dead = True
                    died = True
                    read += tail.poll(out)
            if tail.more:
                # Unread records of this writer may be older than what other
                # writers gave; nothing past what it has given so far is safe.
                limit = min(limit, tail.cursor.key)
        return read, limit, died

    @property
    def more(self) -> bool:
        """True if a tail stopped at its read budget with data left."""
        return any(tail.more for tail in self.tails.values())

    @property
    def busy(self) -> bool:
        """True while a writer lives or has data left."""
        return any(not tail.dead or tail.more for tail in self.tails.values())

    def live(self) -> list[WriterId]:
        """Writers that were alive at the last look."""
        return [tail.writer for tail in self.tails.values() if not tail.dead]

    def emitted(self) -> dict[str, int]:
        """Per writer, the highest seq written: what a checkpoint saves."""
        return {key: t.emitted_seq for key, t in self.tails.items() if t.emitted_seq >= 0}

    def release(self) -> list[str]:
        """After a saved checkpoint: delete the files it covers, forget writers with nothing left; their keys.

        A writer forgotten here has every record in the per-node file, in a
        saved checkpoint and (when forwarding) in the spool, and no file left
        to read it from again: the streamer may forget it too.
        """
        ended = []
        for key, tail in list(self.tails.items()):
            tail.release(tail.emitted_seq)
            if tail.done:
                del self.tails[key]
                del self.by_tid[tail.tid]
                self.closed.discard(key)
                if tail.emitted_seq >= 0:  # one that never wrote a record is unknown downstream
                    ended.append(key)
        return ended

    def close(self) -> None:
        """Close every tail's open file (the files stay)."""
        for tail in self.tails.values():
            tail.close()
