"""Printing benchmark results as a markdown table."""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable


def machine() -> str:
    """One line describing where the figures were measured."""
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{python}, {os.cpu_count()} CPUs, {platform.machine()}"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cli(doc: str, report: Callable[[bool], str]) -> None:
    """The command line of one benchmark module: ``[--quick]``, then print its table."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    print(report(parser.parse_args().quick))
