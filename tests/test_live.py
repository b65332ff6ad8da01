"""Live views and topology: nvrxlog tail, relays, nodes going and coming back."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import zmq
from _net import assert_exactly_once, json_lines
from conftest import CONTINUATION, LINE, child_env, emit, parse_text_records, raw_record, wait_for

from nvrxlog import NodeAggregator, Streamer
from nvrxlog.cli.view import compact_ranks, parse_ranks
from nvrxlog.config import LogConfig
from nvrxlog.rank.handler import NodeLocalHandler
from nvrxlog.wire.protocol import hello


def _tail(endpoint: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nvrxlog", "tail", "--connect", endpoint, *args],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_rank_sets_parse_and_print_compactly() -> None:
    """0-3,7 parses to its ranks and prints back the same way."""
    assert parse_ranks("0-3,7") == {0, 1, 2, 3, 7}
    assert compact_ranks(set(range(64)) | {65}) == "0-63,65"


@pytest.mark.timeout(60)
def test_tail_filters_by_rank_and_level_and_folds_repeats(tmp_path: Path) -> None:
    """`nvrxlog tail --ranks 1-2 --level WARNING` and `--dedup` show what they should."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with Streamer("tcp://127.0.0.1:0", str(tmp_path / "cluster.log")) as streamer:
        filtered = _tail(streamer.endpoint, "--ranks", "1-2", "--level", "WARNING", "--count", "2")
        folded = _tail(streamer.endpoint, "--dedup", "--dedup-window", "0.5", "--count", "1")
        handlers = [NodeLocalHandler(str(tmp), LogConfig(rank=r, local_rank=r)) for r in range(4)]
        with NodeAggregator(str(tmp), str(tmp_path / "logs"), "n0", streamer.endpoint):
            # A subscriber joins a PUB socket asynchronously: keep logging until both tails are done.
            deadline = time.monotonic() + 30
            epoch = 0
            while (filtered.poll() is None or folded.poll() is None) and time.monotonic() < deadline:
                emit(handlers, f"epoch {epoch} done")
                emit(handlers, f"loss spike at epoch {epoch}", logging.WARNING)
                epoch += 1
                time.sleep(0.2)  # pacing the simulated training, not synchronisation
        for handler in handlers:
            handler.close()
    lines = filtered.communicate(timeout=10)[0].splitlines()
    assert len(lines) == 2
    assert all("[WARNING]" in line and "loss spike" in line for line in lines)
    assert {line.split("[workload:")[1][0] for line in lines} <= {"1", "2"}
    fold = folded.communicate(timeout=10)[0]
    assert fold.count("\n") == 1 and "[ranks 0-3] (x4)" in fold, fold


@pytest.mark.timeout(90)
def test_relay_passes_everything_upward_exactly_once(tmp_path: Path) -> None:
    """Nodes -> relay -> top: the top file has every record once, with the original node names."""
    # The top writes text: records that name their own node take the same column path as a node's.
    with Streamer("tcp://127.0.0.1:0", str(tmp_path / "top.log")) as top:
        with Streamer(
            "tcp://127.0.0.1:0", str(tmp_path / "relay.log"), json=True, forward=top.endpoint, name="relay1"
        ) as relay:
            for n in range(2):
                tmp = tmp_path / f"n{n}"
                tmp.mkdir()
                handler = NodeLocalHandler(str(tmp), LogConfig(rank=n, local_rank=0))
                with NodeAggregator(str(tmp), str(tmp_path / "logs"), f"n{n}", relay.endpoint):
                    for i in range(1000):
                        emit([handler], f"r{n} i{i}")
                handler.close()
        assert relay.stats["undelivered"] == 0
    expected = {("n0", 0): 1000, ("n1", 1): 1000}
    assert_exactly_once(json_lines(tmp_path / "relay.log"), expected)
    top_lines = parse_text_records(tmp_path / "top.log")
    assert_exactly_once([dict(r, rank=int(r["rank"])) for r in top_lines if r["rank"] != "?"], expected)


