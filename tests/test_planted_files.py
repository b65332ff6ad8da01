"""Files planted where nvrxlog writes (a shared log dir): links never followed, others' files never written or cut."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest

from nvrxlog import NodeAggregator, OutputError, setup_logger
from nvrxlog.core.fileio import open_own, own_file_problem
from nvrxlog.core.output import Checkpoint, CheckpointedOutput, save_checkpoint
from nvrxlog.rank.safe import AppendFileHandler
from nvrxlog.wire.spool import Spool

VICTIM = b"someone else's data\n" * 7500  # 150,000 bytes


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file a planted link points to: it must keep its content."""
    path = tmp_path / "victim.txt"
    path.write_bytes(VICTIM)
    return path


def test_own_file_problem_accepts_only_our_regular_files() -> None:
    """A regular file of ours is fine; a directory, a fifo or another user's file is named as the problem."""
    assert own_file_problem(stat.S_IFREG | 0o644, 1000, 1000) is None
    assert own_file_problem(stat.S_IFDIR | 0o755, 1000, 1000) == "not a regular file"
    assert own_file_problem(stat.S_IFIFO | 0o644, 1000, 1000) == "not a regular file"
    assert own_file_problem(stat.S_IFREG | 0o644, 0, 1000) == "owned by uid 0, not by us (uid 1000)"


@pytest.mark.timeout(30)
def test_a_per_node_file_planted_as_a_symlink_is_refused(tmp_path: Path, victim: Path) -> None:
    """A per-node file pre-created as a symlink: the aggregator refuses to start; with a checkpoint nothing is cut."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "nvrx_log_n1.log").symlink_to(victim)
    save_checkpoint(str(logs / ".nvrx_log_n1.ckpt"), Checkpoint(out=str(logs / "nvrx_log_n1.log"), out_size=890))
    with pytest.raises(OutputError, match=r"nvrx_log_n1.log is a symlink; refusing to follow it"):
        NodeAggregator(str(tmp_path / "tmp"), str(logs), "n1").start()
    assert victim.read_bytes() == VICTIM


@pytest.mark.timeout(30)
def test_recovery_never_cuts_a_file_that_is_not_the_one_checkpointed(tmp_path: Path) -> None:
    """An output replaced by another file since its checkpoint is adopted as it is, not cut to the checkpoint's size."""
    path, ckpt = str(tmp_path / "out.log"), str(tmp_path / "out.ckpt")
    first = CheckpointedOutput(path, ckpt)
    first.open()
    first.write(b"x" * 890)
    first.save({"w": 3})
    first.close()
    other = tmp_path / "other"
    other.write_bytes(VICTIM)
    os.replace(other, path)
    second = CheckpointedOutput(path, ckpt)
    assert second.open() == {}
    second.close()
    assert Path(path).read_bytes() == VICTIM
    assert second.cut == 0 and "is not the file its checkpoint describes" in (second.problem or "")


@pytest.mark.timeout(30)
def test_a_checkpoint_temp_file_planted_as_a_symlink_is_not_followed(tmp_path: Path, victim: Path) -> None:
    """A symlink at the checkpoint's temp name is replaced, not written through; the checkpoint is a real file."""
    ckpt = tmp_path / "out.ckpt"
    Path(f"{ckpt}.{os.getpid()}.tmp").symlink_to(victim)
    save_checkpoint(str(ckpt), Checkpoint(out="x", out_size=1))
    assert victim.read_bytes() == VICTIM
    assert not ckpt.is_symlink() and orjson.loads(ckpt.read_bytes())["out_size"] == 1


@pytest.mark.timeout(30)
def test_a_spool_segment_planted_as_a_symlink_is_neither_read_nor_written(tmp_path: Path, victim: Path) -> None:
    """A symlink named like the next spool segment is not recovered as batches and not appended to."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "seg-000000000001.nvs").symlink_to(victim)
    spool = Spool(str(spool_dir))
    assert spool.pending_batches == 0
    with pytest.raises(OSError, match="seg-000000000001.nvs is a symlink; refusing to follow it"):
        spool.append([{"seq": 0, "ts": 1, "msg": "m"}], 1)
    spool.close()
    assert victim.read_bytes() == VICTIM


@pytest.mark.timeout(30)
def test_a_shared_log_file_planted_as_a_symlink_is_not_written(tmp_path: Path, victim: Path) -> None:
    """setup_logger(log_file=<a symlink>) says so once and writes nothing through the link."""
    link = tmp_path / "shared.log"
    link.symlink_to(victim)
    with pytest.raises(OSError, match="is a symlink"):
        AppendFileHandler(str(link))
    logger = setup_logger(log_file=str(link))
    logger.error("must not reach the victim")
    assert victim.read_bytes() == VICTIM


@pytest.mark.timeout(30)
def test_an_output_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """A regular file planted by another user at an output's name is refused, never written (needs root to chown)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user (CI runs as root)")
    planted = tmp_path / "out.log"
    planted.write_bytes(VICTIM)
    os.chown(planted, 65534, 65534)
    with pytest.raises(OSError, match=r"out.log is owned by uid 65534, not by us \(uid 0\); refusing to write it"):
        open_own(str(planted), os.O_WRONLY | os.O_APPEND)
    out = CheckpointedOutput(str(planted), str(tmp_path / "out.ckpt"))
    with pytest.raises(OSError, match="owned by uid 65534"):
        out.open()
    assert planted.read_bytes() == VICTIM
