"""Another local user on the node: a tmpdir, temp files or a lock that are not ours are never used."""

from __future__ import annotations

import fcntl
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from conftest import child_env, node_env, parse_text_records, raw_record, run_worker

from nvrxlog import NodeAggregator, TmpDirError
from nvrxlog.core.record import WriterId, file_name
from nvrxlog.core.tmpdir import LOCK_NAME, aggregator_alive, foreign_owner, prepare_tmp_dir

FORGED = "forged by another user"


@pytest.fixture
def nobody() -> int:
    """The uid of `nobody`; skips (saying why) unless this process may give files away, as root can."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create files owned by another user (CI runs as root)")
    return pwd.getpwnam("nobody").pw_uid


def _plant_temp_file(directory: Path, uid: int) -> Path:
    """A file with a temp-file name holding an ERROR record "from rank 0", owned by ``uid``."""
    writer = WriterId(prefix="evil", local_rank=0, pid=os.getpid(), start_ns=time.time_ns())
    path = directory / file_name(writer, 0)
    path.write_bytes(orjson.dumps(raw_record(0, FORGED, level="ERROR")) + b"\n")
    os.chown(path, uid, uid)
    return path


def _foreign_tmpdir(tmp_path: Path, uid: int) -> Path:
    """/dev/shm/nvrx-$JOB as another user leaves it: theirs, mode 1777, a temp-file-named file of theirs in it."""
    tmp = tmp_path / "tmp"  # where node_env points ranks
    tmp.mkdir()
    os.chown(tmp, uid, uid)
    os.chmod(tmp, 0o1777)
    _plant_temp_file(tmp, uid)
    return tmp


def test_foreign_owner_names_the_owner_only_when_it_is_not_us(tmp_path: Path) -> None:
    """foreign_owner is None for our uid and the owner's uid for any other."""
    st = os.stat(tmp_path)
    assert foreign_owner(st, st.st_uid) is None
    assert foreign_owner(st, st.st_uid + 1) == st.st_uid


@pytest.mark.timeout(30)
def test_tmpdir_created_by_another_user_is_refused_directly_and_through_a_symlink(tmp_path: Path, nobody: int) -> None:
    """A tmpdir owned by nobody (mode 1777), or a symlink of ours to it, is refused with a clear TmpDirError."""
    tmp = _foreign_tmpdir(tmp_path, nobody)
    link = tmp_path / "link"
    link.symlink_to(tmp)
    for path in (tmp, link):
        with pytest.raises(TmpDirError, match=f"owned by uid {nobody}, not by this user"):
            prepare_tmp_dir(str(path))
        with pytest.raises(TmpDirError, match="owned by uid"):
            NodeAggregator(str(path), str(tmp_path / "logs"), "n1").start()
    assert not (tmp / LOCK_NAME).exists(), "nothing of ours is created in their directory"
    assert not (tmp_path / "logs" / "nvrx_log_n1.log").exists()


@pytest.mark.timeout(60)
def test_rank_given_a_foreign_tmpdir_logs_to_stderr_saying_why_once(tmp_path: Path, nobody: int) -> None:
    """setup_logger in a real rank (thread mode) refuses the foreign tmpdir, falls back to stderr with one line."""
    _foreign_tmpdir(tmp_path, nobody)
    result = run_worker("--count", 5, env=node_env(tmp_path, 0))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert sum("node-local logging is off" in line and "owned by uid" in line for line in lines) == 1, result.stderr
    assert sum(f"r0 i{i} " in line for line in lines for i in range(5)) == 5
    assert FORGED not in result.stderr
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").iterdir())


@pytest.mark.timeout(60)
def test_temp_file_planted_by_another_user_is_ignored_and_reported_once(tmp_path: Path, nobody: int) -> None:
    """In our sticky tmpdir, a temp-file-named file of nobody's is not read, is reported once and counted."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    planted = _plant_temp_file(tmp, nobody)
    result = run_worker("--count", 20, env=node_env(tmp_path, 0, NVRX_LOG_AGGREGATOR="external"))
    assert result.returncode == 0, result.stderr
    with NodeAggregator(str(tmp), str(tmp_path / "logs"), "n1") as aggregator:
        pass
    msgs = [r["msg"] for r in parse_text_records(tmp_path / "logs" / "nvrx_log_n1.log")]
    assert FORGED not in "\n".join(msgs)
    assert [m for m in msgs if m.startswith("r0 ")] == [f"r0 i{i} " for i in range(20)]
    notes = [m for m in msgs if planted.name in m]
    assert len(notes) == 1 and f"owned by uid {nobody}, not by this user" in notes[0], msgs
    assert aggregator.stats["skipped_entries"] == 1
    assert planted.exists(), "another user's file is left alone"


@pytest.mark.timeout(30)
def test_lock_planted_by_another_user_or_as_a_symlink_is_refused_not_waited_for(tmp_path: Path, nobody: int) -> None:
    """A lock file of nobody's (held) or a symlink in its place: TmpDirError, not "busy"; no target is created."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    lock = tmp / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.fchown(fd, nobody, nobody)
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the other user's process would hold it
        with pytest.raises(TmpDirError, match=f"lock .* owned by uid {nobody}"):
            NodeAggregator(str(tmp), str(tmp_path / "logs"), "n1").start()
        assert not aggregator_alive(str(tmp)), "a lock that is not ours is no aggregator of ours"
    finally:
        os.close(fd)
    lock.unlink()
    target = tmp_path / "target"
    lock.symlink_to(target)
    with pytest.raises(TmpDirError, match="lock: .* is a symlink; refusing to follow it"):
        NodeAggregator(str(tmp), str(tmp_path / "logs"), "n1").start()
    assert not target.exists()
    lock.unlink()
    NodeAggregator(str(tmp), str(tmp_path / "logs"), "n1").start().stop()


@pytest.mark.timeout(60)
def test_cli_refuses_a_foreign_tmpdir_with_one_line(tmp_path: Path, nobody: int) -> None:
    """`nvrxlog aggregate` on a tmpdir of nobody's exits 1 with a one-line reason."""
    tmp = _foreign_tmpdir(tmp_path, nobody)
    result = subprocess.run(
        [sys.executable, "-m", "nvrxlog", "aggregate", "--tmp-dir", str(tmp), "--log-dir", str(tmp_path / "logs")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "owned by uid" in result.stderr, result.stderr
