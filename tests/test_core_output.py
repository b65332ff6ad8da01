"""CheckpointedOutput: adopt, checkpoint, cut back after a crash, write whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from nvrxlog import NodeAggregator, OutputError
from nvrxlog.core import output as output_module
from nvrxlog.core.output import Checkpoint, CheckpointedOutput, load_checkpoint, save_checkpoint


@pytest.fixture
def paths(tmp_path: Path) -> tuple[str, str]:
    """The output file's path and its checkpoint's path."""
    return str(tmp_path / "out.log"), str(tmp_path / "out.ckpt")


@pytest.fixture
def opened(paths: tuple[str, str]) -> Iterator[CheckpointedOutput]:
    """A freshly opened output, closed afterwards."""
    out = CheckpointedOutput(*paths)
    out.open()
    yield out
    out.close()


def test_fresh_output_is_created_and_checkpointed_at_once(paths: tuple[str, str]) -> None:
    """Opening with no file and no checkpoint creates both: an empty file checkpointed at size 0."""
    path, ckpt_path = paths
    out = CheckpointedOutput(path, ckpt_path)
    try:
        assert out.open() == {}
        assert (out.problem, out.cut, out.size) == (None, 0, 0)
        assert os.path.getsize(path) == 0
        ckpt, problem = load_checkpoint(ckpt_path)
        assert problem is None
        st = os.stat(path)
        assert ckpt == Checkpoint(out=path, out_size=0, writers={}, out_id=f"{st.st_dev}:{st.st_ino}")
    finally:
        out.close()


def test_existing_file_without_checkpoint_is_adopted_as_it_is(paths: tuple[str, str]) -> None:
    """A file the checkpoint does not cover is kept whole and its size is checkpointed at once."""
    path, ckpt_path = paths
    Path(path).write_bytes(b"old line\n")
    out = CheckpointedOutput(path, ckpt_path)
    try:
        assert out.open() == {}
        assert out.cut == 0
        assert out.problem is None
        assert Path(path).read_bytes() == b"old line\n"
        ckpt, _ = load_checkpoint(ckpt_path)
        assert (ckpt.out, ckpt.out_size, ckpt.writers) == (path, 9, {})
    finally:
        out.close()


def test_write_appends(opened: CheckpointedOutput) -> None:
    """write appends the bytes whole and size follows."""
    opened.write(b"a\n")
    opened.write(b"bc\n")
    assert opened.size == 5
    assert Path(opened.path).read_bytes() == b"a\nbc\n"


def test_save_then_reopen_returns_the_writers(paths: tuple[str, str]) -> None:
    """The writers dict saved with the file's size comes back from the next open, nothing cut."""
    out = CheckpointedOutput(*paths)
    out.open()
    out.write(b"one\ntwo\n")
    out.save({"node|w1": 4, "node|w2": 0})
    out.close()

    again = CheckpointedOutput(*paths)
    try:
        assert again.open() == {"node|w1": 4, "node|w2": 0}
        assert (again.cut, again.problem) == (0, None)
        assert Path(paths[0]).read_bytes() == b"one\ntwo\n"
    finally:
        again.close()


def test_floors_saved_with_the_writers_come_back_and_a_save_without_them_keeps_them(paths: tuple[str, str]) -> None:
    """The streamer's batch floors are saved beside the writers, reopened, and kept by a save that passes none."""
    out = CheckpointedOutput(*paths)
    out.open()
    assert out.floors == {}
    out.save({"n0|w1": 4}, {"n0": {"run1": 7}})
    out.save({"n0|w1": 5})
    out.close()
    again = CheckpointedOutput(*paths)
    try:
        assert again.open() == {"n0|w1": 5}
        assert again.floors == {"n0": {"run1": 7}}
    finally:
        again.close()


def test_merge_keys_saved_with_the_writers_come_back(paths: tuple[str, str]) -> None:
    """The streamer's per-writer merge keys are saved beside the writers and reopened."""
    out = CheckpointedOutput(*paths)
    out.open()
    assert out.keys == {}
    out.save({"n0|w1": 4}, keys={"n0|w1": 1_700_000_000_000_000_000})
    out.close()
    again = CheckpointedOutput(*paths)
    try:
        assert again.open() == {"n0|w1": 4}
        assert again.keys == {"n0|w1": 1_700_000_000_000_000_000}
    finally:
        again.close()


