"""What a service prints when it stops: records per node and rank, ERROR and WARNING counts, losses, files."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

__all__ = ["plural", "summary_lines"]


def plural(count: int, noun: str) -> str:
    """``1 node``, ``2 nodes``."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def _ranks(tally: Iterable[tuple[object, int]]) -> str:
    per_rank: Counter[str] = Counter()
    for rank, count in tally:
        per_rank["?" if rank is None else str(rank)] += count
    shown = sorted(per_rank.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0))
    return ", ".join(f"rank {rank}: {count:,}" for rank, count in shown)


def summary_lines(tally: Counter[tuple], *, by_node: bool) -> list[str]:
    """One line per node (or one for the node) from a tally keyed ``(node, rank, level)`` or ``(rank, level)``."""
    nodes: dict[str, list[tuple[object, str, int]]] = defaultdict(list)
    for key, count in tally.items():
        node, rank, level = key if by_node else ("", *key)
        nodes[str(node)].append((rank, str(level), count))
    lines = []
    for node in sorted(nodes):
        rows = nodes[node]
        total = sum(count for _, _, count in rows)
        levels: Counter[str] = Counter()
        for _, level, count in rows:
            levels[level] += count
        head = f"{node}: " if by_node else ""
        lines.append(
            f"{head}{plural(total, 'record')} ({levels['ERROR'] + levels['CRITICAL']:,} ERROR, "
            f"{levels['WARNING']:,} WARNING); {_ranks((rank, count) for rank, _, count in rows)}"
        )
    return lines
