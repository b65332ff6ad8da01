"""Forwarding is optional: a problem with it never costs the per-node file, and a dead forwarder comes back."""

from __future__ import annotations

from pathlib import Path

import pytest
from _net import free_port
from conftest import node_env, parse_text_records, run_worker

from nvrxlog.node.forwarding import restart_delay


def test_restart_delay_doubles_from_half_a_second_up_to_32() -> None:
    """The backoff between restarts: 0.5 s, then doubling, never past 32 s."""
    assert [restart_delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 32, 32]
    assert restart_delay(100) == 32 and restart_delay(0) == 0.5


def _rank_with_forwarding(tmp_path: Path, **extra: object) -> tuple[list[str], list[str]]:
    """Run rank 0 in thread mode forwarding to a streamer address; its node file's messages and its stderr lines."""
    env = node_env(tmp_path, 0, NVRX_LOG_STREAMER=f"tcp://127.0.0.1:{free_port()}", **extra)
    result = run_worker("--count", 50, env=env)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "logs" / "nvrx_log_node001.log"
    assert out.exists(), result.stderr
    return [r["msg"] for r in parse_text_records(out)], result.stderr.splitlines()


@pytest.mark.timeout(60)
def test_garbage_curve_key_reports_once_and_the_node_file_is_complete(tmp_path: Path) -> None:
    """NVRX_LOG_CURVE_*_KEY pointing at garbage: one clear line, no forwarding, every record in the node file."""
    garbage = tmp_path / "garbage.key"
    garbage.write_text("this is not a key\n")
    msgs, err = _rank_with_forwarding(
        tmp_path, NVRX_LOG_CURVE_SERVER_KEY=garbage, NVRX_LOG_CURVE_CLIENT_KEY=garbage
    )
    assert [m for m in msgs if m.startswith("r0 ")] == [f"r0 i{i} " for i in range(50)]
    said = [line for line in err if "not forwarding" in line]
    assert len(said) == 1 and str(garbage) in said[0] and "per-node file is written" in said[0], err
    assert not any("could not start" in line for line in err), err


@pytest.mark.timeout(60)
def test_spool_dir_that_cannot_be_created_reports_once_and_the_node_file_is_complete(tmp_path: Path) -> None:
    """A file where the spool directory should be: one clear line, no crash, every record in the node file."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / ".nvrx_spool_node001").write_text("in the way\n")
    msgs, err = _rank_with_forwarding(tmp_path)
    assert [m for m in msgs if m.startswith("r0 ")] == [f"r0 i{i} " for i in range(50)]
    said = [line for line in err if "cannot start forwarding" in line]
    assert len(said) == 1 and ".nvrx_spool_node001" in said[0], err
    assert not any("Traceback" in line for line in err), err
