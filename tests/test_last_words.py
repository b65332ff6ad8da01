"""A job's end: every rank's crash and last lines reach the per-node file, and no rank waits to exit."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HERE, aggregators, node_env, parse_text_records, wait_for

from nvrxlog import Streamer

SCENARIO = str(HERE / "_last_words.py")


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_rank_left_behind(tmp_path: Path) -> Iterator[None]:
    """Whatever a test ends with, none of its ranks or successors goes on running."""
    yield
    for proc in _started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    _started.clear()
    for proc in aggregators(tmp_path):
        proc.kill()


def _ranks(tmp_path: Path, mode: str, n: int, *extra: str, **env: object) -> list[subprocess.Popen]:
    shared = tmp_path / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(
            [sys.executable, SCENARIO, mode, "--dir", str(shared), *extra],
            env=node_env(tmp_path, rank, **env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for rank in range(n)
    ]
    _started.extend(procs)
    return procs


def _node_file(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "nvrx_log_node001.log"


def _records(tmp_path: Path) -> list[dict]:
    path = _node_file(tmp_path)
    return parse_text_records(path) if path.exists() else []


def _wait_all(procs: list[subprocess.Popen], timeout: float = 60) -> float:
    """Wait for every process; return the seconds until the last one exited."""
    start = time.monotonic()
    for proc in procs:
        proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
    return time.monotonic() - start


@pytest.mark.timeout(180)
def test_every_ranks_crash_is_one_error_record_and_nobody_waits(tmp_path: Path) -> None:
    """Rank 0 crashes, the others fail in their collective: four ERROR records; the job ends as fast as without."""
    plain = _wait_all(_ranks(tmp_path / "plain", "crash", 4, "--plain"))
    procs = _ranks(tmp_path, "crash", 4, TEST_CAPTURE="all")
    took = _wait_all(procs)
    assert [p.returncode for p in procs] == [1, 1, 1, 1]
    assert took < plain + 5, f"exit took {took:.1f}s with nvrxlog, {plain:.1f}s without"
    wait_for(lambda: len([r for r in _records(tmp_path) if r["level"] == "ERROR"]) >= 4, 60, "four ERROR records")
    wait_for(lambda: not aggregators(tmp_path), 60, "the successor to finish and exit")
    records = _records(tmp_path)
    errors = {r["rank"]: r for r in records if r["level"] == "ERROR"}
    assert sorted(errors) == ["0", "1", "2", "3"] and len([r for r in records if r["level"] == "ERROR"]) == 4
    assert errors["0"]["msg"].startswith("uncaught RuntimeError: rank 0 diverged at step 50\nTraceback")
    assert errors["0"]["file"] == "_last_words.py"
    for rank in "123":
        last = errors[rank]["msg"].splitlines()[-1]
        assert last == f"TimeoutError: rank {rank}: allreduce timed out, rank 0 is gone"
    captured = [r for r in records if r["file"] in ("<stderr>", "<stdout>")]
    assert not captured, "a crash is not also captured line by line"
    for rank in range(4):
        steps = [int(r["msg"].split()[2]) for r in records if r["msg"].startswith(f"r{rank} step ")]
        assert steps == list(range(51)), f"rank {rank}'s steps"
    assert not list((tmp_path / "tmp").glob("nvrx.*.jsonl")), "nothing left in the tmpdir"


@pytest.mark.timeout(180)
def test_sigkill_of_the_host_rank_does_not_stop_the_node_file(tmp_path: Path) -> None:
    """Local rank 0 killed with SIGKILL mid-run: the other ranks' later lines still arrive, live."""
    procs = _ranks(tmp_path, "until", 3)
    wait_for(lambda: any(r["msg"].startswith("r1 i") for r in _records(tmp_path)), 60, "rank 1 in the node file")
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait(timeout=10)
    killed_at = len([r for r in _records(tmp_path) if r["msg"].startswith("r2 i")])
    # Still running: rank 2's later lines reach the file while it logs (a successor took over).
    wait_for(
        lambda: len([r for r in _records(tmp_path) if r["msg"].startswith("r2 i")]) > killed_at + 200,
        60,
        "rank 2's lines after rank 0 was killed",
    )
    (tmp_path / "shared" / "stop").touch()
    _wait_all(procs[1:])
    counts = {rank: int((tmp_path / "shared" / f"count.{rank}").read_text()) for rank in (1, 2)}
    wait_for(lambda: not aggregators(tmp_path), 60, "the successor to finish and exit")
    records = _records(tmp_path)
    for rank, count in counts.items():
        lines = [int(r["msg"].split()[1][1:]) for r in records if r["msg"].startswith(f"r{rank} i")]
        assert lines == list(range(count)), f"rank {rank}: every line once, in order"
        assert any(r["msg"] == f"r{rank} last" for r in records)


