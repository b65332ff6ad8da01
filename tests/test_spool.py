"""The forwarder's on-disk spool: batches out in order across segments, bounded, recoverable."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from conftest import fill_disk, mounted_tmpfs

from nvrxlog.wire.forwarder import Forwarder
from nvrxlog.wire.spool import Spool


def _fill(spool: Spool, batches: int) -> None:
    for b in range(batches):
        spool.append([{"seq": b, "ts": b, "msg": "m" * 200}], watermark=b)


def test_batches_are_handed_out_in_order_across_finished_segments_without_acks(tmp_path: Path) -> None:
    """Reaching the end of a finished segment moves on to the next; nothing waits for an ack."""
    spool = Spool(str(tmp_path), max_bytes=1 << 20, segment_bytes=4096)
    _fill(spool, 100)
    assert len(list(tmp_path.glob("seg-*.nvs"))) > 3, "the batches must span several segments"
    seqs = []
    while (batch := spool.next_batch()) is not None:
        seqs.append(batch[0])
        assert orjson.loads(batch[1])["b"] == batch[0]
    assert seqs == list(range(1, 101))
    spool.close()


def test_rewind_and_ack_resend_only_what_is_unacknowledged(tmp_path: Path) -> None:
    """After an ack of 1-40 and a rewind, sending resumes at 41; acked segments are deleted."""
    spool = Spool(str(tmp_path), max_bytes=1 << 20, segment_bytes=4096)
    _fill(spool, 100)
    while spool.next_batch() is not None:
        pass
    before = len(list(tmp_path.glob("seg-*.nvs")))
    spool.ack(40)
    spool.rewind()
    assert spool.next_batch()[0] == 41
    assert len(list(tmp_path.glob("seg-*.nvs"))) < before
    assert spool.unacked == 60
    spool.close()


def test_a_restart_resumes_after_the_acknowledged_batches(tmp_path: Path) -> None:
    """A new Spool on the same directory hands out the unacknowledged batches, numbering on from there."""
    spool = Spool(str(tmp_path), max_bytes=1 << 20, segment_bytes=4096)
    _fill(spool, 30)
    spool.ack(12)
    spool.close()
    again = Spool(str(tmp_path), max_bytes=1 << 20, segment_bytes=4096)
    seqs = []
    while (batch := again.next_batch()) is not None:
        seqs.append(batch[0])
    assert seqs == list(range(13, 31))
    assert again.append([{"seq": 0, "ts": 0, "msg": "new"}], watermark=0)[0] == 31
    again.close()


@contextmanager
def _full_disk_spool(tmp_path: Path, batches: int) -> Iterator[tuple[Spool, Path]]:
    """A spool of ``batches`` batches on a tiny tmpfs that is then filled; the filler (delete it to free the disk)."""
    with mounted_tmpfs(tmp_path / "fs", "256k") as fs:
        spool = Spool(str(fs / "spool"), max_bytes=1 << 20)
        _fill(spool, batches)
        yield spool, fill_disk(fs)


@pytest.mark.timeout(30)
def test_ack_on_a_full_disk_is_kept_in_memory_and_saved_once_space_returns(tmp_path: Path) -> None:
    """ENOSPC saving the acked position: ack returns the error, the position holds in memory, a retry saves it."""
    with _full_disk_spool(tmp_path, 10) as (spool, filler):
        problem = spool.ack(6)
        assert isinstance(problem, OSError) and problem.errno == errno.ENOSPC
        assert spool.acked == 6 and spool.acked_unsaved and spool.unacked == 4
        assert isinstance(spool.save_acked(), OSError)
        filler.unlink()
        assert spool.save_acked() is None and not spool.acked_unsaved
        spool.close()
        assert Spool(spool.directory).acked == 6


@pytest.mark.timeout(30)
def test_append_on_a_full_disk_leaves_the_spool_as_it_was(tmp_path: Path) -> None:
    """ENOSPC mid-append: OSError, no torn batch left behind, and the retry gets the seq the failure did not use."""
    with _full_disk_spool(tmp_path, 3) as (spool, filler):
        big = [{"seq": i, "ts": i, "msg": "m" * 2000} for i in range(50)]  # larger than any slack in a page
        with pytest.raises(OSError):
            spool.append(big, watermark=0)
        filler.unlink()
        assert spool.append(big, watermark=0)[0] == 4
        batches = []
        while (batch := spool.next_batch()) is not None:
            batches.append(orjson.loads(batch[1])["b"])
        assert batches == [1, 2, 3, 4]
        spool.close()


def test_a_record_nested_past_the_encoders_limit_is_spooled_bounded(tmp_path: Path) -> None:
    """A record with a field 300 lists deep (more than orjson encodes) is spooled with that field cut short."""
    deep: list = []
    for _ in range(300):
        deep = [deep]
    spool = Spool(str(tmp_path))
    spool.append([{"seq": 0, "ts": 1, "msg": "fine", "x": deep}, {"seq": 1, "ts": 2, "msg": "next"}], watermark=2)
    batch = orjson.loads(spool.next_batch()[1])
    assert [r["msg"] for r in batch["r"]] == ["fine", "next"] and batch["r"][0]["x"] == "[[[[[[[...]]]]]]]"
    spool.close()


def test_a_spool_keeps_its_identity_across_restarts_and_a_new_one_gets_its_own(tmp_path: Path) -> None:
    """The identity a streamer tells sessions apart by: the same after reopening, another for another spool."""
    first = Spool(str(tmp_path / "a"))
    identity = first.identity
    first.close()
    assert len(identity) == 32 and Spool(str(tmp_path / "a")).identity == identity
    assert Spool(str(tmp_path / "b")).identity != identity
    (tmp_path / "a" / "id").write_text("not an identity\n")
    assert Spool(str(tmp_path / "a")).identity not in (identity, "not an identity")


def test_every_batch_names_its_spool_run_and_a_reopened_spool_is_another_run(tmp_path: Path) -> None:
    """Batches carry the run of the spool that wrote them, also when a later run resends them; runs differ."""
    spool = Spool(str(tmp_path))
    _fill(spool, 3)
    first = spool.run
    assert [orjson.loads(spool.next_batch()[1])["o"] for _ in range(3)] == [first] * 3
    spool.close()
    again = Spool(str(tmp_path))
    assert again.run != first and len(again.run) <= 64
    _fill(again, 1)
    runs = []
    while (batch := again.next_batch()) is not None:
        runs.append((batch[0], orjson.loads(batch[1])["o"]))
    assert runs == [(1, first), (2, first), (3, first), (4, again.run)], "a resent batch keeps its own run"
    again.close()


def test_ended_writers_are_named_in_their_batch_only(tmp_path: Path) -> None:
    """``ended`` goes into its batch as ``"e"``; a batch that ends no writer has no ``"e"``."""
    spool = Spool(str(tmp_path))
    spool.append([{"seq": 0, "ts": 1, "msg": "last"}], watermark=1, ended=["w0", ["w1", "n9"]])
    spool.append([], watermark=1)
    one, two = (orjson.loads(spool.next_batch()[1]) for _ in range(2))
    assert one["e"] == ["w0", ["w1", "n9"]] and "e" not in two
    spool.close()


def test_a_submit_names_the_writers_ended_in_its_last_batch_or_an_empty_one(tmp_path: Path) -> None:
    """Forwarder.submit puts ``ended`` in the last batch it spools; with no records, in one empty batch."""
    forwarder = Forwarder("tcp://127.0.0.1:1", "n0", str(tmp_path / "spool"))
    forwarder.watermark = 77
    records = [{"seq": i, "ts": 10 + i, "level": "INFO", "msg": "m", "w": "w0"} for i in range(1500)]
    forwarder.submit(records, 2000, ["w0"])
    forwarder.submit([], 0, ["w1"])
    forwarder.submit([], 0)  # nothing ended, nothing to say: no batch
    batches = []
    while (batch := forwarder.spool.next_batch()) is not None:
        batches.append(orjson.loads(batch[1]))
    assert [(b["n"], b.get("e")) for b in batches] == [(1000, None), (500, ["w0"]), (0, ["w1"])]
    assert batches[2]["c"] == 77, "an empty batch promises only the watermark already given"
    forwarder.spool.close()