def test_bytes_written_after_the_last_save_are_cut_back(paths: tuple[str, str]) -> None:
    """Bytes past the checkpoint (written by a process that died before saving) are cut off; cut says how many."""
    out = CheckpointedOutput(*paths)
    out.open()
    out.write(b"saved\n")
    out.save({"w": 1})
    out.write(b"not saved 1\n")
    out.write(b"not saved 2\n")
    out.close()  # no save: as after kill -9

    again = CheckpointedOutput(*paths)
    try:
        assert again.open() == {"w": 1}
        assert again.cut == 24
        assert Path(paths[0]).read_bytes() == b"saved\n"
        assert again.size == 6
        again.write(b"redone\n")
        assert Path(paths[0]).read_bytes() == b"saved\nredone\n"
    finally:
        again.close()


def test_returned_writers_is_a_copy(opened: CheckpointedOutput) -> None:
    """Changing the dict open returned does not change what the output holds."""
    opened.save({"w": 3})
    opened.close()
    writers = opened.open()
    writers["w"] = 99
    writers["x"] = 1
    opened.close()
    assert opened.open() == {"w": 3}


def test_unreadable_checkpoint_gives_a_problem_and_starts_afresh(paths: tuple[str, str]) -> None:
    """A checkpoint that is not JSON is reported as a problem; no writers, the file adopted as it is."""
    path, ckpt_path = paths
    Path(path).write_bytes(b"line\n")
    Path(ckpt_path).write_bytes(b"{not json")
    out = CheckpointedOutput(path, ckpt_path)
    try:
        assert out.open() == {}
        assert out.problem is not None
        assert "unreadable" in out.problem
        assert out.cut == 0
        assert Path(path).read_bytes() == b"line\n"
        ckpt, problem = load_checkpoint(ckpt_path)
        assert problem is None  # rewritten at once
        assert (ckpt.out, ckpt.out_size, ckpt.writers) == (path, 5, {})
    finally:
        out.close()


@pytest.mark.parametrize(
    "content",
    [
        b"[]",  # not an object
        b'{"version": 1}',  # fields missing
        b'{"version": 1, "out": "x", "out_size": "big", "writers": {}}',
        b'{"version": 1, "out": "x", "out_size": 3, "writers": []}',
        b'{"version": 1, "out": "x", "out_size": 3, "writers": {}, "floors": {"n": {"r": "high"}}}',
        b'{"version": 1, "out": "x", "out_size": 3, "writers": {}, "floors": [1]}',
    ],
)
def test_malformed_checkpoint_gives_a_problem(paths: tuple[str, str], content: bytes) -> None:
    """A checkpoint of the wrong shape is a problem, not a crash, and open starts afresh."""
    path, ckpt_path = paths
    Path(ckpt_path).write_bytes(content)
    out = CheckpointedOutput(path, ckpt_path)
    try:
        assert out.open() == {}
        assert out.problem is not None
        assert "unreadable" in out.problem
    finally:
        out.close()


def test_unknown_version_gives_a_problem(paths: tuple[str, str]) -> None:
    """A checkpoint of another version is reported and ignored."""
    path, ckpt_path = paths
    Path(ckpt_path).write_bytes(orjson.dumps({"version": 99, "out": path, "out_size": 0, "writers": {"w": 5}}))
    out = CheckpointedOutput(path, ckpt_path)
    try:
        assert out.open() == {}
        assert out.problem is not None
        assert "unknown version" in out.problem
    finally:
        out.close()


