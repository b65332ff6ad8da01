"""The training benchmark under torchrun (4 processes, gloo): every rank's step lines in the node file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import child_env, parse_text_records

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
