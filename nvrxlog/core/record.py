"""The temp message file format shared by the rank-side writer and the aggregator.

A writer's files are named ``nvrx.<prefix>.<local rank|x>.<pid>.<start ns>.<index>.jsonl``:
the writer (prefix, local rank, pid, and the writer's start time, since pids are
reused) and the order of its rotated files can be read off the name without
opening it.

Each record is one orjson object on one line, so a multi-line traceback is a
single record and a line with no newline at its end is a record still being
written (or left half written by a writer that died). Keys:
``seq ts level rank local_rank infra_rank infra_local_rank pid file line msg``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from operator import itemgetter

import orjson

from nvrxlog.core.report import safe_repr

__all__ = [
    "WriterId",
    "bounded_record",
    "decode_lines",
    "file_name",
    "notice_record",
    "parse_file_name",
    "text_messages",
    "texts",
]

SUFFIX = ".jsonl"
_NAME = re.compile(
    r"^nvrx\.(?P<prefix>[A-Za-z0-9_-]{1,64})\.(?P<lrank>\d{1,6}|x)\.(?P<pid>\d{1,10})"
    r"\.(?P<start>\d{1,20})\.(?P<index>\d{6,12})\.jsonl$"
)


@dataclass(frozen=True, slots=True, order=True)
class WriterId:
    """Who wrote a temp file: one handler instance in one process."""

    prefix: str
    local_rank: int | None
    pid: int
    start_ns: int

    def __str__(self) -> str:
        lrank = "x" if self.local_rank is None else str(self.local_rank)
        return f"nvrx.{self.prefix}.{lrank}.{self.pid}.{self.start_ns}"


def file_name(writer: WriterId, index: int) -> str:
    """Name of the ``index``-th temp file of ``writer``."""
    return f"{writer}.{index:06d}{SUFFIX}"


def parse_file_name(name: str) -> tuple[WriterId, int] | None:
    """``(writer, index)`` for a temp file name, or ``None`` if it is not one."""
    match = _NAME.match(name)
    if match is None:
        return None
    lrank = match["lrank"]
    writer = WriterId(
        prefix=match["prefix"],
        local_rank=None if lrank == "x" else int(lrank),
        pid=int(match["pid"]),
        start_ns=int(match["start"]),
    )
    return writer, int(match["index"])


def decode_lines(lines: list[bytes]) -> tuple[list, list[bytes]]:
    """Decode complete record lines; return ``(values, bad_lines)``.

    The common case (all lines are JSON) is one orjson call for the whole
    batch; only when that fails is each line decoded alone to find the bad
    ones. Values are not checked here: the caller, which reads ``seq`` and
    ``ts`` of each anyway, rejects any that is not a record.
    """
    if not lines:
        return [], []
    try:
        return orjson.loads(b"[" + b",".join(lines) + b"]"), []
    except orjson.JSONDecodeError:
        pass
    good: list = []
    bad: list[bytes] = []
    for line in lines:
        try:
            good.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            bad.append(line)
    return good, bad


_MSG = itemgetter("msg")
_STR = frozenset({str})


def texts(values: list) -> int:
    """Make every item of ``values`` (a batch's messages) text, in place; how many were not.

    A message from a file or the network can be any JSON value; shown as it
    is, a 1,000-deep list makes formatting raise ``RecursionError`` and
    loses everything formatted with it. A value that is not a str becomes a
    bounded ``repr``, so a bad record costs only itself. The common case
    (all str) is one check in C.
    """
    if _STR.issuperset(map(type, values)):
        return 0
    count = 0
    for i, value in enumerate(values):
        if type(value) is not str:
            values[i] = safe_repr(value)
            count += 1
    return count


def text_messages(records: list) -> int:
    """``texts`` for the ``msg`` of decoded records (anything not a dict is left to the caller's checks)."""
    try:
        if _STR.issuperset(map(type, map(_MSG, records))):
            return 0
    except (KeyError, TypeError):
        pass  # a record without a msg, or not a dict: looked at one by one
    count = 0
    for record in records:
        if type(record) is dict and type(record.get("msg", "")) is not str:
            record["msg"] = safe_repr(record["msg"])
            count += 1
    return count


def bounded_record(record: dict) -> dict:
    """``record`` with every value that is not a plain scalar shown as a short repr.

    For a record that cannot be encoded or shown as it is (a field nested
    past orjson's or Python's limit, a number JSON cannot hold): what the
    outputs, the spool and the live view fall back to, so it costs only itself.
    """
    return {str(k): v if _plain(v) else safe_repr(v) for k, v in record.items()}


def _plain(value: object) -> bool:
    kind = type(value)
    return kind is str or kind is bool or value is None or (kind in (int, float) and abs(value) < 1 << 63)


def notice_record(seq: int, ts: int, text: str, level: str = "WARNING", **extra: object) -> dict:
    """A record nvrxlog itself writes into the outputs (a loss, a gap, a node gone)."""
    return {
        "seq": seq,
        "ts": ts,
        "level": level,
        "rank": None,
        "local_rank": None,
        "infra_rank": None,
        "infra_local_rank": None,
        "pid": os.getpid(),
        "file": "nvrxlog",
        "line": 0,
        "msg": text,
        **extra,
    }
