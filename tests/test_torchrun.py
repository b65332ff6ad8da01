"""The training benchmark under torchrun (4 processes, gloo): every rank's step lines in the node file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import child_env, parse_text_records, wait_for

from benchmarks.bench_torchrun import torchrun_command

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_torchrun_training_logs_every_step_of_every_rank(tmp_path: Path) -> None:
    """torchrun --nproc-per-node 4: the per-node file has each rank's steps exactly once; the overhead table prints."""
    pytest.importorskip("torch", reason="PyTorch is an optional extra (pip install torch==2.13.0)")
    env = child_env(NVRX_NODE_LOCAL_TMPDIR=tmp_path / "tmp", NVRX_LOG_DIR=tmp_path / "logs", NVRX_NODE_ID="t1")
    result = subprocess.run(
        torchrun_command(4, 50, 1),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    noise = ("W1", "*****", "  warnings.warn")
    detail = "\n".join(line for line in (result.stdout + result.stderr).splitlines() if not line.startswith(noise))
    assert result.returncode == 0, detail[-4000:]
    assert "| nvrxlog |" in result.stdout and "| no logging |" in result.stdout
    steps: dict[str, list[int]] = {}
    for record in parse_text_records(tmp_path / "logs" / "nvrx_log_t1.log"):
        assert record["file"] == "bench_torchrun.py"
        steps.setdefault(record["rank"], []).append(int(record["msg"].split()[3]))
    assert steps == {str(rank): list(range(50)) for rank in range(4)}


def _torchrun_job(tmp_path: Path, **env: object) -> tuple[float, subprocess.CompletedProcess]:
    """Run tests/_torch_job.py on 4 ranks under torchrun; return the seconds it took and the result."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4"]
    tmp_path.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    result = subprocess.run(
        [*command, str(REPO / "tests" / "_torch_job.py")],
        env=child_env(
            NVRX_NODE_LOCAL_TMPDIR=tmp_path / "tmp",
            NVRX_LOG_DIR=tmp_path / "logs",
            NVRX_NODE_ID="t1",
            **env,
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return time.monotonic() - start, result


def _no_aggregator_left(tmp_path: Path) -> bool:
    tmp = str(tmp_path / "tmp")
    return not any(tmp in (p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


@pytest.mark.timeout(600)
def test_torchrun_crash_of_rank_0_leaves_every_ranks_last_words(tmp_path: Path) -> None:
    """Rank 0 raises at step 50 under torchrun: each rank ends in one ERROR record; the job ends as fast as without."""
    pytest.importorskip("torch", reason="PyTorch is an optional extra (pip install torch==2.13.0)")
    plain, _ = _torchrun_job(tmp_path / "plain", TEST_PLAIN=1, TEST_CRASH_AT=50)
    took, result = _torchrun_job(tmp_path, TEST_CAPTURE="all", TEST_CRASH_AT=50)
    assert result.returncode != 0
    assert took < plain + 5, f"{took:.1f}s with nvrxlog, {plain:.1f}s without"
    path = tmp_path / "logs" / "nvrx_log_t1.log"

    def errors() -> dict[str, dict]:
        return {r["rank"]: r for r in parse_text_records(path) if r["level"] == "ERROR"} if path.exists() else {}

    wait_for(lambda: len(errors()) == 4, 60, "an ERROR record from every rank")
    wait_for(lambda: _no_aggregator_left(tmp_path), 60, "the successor to exit")
    records = parse_text_records(path)
    assert len([r for r in records if r["level"] == "ERROR"]) == 4, "one ERROR record per rank"
    assert errors()["0"]["msg"].startswith("uncaught RuntimeError: rank 0 diverged at step 50")
    assert not [r for r in records if r["file"] in ("<stderr>", "<stdout>") and "Traceback" in r["msg"]]


@pytest.mark.timeout(600)
def test_torchrun_persistent_workers_do_not_delay_the_exit(tmp_path: Path) -> None:
    """Data-loader workers alive at exit, capture on: the job ends as fast as without nvrxlog, every step logged."""
    pytest.importorskip("torch", reason="PyTorch is an optional extra (pip install torch==2.13.0)")
    plain, _ = _torchrun_job(tmp_path / "plain", TEST_PLAIN=1, TEST_WORKERS=2)
    took, result = _torchrun_job(tmp_path, TEST_CAPTURE="all", TEST_WORKERS=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert took < plain + 5, f"{took:.1f}s with nvrxlog, {plain:.1f}s without"
    wait_for(lambda: _no_aggregator_left(tmp_path), 60, "the successor to exit")
    steps: dict[str, list[int]] = {}
    for record in parse_text_records(tmp_path / "logs" / "nvrx_log_t1.log"):
        if record["msg"].startswith("rank "):
            steps.setdefault(record["rank"], []).append(int(record["msg"].split()[3]))
    assert steps == {str(rank): list(range(100)) for rank in range(4)}
