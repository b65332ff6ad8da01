"""What does one logger.info() cost a training step?

Per-call cost of ``logger.info("step %d loss %.4f", i, x)`` with nvrxlog's
node-local handler, against Python logging's own floor (a handler that does
nothing) and the standard library's FileHandler writing the same text format,
measured in the same run, interleaved, best of several rounds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time

from benchmarks._table import cli, machine, table
from nvrxlog.config import LogConfig
from nvrxlog.rank.adopt import Adoption, Thresholds
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
    # The same handler when ranks are not known yet (looked up once a second),
    # and with logging capture on (its end-of-walk step runs on every call).
    tmp = shm or os.path.join(work, "tmp")
    unknown = dataclasses.replace(config, rank=None, local_rank=None)
    loggers["ranks not known yet"] = _logger("nvrx.unknown", NodeLocalHandler(tmp, unknown))
    captured = _logger("nvrx.captured", NodeLocalHandler(tmp, config))
    loggers["logging capture on"] = captured
    adoption = Adoption(captured, list(captured.handlers), Thresholds(logging.INFO, {}), terminal=None, report=print)
    best = {name: float("inf") for name in loggers}
    for _ in range(rounds):
        for name, logger in loggers.items():  # interleaved so noise hits all alike
            if logger is captured:
                adoption.install()
            try:
                best[name] = min(best[name], _per_call_ns(logger, calls))
            finally:
                adoption.uninstall()
    for logger in loggers.values():
        for handler in logger.handlers:
            handler.close()
    shutil.rmtree(work, ignore_errors=True)
    if shm:
        shutil.rmtree(shm, ignore_errors=True)
    return best


def capture_overhead(calls: int = 20_000, rounds: int = 5) -> dict[str, float]:
    """Per-call ns of a library logger in an application's own set-up, logging capture off and on.

    The application's configuration is NVFlare-like: a console handler, two
    file handlers and a filter on the root; the library's records propagate.
    With capture on, each record also goes to nvrxlog's node-local handler.
    """
    work = tempfile.mkdtemp(prefix="nvrxlog-bench-")
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, root.filters[:])
    console = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - closed below
    handlers: list[logging.Handler] = [console]
    for name in ("app.log", "errors.log"):
        handlers.append(logging.FileHandler(os.path.join(work, name)))
    handlers[-1].setLevel(logging.ERROR)
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    root.handlers[:] = handlers
    root.setLevel(logging.INFO)
    root.addFilter(lambda record: not record.getMessage().startswith("skip"))
    lib = logging.getLogger("bench.lib.component")
    config = LogConfig(rank=0, local_rank=0, infra_rank=0, infra_local_rank=0)
    os.makedirs(os.path.join(work, "tmp"))
    sink = NodeLocalHandler(os.path.join(work, "tmp"), config)
    own = logging.getLogger("bench.own")
    adoption = Adoption(own, [sink], Thresholds(logging.INFO, {}), terminal=None, report=print)
    best = {"capture off": float("inf"), "logging capture on": float("inf")}
    try:
        for _ in range(rounds):
            best["capture off"] = min(best["capture off"], _per_call_ns(lib, calls))
            adoption.install()
            try:
                best["logging capture on"] = min(best["logging capture on"], _per_call_ns(lib, calls))
            finally:
                adoption.uninstall()
    finally:
        root.handlers[:], root.level, root.filters[:] = saved[0], saved[1], saved[2]
        for handler in [*handlers, sink]:
            handler.close()
        console.stream.close()
        shutil.rmtree(work, ignore_errors=True)
    return best


def report(quick: bool = False) -> str:
    """The per-call tables, as markdown."""
    best = run(calls=10_000 if quick else 50_000, rounds=3 if quick else 7)
    floor = best["floor (do-nothing handler)"]
    stdlib = best["stdlib FileHandler"]
    rows = [[name, f"{ns:.0f}", f"{ns / floor:.2f}x", f"{ns / stdlib:.2f}x"] for name, ns in best.items()]
    text = f"logger.info per call ({machine()})\n\n" + table(
        ["configuration", "ns/call", "vs floor", "vs stdlib FileHandler"], rows
    )
    heavy = capture_overhead(calls=5_000 if quick else 20_000, rounds=3 if quick else 5)
    off = heavy["capture off"]
    rows = [[name, f"{ns:.0f}", f"{ns / off:.2f}x"] for name, ns in heavy.items()]
    return (
        text
        + "\n\na library's record in an application's own logging set-up (NVFlare-like)\n\n"
        + table(["configuration", "ns/call", "vs capture off"], rows)
    )


def main() -> None:
    cli(__doc__, report)


if __name__ == "__main__":
    main()
