"""Crash and garbage: kill -9 and restart, half-written records, junk in the tmpdir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from conftest import aggregate_cli, child_env, parse_text_records, raw_record, start_worker, wait_for

from nvrxlog import NodeAggregator
from nvrxlog.core.record import WriterId, file_name


def _aggregate_cli(tmp: Path, logs: Path, wait_file: Path) -> subprocess.Popen:
    return aggregate_cli(tmp, logs, "n1", "--wait-file", str(wait_file))


@pytest.mark.timeout(180)
def test_kill_9_of_the_aggregator_under_load_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """The aggregator service is killed with SIGKILL twice mid-run and restarted: every record exactly once."""
    tmp, logs, stop_file = tmp_path / "tmp", tmp_path / "logs", tmp_path / "stop"
    out = logs / "nvrx_log_n1.log"
    ranks, count = 4, 4000
    aggregator = _aggregate_cli(tmp, logs, stop_file)
    writers = [
        start_worker(
            "--count",
            count,
            "--rate",
            2000,
            env=child_env(
                NVRX_NODE_LOCAL_TMPDIR=tmp,
                NVRX_LOG_AGGREGATOR="external",
                RANK=r,
                LOCAL_RANK=r,
                NVRX_LOG_MAX_FILE_SIZE_KB=16,
            ),
        )
        for r in range(ranks)
    ]
    for _kill in range(2):
        size = out.stat().st_size if out.exists() else 0
        wait_for(lambda s=size: out.exists() and out.stat().st_size > s + 20_000, what="aggregator progress")
        aggregator.send_signal(signal.SIGKILL)
        aggregator.wait(timeout=10)
        aggregator = _aggregate_cli(tmp, logs, stop_file)
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    stop_file.touch()
    assert aggregator.wait(timeout=60) == 0

    records = parse_text_records(out)
    assert [r for r in records if not r["msg"].startswith("r")] == []
    by_rank: dict[str, list[int]] = {}
    for record in records:
        rank, index = record["msg"].split()[:2]
        by_rank.setdefault(rank, []).append(int(index[1:]))
    assert sorted(by_rank) == [f"r{r}" for r in range(ranks)]
    for rank, indexes in by_rank.items():
        assert indexes == list(range(count)), f"{rank}: lost or doubled records after kill -9"


@pytest.mark.timeout(60)
def test_node_file_lines_of_an_aggregator_killed_before_its_first_checkpoint_are_cut(tmp_path: Path) -> None:
    """kill -9 of an aggregator that never checkpointed: its restart cuts what it wrote, keeps what was there."""
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    logs.mkdir()
    out = logs / "nvrx_log_n1.log"
    out.write_text("a line of an earlier job\n")
    aggregator = _aggregate_cli(tmp, logs, tmp_path / "stop")
    try:
        # Idle, it saves no checkpoint of its own: the one taken on opening the file is all there is.
        wait_for(lambda: (logs / ".nvrx_log_n1.ckpt").exists(), what="the checkpoint of the opened node file")
    finally:
        aggregator.kill()
        aggregator.wait(timeout=10)
    with open(out, "a") as f:
        f.write("a line written by the killed aggregator before it checkpointed\n")
    with NodeAggregator(str(tmp), str(logs), "n1"):
        pass
    assert out.read_text() == "a line of an earlier job\n"


def _record(seq: int, msg: str) -> bytes:
    return orjson.dumps(raw_record(seq, msg)) + b"\n"


def _messages(logs: Path) -> list[str]:
    return [r["msg"] for r in parse_text_records(logs / "nvrx_log_n1.log")]


@pytest.mark.timeout(30)
def test_half_written_record_is_completed_exactly_once_after_restart(tmp_path: Path) -> None:
    """A record half written when the aggregator stops is written once, whole, by the next one."""
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    tmp.mkdir()
    writer = WriterId(prefix="w", local_rank=0, pid=os.getpid(), start_ns=time.time_ns())  # alive: this process
    path = tmp / file_name(writer, 0)
    third = _record(2, "third")
    path.write_bytes(_record(0, "first") + _record(1, "second") + third[:25])
    with NodeAggregator(str(tmp), str(logs), "n1"):
        pass
    assert _messages(logs) == ["first", "second"]
    with open(path, "ab") as f:
        f.write(third[25:] + _record(3, "fourth"))
    with NodeAggregator(str(tmp), str(logs), "n1"):
        pass
    assert _messages(logs) == ["first", "second", "third", "fourth"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("unwritten", [0, 300_000], ids=["written", "mapped"])
def test_half_record_of_a_dead_writer_is_reported_not_glued(tmp_path: Path, unwritten: int) -> None:
    """A writer that died mid-record (before NULs, if it wrote a mapped file): reported, its files removed."""
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    tmp.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    writer = WriterId(prefix="w", local_rank=1, pid=int(dead.stdout), start_ns=time.time_ns() - 10**9)
    content = _record(0, "complete") + _record(1, "cut short")[:30]
    (tmp / file_name(writer, 0)).write_bytes(content + b"\0" * unwritten)
    with NodeAggregator(str(tmp), str(logs), "n1"):
        pass
    msgs = _messages(logs)
    assert msgs[0] == "complete"
    assert len(msgs) == 2 and "half-written record (30 bytes)" in msgs[1]
    assert list(tmp.glob("nvrx.*")) == []


@pytest.mark.timeout(30)
def test_mapped_file_is_read_up_to_what_is_written_and_resumed_there(tmp_path: Path) -> None:
    """A live writer's mapped file reads as NUL past its records: taken up to there, resumed there."""
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    tmp.mkdir()
    writer = WriterId(prefix="w", local_rank=0, pid=os.getpid(), start_ns=time.time_ns())  # alive: this process
    first, second = _record(0, "first"), _record(1, "second")
    fd = os.open(tmp / file_name(writer, 0), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, 1 << 16)
        os.pwrite(fd, first + second[:20], 0)  # the second record is half copied in
        with NodeAggregator(str(tmp), str(logs), "n1"):
            out = logs / "nvrx_log_n1.log"
            wait_for(lambda: out.exists() and b"first" in out.read_bytes(), what="the first record")
            os.pwrite(fd, second[20:] + _record(2, "third"), len(first) + 20)
    finally:
        os.close(fd)
    assert _messages(logs) == ["first", "second", "third"]


