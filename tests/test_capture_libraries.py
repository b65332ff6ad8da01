"""What real libraries print reaches the node file once, at its own level and source, whatever they configure."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import node_records, run_script


def _mine(records: list[dict], word: str) -> list[dict]:
    return [r for r in records if word in r["msg"]]


@pytest.mark.timeout(120)
def test_a_library_with_its_own_terminal_handler_is_recorded_once_at_its_level(tmp_path: Path) -> None:
    """propagate=False and a StreamHandler(stderr) of its own: each record once, with level and file:line."""
    result = run_script(
        tmp_path,
        """
        import logging, sys
        lib = logging.getLogger("fakelib")
        lib.addHandler(logging.StreamHandler(sys.stderr))
        lib.setLevel(logging.INFO)
        lib.propagate = False
        from nvrxlog import setup_logger
        setup_logger(capture="all")
        later = logging.getLogger("laterlib")  # a library set up after nvrxlog, the same way
        later.addHandler(logging.StreamHandler(sys.stdout))
        later.propagate = False
        lib.info("fakelib info")
        lib.warning("fakelib warning")
        lib.info("fakelib first line\\nsecond line\\nthird line")
        later.warning("laterlib warning")
        """,
    )
    assert result.returncode == 0, result.stderr
    records = node_records(tmp_path, 4)
    assert [(r["level"], r["file"], r["line"], r["msg"]) for r in _mine(records, "lib")] == [
        ("INFO", "job.py", "12", "fakelib info"),
        ("WARNING", "job.py", "13", "fakelib warning"),
        ("INFO", "job.py", "14", "fakelib first line\nsecond line\nthird line"),
        ("WARNING", "job.py", "15", "laterlib warning"),
    ]
    assert not [r for r in records if r["file"] in ("<stderr>", "<stdout>")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("echo", [False, True])
def test_an_application_console_handler_is_not_captured_twice(tmp_path: Path, echo: bool) -> None:
    """A root StreamHandler(stdout) printing every record, capture all: no line twice; with echo, once on screen."""
    result = run_script(
        tmp_path,
        f"""
        import logging, sys
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="APP %(message)s")
        from nvrxlog import setup_logger
        setup_logger(capture="all,echo" if {echo} else "all")
        app = logging.getLogger("app")
        for i in range(5):
            app.info("step %d", i)
        try:
            1 / 0
        except ZeroDivisionError:
            app.exception("failed")
        print("a plain print")
        """,
    )
    assert result.returncode == 0, result.stderr
    records = node_records(tmp_path, 7)
    messages = Counter(r["msg"].splitlines()[0] for r in records)
    assert all(count == 1 for count in messages.values()), messages
    assert [r["file"] for r in _mine(records, "step ")] == ["job.py"] * 5
    assert [r["msg"] for r in records if r["file"] == "<stdout>"] == ["a plain print"]
    terminal = result.stdout.splitlines()
    assert terminal.count("APP step 3") == (1 if echo else 0)
    assert terminal.count("a plain print") == (1 if echo else 0)


_RECONFIGURE = {
    "dictConfig": "logging.config.dictConfig({'version': 1, 'root': {'level': 'INFO'}})",
    "fileConfig": "logging.config.fileConfig(sys.argv[0] + '.ini')",
    "basicConfig(force=True)": "logging.basicConfig(force=True, level=logging.INFO, stream=sys.stdout)",
}
_INI = """
[loggers]
keys=root
[handlers]
keys=console
[formatters]
keys=plain
[logger_root]
level=INFO
handlers=console
[handler_console]
class=StreamHandler
args=(sys.stdout,)
formatter=plain
[formatter_plain]
format=%(message)s
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", list(_RECONFIGURE))
def test_a_logging_configuration_after_setup_does_not_switch_nvrxlog_off(tmp_path: Path, how: str) -> None:
    """dictConfig, fileConfig or basicConfig(force=True) after setup_logger: nvrx and captured records keep arriving."""
    (tmp_path / "job.py.ini").write_text(_INI)
    result = run_script(
        tmp_path,
        f"""
        import logging, logging.config, sys
        from nvrxlog import setup_logger
        log = setup_logger(capture="all")
        existing = logging.getLogger("existing")  # a library's logger made before the configuration
        {_RECONFIGURE[how]}
        log.info("nvrx after")
        logging.getLogger("lib").warning("lib after")
        logging.getLogger("nvrx.sub").info("nvrx child after")
        """,
    )
    assert result.returncode == 0, result.stderr
    records = node_records(tmp_path, 3)
    assert [r["msg"] for r in _mine(records, "after")] == ["nvrx after", "lib after", "nvrx child after"]
    if how != "basicConfig(force=True)":
        assert re.search(r"configuration .* disabled \d+ existing logger", result.stderr), result.stderr
        assert sum("disabled" in r["msg"] for r in records) == 1, "the node file says so too"


