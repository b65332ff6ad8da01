"""Rank-aware output lines (text or JSON) for the per-node and cluster files.

``2024-01-15 10:30:45,123 [INFO] [node001] [workload:0(0) infra:0(0)] training.py:45 Training started``
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from itertools import repeat
from operator import floordiv, itemgetter

import orjson

from nvrxlog.config import LogConfig
from nvrxlog.core.record import bounded_record
from nvrxlog.core.report import ErrorCounter
from nvrxlog.rank.message import message_text

__all__ = ["LineFormat", "RankFormatter", "record_fields"]


class LineFormat:
    """Formats decoded records as output lines, caching what repeats.

    The date-time text is rendered once per millisecond seen and the rank
    label once per distinct set of ranks (both cached); ``lines`` and
    ``column_lines`` format many records column by column, for the streamer.
    """

    __slots__ = ("json", "untrusted", "_milli", "_milli_stamp", "_labels", "_stamps")

    def __init__(self, *, json: bool = False, untrusted: bool = False) -> None:
        self.json = json
        # Records from the network: a message must not be able to forge a line,
        # so continuation lines are indented and other control characters escaped.
        self.untrusted = untrusted
        self._milli = -1
        self._milli_stamp = ""
        self._labels: dict[tuple, str] = _Labels()
        self._stamps = _Stamps()

    def lines(self, records: list[dict]) -> list[str]:
        """The output lines of decoded records that name their ``node``, one string each."""
        if not self.json:
            try:
                labels = map(self._labels.__getitem__, map(_RANKS, records))
                level, node, file, line, msg = (map(getter, records) for getter in _FIELDS)
                texts = self.column_lines(map(_TS, records), level, node, labels, file, line, msg, len(records))
                if texts is not None:
                    return texts
            except (KeyError, TypeError, ValueError, RecursionError):
                pass  # odd fields: line() shows them leniently, one by one
        return [self.line(r, r["node"]) for r in records]

    def column_lines(
        self,
        ts: Iterable[int],
        levels: Iterable[object],
        nodes: Iterable[str],
        labels: Iterable[str],
        files: Iterable[object],
        line_numbers: Iterable[object],
        msgs: Iterable[object],
        count: int,
    ) -> list[str] | None:
        """Text lines of ``count`` records given field by field, made in C at the streamer's rate.

        None if untrusted text needs defanging (a control character or a line
        break inside a record) or a field cannot be shown as it is: then each
        record goes through ``line``. The
        check is one pass over all the lines at once.
        """
        stamps = map(self._stamps.__getitem__, map(floordiv, ts, repeat(1_000_000)))
        try:
            texts = list(map(_TEXT.__mod__, zip(stamps, levels, nodes, labels, files, line_numbers, msgs, strict=True)))
        except RecursionError:
            return None  # a field nested past any limit: line() shows it bounded, record by record
        if self.untrusted and _needs_defanging("".join(texts).encode("utf-8", "surrogatepass"), count):
            return None
        return texts

    def text(self, records: list[dict], node: str) -> bytes:
        """The encoded lines of ``records`` of one ``node``, for a file: one pass of checks for the whole batch.

        Each record is formatted as is; only if the batch holds a control
        character or a line break inside a record is each one defanged.
        """
        if self.json or not self.untrusted:
            return "".join([self.line(r, node) for r in records]).encode("utf-8", "backslashreplace")
        raw = self._raw_line
        try:
            data = "".join([raw(r, node) for r in records]).encode("utf-8", "backslashreplace")
        except RecursionError:
            data = b""  # a field nested past any limit: line() shows it bounded
        if not data or _needs_defanging(data, len(records)):
            data = "".join([self.line(r, node) for r in records]).encode("utf-8", "backslashreplace")
        return data

    def label(self, ranks: tuple) -> str:
        """``[workload:R(L) infra:R(L)]`` for ``(rank, local_rank, infra_rank, infra_local_rank)``."""
        return self._labels[ranks]

    def line(self, record: dict, node: str) -> str:
        """One output line (two or more for a multi-line message), with its newline; never raises."""
        try:
            return self._line(record, node)
        except (RecursionError, TypeError, ValueError):
            # A field nested past any limit (or a number JSON cannot hold):
            # shown bounded, so one record's problem costs only itself.
            return self._line(bounded_record(record), node)

    def _line(self, record: dict, node: str) -> str:
        if self.json:
            text = orjson.dumps({"node": node, **record}).decode()
            # orjson escapes C0 controls but passes the Unicode line breaks raw:
            # a reader splitting lines the Unicode way would see a forged line.
            # Escaped, the line is still the same JSON. (isascii is O(1).)
            if not text.isascii() and any(brk in text for brk in _BREAKS):
                text = text.translate(_JSON_BREAKS)
            return text + "\n"
        text = self._raw_line(record, node)
        if self.untrusted and not text[:-1].isprintable():
            return _defang(text[:-1]) + "\n"
        return text

    def _raw_line(self, record: dict, node: str) -> str:
        """The line as the record has it (not defanged), with its newline."""
        try:
            milli = record["ts"] // 1_000_000
            if milli != self._milli:
                self._stamp_for(milli)
            ranks = (record["rank"], record["local_rank"], record["infra_rank"], record["infra_local_rank"])
            label = self._labels[ranks]
            return (
                f"{self._milli_stamp} [{record['level']}] [{node}] {label} "
                f"{record['file']}:{record['line']} {record['msg']}\n"
            )
        except (KeyError, TypeError):
            # Valid JSON from a foreign or damaged file may lack fields or hold
            # odd types; it is still shown, with '?' for what is missing.
            return self._lenient_line(record, node)

    def _stamp_for(self, milli: int) -> None:
        self._milli = milli
        self._milli_stamp = self._stamps[milli]

    def _lenient_line(self, record: dict, node: str) -> str:
        ts = record.get("ts")
        self._stamp_for(ts // 1_000_000 if type(ts) is int else 0)
        ranks = [record.get(k) for k in ("rank", "local_rank", "infra_rank", "infra_local_rank")]
        return (
            f"{self._milli_stamp} [{record.get('level', '?')}] [{node}] {rank_label(*ranks)} "
            f"{record.get('file', '?')}:{record.get('line', '?')} {record.get('msg', '')}\n"
        )


# What could forge a line or drive a terminal: C0 controls but tab and newline,
# DEL, and the line breaks of readers that split the Unicode way (NEL, LS, PS).
_CONTROL = {c: f"\\x{c:02x}" for c in range(32) if c not in (9, 10)} | {127: "\\x7f"}
_CONTROL_BYTES = bytes(_CONTROL)
_CONTROL |= {0x85: "\\x85", 0x2028: "\\u2028", 0x2029: "\\u2029"}
_BREAKS = tuple(chr(c) for c in (0x85, 0x2028, 0x2029))
_UNICODE_BREAKS = tuple(brk.encode() for brk in _BREAKS)
_JSON_BREAKS = {ord(brk): f"\\u{ord(brk):04x}" for brk in _BREAKS}
_TS = itemgetter("ts")
_RANKS = itemgetter("rank", "local_rank", "infra_rank", "infra_local_rank")
_FIELDS = tuple(map(itemgetter, ("level", "node", "file", "line", "msg")))
_TEXT = "%s [%s] [%s] %s %s:%s %s\n"


class _Stamps(dict):
    """Millisecond -> ``YYYY-mm-dd HH:MM:SS,mmm``, made on first use, bounded."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._prefix = ""

    def __missing__(self, milli: int) -> str:
        if len(self) >= 65536:
            self.clear()
        second = milli // 1000
        if second != self._second:  # strftime once a second: records are mostly in time order
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        stamp = f"{self._prefix},{milli % 1000:03d}"
        self[milli] = stamp
        return stamp


