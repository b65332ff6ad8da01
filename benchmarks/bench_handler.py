"""What does one logger.info() cost a training step?

Per-call cost of ``logger.info("step %d loss %.4f", i, x)`` with nvrxlog's
node-local handler, against Python logging's own floor (a handler that does
nothing) and the standard library's FileHandler writing the same text format,
measured in the same run, interleaved, best of several rounds.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

from benchmarks._table import cli, machine, table
from nvrxlog.config import LogConfig
from nvrxlog.rank.handler import NodeLocalHandler

_TEXT = "%(asctime)s [%(levelname)s] [node001] [workload:0(0) infra:0(0)] %(filename)s:%(lineno)d %(message)s"


class _Nothing(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"bench.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def _per_call_ns(logger: logging.Logger, calls: int) -> float:
    info = logger.info
    x = 0.1234
    start = time.perf_counter_ns()
    for i in range(calls):
        info("step %d loss %.4f", i, x)
    return (time.perf_counter_ns() - start) / calls


def run(calls: int = 50_000, rounds: int = 7) -> dict[str, float]:
    """Best per-call ns of each configuration."""
    work = tempfile.mkdtemp(prefix="nvrxlog-bench-")
    config = LogConfig(max_file_size_kb=10240, max_log_files=4, rank=0, local_rank=0, infra_rank=0, infra_local_rank=0)
    file_handler = logging.FileHandler(os.path.join(work, "stdlib.log"))
    file_handler.setFormatter(logging.Formatter(_TEXT))
    loggers = {
        "floor (do-nothing handler)": _logger("floor", _Nothing()),
        "stdlib FileHandler": _logger("file", file_handler),
    }
    # Node-local tmpdirs as users set them: on disk, and in /dev/shm (the
    # usual NVRX_NODE_LOCAL_TMPDIR on GPU nodes). Retention never triggers:
    # each writer keeps up to 256 MiB while an aggregator is expected.
    shm = tempfile.mkdtemp(prefix="nvrxlog-bench-", dir="/dev/shm") if os.path.isdir("/dev/shm") else None
    for label, tmp in (("disk", os.path.join(work, "tmp")), ("/dev/shm", shm)):
        if tmp:
            os.makedirs(tmp, exist_ok=True)
            loggers[f"nvrxlog node-local ({label})"] = _logger(f"nvrx.{label}", NodeLocalHandler(tmp, config))
    best = {name: float("inf") for name in loggers}
    for _ in range(rounds):
        for name, logger in loggers.items():  # interleaved so noise hits all alike
            best[name] = min(best[name], _per_call_ns(logger, calls))
    for logger in loggers.values():
        for handler in logger.handlers:
            handler.close()
    shutil.rmtree(work, ignore_errors=True)
    if shm:
        shutil.rmtree(shm, ignore_errors=True)
    return best


def report(quick: bool = False) -> str:
    """The per-call table, as markdown."""
    best = run(calls=10_000 if quick else 50_000, rounds=3 if quick else 7)
    floor = best["floor (do-nothing handler)"]
    stdlib = best["stdlib FileHandler"]
    rows = [[name, f"{ns:.0f}", f"{ns / floor:.2f}x", f"{ns / stdlib:.2f}x"] for name, ns in best.items()]
    return f"logger.info per call ({machine()})\n\n" + table(
        ["configuration", "ns/call", "vs floor", "vs stdlib FileHandler"], rows
    )


def main() -> None:
    cli(__doc__, report)


if __name__ == "__main__":
    main()
