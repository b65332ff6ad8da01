"""Shared fixtures: a clean nvrxlog state and environment for every test."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from nvrxlog.rank import setup as _setup

HERE = Path(__file__).parent
WORKER = str(HERE / "_worker.py")

_ENV_PREFIXES = ("NVRX_", "SLURM", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")

CONTINUATION = "    "  # what every output puts before a message's second and later lines
LINE = re.compile(
    r"^(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \[(?P<level>\w+)\] \[(?P<node>[^\]]+)\] "
    r"\[workload:(?P<rank>[^(]+)\((?P<local>[^)]+)\) infra:(?P<infra>[^(]+)\((?P<infra_local>[^)]+)\)\] "
    r"(?P<file>\S+):(?P<line>\d+) (?P<msg>.*)$"
)


@pytest.fixture(autouse=True)
def clean_nvrxlog(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no nvrxlog configuration, env or root handlers of its own."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name)
    root_handlers = list(logging.getLogger().handlers)
    _setup.reset_state()
    yield
    _setup.reset_state()
    logging.getLogger().handlers[:] = root_handlers


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs, so writes fail with ENOSPC (needs root, as in CI)."""
    with mounted_tmpfs(tmp_path / "small", "64k", mode="0700") as mnt:
        yield mnt


def child_env(**extra: object) -> dict[str, str]:
    """The test's environment without nvrxlog/SLURM variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def node_env(tmp_path: Path, rank: int, **extra: object) -> dict[str, str]:
    """The environment of rank ``rank`` of node001, node-local mode under ``tmp_path``, plus ``extra``."""
    return child_env(
        NVRX_NODE_LOCAL_TMPDIR=tmp_path / "tmp",
        NVRX_LOG_DIR=tmp_path / "logs",
        NVRX_NODE_ID="node001",
        RANK=rank,
        LOCAL_RANK=rank,
        **extra,
    )


def run_worker(*args: object, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the test worker to completion, capturing its output."""
    return subprocess.run(
        [sys.executable, WORKER, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_script(tmp_path: Path, code: str, *, rank: int = 0, **env: object) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) as rank ``rank`` of node001 in node-local mode under ``tmp_path``."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)], env=node_env(tmp_path, rank, **env), capture_output=True, text=True, timeout=60
    )


def node_records(tmp_path: Path, at_least: int = 1) -> list[dict]:
    """The records of node001's file under ``tmp_path``, once it holds ``at_least`` of them."""
    path = tmp_path / "logs" / "nvrx_log_node001.log"
    return wait_for(  # type: ignore[return-value]
        lambda: (records := parse_text_records(path) if path.exists() else []) and len(records) >= at_least and records,
        60,
        f"{at_least} record(s) in the node file",
    )


def start_worker(*args: object, env: dict[str, str], **kwargs: object) -> subprocess.Popen:
    """Start the test worker in the background."""
    return subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=env, **kwargs)


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def aggregators(tmp_path: Path) -> list[psutil.Process]:
    """Aggregator processes (successors) serving the tmpdir ``tmp_path / "tmp"`` of a test's node."""
    tmp = str(tmp_path / "tmp")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "aggregate" in cmdline and tmp in cmdline:
            found.append(proc)
    return found


def node_settled(tmp_path: Path) -> None:
    """Wait until no successor aggregator serves the test's node: its files are complete then.

    A rank exits without waiting for its peers; when local rank 0 goes first a
    successor finishes the node file a moment after the last rank exited.
    """
    wait_for(lambda: not aggregators(tmp_path), 60, "the node's successor aggregator to finish")


def parse_text_records(path: Path) -> list[dict]:
    """Split a text-format output file into records (continuation lines joined, their indent removed)."""
    records: list[dict] = []
    text = path.read_text(encoding="utf-8")
    # A file still being written may end in a line that is not whole yet: it is read next time.
    for raw in text[: text.rfind("\n") + 1].splitlines():
        match = LINE.match(raw)
        if match:
            records.append(match.groupdict())
        else:
            assert records, f"continuation line before any record: {raw!r}"
            assert raw.startswith(CONTINUATION), f"a continuation line must be indented: {raw!r}"
            records[-1]["msg"] += "\n" + raw[len(CONTINUATION) :]
    return records


def aggregate_cli(tmp: Path, logs: Path, node: str, *extra: str, **popen: object) -> subprocess.Popen:
    """Start the `nvrxlog aggregate` service (extra arguments passed on)."""
    command = [sys.executable, "-m", "nvrxlog", "aggregate", "--tmp-dir", str(tmp), "--log-dir", str(logs)]
    return subprocess.Popen([*command, "--node-id", node, *extra], env=child_env(), **popen)


def raw_record(seq: int, msg: str, **extra: object) -> dict:
    """A record as a writer puts it in a temp file (or a node in a batch)."""
    return {
        "seq": seq,
        "ts": time.time_ns(),
        "level": "INFO",
        "rank": 0,
        "local_rank": 0,
        "infra_rank": None,
        "infra_local_rank": None,
        "pid": os.getpid(),
        "file": "t.py",
        "line": 1,
        "msg": msg,
        **extra,
    }


def emit(handlers: list, msgs: list[str] | str, level: int = logging.INFO) -> None:
    """Log each message through each in-process handler, as ranks would."""
    for msg in [msgs] if isinstance(msgs, str) else msgs:
        record = logging.LogRecord("nvrx", level, "train.py", 7, msg, None, None)
        for handler in handlers:
            record.created = time.time()
            handler.emit(record)


@contextmanager
def mounted_tmpfs(mnt: Path, size: str, *, mode: str = "0755", options: str = "") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``mnt`` (created), unmounted on exit; skips, saying why, unless root."""
    mnt.mkdir(parents=True, exist_ok=True)
    opts = ",".join(x for x in (options, f"size={size}", f"mode={mode}") if x)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"needs root to mount a tmpfs (CI runs as root): {result.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_disk(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` with one file until ENOSPC; return it (delete it to free the space)."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 16)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            free = os.statvfs(directory)
            try:
                os.write(fd, chunk[: max(free.f_bavail * free.f_frsize, 1)])
            except OSError:
                break
    finally:
        os.close(fd)
    return filler
