"""An uncaught exception, in the main thread, a thread or a subprocess, is one ERROR record at its source."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import node_records, parse_text_records, run_script


def _errors(tmp_path: Path, count: int) -> list[dict]:
    return [r for r in node_records(tmp_path, count) if r["level"] == "ERROR"]


@pytest.mark.timeout(120)
def test_a_crash_without_capture_is_one_error_record_where_it_was_raised(tmp_path: Path) -> None:
    """No capture at all: the uncaught exception is still one ERROR record, at the raising file and line."""
    result = run_script(
        tmp_path,
        """
        from nvrxlog import setup_logger
        setup_logger().info("before the crash")
        def step():
            raise ValueError("loss is nan")
        step()
        """,
    )
    assert result.returncode == 1 and "ValueError: loss is nan" in result.stderr  # the terminal keeps its traceback
    errors = _errors(tmp_path, 2)
    assert len(errors) == 1
    assert errors[0]["file"] == "job.py" and errors[0]["line"] == "5"
    assert errors[0]["msg"].startswith("uncaught ValueError: loss is nan\nTraceback")
    assert errors[0]["msg"].endswith("ValueError: loss is nan")


@pytest.mark.timeout(120)
def test_a_threads_crash_is_one_record_and_the_previous_hooks_still_run(tmp_path: Path) -> None:
    """A thread's uncaught exception is one ERROR record; hooks set before nvrxlog (torchrun's @record) still run."""
    marks = tmp_path / "marks"
    result = run_script(
        tmp_path,
        f"""
        import sys, threading
        marks = open({str(marks)!r}, "a", buffering=1)
        sys.excepthook = lambda *a: marks.write("sys hook " + str(a[1]) + "\\n")
        threading.excepthook = lambda args: marks.write("thread hook " + str(args.exc_value) + "\\n")
        from nvrxlog import setup_logger
        setup_logger(capture="all")
        def work():
            raise KeyError("shard 7")
        t = threading.Thread(target=work, name="loader")
        t.start()
        t.join()
        raise RuntimeError("main gives up")
        """,
    )
    assert result.returncode == 1
    assert marks.read_text().splitlines() == ["thread hook 'shard 7'", "sys hook main gives up"]
    errors = _errors(tmp_path, 2)
    assert [e["msg"].splitlines()[0] for e in errors] == [
        "uncaught KeyError in thread loader: 'shard 7'",
        "uncaught RuntimeError: main gives up",
    ]
    assert [e["line"] for e in errors] == ["9", "13"]


@pytest.mark.timeout(120)
def test_a_subprocess_traceback_through_fd_capture_is_one_error_record(tmp_path: Path) -> None:
    """A child process's traceback on the captured stderr is grouped into one ERROR record, not one per line."""
    result = run_script(
        tmp_path,
        """
        import subprocess, sys
        from nvrxlog import setup_logger
        setup_logger(capture="fd").info("starting a tool")
        code = "def load():\\n    raise OSError('no such shard')\\nload()\\n"
        print("tool exit", subprocess.run([sys.executable, "-c", code]).returncode, flush=True)
        """,
    )
    assert result.returncode == 0
    errors = _errors(tmp_path, 3)
    assert len(errors) == 1, errors
    lines = errors[0]["msg"].splitlines()
    assert lines[0] == "Traceback (most recent call last):" and lines[-1] == "OSError: no such shard"
    assert errors[0]["file"] == "<string>" and errors[0]["line"] == "2"
    records = parse_text_records(tmp_path / "logs" / "nvrx_log_node001.log")
    assert [r["msg"] for r in records if r["file"] == "<stdout>"] == ["tool exit 1"]