@pytest.mark.timeout(120)
def test_a_child_holding_the_pipes_does_not_delay_exit(tmp_path: Path) -> None:
    """A rank with fd capture exits at once though a child still holds its pipes; the child's lines arrive later."""
    env = node_env(tmp_path, 0, TEST_CAPTURE="all")
    shared = tmp_path / "shared"
    shared.mkdir()
    start = time.monotonic()
    rank = subprocess.run(
        [sys.executable, SCENARIO, "children", "--dir", str(shared), "--child-seconds", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    took = time.monotonic() - start
    assert rank.returncode == 0
    assert took < 4, f"the rank took {took:.1f}s to exit: it waited for its child"
    wait_for(lambda: any(r["msg"] == "child done" for r in _records(tmp_path)), 60, "the child's last line")
    lines = [r["msg"] for r in _records(tmp_path) if r["msg"].startswith("child line")]
    assert lines == [f"child line {i}" for i in range(20)]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("attempt", range(3))
def test_hand_over_under_load_is_exactly_once_in_order(tmp_path: Path, attempt: int) -> None:
    """8 ranks logging, the host rank exits mid-run: every other rank's lines exactly once, in order."""
    procs = _ranks(tmp_path, "until", 8)
    wait_for(lambda: len(_records(tmp_path)) > 200 + 300 * attempt, 60, "the ranks to be under way")
    (tmp_path / "shared" / "stop.0").touch()  # the host rank finishes first
    procs[0].wait(timeout=30)
    before = len(_records(tmp_path))
    wait_for(lambda: len(_records(tmp_path)) > before + 1000, 60, "the other ranks' lines after the host left")
    (tmp_path / "shared" / "stop").touch()
    _wait_all(procs)
    counts = {rank: int((tmp_path / "shared" / f"count.{rank}").read_text()) for rank in range(8)}
    wait_for(lambda: not aggregators(tmp_path), 60, "the successor to finish and exit")
    records = _records(tmp_path)
    for rank, count in counts.items():
        lines = [int(r["msg"].split()[1][1:]) for r in records if r["msg"].startswith(f"r{rank} i")]
        assert lines == list(range(count)), f"rank {rank}: lost, doubled or reordered"


@pytest.mark.timeout(120)
def test_an_aggregator_stopped_while_a_writer_lives_says_what_stays(tmp_path: Path) -> None:
    """SIGTERM to `nvrxlog aggregate` (a step's end) while a rank still lives: the file and stderr name what stays."""
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    env = node_env(tmp_path, 0, NVRX_LOG_AGGREGATOR="external")
    command = [sys.executable, "-m", "nvrxlog", "aggregate"]
    service = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert service.stdout.readline().startswith("nvrxlog aggregate:")
    done = tmp_path / "done"
    done.mkdir()
    rank = subprocess.Popen(
        [sys.executable, str(HERE / "_worker.py"), "--count", "10", "--done-dir", str(done), "--hang"], env=env
    )
    try:
        wait_for(lambda: (done / "0").exists(), 60, "the rank to log")
        wait_for(lambda: len(_records(tmp_path)) == 10, 60, "its records in the file")
        service.send_signal(signal.SIGTERM)
        _, err = service.communicate(timeout=60)
        assert service.returncode == 0
    finally:
        rank.kill()
        rank.wait(timeout=30)
    assert "1 writer(s) still alive may log more into" in err and "--once" in err
    notes = [r for r in _records(tmp_path) if "still alive may log more" in r["msg"]]
    assert len(notes) == 1 and str(tmp) in notes[0]["msg"] and (logs / "nvrx_log_node001.log").exists()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("end", ["exit", "sigterm"])
def test_ranks_that_end_right_after_the_host_was_killed_still_reach_the_file(tmp_path: Path, end: str) -> None:
    """Local rank 0 SIGKILLed, the others end at once (exit, or SIGTERM with capture): all their lines arrive."""
    procs = _ranks(tmp_path, "until", 3, **({"TEST_CAPTURE": "all"} if end == "sigterm" else {}))
    wait_for(
        lambda: {r["msg"][:4] for r in _records(tmp_path)} >= {"r1 i", "r2 i"}, 60, "ranks 1 and 2 in the node file"
    )
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait(timeout=10)
    if end == "exit":
        (tmp_path / "shared" / "stop").touch()
    else:
        for proc in procs[1:]:
            proc.send_signal(signal.SIGTERM)  # torchrun stops the group once one rank failed
    _wait_all(procs[1:])
    # Well inside the watch's grace period: a successor must have been started by the ending ranks themselves.
    wait_for(lambda: not list((tmp_path / "tmp").glob("nvrx.*.jsonl")), 60, "every temp file written and removed")
    wait_for(lambda: not aggregators(tmp_path), 60, "the successor to finish and exit")
    records = _records(tmp_path)
    for rank in (1, 2):
        lines = [int(r["msg"].split()[1][1:]) for r in records if r["msg"].startswith(f"r{rank} i")]
        assert lines == list(range(len(lines))) and lines, f"rank {rank}: every line once, in order"
        if end == "exit":
            assert len(lines) == int((tmp_path / "shared" / f"count.{rank}").read_text())
            assert any(r["msg"] == f"r{rank} last" for r in records)


@pytest.mark.timeout(180)
def test_every_ranks_crash_reaches_the_cluster_file_too(tmp_path: Path) -> None:
    """Rank 0 crashes, the others fail after it, a streamer runs: the cluster file has the four ERROR records too."""
    cluster = tmp_path / "cluster.log"
    with Streamer("tcp://127.0.0.1:0", str(cluster)) as streamer:
        procs = _ranks(tmp_path, "crash", 4, TEST_CAPTURE="all", NVRX_LOG_STREAMER=streamer.endpoint)
        _wait_all(procs)
        wait_for(lambda: not aggregators(tmp_path), 60, "the successor to deliver and exit")
        wait_for(lambda: streamer.stats["records"] >= 4 * 51 + 4, 60, "every record at the streamer")
    errors = [r for r in parse_text_records(cluster) if r["level"] == "ERROR"]
    assert sorted(r["rank"] for r in errors) == ["0", "1", "2", "3"]
    assert all("Traceback (most recent call last):" in r["msg"] for r in errors)


@pytest.mark.timeout(180)
def test_a_successor_drains_and_exits_promptly_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM (slurmstepd's) to a successor while a rank still logs: it exits within seconds, losing nothing."""
    procs = _ranks(tmp_path, "until", 2)
    wait_for(lambda: any(r["msg"].startswith("r1 i") for r in _records(tmp_path)), 60, "rank 1 in the node file")
    (tmp_path / "shared" / "stop.0").touch()
    procs[0].wait(timeout=30)
    successor = wait_for(lambda: aggregators(tmp_path), 60, "the successor")[0]
    before = len(_records(tmp_path))
    wait_for(lambda: len(_records(tmp_path)) > before + 100, 60, "the successor writing rank 1's lines")
    start = time.monotonic()
    successor.send_signal(signal.SIGTERM)
    successor.wait(timeout=30)
    assert time.monotonic() - start < 5, "a successor must stop well within slurmstepd's kill wait"
    # Rank 1 goes on; its own watch starts the next successor, which resumes from the checkpoint.
    (tmp_path / "shared" / "stop").touch()
    procs[1].wait(timeout=30)
    wait_for(lambda: not aggregators(tmp_path), 60, "the next successor to finish and exit")
    count = int((tmp_path / "shared" / "count.1").read_text())
    lines = [int(r["msg"].split()[1][1:]) for r in _records(tmp_path) if r["msg"].startswith("r1 i")]
    assert lines == list(range(count)), "every line of rank 1 once, in order, across both successors"
