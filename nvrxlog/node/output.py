"""The per-node file: what the merge released is written, counted, spooled, and checkpointed.

``core/output`` appends to a file and checkpoints it safely; this is what a
write means for the node. A written batch moves its writers' tails on (the
highest seq each wrote is what the next checkpoint saves, and what lets their
finished files be deleted), adds to the per-rank and per-level counts a
service prints at exit, and, when forwarding, is spooled *before* the
checkpoint that covers it: a ``kill -9`` in between re-sends (de-duplicated)
rather than loses. A write that fails leaves the file as it was, so the
caller holds the records again and the retry neither loses nor doubles them.
"""

from __future__ import annotations

import errno
import time
from collections import Counter
from collections.abc import Callable
from operator import itemgetter
from typing import TYPE_CHECKING

from nvrxlog.core.lines import LineFormat
from nvrxlog.core.output import CheckpointedOutput
from nvrxlog.core.report import ErrorCounter
from nvrxlog.errors import OutputError

if TYPE_CHECKING:
    from nvrxlog.node.forwarding import Forwarding
    from nvrxlog.node.writers import Writers

__all__ = ["NodeOutput", "checkpoint_due"]

_TID, _SEQ, _RECORD = itemgetter(1), itemgetter(2), itemgetter(3)
_LEVEL = itemgetter("level")


def checkpoint_due(*, final: bool, unsaved: bool, since_ns: int, interval_ns: int, spooling: bool = False) -> bool:
    """Whether to checkpoint now: at the final drain, or when something is unsaved and the interval passed.

    "Unsaved" is records written since the last checkpoint, or a writer found
    dead: its finished files are deleted only by a checkpoint, so waiting for
    the next record would keep them (in /dev/shm: RAM) as long as the node is quiet.
    Never while written records still wait for the spool (``spooling``): a
    checkpoint past them would count them as forwarded, and a restart would
    not produce them again.
    """
    return not spooling and (final or (unsaved and since_ns >= interval_ns))


class NodeOutput:
    """The per-node file and its checkpoint, written by the aggregator's thread.

    ``failing`` says the last write failed; ``unsaved`` that something since
    the last checkpoint waits for the next one (see ``checkpoint_due``).
    """

    def __init__(
        self,
        path: str,
        checkpoint_path: str,
        node_id: str,
        *,
        json: bool,
        checkpoint_interval_ns: int,
        writers: Writers,
        errors: ErrorCounter,
        stats: Counter[str],
        notice_key: str,
    ) -> None:
        self.path = path
        self.node_id = node_id
        self.file = CheckpointedOutput(path, checkpoint_path)
        # A rank's message must not forge a line of another rank either.
        self.format = LineFormat(json=json, untrusted=True)
        #: Records written per rank and per level: the summary a service prints at exit.
        self.per_rank: Counter[object] = Counter()
        self.levels: Counter[object] = Counter()
        self.failing = False
        self.unsaved = False
        self._last_ckpt = 0
        self._interval_ns = checkpoint_interval_ns
        self._writers = writers
        self._errors = errors
        self._stats = stats
        self._notice_key = notice_key  # the writer key of records no tail wrote (the aggregator's notices)

    def open(self, notice: Callable[[str], None]) -> None:
        """Open the file, cut back to its checkpoint; the writers resume from what it covers."""
        try:
            self._writers.written = self.file.open()
        except OutputError:
            raise  # another process writes it: the message says so
        except OSError as exc:
            raise OutputError(f"cannot open per-node file {self.path}: {exc.strerror}") from exc
        if self.file.problem:
            notice(self.file.problem)
        self._stats["recovered_bytes_cut"] += self.file.cut

    def write(self, ready: list[tuple], watermark: int, forwarding: Forwarding | None) -> bool:
        """Write the merge items ``ready`` (all up to ``watermark``); False if the file could not take them."""
        records = list(map(_RECORD, ready))
        data = self.format.text(records, self.node_id)
        try:
            self.file.write(data)
        except OSError as exc:
            self.failing = True
            self._errors.report(
                f"write:{errno.errorcode.get(exc.errno or 0, exc.errno)}",
                f"cannot write {self.path}: {exc.strerror}; retrying",
            )
            return False
        self.failing = False
        by_tid = self._writers.by_tid
        tids = list(map(_TID, ready))
        # Per writer, found in C: its last seq written and how many it wrote.
        for tid, seq in dict(zip(tids, map(_SEQ, ready), strict=True)).items():
            tail = by_tid.get(tid)
            if tail is not None:
                tail.emitted_seq = seq
        per_rank = self.per_rank
        for tid, count in Counter(tids).items():
            tail = by_tid.get(tid)
            per_rank[tail.rank if tail is not None else None] += count
        try:
            levels = list(map(_LEVEL, records))
        except KeyError:  # a foreign record without a level
            levels = [record.get("level") for record in records]
        self.levels.update(levels)
        self._stats["records"] += len(ready)
        self._stats["bytes"] += len(data)
        self.unsaved = True
        if forwarding is not None and forwarding.forwarder is not None:
            # Spooled before the checkpoint that covers these records, so a
            # kill -9 in between re-sends (deduplicated) rather than loses;
            # if the spool cannot take them, no checkpoint passes them.
            for tid, record in zip(tids, records, strict=True):
                tail = by_tid.get(tid)
                record["w"] = tail.key if tail is not None else self._notice_key
            forwarding.submit(records, watermark, time.monotonic())
        return True

    def write_last(self, record: dict) -> None:
        """Write one line after the last merge; a failure is ignored (the caller has said it on stderr)."""
        try:
            self.file.write(self.format.line(record, self.node_id).encode("utf-8", "backslashreplace"))
        except OSError:
            pass

    def checkpoint(
        self,
        now: int,
        *,
        final: bool,
        spooling: bool,
        sync: Callable[[], None] = lambda: None,
        forwarding: Forwarding | None = None,
    ) -> None:
        """Save the checkpoint if one is due, then delete the temp files it covers.

        ``sync`` makes durable whatever else holds the records (the
        forwarding spool): the checkpoint lets their temp files go.
        Writers done for good (every record written, checkpointed, spooled,
        their files deleted) are then told to the streamer, which forgets them.
        Only now: told before the checkpoint, a kill -9 would have this node
        send their records again to a streamer that no longer knows them.
        """
        since = now - self._last_ckpt
        if not checkpoint_due(
            final=final, unsaved=self.unsaved, since_ns=since, interval_ns=self._interval_ns, spooling=spooling
        ):
            return
        try:
            sync()
            self.file.save(self._writers.emitted())
        except OSError as exc:
            self._errors.report("checkpoint", f"cannot save checkpoint: {exc.strerror}")
            return  # files are kept until a checkpoint covers them
        self._last_ckpt = now
        self.unsaved = False
        ended = self._writers.release()
        if ended and forwarding is not None:
            forwarding.submit([], 0, time.monotonic(), ended)
