"""``python -m benchmarks [--quick] [--out FILE]``: every benchmark, one results table.

Progress goes to stderr; the results (markdown, with machine info) go to
``--out`` (default ``benchmarks/results.md``) and stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time

import psutil

from benchmarks import bench_aggregator, bench_chaos, bench_exit, bench_handler, bench_soak, bench_streamer
from benchmarks.bench_torchrun import torchrun_command


def torchrun_report(quick: bool) -> str:
    """Step-time overhead of logging in a small DDP job under torchrun (needs PyTorch)."""
    if importlib.util.find_spec("torch") is None:
        return "skipped: PyTorch is not installed (pip install torch==2.13.0)"
    with tempfile.TemporaryDirectory(prefix="nvrxlog-bench-torchrun-") as work:
        env = dict(
            os.environ, NVRX_NODE_LOCAL_TMPDIR=os.path.join(work, "tmp"), NVRX_LOG_DIR=os.path.join(work, "logs")
        )
        result = subprocess.run(
            torchrun_command(4, 100 if quick else 300, 2 if quick else 3),
            env=env,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            capture_output=True,
            text=True,
            timeout=900,
        )
    if result.returncode != 0:
        return f"failed: {result.stderr.strip()[-500:]}"
    lines = result.stdout.strip().splitlines()
    return lines[0] + "\n\n" + "\n".join(lines[1:])


_BENCHMARKS = [
    ("per-call cost of logger.info", bench_handler.report),
    ("aggregator throughput and idle CPU", bench_aggregator.report),
    ("streamer ingest, 512-node scale, end-to-end latency", bench_streamer.report),
    ("the end of a job: exit time and the last lines", bench_exit.report),
    ("chaos: everything going wrong at once, exactly once and bounded", bench_chaos.report),
    ("soak: many nodes, short-lived writers, restarts and a hostile peer against one streamer", bench_soak.report),
    ("step-time overhead under torchrun (4 ranks)", torchrun_report),
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