@pytest.mark.timeout(60)
def test_rank_killed_right_after_logging_loses_nothing_it_logged(tmp_path: Path) -> None:
    """kill -9 of a rank once its logger.info() calls returned: every record arrives, in order, whole."""
    tmp, logs, done = tmp_path / "tmp", tmp_path / "logs", tmp_path / "done"
    done.mkdir()
    count, big = 20_000, 600_000  # ~4.2 MB: crosses mapped chunks, rotates, one 1.2 MB record over a chunk
    env = child_env(NVRX_NODE_LOCAL_TMPDIR=tmp, NVRX_LOG_AGGREGATOR="external", RANK=3, NVRX_LOG_MAX_FILE_SIZE_KB=3000)
    worker = start_worker("--count", count, "--pad", 100, "--big", big, "--done-dir", done, "--hang", env=env)
    try:
        wait_for(lambda: (done / "3").exists(), what="the rank to finish logging")
    finally:
        worker.kill()
        worker.wait(timeout=10)
    with NodeAggregator(str(tmp), str(logs), "n1"):
        pass
    msgs = _messages(logs)
    assert [m for m in msgs if not m.startswith("r3 ")] == []
    assert [int(m.split()[1][1:]) for m in msgs if " big " not in m] == list(range(count))
    assert [len(m) for m in msgs if " big " in m] == [len("r3 big ") + big]
    assert list(tmp.glob("nvrx.*")) == []


@pytest.mark.timeout(30)
def test_garbage_in_the_tmpdir_is_skipped_and_reported(tmp_path: Path) -> None:
    """Junk files, a symlink, a directory and non-UTF-8 bytes are reported; real records still arrive."""
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    tmp.mkdir()
    me = WriterId(prefix="w", local_rank=0, pid=os.getpid(), start_ns=time.time_ns())
    (tmp / file_name(me, 0)).write_bytes(
        _record(0, "good 0") + b"\xff\xfe not json \x80\n" + b"[1, 2]\n" + _record(1, "good 1")
    )
    (tmp / "core.12345").write_bytes(os.urandom(100))
    target = tmp_path / "elsewhere.jsonl"
    target.write_bytes(_record(0, "via symlink"))
    other = WriterId(prefix="s", local_rank=2, pid=os.getpid(), start_ns=time.time_ns())
    (tmp / file_name(other, 0)).symlink_to(target)
    (tmp / file_name(WriterId(prefix="d", local_rank=3, pid=1, start_ns=1), 0)).mkdir()
    with NodeAggregator(str(tmp), str(logs), "n1") as aggregator:
        pass
    msgs = _messages(logs)
    assert [m for m in msgs if m.startswith("good")] == ["good 0", "good 1"]
    assert "via symlink" not in msgs
    notices = "\n".join(m for m in msgs if m.startswith("nvrxlog aggregator:"))
    assert "skipped 2 malformed line(s)" in notices and "\\xff\\xfe" in notices
    assert "'core.12345' (not a temp file name)" in notices
    assert "(symlink)" in notices and "(not a regular file)" in notices
    assert aggregator.stats["skipped_entries"] == 3
    assert target.exists(), "a symlink's target must never be touched"


#: A message 1,000 lists deep: valid JSON, but str() of it raises RecursionError.
DEEP = b"[" * 1000 + b"]" * 1000


@pytest.mark.timeout(60)
@pytest.mark.parametrize("json", [False, True])
def test_a_deeply_nested_message_costs_only_its_own_record(tmp_path: Path, json: bool) -> None:
    """A temp-file record whose msg is a 1,000-deep list is shown cut short and counted; its 1,000 neighbours arrive."""
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    tmp.mkdir()
    me = WriterId(prefix="w", local_rank=0, pid=os.getpid(), start_ns=time.time_ns())
    lines = [orjson.dumps(raw_record(i, f"good {i}")) + b"\n" for i in range(1001)]
    lines[500] = lines[500].replace(b'"good 500"', DEEP)
    (tmp / file_name(me, 0)).write_bytes(b"".join(lines))
    with NodeAggregator(str(tmp), str(logs), "n1", json=json) as aggregator:
        pass
    if json:
        msgs = [orjson.loads(x)["msg"] for x in (logs / "nvrx_log_n1.log").read_bytes().splitlines()]
    else:
        msgs = _messages(logs)
    assert [m for m in msgs if m.startswith("good")] == [f"good {i}" for i in range(1001) if i != 500]
    assert "[[[[[[[...]]]]]]]" in msgs
    assert aggregator.stats["bad_messages"] == 1
    assert any("1 record(s) in nvrx.w." in m and "not text" in m for m in msgs)
