"""``python -m benchmarks [--quick] [--out FILE]``: every benchmark, one results table.

Progress goes to stderr; the results (markdown, with machine info) go to
``--out`` (default ``benchmarks/results.md``) and stdout.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import psutil

from benchmarks import bench_aggregator, bench_handler, bench_streamer

_BENCHMARKS = [
    ("per-call cost of logger.info", bench_handler.report),
    ("aggregator throughput and idle CPU", bench_aggregator.report),
    ("streamer ingest, 512-node scale, end-to-end latency", bench_streamer.report),
]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (under two minutes)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results.md"))
    args = parser.parse_args()
    memory = psutil.virtual_memory().total / 2**30
    sections = [
        "# nvrxlog benchmark results",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, {memory:.0f} GiB, "
        f"{platform.platform()}",
        f"- python: {platform.python_implementation()} {platform.python_version()}",
        f"- mode: {'quick' if args.quick else 'full'}",
    ]
    started = time.monotonic()
    for number, (title, report) in enumerate(_BENCHMARKS, 1):
        print(f"[{number}/{len(_BENCHMARKS)}] {title} ...", file=sys.stderr, flush=True)
        began = time.monotonic()
        sections += ["", f"## {title}", "", report(args.quick)]
        print(f"[{number}/{len(_BENCHMARKS)}] done in {time.monotonic() - began:.0f}s", file=sys.stderr, flush=True)
    text = "\n".join(sections) + "\n"
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    print(f"all benchmarks in {time.monotonic() - started:.0f}s; results in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
