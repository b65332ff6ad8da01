"""The streamer's flush (``nvrxlog.streamer.flush``): written and checkpointed before acked, held on a full disk."""

from __future__ import annotations

import errno
from pathlib import Path

import orjson
import pytest
from test_streamer_ingest import T0, payload, rec

from nvrxlog.core.lines import LineFormat
from nvrxlog.core.report import ErrorCounter
from nvrxlog.streamer.flush import Flush
from nvrxlog.streamer.intake import Intake
from nvrxlog.streamer.live import LiveView
from nvrxlog.streamer.output import ClusterOutput
from nvrxlog.wire.protocol import BATCH, hello

PEER = b"peer1"


def _flush(tmp_path: Path) -> tuple[Flush, Intake, ClusterOutput, dict[str, int]]:
    """A flush over a fresh output, with one node welcomed and one batch of two records (seq 5) held."""
    stats = {"batches": 0, "nodes": 0, "records": 0, "late": 0, "write_failures": 0}
    intake = Intake(
        "streamer", LineFormat(untrusted=True), stats=stats, credit_bytes=1 << 20, idle_timeout=10.0, keep_records=bool
    )
    cluster = ClusterOutput(str(tmp_path / "cluster.log"), str(tmp_path / ".cluster.log.ckpt"))
    intake.recover(cluster.open(), cluster.floors)
    intake.handle([PEER, *hello("node1")], 1.0)
    intake.handle([PEER, BATCH, payload(5, [rec(0, T0), rec(1, T0 + 1)], watermark=T0 + 1)], 1.0)
    flush = Flush(
        cluster, intake, LiveView(), out_path=cluster.file.path, hold_ns=0, stats=stats, errors=ErrorCounter("test")
    )
    return flush, intake, cluster, stats


def test_a_flush_writes_checkpoints_and_then_acknowledges(tmp_path: Path) -> None:
    """What the cutoff passed is written and checkpointed, and only then its batch is due an ack."""
    flush, _, cluster, stats = _flush(tmp_path)
    assert flush(final=False) == [(PEER, 5)]
    assert stats["records"] == 2 and not cluster.unsaved
    assert (tmp_path / "cluster.log").read_text().count("message ") == 2
    assert flush(final=False) == []  # acknowledged batches are forgotten
    cluster.close()


def test_a_full_disk_holds_everything_and_acknowledges_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the checkpoint cannot be saved nothing is acked and the failure is said once; then it is acked."""
    flush, intake, cluster, stats = _flush(tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device")

    def no_space() -> None:
        raise full

    monkeypatch.setattr(cluster, "checkpoint", no_space)
    assert flush(final=False) == [] and flush(final=False) == []
    assert stats["write_failures"] == 2 and flush._errors.counts == {"out:ENOSPC": 1}
    monkeypatch.undo()
    assert flush(final=True) == [(PEER, 5)]
    assert "is writable again" in "".join(intake.pending.take(float("inf"))[0].merged("lines"))
    cluster.close()


def test_a_writer_ended_leaves_the_checkpoint_only_with_the_floor_that_covers_its_batch(tmp_path: Path) -> None:
    """The checkpoint covering an ending batch still holds its writer; the next holds its floor instead."""
    flush, intake, cluster, _ = _flush(tmp_path)
    end = {**orjson.loads(payload(6, [rec(2, T0 + 2)], watermark=T0 + 2)), "o": "run1", "e": ["w0"]}
    intake.handle([PEER, BATCH, orjson.dumps(end)], 1.0)
    assert flush(final=False) == [(PEER, 6)]
    saved = orjson.loads((tmp_path / ".cluster.log.ckpt").read_bytes())
    assert saved["writers"] == {"node1|w0": 2} and saved["floors"] == {}
    assert cluster.unsaved, "what the ack settled waits for the next checkpoint"
    assert flush(final=False) == []
    saved = orjson.loads((tmp_path / ".cluster.log.ckpt").read_bytes())
    assert saved["writers"] == {} and saved["floors"] == {"node1": {"run1": 6}}
    cluster.close()


def test_the_final_flush_saves_what_its_acks_settled(tmp_path: Path) -> None:
    """At stop the writers retired by the last acks are not left in the checkpoint for the next run."""
    flush, intake, cluster, _ = _flush(tmp_path)
    end = {**orjson.loads(payload(6, [rec(2, T0 + 2)], watermark=T0 + 2)), "o": "run1", "e": ["w0"]}
    intake.handle([PEER, BATCH, orjson.dumps(end)], 1.0)
    assert flush(final=True) == [(PEER, 6)]
    saved = orjson.loads((tmp_path / ".cluster.log.ckpt").read_bytes())
    assert saved["writers"] == {} and saved["floors"] == {"node1": {"run1": 6}}
    cluster.close()
