"""A handler must never hurt its host: bad messages, bad filters, bad disks."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    child_env,
    fill_disk,
    mounted_tmpfs,
    node_records,
    node_settled,
    parse_text_records,
    run_script,
    start_worker,
    wait_for,
)

from nvrxlog import NodeAggregator, TmpDirError, setup_logger
from nvrxlog.rank.handler import NodeLocalHandler
from nvrxlog.rank.safe import MAX_DEFERRED


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
def test_reentry_is_written_after_its_record_and_a_loop_is_cut_and_reported_once(
    node_local: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A message whose str() logs (and so on): each such record written once, after its cause; a loop is cut."""
    log = setup_logger()

    class Nested:
        def __init__(self, depth: int, limit: int) -> None:
            self.depth, self.limit = depth, limit

        def __str__(self) -> str:
            if self.depth < self.limit:
                log.info("%s", Nested(self.depth + 1, self.limit))
            return f"level {self.depth}"

    for _ in range(20):
        log.info("%s", Nested(0, 5))
    log.info("%s", Nested(0, 10_000))  # a loop in all but name: cut, never RecursionError
    log.info("still fine")
    msgs = [r["msg"] for r in _aggregate(node_local, tmp_path / "logs")]
    assert msgs[: 20 * 6] == [f"level {d}" for _ in range(20) for d in range(6)]
    assert msgs[20 * 6 : -1] == [f"level {d}" for d in range(MAX_DEFERRED + 1)]
    assert msgs[-1] == "still fine"
    assert capfd.readouterr().err.count("logged while logging was dropped (a loop)") == 1


@pytest.mark.timeout(120)
def test_records_logged_by_signal_handlers_and_finalizers_inside_emit_are_all_kept(
    node_local: Path, tmp_path: Path
) -> None:
    """A 1 kHz signal handler and __del__ finalizers that log while the loop logs: every record exactly once."""
    import gc
    import signal

    log = setup_logger()
    ticks = itertools.count()  # next() is one C call: a handler interrupting a handler takes its own number

    def on_alarm(signum: int, frame: object) -> None:
        log.info("tick %d", next(ticks))

    class Resource:
        made = 0

        def __init__(self) -> None:
            self.me = self  # a cycle: the cyclic GC runs __del__, possibly inside an emit
            self.n = Resource.made
            Resource.made += 1

        def __del__(self) -> None:
            log.info("freed %d", self.n)

    old = signal.signal(signal.SIGALRM, on_alarm)
    gc_threshold = gc.get_threshold()
    gc.set_threshold(50)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        for i in range(100_000):
            log.info("main %d", i)
            if i % 10 == 0:
                Resource()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        gc.collect()
        gc.set_threshold(*gc_threshold)
    msgs = [r["msg"] for r in _aggregate(node_local, tmp_path / "logs")]
    assert [m for m in msgs if m.startswith("main ")] == [f"main {i}" for i in range(100_000)]
    sent = next(ticks)
    assert sorted(int(m.split()[1]) for m in msgs if m.startswith("tick ")) == list(range(sent))
    assert sorted(int(m.split()[1]) for m in msgs if m.startswith("freed ")) == list(range(Resource.made))
    assert sent > 100, "the signal must really have interrupted the loop"


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
    with mounted_tmpfs(ro, "64k", options="ro"):
        code = "from nvrxlog import setup_logger\nlog = setup_logger()\n[log.info('line %d', i) for i in range(5)]\n"
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=child_env(NVRX_NODE_LOCAL_TMPDIR=ro, NVRX_LOG_AGGREGATOR="external", RANK=0),
            capture_output=True,
            text=True,
            timeout=30,
        )
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


@pytest.mark.timeout(120)
def test_force_reset_while_another_thread_logs_loses_nothing(node_local: Path, tmp_path: Path) -> None:
    """200 setup_logger(force_reset=True) calls while a thread logs: every record of the thread arrives once."""
    import threading

    log = setup_logger()
    stop = threading.Event()
    sent = [0]

    def work() -> None:
        while not stop.is_set():
            log.info("t %d", sent[0])
            sent[0] += 1

    thread = threading.Thread(target=work)
    thread.start()
    try:
        for _ in range(200):
            setup_logger(force_reset=True)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    setup_logger(force_reset=True)  # the last writer closed too: everything is final
    msgs = [r["msg"] for r in _aggregate(node_local, tmp_path / "logs")]
    got = sorted(int(m.split()[1]) for m in msgs if m.startswith("t "))
    assert got == list(range(sent[0])) and sent[0] > 200


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["thread", "external"])
def test_a_record_logged_by_an_atexit_handler_after_the_drain_still_arrives(tmp_path: Path, mode: str) -> None:
    """A library whose atexit handler runs after nvrxlog's drain logs its goodbye: it reaches the node file."""
    code = """
    import atexit, logging
    atexit.register(lambda: logging.getLogger("nvrx").warning("goodbye from an atexit handler"))
    from nvrxlog import setup_logger  # registers its drain after the library's: it runs first
    setup_logger(capture="warnings").info("working")
    """
    if mode == "external":
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nvrxlog",
                "aggregate",
                "--tmp-dir",
                str(tmp_path / "tmp"),
                "--node-id",
                "node001",
                "--log-dir",
                str(tmp_path / "logs"),
                "--until-idle",
            ],
            env=child_env(),
        )
    result = run_script(tmp_path, code, NVRX_LOG_AGGREGATOR=mode)
    assert result.returncode == 0, result.stderr
    assert [r["msg"] for r in node_records(tmp_path, 2)] == ["working", "goodbye from an atexit handler"]
    if mode == "external":
        service.terminate()
        service.wait(timeout=30)


@pytest.mark.timeout(180)
def test_thread_mode_started_on_a_full_log_dir_writes_everything_once_space_returns(tmp_path: Path) -> None:
    """The log dir is full when local rank 0 starts: once space returns, an aggregator runs and nothing is lost."""
    with mounted_tmpfs(tmp_path / "logs", "1m") as logs:
        filler = fill_disk(logs)
        rank = start_worker(
            "--count", 3000, "--rate", 600, env=child_env(**_rank0(tmp_path), NVRX_LOG_DIR=logs), stderr=subprocess.PIPE
        )
        wait_for(lambda: list((tmp_path / "tmp").glob("nvrx.*.jsonl")), 30, "the rank's first temp file")
        filler.unlink()  # space returns while the rank still logs
        assert rank.wait(timeout=120) == 0
        node_settled(tmp_path)
        path = logs / "nvrx_log_node001.log"
        wait_for(lambda: path.exists() and len(parse_text_records(path)) >= 3000, 60, "every record")
        msgs = [r["msg"] for r in parse_text_records(path)]
        assert [m for m in msgs if m.startswith("r0 i")] == [f"r0 i{i} " for i in range(3000)]
        assert not [m for m in msgs if "lost" in m]


def _rank0(tmp_path: Path) -> dict[str, object]:
    return {"NVRX_NODE_LOCAL_TMPDIR": tmp_path / "tmp", "NVRX_NODE_ID": "node001", "RANK": 0, "LOCAL_RANK": 0}
