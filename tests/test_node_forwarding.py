"""Forwarding is optional: a problem with it never costs the per-node file, and a dead forwarder comes back."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from _net import assert_exactly_once, free_port, json_lines, rank_env
from conftest import fill_disk, mounted_tmpfs, node_env, parse_text_records, run_worker, wait_for

from nvrxlog import NodeAggregator, Streamer
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
    msgs, err = _rank_with_forwarding(tmp_path, NVRX_LOG_CURVE_SERVER_KEY=garbage, NVRX_LOG_CURVE_CLIENT_KEY=garbage)
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


def _lines(path: Path) -> list[dict]:
    """The complete JSON records in ``path`` so far (none while it does not exist)."""
    data = path.read_bytes() if path.exists() else b""
    return [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def _log(tmp: Path, rank: int, count: int) -> None:
    """Run one simulated rank of node n1 (external aggregator) that logs ``count`` records and exits."""
    result = run_worker("--count", count, env=rank_env(tmp, "n1", rank, rank))
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(120)
def test_log_dir_full_when_acks_arrive_forwarding_goes_on_once_space_returns(tmp_path: Path) -> None:
    """Acks arrive while the log dir (a tiny tmpfs) is full: once space returns the cluster file gets everything."""
    tmp, cluster = tmp_path / "tmp", tmp_path / "cluster.log"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with mounted_tmpfs(tmp_path / "logs", "1m") as logs:
        aggregator = NodeAggregator(str(tmp), str(logs), "n1", endpoint, json=True, warn_after=60).start()
        try:
            _log(tmp, 0, 200)
            # Spooled while the streamer is not there yet, so its acks come after the disk is full.
            wait_for(lambda: aggregator._forwarder.spool.unacked == 200, what="200 records spooled")
            filler = fill_disk(logs)
            with Streamer(endpoint, str(cluster), json=True):
                wait_for(lambda: aggregator._forwarder.spool.acked >= 1, what="the first ack")
                filler.unlink()
                _log(tmp, 1, 200)
                wait_for(lambda: len(_lines(cluster)) >= 400, what="every record in the cluster file")
                aggregator.stop()
                assert aggregator.stats["undelivered"] == 0
        finally:
            aggregator.stop()
        node = json_lines(logs / "nvrx_log_n1.log")
    records = json_lines(cluster)
    assert_exactly_once(records, {("n1", 0): 200, ("n1", 1): 200})
    notes = [r["msg"] for r in node if "acknowledged position" in r["msg"]]
    assert len(notes) == 2 and "cannot save" in notes[0] and "saved again" in notes[1], notes


@pytest.mark.timeout(120)
def test_forwarder_whose_thread_died_is_restarted_and_later_records_arrive(tmp_path: Path) -> None:
    """Spool segments deleted by hand kill the forwarder's thread: it is restarted, and what follows arrives."""
    tmp, logs, cluster = tmp_path / "tmp", tmp_path / "logs", tmp_path / "cluster.log"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with NodeAggregator(str(tmp), str(logs), "n1", endpoint, json=True, warn_after=60) as aggregator:
        _log(tmp, 0, 100)
        first = aggregator._forwarder
        wait_for(lambda: first.spool.unacked == 100, what="100 records spooled")
        for segment in (logs / ".nvrx_spool_n1").glob("seg-*"):
            segment.unlink()  # as someone freeing a full disk might
        with Streamer(endpoint, str(cluster), json=True):
            wait_for(lambda: first.failure is not None, what="the forwarder's thread to die")
            wait_for(lambda: aggregator._forwarder is not first, what="a new forwarder")
            _log(tmp, 1, 100)
            wait_for(lambda: len(_lines(cluster)) >= 100, what="the later records in the cluster file")
            aggregator.stop()
    records = json_lines(cluster)
    assert_exactly_once([r for r in records if r["rank"] == 1], {("n1", 1): 100})
    msgs = [r["msg"] for r in json_lines(logs / "nvrx_log_n1.log")]
    assert sum("stopped" in m and "retrying" in m for m in msgs) == 1, msgs
    assert sum(m.endswith("restarted") for m in msgs) == 1, msgs


