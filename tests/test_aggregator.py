"""NodeAggregator and its formats: backlogs in bounded steps, JSON and lenient lines."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import orjson
import pytest

from nvrxlog import NodeAggregator
from nvrxlog.config import LogConfig
from nvrxlog.core.lines import LineFormat
from nvrxlog.rank.handler import NodeLocalHandler


@pytest.mark.timeout(120)
def test_backlog_larger_than_one_step_comes_out_complete_and_time_ordered(tmp_path: Path) -> None:
    """Three writers' multi-megabyte backlog is merged in bounded steps, every record once, in time order."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    handlers = [NodeLocalHandler(str(tmp), LogConfig(rank=r, local_rank=r)) for r in range(3)]
    record = logging.LogRecord("nvrx", logging.INFO, "t.py", 1, "rank %d record %d %s", None, None)
    for i in range(30_000):
        for rank, handler in enumerate(handlers):
            record.args = (rank, i, "p" * 100)
            record.created = time.time()
            handler.emit(record)
    for handler in handlers:
        handler.close()
    assert sum(p.stat().st_size for p in tmp.iterdir()) > 3 * (2 << 20), "backlog must exceed one step per writer"
    with NodeAggregator(str(tmp), str(tmp_path / "logs"), "n1", json=True):
        pass
    lines = [orjson.loads(x) for x in (tmp_path / "logs" / "nvrx_log_n1.log").read_bytes().splitlines()]
    assert len(lines) == 90_000
    stamps = [x["ts"] for x in lines]
    assert stamps == sorted(stamps)
    for rank in range(3):
        assert [x["seq"] for x in lines if x["rank"] == rank] == list(range(30_000))


def test_text_line_matches_the_documented_format() -> None:
    """A record renders as the interface's example line."""
    ts = int(time.mktime((2024, 1, 15, 10, 30, 45, 0, 0, -1))) * 10**9 + 123_456_789
    record = {
        "seq": 0,
        "ts": ts,
        "level": "INFO",
        "rank": 0,
        "local_rank": 0,
        "infra_rank": 0,
        "infra_local_rank": 0,
        "pid": 1,
        "file": "training.py",
        "line": 45,
        "msg": "Training started",
    }
    assert LineFormat().line(record, "node001") == (
        "2024-01-15 10:30:45,123 [INFO] [node001] [workload:0(0) infra:0(0)] training.py:45 Training started\n"
    )


def test_record_missing_fields_is_still_shown_with_question_marks() -> None:
    """Valid JSON lacking fields or with odd types renders leniently instead of failing the batch."""
    line = LineFormat().line({"seq": 1, "ts": 0, "msg": "bare", "rank": [1]}, "n")
    assert line.endswith("[?] [n] [workload:[1](?) infra:?(?)] ?:? bare\n")


@pytest.mark.timeout(180)
def test_a_stop_that_times_out_leaves_the_thread_its_forwarder_and_output(tmp_path: Path) -> None:
    """stop() whose wait runs out returns False and takes nothing from the draining thread: all still arrives."""
    from nvrxlog import Streamer

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    handler = NodeLocalHandler(str(tmp), LogConfig(rank=0, local_rank=0))
    record = logging.LogRecord("nvrx", logging.INFO, "t.py", 1, "record %d %s", None, None)
    with Streamer("tcp://127.0.0.1:0", str(tmp_path / "cluster.log"), json=True) as streamer:
        aggregator = NodeAggregator(str(tmp), str(tmp_path / "logs"), "n1", streamer.endpoint, json=True)
        aggregator.start()
        for i in range(60_000):
            record.args = (i, "p" * 100)
            record.created = time.time()
            handler.emit(record)
        handler.close()
        assert aggregator.stop(timeout=0.0) is False, "a 60,000-record drain cannot be over at once"
        assert aggregator.stop() is True
        lines = (tmp_path / "logs" / "nvrx_log_n1.log").read_bytes().splitlines()
        assert [orjson.loads(x)["seq"] for x in lines] == list(range(60_000))
        assert aggregator.stats["undelivered"] == 0
    cluster = [orjson.loads(x) for x in (tmp_path / "cluster.log").read_bytes().splitlines()]
    assert [x["seq"] for x in cluster if x["msg"].startswith("record ")] == list(range(60_000))