def test_checkpoint_of_another_file_is_not_applied(paths: tuple[str, str], tmp_path: Path) -> None:
    """A checkpoint naming another output neither cuts this file nor gives its writers."""
    path, ckpt_path = paths
    Path(path).write_bytes(b"0123456789")
    other = Checkpoint(out=str(tmp_path / "other.log"), out_size=2, writers={"w": 7}, floors={"n": {"r": 3}})
    save_checkpoint(ckpt_path, other)
    out = CheckpointedOutput(path, ckpt_path)
    try:
        assert out.open() == {}
        assert out.cut == 0
        assert out.problem is None
        assert out.floors == {}, "floors stand in for writers: another file's go with them"
        assert Path(path).read_bytes() == b"0123456789"
        ckpt, _ = load_checkpoint(ckpt_path)
        assert (ckpt.out, ckpt.out_size, ckpt.writers, ckpt.floors) == (path, 10, {}, {})
    finally:
        out.close()


def test_save_checkpoint_leaves_no_temp_file(tmp_path: Path) -> None:
    """save_checkpoint writes through a temp file it renames: only the checkpoint remains."""
    ckpt_path = str(tmp_path / "c.ckpt")
    save_checkpoint(ckpt_path, Checkpoint(out="o", out_size=3, writers={"a": 1}))
    assert os.listdir(tmp_path) == ["c.ckpt"]
    assert load_checkpoint(ckpt_path) == (Checkpoint(out="o", out_size=3, writers={"a": 1}), None)


def test_missing_checkpoint_is_not_a_problem(tmp_path: Path) -> None:
    """No checkpoint file at all gives an empty checkpoint and no problem."""
    assert load_checkpoint(str(tmp_path / "none")) == (Checkpoint(), None)


def test_partial_write_failure_leaves_the_file_as_it_was(
    opened: CheckpointedOutput, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails after writing part of the data is cut back, and the OSError propagates."""
    opened.write(b"kept\n")

    def half_then_fail(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output_module, "write_all", half_then_fail)
    with pytest.raises(OSError) as info:
        opened.write(b"this line is lost\n")
    assert info.value.errno == 28
    assert Path(opened.path).read_bytes() == b"kept\n"
    assert opened.size == 5


def test_write_to_a_closed_descriptor_raises_and_leaves_the_file(paths: tuple[str, str]) -> None:
    """A write whose descriptor was closed behind the output's back raises OSError; the file is unchanged."""
    out = CheckpointedOutput(*paths)
    out.open()
    out.write(b"kept\n")
    os.close(out._fd)
    try:
        with pytest.raises(OSError):
            out.write(b"lost\n")
    finally:
        out._fd = -1  # already closed: do not let close() close a reused number
    assert Path(paths[0]).read_bytes() == b"kept\n"


def test_close_is_safe_twice(paths: tuple[str, str]) -> None:
    """close() twice does nothing the second time."""
    out = CheckpointedOutput(*paths)
    out.open()
    out.close()
    out.close()
    assert out._fd == -1


@pytest.mark.timeout(30)
def test_a_second_writer_of_one_output_is_refused_naming_the_file_and_pid(paths: tuple[str, str]) -> None:
    """While one output holds a file another is refused, the file and holder pid named; after close it may open."""
    first = CheckpointedOutput(*paths)
    first.open()
    first.write(b"line\n")
    second = CheckpointedOutput(*paths)
    second._lock.wait_s = 0.1
    with pytest.raises(OutputError, match=rf"{paths[0]} is already written by another process \(pid {os.getpid()}\)"):
        second.open()
    assert os.path.getsize(paths[0]) == 5, "the refused one touched nothing"
    first.close()
    assert second.open() == {}
    second.close()


@pytest.mark.timeout(60)
def test_two_aggregators_of_one_node_file_the_second_refuses(tmp_path: Path) -> None:
    """Two jobs' aggregators (own tmpdirs, one log dir and node id): the second refuses; its tmpdir is free again."""
    logs = tmp_path / "logs"
    with NodeAggregator(str(tmp_path / "a"), str(logs), "n1"):
        second = NodeAggregator(str(tmp_path / "b"), str(logs), "n1")
        with pytest.raises(OutputError, match=r"nvrx_log_n1.log is already written by another process \(pid \d+\)"):
            second.start()
        with NodeAggregator(str(tmp_path / "b"), str(logs), "n2"):
            pass  # the refused one let go of its tmpdir