@pytest.mark.timeout(180)
def test_full_spool_dir_is_never_checkpointed_past_so_all_arrive_in_this_run_or_the_next(tmp_path: Path) -> None:
    """The spool's own disk (a tiny tmpfs) full, the node file fine: all arrive once, in this run or the next."""
    tmp, logs, cluster = tmp_path / "tmp", tmp_path / "logs", tmp_path / "cluster.log"
    node_file = logs / "nvrx_log_n1.log"

    def run() -> NodeAggregator:
        return NodeAggregator(str(tmp), str(logs), "n1", streamer.endpoint, json=True, drain_timeout=2).start()

    def node_records(rank: int) -> int:
        return sum(r["rank"] == rank for r in _lines(node_file))

    with (
        mounted_tmpfs(logs / ".nvrx_spool_n1", "256k") as spool_fs,
        Streamer("tcp://127.0.0.1:0", str(cluster), json=True) as streamer,
    ):
        aggregator = run()
        try:
            # This run: the spool is full while rank 0 logs, then has room again.
            filler = fill_disk(spool_fs)
            _log(tmp, 0, 3000)
            wait_for(lambda: node_records(0) == 3000, what="rank 0 in the node file")
            filler.unlink()
            wait_for(lambda: len(_lines(cluster)) >= 3000, what="rank 0 in the cluster file")
            wait_for(lambda: any("works again" in r["msg"] for r in _lines(node_file)), what="the all-clear")
            notes = [r["msg"] for r in _lines(node_file) if "spool" in r["msg"]]
            assert sum("cannot spool records" in m for m in notes) == 1, notes
            # The next run: the spool is still full when this aggregator stops.
            filler = fill_disk(spool_fs)
            _log(tmp, 1, 3000)
            wait_for(lambda: node_records(1) == 3000, what="rank 1 in the node file")
        finally:
            aggregator.stop()
        assert aggregator.stats["undelivered"] > 2900  # a batch or two may fit in a page the spool holds
        filler.unlink()
        successor = run()
        try:
            wait_for(lambda: len(_lines(cluster)) >= 6000, what="rank 1 in the cluster file")
        finally:
            successor.stop()
    expected = {("n1", 0): 3000, ("n1", 1): 3000}
    assert_exactly_once(json_lines(cluster), expected)
    assert_exactly_once(json_lines(node_file), expected)


@pytest.mark.timeout(120)
def test_the_node_checkpoint_follows_a_sync_of_the_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint lets temp files go: every batch spooled before it is on disk (fdatasync) first.

    A host crash cannot be staged here; the order of the calls is what makes
    the promise, so it is what is watched (the real calls still run).
    """
    import os

    from nvrxlog.wire.spool import Spool

    dirty: set[str] = set()  # spool segments appended to since their last sync
    unsynced_at_checkpoint: list[set[str]] = []
    real_append, real_sync, real_replace = Spool.append, os.fdatasync, os.replace

    def append(self: Spool, *args: object, **kwargs: object) -> object:
        result = real_append(self, *args, **kwargs)
        dirty.add(os.readlink(f"/proc/self/fd/{self._fd}"))
        return result

    def fdatasync(fd: int) -> None:
        real_sync(fd)
        dirty.discard(os.readlink(f"/proc/self/fd/{fd}"))

    def replace(src: str, dst: str) -> None:
        if os.path.basename(str(dst)) == ".nvrx_log_n1.ckpt":
            unsynced_at_checkpoint.append(set(dirty))
        real_replace(src, dst)

    monkeypatch.setattr(Spool, "append", append)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "replace", replace)
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with NodeAggregator(str(tmp), str(logs), "n1", endpoint, json=True, warn_after=60) as aggregator:
        for rank in range(3):
            _log(tmp, rank, 300)
        wait_for(lambda: aggregator._forwarder.spool.unacked == 900, what="900 records spooled")
        aggregator.stop()
    assert dirty or unsynced_at_checkpoint, "nothing was spooled or checkpointed"
    assert len(unsynced_at_checkpoint) >= 2
    assert all(not pending for pending in unsynced_at_checkpoint), unsynced_at_checkpoint
