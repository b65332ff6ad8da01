"""The central streamer with real aggregators, ranks and sockets on loopback."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from conftest import child_env, start_worker, wait_for

from nvrxlog import NodeAggregator, Streamer


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


@pytest.mark.timeout(180)
def test_four_nodes_deliver_every_record_once_with_node_and_rank_fields(tmp_path: Path) -> None:
    """4 aggregators x 4 ranks x 2,000 records: the cluster file holds all 32,000 exactly once, time-ordered."""
    nodes, ranks, count = 4, 4, 2000
    with Streamer("tcp://127.0.0.1:0", str(tmp_path / "cluster.log"), json=True) as streamer:
        aggregators = []
        procs = []
        for n in range(nodes):
            node = f"node{n}"
            tmp = tmp_path / node
            aggregators.append(NodeAggregator(str(tmp), str(tmp_path / "logs"), node, streamer.endpoint).start())
            for local in range(ranks):
                env = rank_env(tmp, node, n * ranks + local, local)
                procs.append(start_worker("--count", count, env=env))
        for proc in procs:
            assert proc.wait(timeout=120) == 0
        for aggregator in aggregators:
            aggregator.stop()
            assert aggregator.stats["undelivered"] == 0
    records = json_lines(tmp_path / "cluster.log")
    assert_exactly_once(records, {(f"node{n}", n * ranks + l): count for n in range(nodes) for l in range(ranks)})
    assert all(r["local_rank"] == r["rank"] % ranks for r in records if r["rank"] is not None)
    stamps = [r["ts"] for r in records]
    assert stamps == sorted(stamps), "watermarks must keep the cluster file in time order"


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


def aggregate_cli(tmp: Path, logs: Path, node: str, streamer: str, stop_file: Path) -> subprocess.Popen:
    """Start `nvrxlog aggregate` forwarding to ``streamer``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nvrxlog",
            "aggregate",
            "--tmp-dir",
            str(tmp),
            "--log-dir",
            str(logs),
            "--node-id",
            node,
            "--streamer",
            streamer,
            "--wait-file",
            str(stop_file),
            "--json",
        ],
        env=child_env(),
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


@pytest.mark.timeout(120)
def test_streamer_starting_late_gets_everything_without_error_lines(tmp_path: Path) -> None:
    """Nodes start 5 s before the streamer: every record arrives and no ERROR line is written anywhere."""
    address = f"tcp://127.0.0.1:{free_port()}"
    stop = tmp_path / "stop"
    aggregators = [aggregate_cli(tmp_path / f"n{n}", tmp_path / "logs", f"n{n}", address, stop) for n in range(2)]
    writers = [
        start_worker("--count", 1000, "--rate", 400, env=rank_env(tmp_path / f"n{n}", f"n{n}", n * 2 + r, r))
        for n in range(2)
        for r in range(2)
    ]
    time.sleep(5)  # the scenario itself: the streamer comes up 5 s after the nodes
    streamer, _ = stream_cli(tmp_path / "cluster.log", address)
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    stop.touch()
    errs = [finish(a) for a in aggregators]
    errs.append(stop_stream(streamer))
    records = json_lines(tmp_path / "cluster.log")
    assert_exactly_once(records, {(f"n{n}", n * 2 + r): 1000 for n in range(2) for r in range(2)})
    outputs = [(tmp_path / "cluster.log").read_text()] + [p.read_text() for p in (tmp_path / "logs").glob("*.log")]
    assert not any("ERROR" in text for text in outputs + errs), "no ERROR line may appear on the way"


@pytest.mark.timeout(180)
def test_streamer_killed_and_restarted_on_the_same_address_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """kill -9 of the streamer mid-run, restart on the same address: the cluster file has every record once."""
    out = tmp_path / "cluster.log"
    streamer, address = stream_cli(out)
    stop = tmp_path / "stop"
    aggregators = [aggregate_cli(tmp_path / f"n{n}", tmp_path / "logs", f"n{n}", address, stop) for n in range(2)]
    writers = [
        start_worker("--count", 3000, "--rate", 1000, env=rank_env(tmp_path / f"n{n}", f"n{n}", n * 2 + r, r))
        for n in range(2)
        for r in range(2)
    ]
    wait_for(lambda: out.exists() and out.stat().st_size > 100_000, what="the streamer to write")
    streamer.kill()
    streamer.wait(timeout=10)
    streamer, _ = stream_cli(out, address)
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    stop.touch()
    for aggregator in aggregators:
        finish(aggregator)
    stop_stream(streamer)
    assert_exactly_once(json_lines(out), {(f"n{n}", n * 2 + r): 3000 for n in range(2) for r in range(2)})


@pytest.mark.timeout(180)
def test_aggregator_killed_and_restarted_delivers_everything_once_to_the_streamer(tmp_path: Path) -> None:
    """kill -9 of a forwarding aggregator mid-run, then a restart: the cluster file has every record once."""
    out = tmp_path / "cluster.log"
    streamer, address = stream_cli(out)
    stop = tmp_path / "stop"
    tmp, logs = tmp_path / "n0", tmp_path / "logs"
    aggregator = aggregate_cli(tmp, logs, "n0", address, stop)
    writers = [start_worker("--count", 3000, "--rate", 1000, env=rank_env(tmp, "n0", r, r)) for r in range(4)]
    for _ in range(2):
        size = out.stat().st_size if out.exists() else 0
        wait_for(lambda s=size: out.exists() and out.stat().st_size > s + 50_000, what="records to arrive")
        aggregator.kill()
        aggregator.wait(timeout=10)
        aggregator = aggregate_cli(tmp, logs, "n0", address, stop)
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    stop.touch()
    finish(aggregator)
    stop_stream(streamer)
    assert_exactly_once(json_lines(out), {("n0", r): 3000 for r in range(4)})
    assert_exactly_once(json_lines(logs / "nvrx_log_n0.log"), {("n0", r): 3000 for r in range(4)})