class _Labels(dict):
    """Ranks -> ``[workload:R(L) infra:R(L)]``, made on first use, bounded."""

    def __missing__(self, ranks: tuple) -> str:
        label = rank_label(*ranks)
        if len(self) < 65536:  # one entry per distinct rank set
            self[ranks] = label
        return label


def _needs_defanging(data: bytes, count: int) -> bool:
    """Whether ``count`` encoded lines hold a line break inside one, or a character that could drive a terminal."""
    return (
        data.count(b"\n") != count
        or len(data.translate(None, _CONTROL_BYTES)) != len(data)
        or (not data.isascii() and any(separator in data for separator in _UNICODE_BREAKS))
    )


def _defang(text: str) -> str:
    """Indent continuation lines and escape control characters (tabs stay)."""
    return text.replace("\r", "").translate(_CONTROL).replace("\n", "\n    ")


def rank_label(rank: object, local: object, infra: object, infra_local: object) -> str:
    """``[workload:R(L) infra:R(L)]`` with ``?`` for unknown ranks."""

    def show(value: object) -> str:
        return "?" if value is None else str(value)

    return f"[workload:{show(rank)}({show(local)}) infra:{show(infra)}({show(infra_local)})]"


def record_fields(record: logging.LogRecord, config: LogConfig, msg: str) -> dict:
    """The decoded-record form of a ``LogRecord`` (what the temp files hold)."""
    return {
        "ts": int(record.created * 1e9),
        "level": record.levelname,
        "rank": config.rank,
        "local_rank": config.local_rank,
        "infra_rank": config.infra_rank,
        "infra_local_rank": config.infra_local_rank,
        "pid": record.process,
        "file": record.filename,
        "line": record.lineno,
        "msg": msg,
    }


class RankFormatter(logging.Formatter):
    """A ``logging.Formatter`` producing the same lines as the node aggregator.

    With ``rank_prefix`` each line starts with ``<rank>: `` the way ``srun -l``
    labels output, so one file shared by all ranks stays readable.
    """

    def __init__(self, config: LogConfig, *, rank_prefix: bool = False) -> None:
        super().__init__()
        self._config = config
        self._lines = LineFormat()
        self._errors = ErrorCounter("formatter")
        self._prefix = ""
        if rank_prefix:
            rank = config.rank if config.rank is not None else config.infra_rank
            self._prefix = f"{'?' if rank is None else rank}: "

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record, self._config, message_text(record, self._errors))
        text = self._lines.line(fields, self._config.node_id)[:-1]
        if not self._prefix:
            return text
        return "\n".join(self._prefix + line for line in text.split("\n"))
