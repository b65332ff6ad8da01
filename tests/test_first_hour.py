"""What a newcomer meets first: every command clear, every bad input one line, services that say what they do."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from _net import json_lines
from conftest import child_env, parse_text_records, run_worker, wait_for

from nvrxlog import Streamer, __version__
from nvrxlog.wire.endpoint import check_endpoint, same_endpoint


def _nvrxlog(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nvrxlog", *args],
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nvrxlog", *args],
        env=env or child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode != 0, result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("nvrxlog: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["tail", "--connect", "garbage"], ["not tcp://HOST:PORT"]),
        (["tail", "--connect", "tcp://127.0.0.1:1", "--timeout", "-5"], ["positive"]),
        (["tail", "--connect", "tcp://127.0.0.1:1", "--ranks", ""], ["--ranks"]),
        (["tail", "--connect", "tcp://127.0.0.1:1", "--count", "0"], ["less than 1"]),
        (["stream", "--bind", "tcp://127.0.0.1:99999", "--out", "/tmp/nvrxlog-fh.log"], ["99999"]),
        (["stream", "--bind", "tcp://127.0.0.1:-1", "--out", "/tmp/nvrxlog-fh.log"], ["port"]),
        (["stream", "--bind", "tcp://nosuchhost.invalid:5555", "--out", "/tmp/nvrxlog-fh.log"], ["cannot be resolved"]),
        (["stream", "--bind", "tcp://127.0.0.1:0", "--out", "/tmp/x.log", "--idle-timeout", "-1"], ["positive"]),
        (
            ["stream", "--bind", "tcp://127.0.0.1:5599", "--out", "/tmp/x.log", "--forward", "tcp://127.0.0.1:5599"],
            ["own --bind"],
        ),
        (["stream", "--bind", "tcp://127.0.0.1:0", "--out", "/etc/hostname/cluster.log"], ["not a directory"]),
        (["aggregate", "--tmp-dir", "/tmp/nvrxlog-fh-tmp", "--log-dir", "/etc/hostname"], ["not a directory"]),
        (["aggregate", "--tmp-dir", "/tmp/nvrxlog-fh-tmp", "--curve-server-key", "/tmp/x.key"], ["go together"]),
        (["demo", "--nodes", "0"], ["less than 1"]),
        (
            ["stream", "--bind", "tcp://127.0.0.1:0", "--out", "/tmp/x.log", "--curve-clients-dir", "/tmp"],
            ["needs --curve-secret-key"],
        ),
    ],
)
def test_a_bad_input_is_one_clear_line(args: list[str], words: list[str]) -> None:
    """Each input a newcomer gets wrong exits non-zero with one line on stderr saying what is wrong."""
    _one_line_error(_nvrxlog(*args), *words)


def test_endpoint_rules() -> None:
    """Ports outside 1-65535 (0 only to bind) and unknown hosts are refused; a relay to itself is noticed."""
    assert check_endpoint("tcp://127.0.0.1:0", bind=True) == "tcp://127.0.0.1:0"
    assert check_endpoint("tcp://*:5555", bind=True) == "tcp://*:5555"
    for bad in ("tcp://127.0.0.1:0", "tcp://:5", "tcp://h:", "tcp://127.0.0.1:65536", "udp://x:1", "tcp://a:b:c"):
        with pytest.raises(Exception, match="address"):
            check_endpoint(bad)
    assert same_endpoint("tcp://0.0.0.0:5555", "tcp://127.0.0.1:5555")
    assert same_endpoint("tcp://localhost:5555", "tcp://127.0.0.1:5555")
    assert not same_endpoint("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556")


def test_version_and_help_with_defaults() -> None:
    """--version prints the version; every command's help shows its defaults and has help for each option."""
    result = _nvrxlog("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"nvrxlog {__version__}"
    stream = _nvrxlog("stream", "--help").stdout
    assert "(default: 10.0)" in stream and "(default: 1.0)" in stream
    demo = _nvrxlog("demo", "--help").stdout
    assert "simulated nodes (default: 2)" in demo and "steps each rank logs (default: 50)" in demo
    for command in ("aggregate", "tail", "keys"):
        assert _nvrxlog(command, "--help").returncode == 0


# "Within a second" of the signal, as a user at a terminal expects; what
# tail does on it (close a socket, exit) takes a few milliseconds.
_SIGNAL_BOUND_S = 1.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_tail_promptly_while_it_waits_for_an_answer(signum: int) -> None:
    """Ctrl-C or SIGTERM during the wait for a streamer that does not answer ends tail within a second."""
    proc = _start("tail", "--connect", "tcp://127.0.0.1:1", "--timeout", "60")
    try:
        assert "waiting for the streamer at tcp://127.0.0.1:1" in proc.stderr.readline()  # it is waiting now
        proc.send_signal(signum)
        assert proc.wait(timeout=_SIGNAL_BOUND_S) == 0
    finally:
        proc.kill()


@pytest.mark.timeout(90)
def test_tail_says_when_it_connects_and_when_the_streamer_falls_silent(tmp_path: Path) -> None:
    """tail prints a line on stderr when connected and another once the streamer stops beating; SIGINT ends it."""
    streamer = Streamer("tcp://127.0.0.1:0", str(tmp_path / "c.log")).start()
    proc = _start("tail", "--connect", streamer.endpoint)
    try:
        assert "connected to " + streamer.endpoint in proc.stderr.readline()
        streamer.stop()
        silent = proc.stderr.readline()  # blocks until tail notices; the test timeout bounds it
        assert "has been silent" in silent
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=_SIGNAL_BOUND_S) == 0
    finally:
        streamer.stop()
        proc.kill()