@pytest.mark.timeout(120)
def test_captured_records_are_held_to_nvrxlogs_level_unless_named(tmp_path: Path) -> None:
    """Root at DEBUG and NVRX_LOG_DEBUG unset: no DEBUG records, except a logger NVRX_LOG_LEVELS lowers."""
    result = run_script(
        tmp_path,
        """
        import logging
        logging.getLogger().setLevel(logging.DEBUG)
        from nvrxlog import setup_logger
        setup_logger(capture="logging")
        logging.getLogger("chatty").debug("chatty debug")
        logging.getLogger("chatty").info("chatty info")
        logging.getLogger("torch.distributed.c10d").debug("c10d debug")
        logging.getLogger("noisy").info("noisy info")
        logging.getLogger("noisy").warning("noisy warning")
        """,
        NVRX_LOG_LEVELS="torch.distributed=DEBUG,noisy=WARNING",
    )
    assert result.returncode == 0, result.stderr
    records = node_records(tmp_path, 3)
    assert [(r["level"], r["msg"]) for r in records] == [
        ("INFO", "chatty info"),
        ("DEBUG", "c10d debug"),
        ("WARNING", "noisy warning"),
    ]


@pytest.mark.timeout(120)
def test_a_filter_on_nvrx_that_logs_through_nvrx_never_raises(tmp_path: Path) -> None:
    """A logger-level filter on nvrx that logs via nvrx: no RecursionError, every real record arrives, drops told."""
    result = run_script(
        tmp_path,
        """
        import logging
        from nvrxlog import setup_logger
        log = setup_logger()
        class Noisy(logging.Filter):
            def filter(self, record):
                log.info("filter saw %s", record.getMessage())
                return True
        log.addFilter(Noisy())
        class Echo(logging.Handler):
            def emit(self, record):
                log.info("handler saw %s", record.getMessage())
        log.addHandler(Echo())
        for i in range(200):
            log.info("real %d", i)
        print("done")
        """,
    )
    assert result.returncode == 0 and result.stdout.strip() == "done", result.stderr
    records = node_records(tmp_path, 200)
    assert [r["msg"] for r in records if r["msg"].startswith("real ")] == [f"real {i}" for i in range(200)]
    assert "RecursionError" not in result.stderr
    assert result.stderr.count("was dropped (it would recurse)") == 1, "reported once, then counted"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("via", ["fd", "stdio"])
def test_a_progress_bar_becomes_a_few_clean_records_ending_at_100(tmp_path: Path, via: str) -> None:
    """A tqdm-style bar (\\r frames, cursor escapes): a few clean records, the last one 100%, no \\r or ESC anywhere."""
    result = run_script(
        tmp_path,
        f"""
        import sys, time
        from nvrxlog import setup_logger
        setup_logger(capture="{via}")
        n = 20000
        for i in range(n + 1):
            extra = "\\x1b[A" if i % 5000 == 0 else ""
            sys.stderr.write(f"\\r{{extra}}train: {{100 * i // n:3d}}%|{{'#' * (i * 20 // n):20s}}| {{i}}/{{n}}")
            if i % 2000 == 0:
                time.sleep(0.25)  # a bar that runs for a few seconds, like a real epoch
        sys.stderr.write("\\n")
        print("after the bar")
        """,
    )
    assert result.returncode == 0, result.stderr
    records = node_records(tmp_path, 2)
    bars = [r["msg"] for r in records if r["msg"].startswith("train:")]
    assert 1 <= len(bars) <= 10, bars
    assert bars[-1] == "train: 100%|####################| 20000/20000"
    assert records[-1]["msg"] == "after the bar"
    for path in (tmp_path / "logs").iterdir():
        data = path.read_bytes()
        assert b"\r" not in data and b"\x1b" not in data, path


