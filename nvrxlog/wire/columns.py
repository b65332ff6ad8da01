"""A batch's records as columns: what the spool holds and the wire carries.

A record of the usual shape (the fields a rank writes, plus its writer and, from
a relay, its node) travels as one entry in each of a few columns; what repeats
(the writer with its ranks and pid, the level, the file) is an index into a
small table. The streamer then decodes a handful of objects per record instead
of a dict of a dozen, and works on whole columns in C. A batch with any record
of another shape travels as ``"r"``, the list of records.

``{"P": [[writer, rank, local_rank, infra_rank, infra_local_rank, pid, node], ...],
"L": [level, ...], "F": [file, ...], "p": [profile index], "l": [level index],
"f": [file index], "t": [ts], "s": [seq], "i": [line], "m": [msg]}``
"""

from __future__ import annotations

from operator import itemgetter, methodcaller
from typing import NamedTuple

__all__ = ["pack", "unpack", "read_profile", "Profile", "COLUMNS"]

#: The per-record columns of a packed batch, in the order ``unpack`` reads them.
COLUMNS = ("t", "s", "p", "l", "f", "i", "m")
_FIELDS = 12  # keys of a usual record, without "node"
#: The fields of a profile entry of ``"P"``, in order; a relay adds the node last.
PROFILE_KEYS = ("w", "rank", "local_rank", "infra_rank", "infra_local_rank", "pid")
_PROFILE = itemgetter(*PROFILE_KEYS)


class Profile(NamedTuple):
    """One entry of a batch's ``"P"`` table: who wrote the records that point to it."""

    writer: object
    ranks: tuple  # (rank, local_rank, infra_rank, infra_local_rank)
    pid: object
    node: object  # None unless relayed: the record's own node

    def fields(self) -> dict:
        """The record fields this profile stands for."""
        fields = dict(zip(PROFILE_KEYS, (self.writer, *self.ranks, self.pid), strict=True))
        if self.node is not None:
            fields["node"] = self.node
        return fields


def read_profile(entry: object) -> Profile:
    """A ``"P"`` entry as a ``Profile``; raises ValueError for a malformed one."""
    if type(entry) is not list or not 6 <= len(entry) <= 7:
        raise ValueError("a batch's profile needs a writer, four ranks, a pid and maybe a node")
    return Profile(entry[0], tuple(entry[1:5]), entry[5], entry[6] if len(entry) == 7 else None)


_NODE = methodcaller("get", "node")
_GET = {name: itemgetter(name) for name in ("ts", "seq", "level", "file", "line", "msg")}


def pack(records: list) -> dict:
    """The body of a batch of ``records``: columns if every record has the usual shape, else ``{"r": records}``."""
    try:
        n = len(records)
        nodes = list(map(_NODE, records))
        if sum(map(len, records)) != _FIELDS * n + n - nodes.count(None):
            return {"r": records}
        ts, seqs, levels, files, lines, msgs = (list(map(_GET[k], records)) for k in _GET)
        # Checked in C: a join takes only strings, and a sum of ints is an int.
        "".join(levels), "".join(files), "".join(msgs)
        if type(sum(ts)) is not int or type(sum(seqs)) is not int or type(sum(lines)) is not int:
            return {"r": records}
        profiles, profile_index = _table(list(zip(map(_PROFILE, records), nodes, strict=True)))
        level_table, level_index = _table(levels)
        file_table, file_index = _table(files)
    except (KeyError, TypeError, AttributeError):
        return {"r": records}
    return {
        "P": [[*profile, node] for profile, node in profiles],
        "L": level_table,
        "F": file_table,
        "p": profile_index,
        "l": level_index,
        "f": file_index,
        "t": ts,
        "s": seqs,
        "i": lines,
        "m": msgs,
    }


def _table(values: list) -> tuple[list, list[int]]:
    """Distinct values in first-seen order, and each value's index among them."""
    table = dict.fromkeys(values)
    for i, value in enumerate(table):
        table[value] = i
    return list(table), list(map(table.__getitem__, values))


def unpack(body: dict) -> list[dict]:
    """The records of a packed body (as ``pack`` got them); raises on a malformed one."""
    columns = [body[name] for name in COLUMNS]
    levels, files = body["L"], body["F"]
    profiles = [read_profile(entry).fields() for entry in body["P"]]
    return [
        {"seq": seq, "ts": ts, "level": levels[lv], "file": files[fi], "line": line, "msg": msg, **profiles[pi]}
        for ts, seq, pi, lv, fi, line, msg in zip(*columns, strict=True)
    ]
