"""Helpers for tests that run streamers and aggregators on loopback."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import conftest
import orjson
from conftest import child_env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def json_lines(path: Path) -> list[dict]:
    """Every line of a JSON-lines file, decoded."""
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def rank_env(tmp: Path, node: str, rank: int, local: int, **extra: object) -> dict[str, str]:
    """The environment of one simulated rank on one simulated node."""
    return child_env(
        NVRX_NODE_LOCAL_TMPDIR=tmp,
        NVRX_LOG_AGGREGATOR="external",
        NVRX_NODE_ID=node,
        RANK=rank,
        LOCAL_RANK=local,
        **extra,
    )


def assert_exactly_once(records: list[dict], expected: dict[tuple[str, int], int]) -> None:
    """Each (node, rank) has records r<rank> i0..i<n-1>, in order, once; nothing else but notices."""
    seen: dict[tuple[str, int], list[int]] = {}
    for record in records:
        if record["msg"].startswith("nvrxlog "):
            continue
        tag, index = record["msg"].split()[:2]
        assert tag == f"r{record['rank']}"
        seen.setdefault((record["node"], record["rank"]), []).append(int(index[1:]))
    assert sorted(seen) == sorted(expected)
    for key, count in expected.items():
        assert seen[key] == list(range(count)), f"{key}: lost, doubled or reordered"


def stream_cli(out: Path, bind: str = "tcp://127.0.0.1:0", *extra: str) -> tuple[subprocess.Popen, str]:
    """Start `nvrxlog stream`; return it and the endpoint it bound."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nvrxlog", "stream", "--bind", bind, "--out", str(out), "--json", *extra],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    match = re.search(r"listening on (tcp://\S+),", line)
    assert match, f"streamer did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
    return proc, match[1]


def aggregate_cli(tmp: Path, logs: Path, node: str, streamer: str, stop_file: Path, *extra: str) -> subprocess.Popen:
    """Start `nvrxlog aggregate` forwarding to ``streamer`` in JSON, until ``stop_file`` exists."""
    return conftest.aggregate_cli(
        tmp,
        logs,
        node,
        "--streamer",
        streamer,
        "--wait-file",
        str(stop_file),
        "--json",
        *extra,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    """Wait for a process to exit 0; return its stderr."""
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return err or ""


def stop_stream(proc: subprocess.Popen) -> str:
    """SIGTERM a `nvrxlog stream`; it must flush and exit 0."""
    proc.send_signal(signal.SIGTERM)
    return finish(proc)
