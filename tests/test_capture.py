"""Capturing what does not go through logging: other loggers, warnings, stdio, fds 1 and 2."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env, parse_text_records

from nvrxlog import ConfigError, NodeAggregator
from nvrxlog.rank.capture import parse_capture


def _rank(tmp_path: Path, code: str, **env: object) -> subprocess.CompletedProcess:
    environment = child_env(
        NVRX_NODE_LOCAL_TMPDIR=tmp_path / "tmp", NVRX_LOG_AGGREGATOR="external", RANK=5, LOCAL_RANK=1, **env
    )
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=60)


def _node_file(tmp_path: Path) -> list[dict]:
    with NodeAggregator(str(tmp_path / "tmp"), str(tmp_path / "logs"), "n1"):
        pass
    records = parse_text_records(tmp_path / "logs" / "nvrx_log_n1.log")
    assert all(r["rank"] == "5" and r["local"] == "1" for r in records), "captured lines carry the rank"
    return records


def test_capture_modes_parse_and_bad_ones_are_refused() -> None:
    """'all' means logging, warnings and fd; an unknown mode is a clear error."""
    assert parse_capture("all,echo") == {"logging", "warnings", "fd", "echo"}
    assert parse_capture(None) == parse_capture("0") == frozenset()
    with pytest.raises(ConfigError, match="unknown capture mode 'bogus'"):
        parse_capture("stdio,bogus")


@pytest.mark.timeout(60)
def test_in_process_capture_of_other_loggers_warnings_and_stdio(tmp_path: Path) -> None:
    """NVRX_LOG_CAPTURE=logging,warnings,stdio: print, stderr, other loggers and warnings become records."""
    code = (
        "import logging, sys, warnings\nfrom nvrxlog import setup_logger\nsetup_logger()\n"
        "print('hello from print')\nsys.stderr.write('careful on stderr\\n')\n"
        "logging.getLogger('somelib').warning('library warning')\nwarnings.warn('old api')\n"
        "sys.stdout.write('no newline at exit')\n"
    )
    result = _rank(tmp_path, code, NVRX_LOG_CAPTURE="logging,warnings,stdio")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == "", "without echo nothing reaches the terminal"
    by_msg = {r["msg"]: r for r in _node_file(tmp_path)}
    assert by_msg["hello from print"]["level"] == "INFO" and by_msg["hello from print"]["file"] == "<stdout>"
    assert by_msg["careful on stderr"]["level"] == "WARNING"
    assert by_msg["library warning"]["level"] == "WARNING"
    assert any(m.endswith("UserWarning: old api") for m in by_msg)
    assert "no newline at exit" in by_msg, "no lost tail at exit"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("echo", [False, True])
def test_fd_capture_keeps_c_output_and_a_crashed_ranks_last_words(tmp_path: Path, echo: bool) -> None:
    """fd capture: a C library's output and the last words of a rank that segfaults land in the node file."""
    code = (
        "import ctypes, os\nfrom nvrxlog import setup_logger\n"
        f"setup_logger(capture={'fd,echo' if echo else 'fd'!r})\n"
        "ctypes.CDLL(None).puts(b'hello from libc')\nctypes.CDLL(None).fflush(None)\n"
        "os.write(2, b'NCCL WARN about to crash')\nctypes.string_at(0)\n"
    )
    result = _rank(tmp_path, code)
    assert result.returncode == -signal.SIGSEGV
    records = _node_file(tmp_path)
    by_msg = {r["msg"]: r for r in records}
    assert by_msg["hello from libc"]["file"] == "<stdout>"
    assert by_msg["NCCL WARN about to crash"]["level"] == "WARNING"
    assert ("hello from libc" in result.stdout) is echo
    assert ("NCCL WARN about to crash" in result.stderr) is echo


@pytest.mark.timeout(90)
def test_fd_capture_with_a_full_pipe_does_not_deadlock(tmp_path: Path) -> None:
    """Writing far more than a pipe holds, from Python and a thread at once, finishes and loses nothing."""
    code = (
        "import threading, sys\nfrom nvrxlog import setup_logger\nlog = setup_logger(capture='fd')\n"
        "def chatter():\n    [log.info('log %d', i) for i in range(2000)]\n"
        "t = threading.Thread(target=chatter)\nt.start()\n"
        "[print('x' * 500, i) for i in range(4000)]\nt.join()\n"
    )
    result = _rank(tmp_path, code)
    assert result.returncode == 0, result.stderr
    records = _node_file(tmp_path)
    printed = [r for r in records if r["file"] == "<stdout>"]
    assert [int(r["msg"].split()[1]) for r in printed] == list(range(4000))
    assert sum(r["msg"].startswith("log ") for r in records) == 2000


def test_bad_capture_setting_is_reported_once_and_logging_goes_on() -> None:
    """An unknown NVRX_LOG_CAPTURE value: one line on stderr, logging works, no crash."""
    code = "from nvrxlog import setup_logger\nlog = setup_logger()\nlog.info('still logging')\n"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(NVRX_LOG_CAPTURE="everything"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert sum("capture is off" in line for line in lines) == 1 and lines[-1].endswith("still logging")
    note = next(line for line in lines if "capture is off" in line)
    assert note.count("unknown capture mode") == 1 and "further" not in note, "one short line, said once"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["stdio", "fd"])
def test_forked_children_output_is_captured_too(tmp_path: Path, mode: str) -> None:
    """Fork children print at once under capture, unbuffered as SLURM jobs often run: every line whole, no hang."""
    code = (
        "import multiprocessing as mp\nfrom nvrxlog import setup_logger\n"
        f"setup_logger(capture={mode!r})\n"
        "def child(k):\n    for i in range(300):\n        print('child', k, 'says', i, flush=True)\n"
        "if __name__ == '__main__':\n"
        "    ps = [mp.get_context('fork').Process(target=child, args=(k,)) for k in range(3)]\n"
        "    [p.start() for p in ps]\n    [p.join() for p in ps]\n    print('parent done')\n"
    )
    # Unbuffered, print() writes each of its pieces on its own: children's pieces would interleave.
    result = _rank(tmp_path, code, PYTHONUNBUFFERED=1)
    assert result.returncode == 0, result.stderr
    msgs = sorted(r["msg"] for r in _node_file(tmp_path))
    assert msgs == sorted([f"child {k} says {i}" for k in range(3) for i in range(300)] + ["parent done"])
