"""Fork safety: children of every kind get their own files, nothing deadlocks or is lost."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import HERE, child_env, node_records, parse_text_records, run_script

from nvrxlog import NodeAggregator


def _run(tmp_path: Path, *args: object) -> list[dict]:
    env = child_env(
        NVRX_NODE_LOCAL_TMPDIR=tmp_path / "tmp",
        NVRX_LOG_DIR=tmp_path / "logs",
        NVRX_NODE_ID="n1",
        LOCAL_RANK=0,
        RANK=0,
    )
    result = subprocess.run(
        [sys.executable, str(HERE / "_scenarios.py"), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert "nvrxlog:" not in result.stderr, result.stderr
    return parse_text_records(tmp_path / "logs" / "nvrx_log_n1.log")


def _tags(records: list[dict]) -> Counter[str]:
    return Counter(r["msg"].split()[0] for r in records)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_children_records_all_arrive(tmp_path: Path, method: str) -> None:
    """multiprocessing children started by fork, spawn or forkserver deliver every record once."""
    records = _run(tmp_path, "multiprocessing_children", method, 3, 300)
    tags = _tags(records)
    assert all(tags[f"child{k}"] == 300 for k in range(3)), tags
    for k in range(3):
        indexes = [int(r["msg"].split()[1][1:]) for r in records if r["msg"].startswith(f"child{k} ")]
        assert indexes == list(range(300))
    assert tags["parent"] == 2


@pytest.mark.timeout(120)
def test_fork_while_another_thread_is_logging(tmp_path: Path) -> None:
    """fork() while a thread is mid-logging: no child deadlocks and every record arrives once."""
    records = _run(tmp_path, "fork_while_logging", 20, 100)
    tags = _tags(records)
    assert all(tags[f"fork{k}"] == 100 for k in range(20)), tags
    total = int(next(r for r in records if r["msg"].startswith("thread total"))["msg"].split()[-1])
    assert tags["thread"] == total + 1  # every chatter line plus the total line


@pytest.mark.timeout(60)
def test_force_reset_in_a_subprocess(tmp_path: Path) -> None:
    """A subprocess calling setup_logger(force_reset=True) delivers its records with its own ranks."""
    records = _run(tmp_path, "force_reset_subprocess", 500)
    sub = [r for r in records if r["msg"].startswith("sub ")]
    assert [int(r["msg"].split()[1][1:]) for r in sub] == list(range(500))
    assert {r["rank"] for r in sub} == {"1"}
    assert _tags(records)["parent"] == 2


@pytest.mark.timeout(60)
def test_forked_child_closing_its_handlers_leaves_the_parents_file_alone(tmp_path: Path) -> None:
    """A fork() child that shuts logging down closes only its own file; the parent logs on, nothing lost."""
    records = _run(tmp_path, "forked_child_shuts_down", 2000)
    tags = _tags(records)
    assert tags == {"parent": 4000, "child": 2000}, tags
    parent = [int(r["msg"].split()[1][1:]) for r in records if r["msg"].startswith("parent ")]
    assert parent == list(range(4000))


@pytest.mark.timeout(120)
def test_forks_while_a_thread_prints_under_stdio_capture_never_deadlock(tmp_path: Path) -> None:
    """stdio capture, a thread printing non-stop, 100 forks: each child's line is its own, none hangs on a lock."""
    result = run_script(
        tmp_path,
        """
        import os, threading, time
        from nvrxlog import setup_logger
        setup_logger(capture="stdio")
        stop = threading.Event()
        def chatter():
            while not stop.is_set():
                print("thread line")
        threading.Thread(target=chatter, daemon=True).start()
        for i in range(100):
            pid = os.fork()
            if pid == 0:
                print(f"child {i}")
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert status == 0
        stop.set()
        print("all children done")
        """,
        NVRX_LOG_AGGREGATOR="external",
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    with NodeAggregator(str(tmp_path / "tmp"), str(tmp_path / "logs"), "node001"):
        pass
    msgs = {r["msg"] for r in node_records(tmp_path, 101)}
    assert {f"child {i}" for i in range(100)} <= msgs and "all children done" in msgs