@pytest.mark.timeout(120)
def test_ranks_set_after_setup_are_used_from_then_on(tmp_path: Path) -> None:
    """RANK/LOCAL_RANK set after setup_logger (Lightning's launcher does this): later records carry them."""
    result = run_script(
        tmp_path,
        """
        import os, time
        from nvrxlog import setup_logger
        log = setup_logger()
        log.info("before")
        os.environ["LOCAL_RANK"] = "0"
        os.environ["RANK"] = "3"
        deadline = time.monotonic() + 5  # ranks are looked up again at most once a second
        while time.monotonic() < deadline:
            log.info("tick")
            time.sleep(0.02)  # a training step
        """,
        rank="",
    )
    assert result.returncode == 0, result.stderr
    records = node_records(tmp_path, 100)
    assert (records[0]["msg"], records[0]["rank"], records[0]["local"]) == ("before", "?", "?")
    ranks = [(r["rank"], r["local"]) for r in records if r["msg"] == "tick"]
    first = ranks.index(("3", "0"))
    assert set(ranks[first:]) == {("3", "0")} and first < len(ranks) // 2, "resolved within a second or two, for good"


@pytest.mark.timeout(120)
def test_a_librarys_terminal_handler_gets_its_stream_back_when_capture_ends(tmp_path: Path) -> None:
    """Redirected while capture runs, a library's StreamHandler writes to its own stream again after force_reset."""
    result = run_script(
        tmp_path,
        """
        import logging, sys
        lib = logging.getLogger("lib")
        handler = logging.StreamHandler(sys.stderr)
        lib.addHandler(handler)
        lib.propagate = False
        from nvrxlog import setup_logger
        setup_logger(capture="logging,stdio,echo")
        lib.warning("while captured")
        setup_logger(force_reset=True, capture="warnings")
        assert handler.stream is sys.stderr, handler.stream
        lib.warning("after capture")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "Logging error" not in result.stderr and result.stderr.count("after capture") == 1


@pytest.mark.timeout(120)
def test_a_shared_log_file_survives_a_dictconfig(tmp_path: Path) -> None:
    """setup_logger(log_file=...) then dictConfig (which closes every handler): the shared file keeps its lines."""
    shared = tmp_path / "all.log"
    result = run_script(
        tmp_path,
        f"""
        import logging.config
        from nvrxlog import setup_logger
        log = setup_logger(log_file={str(shared)!r})
        log.info("before")
        logging.config.dictConfig({{"version": 1}})
        log.info("after")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert [line.split()[-1] for line in shared.read_text().splitlines()] == ["before", "after"]


@pytest.mark.timeout(120)
def test_levels_set_for_capture_are_given_back_when_it_ends(tmp_path: Path) -> None:
    """NVRX_LOG_LEVELS lowers a library's level while capture runs; force_reset without capture restores it."""
    result = run_script(
        tmp_path,
        """
        import logging
        lib = logging.getLogger("lib")
        lib.setLevel(logging.WARNING)
        from nvrxlog import setup_logger
        setup_logger(capture="logging")
        assert lib.level == logging.DEBUG, lib.level
        setup_logger(force_reset=True, capture="warnings")
        assert lib.level == logging.WARNING, lib.level
        """,
        NVRX_LOG_LEVELS="lib=DEBUG",
    )
    assert result.returncode == 0, result.stderr
