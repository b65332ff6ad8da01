"""The sbatch scripts on a real single-node SLURM (8 tasks): every record of every rank, once."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import parse_text_records

REPO = Path(__file__).resolve().parent.parent
STEPS = 100


@pytest.fixture(scope="module")
def slurm() -> Iterator[None]:
    """A local SLURM from slurm/local-slurm.sh; skipped (with the reason) where it cannot run, never in CI."""
    why = None
    if os.geteuid() != 0:
        why = "needs root to install and run a local SLURM"
    else:
        result = subprocess.run(
            ["bash", str(REPO / "slurm" / "local-slurm.sh"), "up"], capture_output=True, text=True, timeout=600
        )
        if result.returncode != 0:
            why = f"local SLURM did not come up: {result.stderr.strip()[-500:]}"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM must run in CI: {why}")
        pytest.skip(why)
    yield
    subprocess.run(["bash", str(REPO / "slurm" / "local-slurm.sh"), "down"], check=False, timeout=60)


def _rank_steps(records: list[dict], torchrun: bool) -> dict[int, list[int]]:
    steps: dict[int, list[int]] = {}
    for record in records:
        words = record["msg"].split()
        if len(words) >= 4 and words[0] == "rank" and words[2] == "step":
            rank = int(words[1])
            assert record["rank"] == str(rank), "workload rank"
            # srun: one SLURM task per rank; torchrun: one task (0) launches them all.
            infra = "0" if torchrun else str(rank)
            assert record["infra"] == infra and record["infra_local"] == infra, "infra ranks from SLURM"
            steps.setdefault(rank, []).append(int(words[3]))
    return steps


def _job_report(result: subprocess.CompletedProcess) -> str:
    """What SLURM says of a failed job (state, reason, exit code), for the failure message."""
    job = result.stdout.split()[-1] if result.stdout.strip() else ""
    if not job.isdigit():
        return f"(no job id in {result.stdout!r})"
    show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30)
    return show.stdout + show.stderr


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "script, tasks",
    [
        ("nvrxlog_thread.sbatch", ["--ntasks=8"]),
        ("nvrxlog_external.sbatch", ["--ntasks=8"]),
        ("nvrxlog_torchrun.sbatch", ["--ntasks=1", "--cpus-per-task=4"]),
    ],
)
def test_sbatch_script_delivers_every_rank_once_to_node_and_cluster_files(
    slurm: None, tmp_path: Path, script: str, tasks: list[str]
) -> None:
    """Each sbatch script: the per-node and cluster files hold each rank's steps exactly once, infra ranks right."""
    torchrun = "torchrun" in script
    if torchrun:
        pytest.importorskip("torch", reason="PyTorch is an optional extra (pip install torch==2.13.0)")
    ranks = 4 if torchrun else 8
    shutil.copy(REPO / "slurm" / "example_train.py", tmp_path)
    exports = f"ALL,NVRX_SLURM_DIR={REPO / 'slurm'},NVRX_EXAMPLE_STEPS={STEPS},NPROC={ranks},RDZV_PORT=29577"
    result = subprocess.run(
        ["sbatch", "--wait", *tasks, f"--chdir={tmp_path}", f"--export={exports}", str(REPO / "slurm" / script)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,  # SLURM_SUBMIT_DIR is where sbatch runs, as for a user submitting from the job's directory
    )
    job_output = "".join(p.read_text() for p in tmp_path.glob("*.out"))
    if result.returncode != 0:
        pytest.fail(f"sbatch exited {result.returncode}\n{result.stderr}\n{job_output[-3000:]}\n{_job_report(result)}")
    (log_dir,) = (tmp_path / "nvrx_logs").iterdir()
    node_file = next(log_dir.glob("nvrx_log_*.log"))
    for path in (node_file, log_dir / "cluster.log"):
        steps = _rank_steps(parse_text_records(path), torchrun)
        assert sorted(steps) == list(range(ranks)), f"{path.name}: ranks"
        for rank, seen in steps.items():
            assert seen == list(range(STEPS)), f"{path.name}: rank {rank} lost, doubled or reordered"
    assert "nvrxlog tail --connect" in job_output
