"""How fast does the node aggregator merge, and what does it cost when idle?

Throughput: 8 writers' temp files (written by the real handler) merged into
the per-node file by NodeAggregator, against a naive standard-library merge
(json.loads per line, sort, str formatting, one write) of the same files
measured in the same run. Idle: CPU used by `nvrxlog aggregate` while 8
writer processes are alive but log nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

from benchmarks._table import cli, machine, table
from nvrxlog import NodeAggregator
from nvrxlog.config import LogConfig
from nvrxlog.rank.handler import NodeLocalHandler


def _write_records(tmp: str, writers: int, per_writer: int) -> None:
    handlers = []
    for rank in range(writers):
        config = LogConfig(rank=rank, local_rank=rank, infra_rank=rank, infra_local_rank=rank)
        handlers.append(NodeLocalHandler(tmp, config))
    record = logging.LogRecord("nvrx", logging.INFO, "train.py", 42, "step %d loss %.4f", None, None)
    for i in range(per_writer):
        for handler in handlers:  # interleaved, as concurrent ranks would be
            record.args = (i, 0.1234)
            record.created = time.time()
            handler.emit(record)
    for handler in handlers:
        handler.close()


def _naive_merge(tmp: str, out: str) -> int:
    records = []
    for name in sorted(os.listdir(tmp)):
        if name.endswith(".jsonl"):
            with open(os.path.join(tmp, name), encoding="utf-8") as f:
                records.extend(json.loads(line) for line in f)
    records.sort(key=lambda r: (r["ts"], r["pid"], r["seq"]))
    lines = []
    for r in records:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts"] // 10**9))
        lines.append(
            f"{stamp},{r['ts'] // 10**6 % 1000:03d} [{r['level']}] [node] [workload:{r['rank']}({r['local_rank']}) "
            f"infra:{r['infra_rank']}({r['infra_local_rank']})] {r['file']}:{r['line']} {r['msg']}\n"
        )
    with open(out, "w", encoding="utf-8") as f:
        f.write("".join(lines))
    return len(records)


def throughput(writers: int, per_writer: int) -> dict[str, float]:
    """Records/s for nvrxlog and the naive baseline over the same files."""
    work = tempfile.mkdtemp(prefix="nvrxlog-bench-agg-")
    try:
        tmp, copy = os.path.join(work, "tmp"), os.path.join(work, "copy")
        os.makedirs(tmp)
        _write_records(tmp, writers, per_writer)
        shutil.copytree(tmp, copy)  # the aggregator deletes what it consumes
        total = writers * per_writer

        start = time.perf_counter()
        assert _naive_merge(copy, os.path.join(work, "naive.log")) == total
        naive = time.perf_counter() - start

        aggregator = NodeAggregator(tmp, os.path.join(work, "logs"), "bench", merge_window=0.0)
        cpu0 = time.process_time()
        start = time.perf_counter()
        aggregator.start()
        deadline = time.monotonic() + 300
        while aggregator.stats["records"] < total and time.monotonic() < deadline:
            time.sleep(0.005)  # the benchmark's own poll, not synchronisation in a test
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        aggregator.stop()
        assert aggregator.stats["records"] == total, aggregator.stats
        return {"records": total, "nvrxlog": total / elapsed, "nvrxlog_cpu": total / cpu, "naive": total / naive}
    finally:
        shutil.rmtree(work, ignore_errors=True)


_IDLE_WRITER = (
    "import sys, time\nfrom nvrxlog import setup_logger\nlog = setup_logger()\nlog.info('ready')\nsys.stdin.read()\n"
)


def idle_cpu(writers: int, seconds: float) -> float:
    """Percent of one core used by `nvrxlog aggregate` while ``writers`` ranks sit idle."""
    work = tempfile.mkdtemp(prefix="nvrxlog-bench-idle-")
    procs: list[subprocess.Popen] = []
    try:
        tmp = os.path.join(work, "tmp")
        env = dict(os.environ, NVRX_NODE_LOCAL_TMPDIR=tmp, NVRX_LOG_AGGREGATOR="external")
        aggregator = subprocess.Popen(
            [sys.executable, "-m", "nvrxlog", "aggregate", "--tmp-dir", tmp, "--log-dir", os.path.join(work, "logs")]
        )
        procs.append(aggregator)
        for rank in range(writers):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _IDLE_WRITER],
                    stdin=subprocess.PIPE,
                    env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
                )
            )
        time.sleep(2.0)  # let start-up (imports, first records) finish before measuring
        proc = psutil.Process(aggregator.pid)
        before = sum(proc.cpu_times()[:2])
        time.sleep(seconds)
        used = sum(proc.cpu_times()[:2]) - before
        return 100.0 * used / seconds
    finally:
        for proc in procs:
            if proc.stdin:
                proc.stdin.close()
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def report(quick: bool = False) -> str:
    """The aggregator table, as markdown."""
    result = throughput(8, 10_000 if quick else 50_000)
    idle = idle_cpu(8, 3.0 if quick else 10.0)
    return f"node aggregator, 8 writers ({machine()})\n\n" + (
        table(
            ["measure", "value", "vs naive stdlib merge"],
            [
                [
                    f"merge+write, {result['records']:,} records (wall)",
                    f"{result['nvrxlog']:,.0f} rec/s",
                    f"{result['nvrxlog'] / result['naive']:.2f}x",
                ],
                ["merge+write per CPU second", f"{result['nvrxlog_cpu']:,.0f} rec/s", ""],
                ["naive stdlib merge (json + sort + format)", f"{result['naive']:,.0f} rec/s", "1.00x"],
                ["idle CPU, 8 writers alive and silent", f"{idle:.2f}% of one core", ""],
            ],
        )
    )


def main() -> None:
    cli(__doc__, report)


if __name__ == "__main__":
    main()
