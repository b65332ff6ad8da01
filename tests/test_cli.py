"""The nvrxlog command line: help, one-line errors, the aggregate service, the demo."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import aggregate_cli, child_env, parse_text_records, run_worker, wait_for


def _nvrxlog(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nvrxlog", *args], env=child_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("command", [[], ["aggregate"], ["stream"], ["tail"], ["demo"]])
def test_every_command_has_help(command: list[str]) -> None:
    """--help works for the program and each command."""
    result = _nvrxlog(*command, "--help")
    assert result.returncode == 0 and "usage: nvrxlog" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["aggregate"],
        ["nonsense"],
        ["aggregate", "--tmp-dir", "/proc/nope/x", "--log-dir", "/tmp"],
        ["aggregate", "--tmp-dir", "/tmp/nvrxlog-cli-a", "--log-dir", "/tmp/nvrxlog-cli-b", "--streamer", "nonsense"],
        ["stream", "--bind", "nonsense", "--out", "/tmp/nvrxlog-cli.log"],
        ["stream", "--bind", "tcp://127.0.0.1:0", "--out", "/proc/nope/cluster.log"],
        ["tail", "--connect", "tcp://127.0.0.1:1", "--timeout", "1"],
        ["tail", "--connect", "tcp://127.0.0.1:1", "--ranks", "3-x"],
        ["tail", "--connect", "tcp://127.0.0.1:1", "--level", "LOUD"],
    ],
)
def test_bad_arguments_exit_nonzero_with_one_line(args: list[str]) -> None:
    """Bad arguments or paths: non-zero exit, a single line on stderr, no traceback."""
    result = _nvrxlog(*args)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("nvrxlog: ")


@pytest.mark.timeout(60)
def test_aggregate_service_drains_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    """`nvrxlog aggregate` writes what ranks logged and, on SIGTERM, drains and exits 0."""
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    proc = aggregate_cli(tmp, logs, "svc", "--json")
    wait_for(lambda: (tmp / ".nvrx-aggregator.lock").exists(), what="the service to take its lock")
    result = run_worker(
        "--count", 100, env=child_env(NVRX_NODE_LOCAL_TMPDIR=tmp, RANK=0, LOCAL_RANK=0, NVRX_LOG_AGGREGATOR="external")
    )
    assert result.returncode == 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    import orjson

    lines = [orjson.loads(x) for x in (logs / "nvrx_log_svc.log").read_bytes().splitlines()]
    assert [x["msg"] for x in lines] == [f"r0 i{i} " for i in range(100)]
    assert {
        "ts",
        "level",
        "node",
        "rank",
        "local_rank",
        "infra_rank",
        "infra_local_rank",
        "pid",
        "file",
        "line",
        "msg",
    } <= set(lines[0])
    assert lines[0]["node"] == "svc"


@pytest.mark.timeout(120)
def test_demo_runs_and_says_where_its_outputs_are(tmp_path: Path) -> None:
    """`nvrxlog demo` exits 0, prints the per-node files, and they hold the ranks' lines."""
    result = _nvrxlog("demo", "--dir", str(tmp_path), "--steps", "20", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "nvrx_log_node001.log" in result.stdout and "nvrx_log_node002.log" in result.stdout
    records = parse_text_records(tmp_path / "logs" / "nvrx_log_node001.log")
    assert {r["rank"] for r in records} == {"0", "1", "2", "3"}
    assert any(r["level"] == "ERROR" and "Traceback" in r["msg"] for r in records)
    cluster = parse_text_records(tmp_path / "cluster.log")
    assert {(r["node"], r["rank"]) for r in cluster if r["node"] != "streamer"} == {
        (f"node00{n + 1}", str(n * 4 + r)) for n in range(2) for r in range(4)
    }
    assert any(r["level"] == "WARNING" and "gradient norm" in r["msg"] for r in cluster)
    assert "cluster.log" in result.stdout and "nvrxlog tail --connect" in result.stdout
    assert "all 8 ranks exited 0" in result.stdout and "1 ERROR, 1 WARNING)" in result.stdout


@pytest.mark.timeout(120)
def test_demo_live_shows_the_records_as_they_arrive(tmp_path: Path) -> None:
    """`nvrxlog demo --live` prints the cluster's records through a live view, then the same summary."""
    result = _nvrxlog("demo", "--dir", str(tmp_path), "--live", "--steps", "5", "--nodes", "1", "--ranks", "2")
    assert result.returncode == 0, result.stderr
    shown = [line for line in result.stdout.splitlines() if "[node001]" in line and "step " in line]
    assert len(shown) == 2 * 5, result.stdout
    assert "1 node x 2 ranks, 5 steps" in result.stdout and "all 2 ranks exited 0" in result.stdout
