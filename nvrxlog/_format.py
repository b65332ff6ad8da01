"""Rank-aware output lines (text or JSON) for the per-node and cluster files.

``2024-01-15 10:30:45,123 [INFO] [node001] [workload:0(0) infra:0(0)] training.py:45 Training started``
"""

from __future__ import annotations

import logging
import time

import orjson

from ._config import LogConfig
from ._message import message_text
from ._report import ErrorCounter

__all__ = ["LineFormat", "RankFormatter", "record_fields"]


class LineFormat:
    """Formats decoded records as output lines, caching what repeats.

    The date-time text is rendered once per second and the rank label once
    per distinct set of ranks, which keeps formatting cheap at 300k records/s.
    """

    __slots__ = ("json", "untrusted", "_second", "_stamp", "_milli", "_milli_stamp", "_labels")

    def __init__(self, *, json: bool = False, untrusted: bool = False) -> None:
        self.json = json
        # Records from the network: a message must not be able to forge a line,
        # so continuation lines are indented and other control characters escaped.
        self.untrusted = untrusted
        self._second = -1
        self._stamp = ""
        self._milli = -1
        self._milli_stamp = ""
        self._labels: dict[tuple, str] = {}

    def line(self, record: dict, node: str) -> str:
        """One output line (two or more for a multi-line message), with its newline."""
        if self.json:
            return orjson.dumps({"node": node, **record}).decode() + "\n"
        try:
            milli = record["ts"] // 1_000_000
            if milli != self._milli:
                self._stamp_for(milli)
            ranks = (record["rank"], record["local_rank"], record["infra_rank"], record["infra_local_rank"])
            label = self._labels.get(ranks) or self._label(ranks)
            text = (
                f"{self._milli_stamp} [{record['level']}] [{node}] {label} "
                f"{record['file']}:{record['line']} {record['msg']}"
            )
            if self.untrusted and not text.isprintable():
                text = _defang(text)
            return text + "\n"
        except (KeyError, TypeError):
            # Valid JSON from a foreign or damaged file may lack fields or hold
            # odd types; it is still shown, with '?' for what is missing.
            return self._lenient_line(record, node)

    def _stamp_for(self, milli: int) -> None:
        second = milli // 1000
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self._milli = milli
        self._milli_stamp = f"{self._stamp},{milli % 1000:03d}"

    def _label(self, ranks: tuple) -> str:
        label = rank_label(*ranks)
        if len(self._labels) < 65536:  # bounded: one entry per distinct rank set
            self._labels[ranks] = label
        return label

    def _lenient_line(self, record: dict, node: str) -> str:
        ts = record.get("ts")
        self._stamp_for(ts // 1_000_000 if type(ts) is int else 0)
        ranks = [record.get(k) for k in ("rank", "local_rank", "infra_rank", "infra_local_rank")]
        text = (
            f"{self._milli_stamp} [{record.get('level', '?')}] [{node}] {rank_label(*ranks)} "
            f"{record.get('file', '?')}:{record.get('line', '?')} {record.get('msg', '')}"
        )
        return (_defang(text) if self.untrusted else text) + "\n"


_CONTROL = {c: f"\\x{c:02x}" for c in range(32) if c not in (9, 10)} | {127: "\\x7f"}


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
