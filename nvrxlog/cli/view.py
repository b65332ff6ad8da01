"""What ``nvrxlog tail`` shows: rank and level filters, and folding repeated lines."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from nvrxlog.core.lines import LineFormat
from nvrxlog.errors import ConfigError

__all__ = ["parse_ranks", "compact_ranks", "RecordFilter", "Folder"]


def parse_ranks(text: str) -> frozenset[int]:
    """``"0-7,12"`` -> {0, ..., 7, 12}; raises ConfigError for anything else."""
    ranks: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if low > high or high - low > 1_000_000:
                    raise ValueError
                ranks.update(range(low, high + 1))
            else:
                ranks.add(int(part))
        except ValueError:
            raise ConfigError(f"bad rank list {text!r}: use e.g. 0-7,12") from None
    return frozenset(ranks)


def compact_ranks(ranks: set[int] | frozenset[int]) -> str:
    """{0, ..., 63, 65} -> ``"0-63,65"``."""
    parts: list[str] = []
    ordered = sorted(ranks)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _rank_of(record: dict) -> int | None:
    rank = record.get("rank")
    return rank if type(rank) is int else record.get("infra_rank") if type(record.get("infra_rank")) is int else None


@dataclass(frozen=True)
class RecordFilter:
    """Keeps records of the given ranks (workload rank, else infra rank) at or above a level."""

    ranks: frozenset[int] | None = None
    min_level: int = logging.NOTSET

    def __call__(self, record: dict) -> bool:
        if self.ranks is not None and _rank_of(record) not in self.ranks:
            return False
        if self.min_level:
            level = logging.getLevelName(str(record.get("level", "")))
            if not isinstance(level, int) or level < self.min_level:
                return False
        return True


@dataclass
class Folder:
    """Folds records that many ranks print alike into one line with a compact rank set."""

    lines: LineFormat = field(default_factory=lambda: LineFormat(untrusted=True))  # records from the network
    _groups: dict[tuple, list[dict]] = field(default_factory=dict)

    def add(self, record: dict) -> None:
        """Hold ``record`` until the next ``flush``."""
        key = (record.get("level"), record.get("file"), record.get("line"), record.get("msg"))
        self._groups.setdefault(key, []).append(record)

    def flush(self) -> list[str]:
        """The folded lines, in order of each group's first record."""
        out = []
        for group in sorted(self._groups.values(), key=lambda g: g[0].get("ts", 0)):
            first = group[0]
            if len(group) == 1:
                out.append(self.lines.line(first, str(first.get("node", "?"))))
                continue
            ranks = {r for r in map(_rank_of, group) if r is not None}
            nodes = sorted({str(r.get("node", "?")) for r in group})
            where = nodes[0] if len(nodes) == 1 else f"{len(nodes)} nodes"
            line = self.lines.line(
                {**first, "rank": None, "local_rank": None, "infra_rank": None, "infra_local_rank": None}, where
            )
            label = f"[ranks {compact_ranks(ranks)}] (x{len(group)})"
            out.append(line.replace("[workload:?(?) infra:?(?)]", label, 1))
        self._groups.clear()
        return out