@pytest.mark.timeout(120)
def test_aggregate_takes_its_defaults_from_the_environment_and_reports(tmp_path: Path) -> None:
    """With NVRX_* exported and no options, `nvrxlog aggregate` forwards; one line at start, a summary at exit."""
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    with Streamer("tcp://127.0.0.1:0", str(tmp_path / "cluster.log"), json=True) as streamer:
        env = child_env(
            NVRX_NODE_LOCAL_TMPDIR=tmp, NVRX_LOG_DIR=logs, NVRX_LOG_STREAMER=streamer.endpoint, NVRX_NODE_ID="envnode"
        )
        proc = _start("aggregate", env=env)
        start = proc.stdout.readline()
        assert "node envnode" in start and str(tmp) in start and streamer.endpoint in start
        worker_env = dict(env, RANK="0", LOCAL_RANK="0", NVRX_LOG_AGGREGATOR="external")
        assert run_worker("--count", 50, env=worker_env).returncode == 0
        wait_for(lambda: streamer.stats["records"] >= 50, what="the records at the streamer")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    assert "stopped" in out and "50 records (0 ERROR, 0 WARNING); rank 0: 50" in out
    assert (logs / "nvrx_log_envnode.log").exists()
    assert sum(r["msg"].startswith("r0 i") for r in json_lines(tmp_path / "cluster.log")) == 50


@pytest.mark.timeout(120)
def test_curve_end_to_end_from_the_command_line(tmp_path: Path) -> None:
    """CURVE from the command line: an allowed node's records arrive; a node without an allowed key gets nothing in."""
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    for name in ("server", "node1", "stranger"):
        result = _nvrxlog("keys", str(keys), "--name", name)
        assert result.returncode == 0 and f"{name}.key_secret" in result.stdout
    _one_line_error(_nvrxlog("keys", str(keys), "--name", "node1"), "exists")
    allowed.mkdir()
    (allowed / "node1.key").write_bytes((keys / "node1.key").read_bytes())
    cluster = tmp_path / "cluster.log"
    stream = _start(
        "stream",
        "--bind",
        "tcp://127.0.0.1:0",
        "--out",
        str(cluster),
        "--json",
        "--curve-secret-key",
        str(keys / "server.key_secret"),
        "--curve-clients-dir",
        str(allowed),
    )
    try:
        line = stream.stdout.readline()
        assert "(CURVE)" in line, line + stream.stderr.read()
        endpoint = line.split("listening on ")[1].split(" ")[0].rstrip(",")
        nodes = []
        for node in ("node1", "stranger"):
            tmp = tmp_path / f"tmp-{node}"
            env = child_env(NVRX_NODE_LOCAL_TMPDIR=tmp, NVRX_LOG_DIR=tmp_path / f"logs-{node}", NVRX_NODE_ID=node)
            args = ["aggregate", "--streamer", endpoint, "--warn-after", "0"]
            args += ["--curve-server-key", str(keys / "server.key")]
            args += ["--curve-client-key", str(keys / f"{node}.key_secret")]
            nodes.append(_start(*args, env=env))
            assert nodes[-1].stdout.readline().startswith("nvrxlog aggregate:")
            worker_env = dict(env, RANK="0", LOCAL_RANK="0", NVRX_LOG_AGGREGATOR="external")
            assert run_worker("--count", 20, env=worker_env).returncode == 0
        wait_for(
            lambda: cluster.exists() and sum(b"r0 i" in x for x in cluster.read_bytes().splitlines()) >= 20,
            what="node1's records",
        )
        for proc in nodes:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    finally:
        stream.send_signal(signal.SIGTERM)
        stream.communicate(timeout=30)
    records = [orjson.loads(x) for x in cluster.read_bytes().splitlines()]
    assert sum(r["node"] == "node1" and r["msg"].startswith("r0 i") for r in records) == 20
    assert not any(r["node"] == "stranger" for r in records)


