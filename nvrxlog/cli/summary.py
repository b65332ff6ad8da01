"""What a service prints when it stops: records per node and rank, ERROR and WARNING counts, losses, files."""

from __future__ import annotations

from collections import Counter, defaultdict

__all__ = ["node_lines", "plural", "summary_line"]


def plural(count: int, noun: str) -> str:
    """``1 node``, ``2 nodes``."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def _ranks(per_rank: Counter) -> str:
    shown = sorted(per_rank.items(), key=lambda kv: (type(kv[0]) is not int, kv[0] if type(kv[0]) is int else 0))
    return ", ".join(f"rank {'?' if rank is None else rank}: {count:,}" for rank, count in shown)


def summary_line(per_rank: Counter, levels: Counter, head: str = "") -> str:
    """``[head: ]N records (E ERROR, W WARNING); rank 0: n, ...``."""
    total = sum(per_rank.values())
    errors = levels["ERROR"] + levels["CRITICAL"]
    return f"{head}{plural(total, 'record')} ({errors:,} ERROR, {levels['WARNING']:,} WARNING); {_ranks(per_rank)}"


def node_lines(per_rank: Counter[tuple], levels: Counter[tuple]) -> list[str]:
    """One summary line per node from counts keyed ``(node, rank)`` and ``(node, level)``."""
    ranks_of: dict[str, Counter] = defaultdict(Counter)
    levels_of: dict[str, Counter] = defaultdict(Counter)
    for (node, rank), count in per_rank.items():
        ranks_of[str(node)][rank] += count
    for (node, level), count in levels.items():
        levels_of[str(node)][level] += count
    return [summary_line(ranks_of[node], levels_of[node], f"{node}: ") for node in sorted(ranks_of)]