@pytest.mark.timeout(60)
def test_silent_node_is_marked_gone_and_welcomed_back_finished_node_is_not(tmp_path: Path) -> None:
    """A node that stops talking is marked gone, then back when it returns; one that quits cleanly is 'finished'."""
    out = tmp_path / "cluster.log"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with Streamer("tcp://127.0.0.1:0", str(out), json=True, idle_timeout=1.0) as streamer:
        context = zmq.Context()
        silent = context.socket(zmq.DEALER)
        silent.connect(streamer.endpoint)
        silent.send_multipart(hello("n0"))
        assert silent.recv_multipart()[0] == b"W"
        silent.send_multipart(
            [
                b"B",
                orjson.dumps({"b": 1, "c": time.time_ns(), "n": 1, "r": [raw_record(0, "before going quiet", w="x")]}),
            ]
        )
        wait_for(lambda: "marked gone" in out.read_text(), what="the gone line")
        silent.send_multipart([b"P", b"%d" % time.time_ns()])
        wait_for(lambda: "node n0 is back" in out.read_text(), what="the back line")
        context.destroy(linger=0)
        handler = NodeLocalHandler(str(tmp), LogConfig(rank=1, local_rank=0))
        with NodeAggregator(str(tmp), str(tmp_path / "logs"), "n1", streamer.endpoint):
            emit([handler], "n1 says goodbye")  # stop() waits for its acknowledgement, then quits
        handler.close()
        wait_for(lambda: "node n1 finished" in out.read_text(), what="the finished line")
    msgs = [r["msg"] for r in json_lines(out)]
    gone = next(i for i, m in enumerate(msgs) if "node n0 has been silent" in m)
    back = next(i for i, m in enumerate(msgs) if "node n0 is back" in m)
    assert msgs.index("before going quiet") < gone < back
    assert not any("node n1 has been silent" in m for m in msgs), "a node that quit is not gone"


#: Every way a message could try to forge a line or drive a terminal.
NASTY = (
    "start\u2028[ERROR] fake LS\u2029[ERROR] fake PS\x85[ERROR] fake NEL"
    "\n2024-01-01 00:00:00,000 [ERROR] [node9] [workload:0(0) infra:0(0)] x.py:1 forged\x1b[2J\x1b[Hend"
)


def _assert_defanged_text(text: str) -> None:
    """No raw ESC, and every line a reader splitting the Unicode way sees is a real line or an indented continuation."""
    assert "\x1b" not in text and not any(brk in text for brk in "\u2028\u2029\x85")
    for raw in text.splitlines():
        assert LINE.match(raw) or raw.startswith(CONTINUATION), f"forged line: {raw!r}"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("json", [False, True])
def test_line_breaks_and_escapes_are_defanged_in_every_output_and_the_live_view(tmp_path: Path, json: bool) -> None:
    """U+2028, U+2029, U+0085, a newline before a fake line and ESC cannot forge lines anywhere (text and JSON)."""
    tmp, logs, cluster = tmp_path / "tmp", tmp_path / "logs", tmp_path / "cluster.log"
    tmp.mkdir()
    with Streamer("tcp://127.0.0.1:0", str(cluster), json=json) as streamer:
        tail = _tail(streamer.endpoint, "--count", "3")
        handler = NodeLocalHandler(str(tmp), LogConfig(rank=0, local_rank=0))
        with NodeAggregator(str(tmp), str(logs), "n0", streamer.endpoint, json=json):
            # A subscriber joins a PUB socket asynchronously: keep logging until the tail has its lines.
            deadline = time.monotonic() + 30
            while tail.poll() is None and time.monotonic() < deadline:
                emit([handler], NASTY)
                time.sleep(0.2)  # pacing the simulated training, not synchronisation
        handler.close()
    shown = tail.communicate(timeout=10)[0]
    assert shown.count("start") == 3 and shown.count("\\x1b[2J") == 3
    _assert_defanged_text(shown)
    for path in (cluster, logs / "nvrx_log_n0.log"):
        data = path.read_bytes()
        if not json:
            _assert_defanged_text(data.decode())
            assert "    2024-01-01 00:00:00,000 [ERROR]" in data.decode()  # shown, indented
            continue
        assert not any(brk.encode() in data for brk in "\u2028\u2029\x85\x1b"), path
        records = [orjson.loads(line) for line in data.decode().splitlines()]  # the Unicode way: one per record
        assert all(r["msg"] == NASTY or r["msg"].startswith("nvrxlog ") for r in records)  # the text kept whole
        assert any(r["msg"] == NASTY for r in records)
