"""Real libraries under torchrun (2 ranks, CPU): what they print lands once, at its level and source."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import HERE, child_env, node_settled, parse_text_records

JOB = str(HERE / "_library_job.py")


def _run(tmp_path: Path, library: str) -> list[dict]:
    pytest.importorskip("torch", reason="PyTorch is an optional extra (pip install torch==2.13.0)")
    pytest.importorskip(library, reason=f"{library} is an optional test extra (.ci/run installs it)")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run(
        [*command, JOB, library, str(tmp_path)],
        env=child_env(
            NVRX_NODE_LOCAL_TMPDIR=tmp_path / "tmp",
            NVRX_LOG_DIR=tmp_path / "logs",
            NVRX_NODE_ID="t1",
            HF_HUB_OFFLINE=1,
            TOKENIZERS_PARALLELISM="false",
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    node_settled(tmp_path)
    path = tmp_path / "logs" / "nvrx_log_t1.log"
    data = path.read_bytes()
    assert b"\r" not in data and b"\x1b" not in data, "no raw progress-bar bytes in the node file"
    records = parse_text_records(path)
    assert [r["rank"] for r in records if r["msg"] == "job done"] in (["0", "1"], ["1", "0"])
    counts = Counter((r["rank"], r["file"], r["line"], r["msg"]) for r in records)
    doubled = [key for key, n in counts.items() if n > 1 and not key[3].startswith(("{'loss'", "train"))]
    assert not doubled, f"lines recorded twice: {doubled[:3]}"
    return records


@pytest.mark.timeout(600)
def test_transformers_trainer_lines_keep_their_level_and_source(tmp_path: Path) -> None:
    """HF Trainer (tiny GPT-2 from a config): its INFO lines are INFO at trainer.py, not WARNING <stderr>:0."""
    records = _run(tmp_path, "transformers")
    trainer = [r for r in records if r["file"] == "trainer.py"]
    assert any(r["level"] == "INFO" and "Running training" in r["msg"] for r in trainer), [
        (r["level"], r["file"], r["msg"][:60]) for r in records
    ][:40]
    assert not [r for r in records if r["file"] == "<stderr>" and "Running training" in r["msg"]]


@pytest.mark.timeout(600)
def test_lightning_lines_keep_their_level_and_source(tmp_path: Path) -> None:
    """Lightning on CPU (ddp, 2 ranks, set up after nvrxlog): its INFO lines once each, with their source file."""
    records = _run(tmp_path, "lightning")
    info = [r for r in records if r["level"] == "INFO" and r["file"] not in ("<stderr>", "<stdout>")]
    assert any("GPU available" in r["msg"] for r in info), [(r["level"], r["file"], r["msg"][:60]) for r in records][
        :40
    ]
    assert not [r for r in records if r["file"] in ("<stderr>", "<stdout>") and "GPU available" in r["msg"]]
