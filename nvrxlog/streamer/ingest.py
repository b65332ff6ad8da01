"""The streamer's ingest: decode -> validate -> de-duplicate -> format, with no sockets.

Each batch from a node becomes a ``Chunk`` of new records with their output
lines, ready for the time merge. A batch that is plainly new (each writer's
first seq past what arrived, its times in order) is checked, de-duplicated
and formatted column by column in C right after decoding; resends and
anything unusual go record by record. Everything that can find a batch
malformed runs before anything of it is taken as received, so a dropped
batch leaves no trace that its resend would be taken as a duplicate of.

Stamps are corrected by the sending node's clock offset on the way in (a
whole column at once) and merge on the corrected time; one stamped too far
ahead merges by its arrival (``clocks.py``).

A batch at or below its spool run's floor (``floors.py``) is a duplicate as
a whole: it was written and acknowledged, and the writers it names as ended
may be forgotten since (``retire``), so its records are never looked at.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from itertools import islice, repeat
from operator import le, setitem
from typing import NamedTuple

import orjson

from nvrxlog.config import sanitize_name
from nvrxlog.core.cursor import JUMP_FLOOR, WriterCursor, plausible_jump
from nvrxlog.core.lines import LineFormat
from nvrxlog.core.record import text_messages, texts
from nvrxlog.core.report import safe_repr
from nvrxlog.streamer.clocks import corrected, corrected_ts, future_limit, merge_keys
from nvrxlog.streamer.floors import MAX_RUN_BYTES, BatchFloors
from nvrxlog.streamer.merge import Chunk
from nvrxlog.wire.columns import COLUMNS, read_profile, unpack

__all__ = ["MALFORMED", "Batch", "Ingest", "batch_seq", "record_key"]

#: What ``Ingest.batch`` raises for a payload it cannot take (RecursionError: a field nested past any limit).
MALFORMED = (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError)

_MAX_NAME = 64
_NAME_CACHE = 10_000  # keys of at most _MAX_NAME characters: about 1 MiB


class Batch(NamedTuple):
    """One ingested batch: what to merge, and what its acknowledgement waits for."""

    seq: int  # the node's batch seq
    watermark: int  # the node has handed over everything up to this time (the node's clock)
    chunk: Chunk  # its new records
    newest: int  # the newest merge key among its records not yet written (-1: none)
    future: int = 0  # new records stamped too far ahead: merged by arrival
    run: str = ""  # the spool run it was spooled in ("": not said, an older node)
    ended: tuple[tuple[str, str], ...] = ()  # (node, writer) whose last record is in it or before


def record_key(node: str, writer: object) -> str:
    """``node|writer``: what de-duplication and the checkpoint count by."""
    return f"{node}|{str(writer)[:200]}"


def batch_seq(payload: bytes) -> int | None:
    """The batch seq a malformed payload names, if it can be read; for the notice that names the drop."""
    try:
        seq = orjson.loads(payload)["b"]
    except MALFORMED:
        return None
    return seq if type(seq) is int else None


class Ingest:
    """Turns batch payloads into chunks of new, formatted records; remembers what arrived.

    ``written`` (per ``node|writer``: the highest seq in the output) is kept by
    the caller as it writes, and is what the checkpoint saves; ``cursors``
    count what arrived, including what is still held for merging.
    """

    def __init__(
        self,
        lines: LineFormat,
        *,
        written: dict[str, int] | None = None,
        notice: Callable[[str], None] = lambda text: None,
        keep_records: Callable[[], bool] = lambda: False,
        stats: dict[str, int] | None = None,
        floors: BatchFloors | None = None,
        keys: dict[str, int] | None = None,
    ) -> None:
        self.lines = lines
        self.written: dict[str, int] = written if written is not None else {}  # shared with the output
        #: Per writer, the merge key of its last line written (shared with the output, saved with it).
        self.keys: dict[str, int] = keys if keys is not None else {}
        self.cursors: dict[str, WriterCursor] = {
            key: WriterCursor(seq, self.keys.get(key, 0)) for key, seq in self.written.items()
        }
        self.floors = floors if floors is not None else BatchFloors()  # shared with the output
        self.stats = stats if stats is not None else {}
        self.stats.setdefault("duplicates", 0)
        self.stats.setdefault("retired", 0)
        self.stats.setdefault("bad_frames", 0)
        self.stats.setdefault("bad_messages", 0)
        self.stats.setdefault("implausible_seqs", 0)
        self._notice = notice
        # Records as dicts cost more than everything else here: made only when
        # the caller needs them (a relay, a live view) or the format does.
        self._keep_records = keep_records
        self._names: dict[str, str] = {}
        self._jumps_named: set[str] = set()  # writers whose implausible seqs were said
        #: Per writer, the session (node) whose batches brought its latest records: only it may retire the writer.
        self.via: dict[str, str] = {}
        # Cursors restored from a checkpoint of before keys were saved have no time:
        # a seq jump is credited from now on only.
        self._restored_at = time.time_ns()
        #: New records by (node, rank) and by (node, level): what the streamer's summary reports.
        self.per_rank: Counter[tuple] = Counter()
        self.levels: Counter[tuple] = Counter()

    def batch(self, node: str, payload: bytes, *, offset: int = 0, arrival: int | None = None) -> Batch:
        """Ingest one batch payload from ``node``; raises ValueError/KeyError/TypeError if malformed.

        ``offset`` (ns) is added to the node's stamps (its clock's
        correction); ``arrival`` (the streamer's clock, now by default) is
        the merge key of records stamped too far ahead of it.
        """
        batch = orjson.loads(payload)
        seq = batch["b"]
        watermark = batch.get("c", 0)
        run = batch.get("o", "")
        if type(seq) is not int or type(watermark) is not int:
            raise TypeError("a batch needs an int 'b' and an int 'c'")
        if type(run) is not str or len(run) > MAX_RUN_BYTES:
            raise TypeError("a batch's spool run 'o' must be a short string")
        if run and self.floors.covers(node, run, seq):
            # Written and acknowledged already; its writers may be retired since.
            column = batch.get("t", batch.get("r"))
            self.stats["duplicates"] += len(column) if type(column) is list else 0
            return Batch(seq, watermark, Chunk.of([]), -1, 0, run)
        entries = batch.get("e")
        ended = () if entries is None else self._ended(node, entries)
        if arrival is None:
            arrival = time.time_ns()
        if "t" in batch:
            chunk, newest, future = self._columns(node, batch, offset, arrival)
        else:
            records = batch["r"]
            if type(records) is not list:
                raise TypeError("a batch needs columns or a list 'r'")
            chunk, newest, future = self.records(node, records, offset, arrival)
        return Batch(seq, watermark, chunk, newest, future, run, ended)

    def _ended(self, node: str, entries: object) -> tuple[tuple[str, str], ...]:
        """The ``(node, writer)`` pairs of a batch's ``"e"``: a writer of ``node``, or ``[writer, node]`` relayed."""
        if type(entries) is not list:
            raise TypeError("a batch's ended writers 'e' must be a list")
        ended = []
        for entry in entries:
            if type(entry) is list:
                if len(entry) != 2:
                    raise ValueError("a relayed ended writer is [writer, node]")
                writer, name = entry[0], self.name(entry[1])
            else:
                writer, name = entry, node
            # As de-duplication counts it (``record_key``), and bounded: a relay passes it up as it is.
            ended.append((name, writer if type(writer) is str and len(writer) <= 200 else str(writer)[:200]))
        return tuple(ended)

    def retire(self, ended: list[tuple[str, str]], by: str) -> list[tuple[str, str]]:
        """Forget writers that ended, once the batch saying so is written and acknowledged (see ``floors``).

        Only the session (``by``) whose batches brought a writer's records may
        end it: a peer naming another node's writers ended would otherwise
        make that node's resends new again. Returns the writers retired.
        """
        cursors, written, via = self.cursors, self.written, self.via
        retired = []
        for node, writer in ended:
            key = record_key(node, writer)
            if via.get(key, node) != by:
                continue
            written.pop(key, None)
            self.keys.pop(key, None)
            via.pop(key, None)
            if cursors.pop(key, None) is not None:
                retired.append((node, writer))
        self.stats["retired"] += len(retired)
        return retired

    def name(self, raw: object) -> str:
        """A node name from the network, sanitised (names reach file names and lines), cached.

        Only the first characters of a name count (sanitising maps one
        character to one), so the cache never keeps more of a raw name than
        that, however large the name sent; when full it starts afresh.
        """
        text = (raw if type(raw) is str else safe_repr(raw))[:_MAX_NAME]
        name = self._names.get(text)
        if name is None:
            name = sanitize_name(text, limit=_MAX_NAME)
            if len(self._names) >= _NAME_CACHE:
                self._names.clear()
            self._names[text] = name
        return name

    def _columns(self, node: str, body: dict, offset: int, arrival: int) -> tuple[Chunk, int, int]:
        """The new records of a packed batch (see ``columns``), checked and formatted column by column.

        Its stamps corrected by ``offset``, merged at them (or at
        ``arrival``, stamped too far ahead); the newest merge key; how many
        were too far ahead.
        """
        columns = [body[name] for name in COLUMNS]
        entries, levels, files = body["P"], body["L"], body["F"]
        stamps, seqs, p, lv, fi, line_numbers, msgs = columns
        n = len(stamps)
        if any(type(column) is not list or len(column) != n for column in columns):
            raise TypeError("a batch's columns must be lists of one length")
        if not n:
            return Chunk.of([]), -1, 0
        # Checked in C: a sum of ints is an int (a float or a string is not).
        for column in (stamps, seqs, p, lv, fi):
            if type(sum(column)) is not int:
                raise TypeError("a batch's times, seqs and indexes must be ints")
        ts = corrected(stamps, offset)  # what the lines show
        merge, future = merge_keys(ts, arrival)
        "".join(levels)  # checked in C: levels are strings (they are counted and shown)
        for index, table in ((p, entries), (lv, levels), (fi, files)):
            if type(table) is not list or min(index) < 0 or max(index) >= len(table):
                raise ValueError("a batch's table index is out of range")
        self._not_text(node, texts(msgs))
        keys_of, nodes_of, labels_of, ranks_of = [], [], [], []
        for entry in entries:
            profile = read_profile(entry)
            name = node if profile.node is None else self.name(profile.node)  # a relay's records name their node
            keys_of.append(record_key(name, profile.writer))
            nodes_of.append(name)
            labels_of.append(self.lines.label(profile.ranks))
            ranks_of.append(profile.ranks[0])
        lines = None
        if not self.lines.json:
            lines = self.lines.column_lines(
                ts,
                map(levels.__getitem__, lv),
                map(nodes_of.__getitem__, p),
                map(labels_of.__getitem__, p),
                map(files.__getitem__, fi),
                line_numbers,
                msgs,
                n,
            )
        keys = list(map(keys_of.__getitem__, p))
        if not self._all_new(node, keys, seqs, merge):
            return self.records(node, unpack(body), offset, arrival)
        # Counted in C, ints only; a few entries each.
        for pi, count in Counter(p).items():
            self.per_rank[nodes_of[pi], ranks_of[pi]] += count
        if len(set(nodes_of)) == 1:
            for li, count in Counter(lv).items():
                self.levels[nodes_of[0], levels[li]] += count
        else:  # a relay's batch: levels per record's own node
            for (pi, li), count in Counter(zip(p, lv, strict=True)).items():
                self.levels[nodes_of[pi], levels[li]] += count
        records: list = [None] * n
        if lines is None or self._keep_records():
            body["t"] = ts  # the records (a relay's, the live view's) carry the corrected time
            records = unpack(body)
            any(map(setitem, records, repeat("node"), map(nodes_of.__getitem__, p)))
            if lines is None:
                lines = self.lines.lines(records)
        return Chunk(merge, keys, seqs, records, lines), merge[-1], future

    def _not_text(self, node: str, count: int) -> None:
        """Count and say that ``count`` messages from ``node`` were not text (they are shown bounded)."""
        if count:
            self.stats["bad_messages"] += count
            self._notice(f"{count} record(s) in a batch from {node} had a msg that is not text; shown cut short")

    def _all_new(self, node: str, keys: list[str], seqs: list[int], ts: list[int]) -> bool:
        """Take the records as new if they plainly are; False (nothing taken) if it needs a closer look.

        Plainly new: times never decrease, and each writer's run plainly
        follows its cursor. Resends overlap what arrived and look closer.
        """
        if not all(map(le, ts, islice(ts, 1, None))):
            return False
        # Each writer's first and last (seq, time) in the batch, found in C.
        first_seq = dict(zip(reversed(keys), reversed(seqs), strict=True))
        first_ts = dict(zip(reversed(keys), reversed(ts), strict=True))
        last_seq = dict(zip(keys, seqs, strict=True))
        last_ts = dict(zip(keys, ts, strict=True))
        cursors = self.cursors
        fresh = [key for key in first_seq if key not in cursors]
        for key in fresh:
            cursors[key] = WriterCursor()
        # Plainly new also means no seq skips far ahead (``plausible_jump`` judges those, record by record).
        within = len(keys) + JUMP_FLOOR
        if all(
            cursors[key].seq < first <= cursors[key].seq + JUMP_FLOOR
            and cursors[key].key <= first_ts[key]
            and last_seq[key] - first <= within
            for key, first in first_seq.items()
        ):
            for key in first_seq:
                cursors[key].admit_run(first_seq[key], first_ts[key], last_seq[key], last_ts[key])
            self.via.update(dict.fromkeys(first_seq, node))
            return True
        for key in fresh:
            del cursors[key]
        return False

    def _implausible(self, key: str, last: int, seq: int) -> None:
        """Refuse a record whose seq no writer could have reached: believed, it would make the real ones duplicates."""
        self.stats["implausible_seqs"] += 1
        if key not in self._jumps_named and len(self._jumps_named) < _NAME_CACHE:
            self._jumps_named.add(key)
            self._notice(
                f"refused a record of {key[:300]} with seq {seq} after {last}: no writer skips that far that fast "
                "(a peer claiming to be it?); further ones of this writer are counted, not named"
            )

    def records(self, node: str, records: list, offset: int = 0, arrival: int | None = None) -> tuple[Chunk, int, int]:
        """Check and de-duplicate record by record: the new ones, the newest merge key not yet written.

        And how many new ones were stamped too far ahead. ``offset`` and
        ``arrival`` as for ``batch``; each record's ``ts`` is corrected in place.
        """
        self._not_text(node, text_messages(records))
        written, cursors, via = self.written, self.cursors, self.via
        items: list[tuple] = []
        keys: dict[object, str] = {}  # writer -> "node|writer", per batch (a batch holds few writers)
        if arrival is None:
            arrival = time.time_ns()
        limit = future_limit(arrival)
        newest = -1
        bad = 0
        duplicates = 0
        future = 0
        for record in records:
            try:
                rseq = record["seq"]
                ts = record["ts"]
                if type(rseq) is not int or type(ts) is not int:
                    raise TypeError
                if offset:
                    record["ts"] = ts = corrected_ts(ts, offset)
                writer = record.get("w", "?")
                raw = record.get("node")
                if raw is None:
                    key = keys.get(writer) or keys.setdefault(writer, record_key(node, writer))
                else:  # relayed: the record names its own node
                    record["node"] = name = self.name(raw)
                    key = record_key(name, writer)
            except (KeyError, TypeError, AttributeError):
                bad += 1
                continue
            cursor = cursors.get(key)
            if cursor is None:
                cursor = cursors[key] = WriterCursor()
            if rseq > cursor.seq + JUMP_FLOOR and not plausible_jump(
                cursor.seq, cursor.key or self._restored_at, rseq, ts, arrival
            ):
                self._implausible(key, cursor.seq, rseq)
                continue
            ahead = ts > limit
            if ahead:
                ts = arrival  # stamped too far ahead: merged by arrival (see clocks.py)
            merge_key = cursor.admit(rseq, ts)
            if merge_key is not None:
                future += ahead
                if merge_key > newest:
                    newest = merge_key
                if raw is None:
                    record["node"] = node
                rank, level = record.get("rank"), record.get("level")
                self.per_rank[record["node"], rank if type(rank) is int else None] += 1
                self.levels[record["node"], level if type(level) is str else None] += 1
                items.append((merge_key, key, rseq, record))
                via[key] = node
                continue
            duplicates += 1
            if rseq > written.get(key, -1):
                # Held for merging already, at a merge key no later than the writer's
                # latest (its stamp then may have been corrected otherwise): the ack waits for that.
                newest = max(newest, ts, cursor.key)
        self.stats["duplicates"] += duplicates
        if bad:
            self.stats["bad_frames"] += bad
            self._notice(f"dropped {bad} malformed record(s) in a batch from {node}")
        if items:
            lines = self.lines.lines([item[3] for item in items])
            items = [(*item, line) for item, line in zip(items, lines, strict=True)]
        return Chunk.of(items), newest, future