def test_configuration_warnings_reach_stderr_in_node_local_mode(tmp_path: Path) -> None:
    """A bad NVRX_LOG_AGGREGATOR is said on stderr (where the user looks) as well as in the per-node file."""
    code = "from nvrxlog import setup_logger\nsetup_logger().info('go on')\n"
    env = child_env(
        NVRX_NODE_LOCAL_TMPDIR=tmp_path / "tmp", NVRX_LOG_DIR=tmp_path / "logs", NVRX_LOG_AGGREGATOR="bogus"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "NVRX_LOG_AGGREGATOR='bogus'" in result.stderr
    node_file = next((tmp_path / "logs").glob("nvrx_log_*.log")).read_text()
    assert "NVRX_LOG_AGGREGATOR='bogus'" in node_file and "go on" in node_file


def test_log_file_appends_and_the_terminal_still_gets_the_lines(tmp_path: Path) -> None:
    """setup_logger(log_file=PATH) in regular mode writes the shared file and stderr, as the README says."""
    shared = tmp_path / "all.log"
    code = f"from nvrxlog import setup_logger\nsetup_logger(log_file={str(shared)!r}).info('both places')\n"
    result = subprocess.run(
        [sys.executable, "-c", code], env=child_env(RANK=3), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert "both places" in result.stderr
    assert shared.read_text().startswith("3: ") and "both places" in shared.read_text()


@pytest.mark.timeout(60)
def test_aggregate_once_writes_what_was_left_and_exits(tmp_path: Path) -> None:
    """Records left in a tmpdir (no aggregator ran) are written by `nvrxlog aggregate --once`, which then exits 0."""
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    env = child_env(NVRX_NODE_LOCAL_TMPDIR=tmp, NVRX_LOG_DIR=logs, NVRX_NODE_ID="left", NVRX_LOG_AGGREGATOR="external")
    assert run_worker("--count", 30, env=dict(env, RANK="0", LOCAL_RANK="0")).returncode == 0
    result = _nvrxlog("aggregate", "--once", env=env)
    assert result.returncode == 0, result.stderr
    assert "30 records" in result.stdout
    lines = (logs / "nvrx_log_left.log").read_text().splitlines()
    assert sum("r0 i" in line for line in lines) == 30


@pytest.mark.timeout(120)
def test_curve_keys_from_the_environment_and_the_command_line_combine(tmp_path: Path) -> None:
    """NVRX_LOG_CURVE_SERVER_KEY exported, --curve-client-key given: aggregate uses both (an option wins per key)."""
    keys = tmp_path / "keys"
    for name in ("server", "node1"):
        assert _nvrxlog("keys", str(keys), "--name", name).returncode == 0
    env = child_env(NVRX_NODE_LOCAL_TMPDIR=tmp_path / "tmp", NVRX_LOG_CURVE_SERVER_KEY=keys / "server.key")
    args = ["aggregate", "--log-dir", str(tmp_path / "logs"), "--streamer", "tcp://127.0.0.1:9", "--once"]
    result = _nvrxlog(*args, "--curve-client-key", str(keys / "node1.key_secret"), env=env)
    assert result.returncode == 0, result.stderr
    assert "forwarding to tcp://127.0.0.1:9 (CURVE)" in result.stdout
    _one_line_error(_nvrxlog(*args, env=env), "go together")


@pytest.mark.timeout(120)
def test_a_half_set_curve_pair_in_thread_mode_forwards_nothing_in_plaintext(tmp_path: Path) -> None:
    """Only NVRX_LOG_CURVE_SERVER_KEY set: the node file is written, nothing goes out unencrypted, stderr says why."""
    with Streamer("tcp://127.0.0.1:0", str(tmp_path / "cluster.log"), json=True) as streamer:
        env = child_env(
            NVRX_NODE_LOCAL_TMPDIR=tmp_path / "tmp",
            NVRX_LOG_DIR=tmp_path / "logs",
            NVRX_NODE_ID="n1",
            NVRX_LOG_STREAMER=streamer.endpoint,
            NVRX_LOG_CURVE_SERVER_KEY=tmp_path / "server.key",
            RANK=0,
            LOCAL_RANK=0,
        )
        result = run_worker("--count", 20, env=env)
        assert result.returncode == 0
        assert "go together; not forwarding" in result.stderr
        records = parse_text_records(tmp_path / "logs" / "nvrx_log_n1.log")
        assert sum(r["msg"].startswith("r0 i") for r in records) == 20
        assert streamer.stats["nodes"] == 0 and not streamer.per_rank


@pytest.mark.timeout(120)
def test_tail_count_counts_records_and_a_multi_line_record_is_one(tmp_path: Path) -> None:
    """`tail --level ERROR --count 1` ends after the one ERROR record, a traceback that prints several lines."""
    with Streamer("tcp://127.0.0.1:0", str(tmp_path / "c.log")) as streamer:
        proc = _start("tail", "--connect", streamer.endpoint, "--level", "ERROR", "--count", "1")
        try:
            assert "connected to" in proc.stderr.readline()
            env = child_env(
                NVRX_NODE_LOCAL_TMPDIR=tmp_path / "tmp",
                NVRX_LOG_DIR=tmp_path / "logs",
                NVRX_LOG_STREAMER=streamer.endpoint,
                RANK=0,
                LOCAL_RANK=0,
            )
            assert run_worker("--count", 3, "--traceback", env=env).returncode == 0
            out, _ = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 0
    lines = out.splitlines()
    assert len(lines) > 3 and "[ERROR]" in lines[0] and lines[-1].strip() == "ValueError: boom from rank 0"
