"""The node's clock steps back (an NTP step): records are written at once, not held until the clock catches up."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from conftest import parse_text_records, wait_for

from nvrxlog import NodeAggregator
from nvrxlog.config import LogConfig
from nvrxlog.core.watermark import clock_stepped_back
from nvrxlog.rank.handler import NodeLocalHandler

_HOUR_NS = 3600 * 10**9


def test_a_clock_step_back_is_told_by_records_stamped_past_the_window() -> None:
    """Held records stamped beyond now plus the window (and a second's slack) mean the clock went back."""
    now, window = 10**18, 100 * 10**6
    assert not clock_stepped_back(float("inf"), now, window)
    assert not clock_stepped_back(now + window, now, window)
    assert not clock_stepped_back(now + window + 10**9 - 1, now, window)
    assert clock_stepped_back(now + _HOUR_NS, now, window)


@pytest.mark.timeout(120)
def test_records_after_a_clock_step_back_reach_the_file_at_once_in_order(tmp_path: Path) -> None:
    """A writer's stamps go from an hour ahead to now (its clock stepped back): all 1,000 arrive, in seq order."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    handler = NodeLocalHandler(str(tmp), LogConfig(rank=0, local_rank=0))
    record = logging.LogRecord("nvrx", logging.INFO, "train.py", 1, "r%d", None, None)
    with NodeAggregator(str(tmp), str(tmp_path / "logs"), "n1"):
        for i in range(1000):
            record.args = (i,)
            record.created = (time.time_ns() + (_HOUR_NS if i < 500 else 0)) / 1e9  # the step at record 500
            handler.emit(record)
        path = tmp_path / "logs" / "nvrx_log_n1.log"

        def written() -> list[dict]:
            records = parse_text_records(path) if path.exists() else []
            return [r for r in records if r["msg"].startswith("r")]

        wait_for(lambda: len(written()) == 1000, 20, "every record, long before the clock catches up")
        assert [int(r["msg"][1:]) for r in written()] == list(range(1000))

        def notes() -> list[str]:
            return [r["msg"] for r in parse_text_records(path) if "clock stepped back" in r["msg"]]

        wait_for(notes, 20, "the note of the step in the file")
        assert len(notes()) == 1 and "by about 3600s" in notes()[0]
    handler.close()
