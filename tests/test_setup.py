"""setup_logger: modes, idempotency, the public surface."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import LINE, child_env, parse_text_records

import nvrxlog
from nvrxlog import NodeAggregator, setup_logger
from nvrxlog.rank.handler import NodeLocalHandler
from nvrxlog.rank.setup import running_aggregator


def test_public_names_match_all() -> None:
    """__all__ lists exactly the public names nvrxlog exports, and the contract's names are there."""
    public = {
        name for name in dir(nvrxlog) if not name.startswith("_") and not isinstance(getattr(nvrxlog, name), ModuleType)
    }
    assert set(nvrxlog.__all__) == public
    assert {"setup_logger", "LogConfig", "NodeAggregator", "Streamer", "CurveKeys"} <= public


def test_returns_the_nvrx_logger_and_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second call returns the same configured logger without adding handlers."""
    logger = setup_logger()
    assert logger is logging.getLogger("nvrx")
    handlers = list(logger.handlers)
    assert setup_logger() is logger and logger.handlers == handlers
    assert setup_logger(force_reset=True) is logger and logger.handlers != handlers


def _run(code: str, **env: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env=child_env(**env), capture_output=True, text=True, timeout=30
    )


def test_regular_mode_writes_rank_aware_lines_to_stderr() -> None:
    """No tmpdir: lines in the documented format go to stderr, stdout stays empty."""
    result = _run(
        "from nvrxlog import setup_logger; setup_logger().info('hello %s', 'world')",
        RANK=3,
        LOCAL_RANK=1,
        NVRX_NODE_ID="n9",
    )
    assert result.stdout == ""
    match = LINE.match(result.stderr.strip())
    assert match and match["msg"] == "hello world" and match["node"] == "n9"
    assert (match["rank"], match["local"], match["infra"]) == ("3", "1", "?")


def test_stdout_mode_and_debug_level() -> None:
    """NVRX_LOG_TO_STDOUT sends lines to stdout; NVRX_LOG_DEBUG lets DEBUG through."""
    code = "from nvrxlog import setup_logger; log = setup_logger(); log.debug('dbg'); log.info('inf')"
    quiet = _run(code, NVRX_LOG_TO_STDOUT=1)
    assert quiet.stderr == "" and [LINE.match(x)["msg"] for x in quiet.stdout.splitlines()] == ["inf"]
    loud = _run(code, NVRX_LOG_TO_STDOUT=1, NVRX_LOG_DEBUG="true")
    assert [LINE.match(x)["msg"] for x in loud.stdout.splitlines()] == ["dbg", "inf"]


def test_malformed_rank_is_reported_once_and_prints_as_unknown() -> None:
    """RANK=abc: a single warning line, the rank shows as '?', nothing crashes."""
    result = _run(
        "from nvrxlog import setup_logger\nfor _ in range(3): setup_logger(force_reset=True).info('x')",
        RANK="abc",
    )
    assert result.returncode == 0
    warnings = [line for line in result.stderr.splitlines() if "RANK='abc'" in line]
    assert len(warnings) == 1
    assert all(LINE.match(x)["rank"] == "?" for x in result.stderr.splitlines())


def test_log_file_mode_prefixes_every_line_with_the_rank(tmp_path: Path) -> None:
    """log_file: ranks append to one shared file, each line labelled srun -l style."""
    shared = tmp_path / "all.log"
    code = (
        f"from nvrxlog import setup_logger\nlog = setup_logger(log_file={str(shared)!r})\n"
        "log.info('one')\ntry:\n    1/0\nexcept ZeroDivisionError:\n    log.exception('two')\n"
    )
    for rank in (0, 1):
        assert _run(code, RANK=rank).returncode == 0
    lines = shared.read_text().splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == ["0"] * 5 + ["1"] * 5
    assert lines[0].endswith(" one") and lines[-1] == "1: ZeroDivisionError: division by zero"


def test_local_rank_zero_starts_the_aggregator_thread_others_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node-local mode: LOCAL_RANK=0 runs the aggregator, LOCAL_RANK=1 or external mode do not."""
    monkeypatch.setenv("NVRX_NODE_LOCAL_TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("NVRX_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    setup_logger()
    assert running_aggregator() is None
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NVRX_LOG_AGGREGATOR", "external")
    setup_logger(force_reset=True)
    assert running_aggregator() is None
    monkeypatch.delenv("NVRX_LOG_AGGREGATOR")
    setup_logger(force_reset=True)
    aggregator = running_aggregator()
    assert aggregator is not None and aggregator.running


def test_second_aggregator_on_the_same_tmpdir_is_refused(tmp_path: Path) -> None:
    """One tmpdir, one aggregator: a second start raises AggregatorBusyError."""
    with (
        NodeAggregator(str(tmp_path / "tmp"), str(tmp_path / "logs"), "n1"),
        pytest.raises(nvrxlog.AggregatorBusyError),
    ):
        NodeAggregator(str(tmp_path / "tmp"), str(tmp_path / "logs"), "n1").start()


def test_lifecycle_start_twice_raises_stop_twice_is_safe(tmp_path: Path) -> None:
    """start() twice is an error; stop() twice is fine."""
    aggregator = NodeAggregator(str(tmp_path / "tmp"), str(tmp_path / "logs"), "n1").start()
    assert aggregator.started.is_set()
    with pytest.raises(nvrxlog.LifecycleError):
        aggregator.start()
    assert aggregator.stop() and aggregator.stop()


def test_without_an_aggregator_retention_deletes_and_reports_the_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No aggregator for longer than the grace period: old files are deleted and the loss is a line."""
    monkeypatch.setenv("NVRX_LOG_MAX_FILE_SIZE_KB", "1")
    monkeypatch.setenv("NVRX_LOG_MAX_LOG_FILES", "2")
    monkeypatch.setenv("NVRX_LOG_AGGREGATOR", "external")
    monkeypatch.setattr("nvrxlog.rank.retention.ABSENT_GRACE_NS", 0)
    tmp = tmp_path / "tmp"
    log = setup_logger(node_local_tmp_dir=str(tmp))
    for i in range(200):
        log.info("record %d %s", i, "z" * 50)
    handler = next(h for h in log.handlers if isinstance(h, NodeLocalHandler))
    assert len(list(tmp.glob("nvrx.*"))) <= 2
    assert handler.lost_records > 0
    with NodeAggregator(str(tmp), str(tmp_path / "logs"), "n1"):
        pass
    records = parse_text_records(tmp_path / "logs" / "nvrx_log_n1.log")
    from_writer = [r["msg"] for r in records if r["file"] != "nvrxlog" or not r["msg"].startswith("nvrxlog aggregator")]
    # Every sequence number the writer used is either in the node file or counted lost
    # (loss warnings are records too, and older ones rotate out like any other).
    assert len(from_writer) + handler.lost_records == handler._seq
    kept = [int(m.split()[1]) for m in from_writer if m.startswith("record ")]
    assert kept == list(range(200 - len(kept), 200))
    assert any("are lost: the node aggregator is absent" in m for m in from_writer)
