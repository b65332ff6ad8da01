"""A handler must never hurt its host: bad messages, bad filters, bad disks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env, mount, parse_text_records

from nvrxlog import NodeAggregator, TmpDirError, setup_logger
from nvrxlog.rank.handler import NodeLocalHandler


@pytest.fixture
def node_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Node-local mode in this process with an external aggregator; returns the tmpdir."""
    monkeypatch.setenv("NVRX_NODE_LOCAL_TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("NVRX_LOG_AGGREGATOR", "external")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    return tmp_path / "tmp"


def _aggregate(tmp: Path, log_dir: Path) -> list[dict]:
    with NodeAggregator(str(tmp), str(log_dir), "n1"):
        pass
    return parse_text_records(log_dir / "nvrx_log_n1.log")


@pytest.mark.timeout(30)
def test_filter_that_logs_does_not_recurse(node_local: Path, tmp_path: Path) -> None:
    """A filter that logs on every record: both records are written, nothing recurses."""
    log = setup_logger()

    class Chatty(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            log.info("filter saw %s", record.getMessage())
            return True

    next(h for h in log.handlers if isinstance(h, NodeLocalHandler)).addFilter(Chatty())
    for i in range(50):
        log.info("outer %d", i)
    msgs = [r["msg"] for r in _aggregate(node_local, tmp_path / "logs")]
    assert msgs.count("filter saw outer 7") == 1 and "outer 7" in msgs
    assert len(msgs) == 100


@pytest.mark.timeout(30)
def test_deep_reentry_is_dropped_and_reported_once(
    node_local: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A message whose str() logs a message whose str() logs again: the third level is dropped, reported once."""
    log = setup_logger()

    class Nested:
        def __init__(self, depth: int) -> None:
            self.depth = depth

        def __str__(self) -> str:
            if self.depth < 5:
                log.info("%s", Nested(self.depth + 1))
            return f"level {self.depth}"

    for _ in range(20):
        log.info("%s", Nested(0))
    log.info("still fine")
    msgs = [r["msg"] for r in _aggregate(node_local, tmp_path / "logs")]
    assert msgs.count("level 0") == 20 and msgs.count("level 1") == 20 and "level 2" not in msgs
    assert msgs[-1] == "still fine"
    assert capfd.readouterr().err.count("logged while logging was dropped") == 1


@pytest.mark.timeout(30)
def test_message_whose_str_raises_is_written_visibly_and_reported_once(
    node_local: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A message whose __str__ raises becomes a visible stand-in line; stderr tells once."""
    log = setup_logger()

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    for _ in range(10):
        log.info("value: %s", Broken())
    log.info("after %d", 1)
    msgs = [r["msg"] for r in _aggregate(node_local, tmp_path / "logs")]
    assert len(msgs) == 11
    assert msgs[0].startswith("[nvrxlog: message could not be formatted: RuntimeError: no str for you]")
    assert "msg='value: %s'" in msgs[0]
    assert msgs[-1] == "after 1"
    assert capfd.readouterr().err.count("could not be formatted") == 1


@pytest.mark.timeout(30)
def test_oversized_message_is_truncated_with_marker_and_later_records_arrive(
    node_local: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A 10 MB message is cut with a visible marker and counted; the next records still arrive."""
    log = setup_logger()
    log.info("before")
    log.info("x" * 10_000_000)
    log.info("after")
    handler = next(h for h in log.handlers if isinstance(h, NodeLocalHandler))
    msgs = [r["msg"] for r in _aggregate(node_local, tmp_path / "logs")]
    assert msgs[0] == "before" and msgs[2] == "after"
    assert msgs[1].endswith(f"... [nvrxlog: truncated {10_000_000 - (1 << 20)} characters]")
    assert handler.errors.counts["truncated"] == 1
    assert "was cut" in capfd.readouterr().err


@pytest.mark.timeout(60)
def test_full_tmpdir_drops_are_reported_once_and_logging_resumes(
    small_fs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC: the process keeps running, stderr says so once, and the gap is stated in the node file."""
    monkeypatch.setenv("NVRX_LOG_AGGREGATOR", "external")
    monkeypatch.setenv("NVRX_LOG_MAX_FILE_SIZE_KB", "16")
    log = setup_logger(node_local_tmp_dir=str(small_fs))
    for i in range(3000):
        log.info("fill %d %s", i, "y" * 80)
    err = capfd.readouterr().err
    assert sum("ENOSPC" in line for line in err.splitlines()) == 1, err
    handler = next(h for h in log.handlers if isinstance(h, NodeLocalHandler))
    dropped = handler.errors.counts["OSError:ENOSPC"]
    assert dropped > 100
    records = _aggregate(small_fs, tmp_path / "logs")  # consumes and frees the files
    log.info("after the disk emptied")
    records = _aggregate(small_fs, tmp_path / "logs")
    msgs = [r["msg"] for r in records]
    written = [m for m in msgs if m.startswith("fill ")]
    assert len(written) == 3000 - dropped
    assert msgs.index("after the disk emptied") > msgs.index(written[-1])
    gap = [m for m in msgs if "are missing" in m]
    first_lost = 3000 - dropped
    assert gap == [gap[0]] and f"records seq {first_lost}-2999 ({dropped})" in gap[0]
    # ENOSPC may cut a record mid-write; that fragment is reported, never glued to the next.
    torn = [m for m in msgs if "malformed" in m]
    assert len(torn) <= 1 and all(f'{{"seq":{first_lost},' in m for m in torn)


@pytest.mark.timeout(60)
def test_read_only_tmpdir_falls_back_to_stderr_with_one_report(tmp_path: Path) -> None:
    """A read-only tmpdir: the rank keeps running and logs to stderr, saying why once."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mount("-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro))
    try:
        code = "from nvrxlog import setup_logger\nlog = setup_logger()\n[log.info('line %d', i) for i in range(5)]\n"
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=child_env(NVRX_NODE_LOCAL_TMPDIR=ro, NVRX_LOG_AGGREGATOR="external", RANK=0),
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert sum("node-local logging is off" in line for line in lines) == 1, result.stderr
    assert sum(line.endswith(f"line {i}") for line in lines for i in range(5)) == 5


@pytest.mark.timeout(30)
def test_world_writable_tmpdir_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    """Everyone can write but nobody is protected: the aggregator and the CLI refuse it clearly."""
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    os.chmod(unsafe, 0o777)
    with pytest.raises(TmpDirError, match="world-writable without the sticky bit"):
        NodeAggregator(str(unsafe), str(tmp_path / "logs"), "n1").start()
    result = subprocess.run(
        [sys.executable, "-m", "nvrxlog", "aggregate", "--tmp-dir", str(unsafe), "--log-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "sticky bit" in result.stderr
    os.chmod(unsafe, 0o1777)
    NodeAggregator(str(unsafe), str(tmp_path / "logs"), "n1").start().stop()


@pytest.mark.timeout(30)
def test_lone_surrogates_in_a_message_are_escaped_not_dropped(node_local: Path, tmp_path: Path) -> None:
    """A file name decoded with surrogateescape, logged: written with the surrogate escaped; nothing dropped."""
    log = setup_logger()
    log.info("opening %s", b"caf\xe9.txt".decode("utf-8", "surrogateescape"))
    log.info("after")
    handler = next(h for h in log.handlers if isinstance(h, NodeLocalHandler))
    msgs = [r["msg"] for r in _aggregate(node_local, tmp_path / "logs")]
    assert msgs == ["opening caf\\udce9.txt", "after"]
    assert not handler.errors.counts
