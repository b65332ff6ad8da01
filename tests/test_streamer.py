"""The central streamer with real aggregators, ranks and sockets on loopback."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import orjson
import pytest
import zmq
from _net import (
    aggregate_cli,
    assert_exactly_once,
    finish,
    free_port,
    json_lines,
    rank_env,
    stop_stream,
    stream_cli,
)
from conftest import raw_record, start_worker, wait_for

from nvrxlog import NodeAggregator, Streamer
from nvrxlog.wire.forwarder import Forwarder
from nvrxlog.wire.protocol import hello


def _two_nodes(
    tmp_path: Path, address: str, stop: Path, *, count: int, rate: int
) -> tuple[list[subprocess.Popen], list[subprocess.Popen], dict[tuple[str, int], int]]:
    """Two `nvrxlog aggregate` nodes forwarding to ``address``, two ranks each logging ``count`` records.

    Returns the aggregators, the ranks and what assert_exactly_once expects.
    """
    aggregators = [aggregate_cli(tmp_path / f"n{n}", tmp_path / "logs", f"n{n}", address, stop) for n in range(2)]
    writers = [
        start_worker("--count", count, "--rate", rate, env=rank_env(tmp_path / f"n{n}", f"n{n}", n * 2 + r, r))
        for n in range(2)
        for r in range(2)
    ]
    return aggregators, writers, {(f"n{n}", n * 2 + r): count for n in range(2) for r in range(2)}


@pytest.mark.timeout(180)
def test_four_nodes_deliver_every_record_once_with_node_and_rank_fields(tmp_path: Path) -> None:
    """4 aggregators x 4 ranks x 2,000 records: the cluster file holds all 32,000 exactly once, time-ordered."""
    nodes, ranks, count = 4, 4, 2000
    # All four aggregators and the streamer share this (starved) test process: allow
    # any lag here, so order must be exact (lateness has its own test below).
    with Streamer("tcp://127.0.0.1:0", str(tmp_path / "cluster.log"), json=True, max_hold=10) as streamer:
        aggregators = []
        procs = []
        for n in range(nodes):
            node = f"node{n}"
            tmp = tmp_path / node
            aggregators.append(NodeAggregator(str(tmp), str(tmp_path / "logs"), node, streamer.endpoint).start())
            for local in range(ranks):
                env = rank_env(tmp, node, n * ranks + local, local)
                procs.append(start_worker("--count", count, env=env))
        for proc in procs:
            assert proc.wait(timeout=120) == 0
        for aggregator in aggregators:
            aggregator.stop()
            assert aggregator.stats["undelivered"] == 0
    records = json_lines(tmp_path / "cluster.log")
    assert_exactly_once(records, {(f"node{n}", n * ranks + lr): count for n in range(nodes) for lr in range(ranks)})
    assert all(r["local_rank"] == r["rank"] % ranks for r in records if r["rank"] is not None)
    stamps = [r["ts"] for r in records]
    assert stamps == sorted(stamps) and streamer.stats["late"] == 0, "watermarks keep the file in time order"


@pytest.mark.timeout(60)
def test_node_lagging_past_max_hold_is_written_late_and_counted_not_dropped(tmp_path: Path) -> None:
    """A node whose records are older than max_hold no longer holds the others; its lines are late, counted, kept."""
    out = tmp_path / "cluster.log"
    with Streamer("tcp://127.0.0.1:0", str(out), json=True, max_hold=0.2) as streamer:
        context = zmq.Context()
        prompt, laggard = (context.socket(zmq.DEALER) for _ in range(2))
        for sock, node in ((prompt, "prompt"), (laggard, "laggard")):
            sock.connect(streamer.endpoint)
            sock.send_multipart(hello(node))
            assert sock.recv_multipart()[0] == b"W"
        now = time.time_ns()
        fresh = [raw_record(i, f"fresh {i}", ts=now + i, w="a") for i in range(3)]
        prompt.send_multipart([b"B", orjson.dumps({"b": 1, "c": now + 10, "n": 3, "r": fresh})])
        wait_for(lambda: streamer.stats["records"] >= 3, what="the prompt node's lines (after max_hold)")
        old = [raw_record(i, f"old {i}", ts=now - 5_000_000_000 + i, w="b") for i in range(2)]
        laggard.send_multipart([b"B", orjson.dumps({"b": 1, "c": now - 4_000_000_000, "n": 2, "r": old})])
        wait_for(lambda: streamer.stats["records"] >= 5, what="the laggard's lines")
        context.destroy(linger=0)
    msgs = [r["msg"] for r in json_lines(out)]
    assert msgs == ["fresh 0", "fresh 1", "fresh 2", "old 0", "old 1"]
    assert streamer.stats["late"] == 2


@pytest.mark.timeout(120)
def test_streamer_starting_late_gets_everything_without_error_lines(tmp_path: Path) -> None:
    """Nodes start 5 s before the streamer: every record arrives and no ERROR line is written anywhere."""
    address = f"tcp://127.0.0.1:{free_port()}"
    stop = tmp_path / "stop"
    aggregators, writers, expected = _two_nodes(tmp_path, address, stop, count=1000, rate=400)
    time.sleep(5)  # the scenario itself: the streamer comes up 5 s after the nodes
    streamer, _ = stream_cli(tmp_path / "cluster.log", address)
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    stop.touch()
    errs = [finish(a) for a in aggregators]
    errs.append(stop_stream(streamer))
    records = json_lines(tmp_path / "cluster.log")
    assert_exactly_once(records, expected)
    outputs = [(tmp_path / "cluster.log").read_text()] + [p.read_text() for p in (tmp_path / "logs").glob("*.log")]
    assert not any("ERROR" in text for text in outputs + errs), "no ERROR line may appear on the way"


@pytest.mark.timeout(180)
def test_streamer_killed_and_restarted_on_the_same_address_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """kill -9 of the streamer mid-run, restart on the same address: the cluster file has every record once."""
    out = tmp_path / "cluster.log"
    streamer, address = stream_cli(out)
    stop = tmp_path / "stop"
    aggregators, writers, expected = _two_nodes(tmp_path, address, stop, count=3000, rate=1000)
    wait_for(lambda: out.exists() and out.stat().st_size > 100_000, what="the streamer to write")
    streamer.kill()
    streamer.wait(timeout=10)
    streamer, _ = stream_cli(out, address)
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    stop.touch()
    for aggregator in aggregators:
        finish(aggregator)
    stop_stream(streamer)
    assert_exactly_once(json_lines(out), expected)


@pytest.mark.timeout(180)
def test_aggregator_killed_and_restarted_delivers_everything_once_to_the_streamer(tmp_path: Path) -> None:
    """kill -9 of a forwarding aggregator mid-run, then a restart: the cluster file has every record once."""
    out = tmp_path / "cluster.log"
    streamer, address = stream_cli(out)
    stop = tmp_path / "stop"
    tmp, logs = tmp_path / "n0", tmp_path / "logs"
    aggregator = aggregate_cli(tmp, logs, "n0", address, stop)
    writers = [start_worker("--count", 3000, "--rate", 1000, env=rank_env(tmp, "n0", r, r)) for r in range(4)]
    for _ in range(2):
        size = out.stat().st_size if out.exists() else 0
        wait_for(lambda s=size: out.exists() and out.stat().st_size > s + 50_000, what="records to arrive")
        aggregator.kill()
        aggregator.wait(timeout=10)
        aggregator = aggregate_cli(tmp, logs, "n0", address, stop)
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    stop.touch()
    finish(aggregator)
    stop_stream(streamer)
    assert_exactly_once(json_lines(out), {("n0", r): 3000 for r in range(4)})
    assert_exactly_once(json_lines(logs / "nvrx_log_n0.log"), {("n0", r): 3000 for r in range(4)})


def test_each_batch_of_a_large_submit_promises_only_what_follows_it(tmp_path: Path) -> None:
    """A submit split into batches gives each batch a watermark below the records of the later batches."""
    forwarder = Forwarder("tcp://127.0.0.1:1", "n0", str(tmp_path / "spool"))
    records = [raw_record(i, f"m{i}", ts=1_000_000 + i, w="w0") for i in range(2500)]
    forwarder.submit(records, watermark=5_000_000)
    marks = []
    while (batch := forwarder.spool.next_batch()) is not None:
        decoded = orjson.loads(batch[1])
        marks.append((decoded["c"], decoded["t"][0], decoded["t"][-1]))
    assert [m[0] for m in marks] == [1_000_000 + 1000 - 1, 1_000_000 + 2000 - 1, 5_000_000]
    assert all(mark >= last for mark, _, last in marks), "a batch's watermark covers its own records"
    forwarder.spool.close()


@pytest.mark.timeout(60)
def test_lines_written_before_the_first_checkpoint_are_cut_on_restart(tmp_path: Path) -> None:
    """A streamer that died before its first checkpoint: its restart cuts what it wrote (that comes again)."""
    out = tmp_path / "cluster.log"
    out.write_text("a line of an earlier job\n")
    with Streamer("tcp://127.0.0.1:0", str(out)):
        pass  # opens the output: from now on a checkpoint covers it, as it was
    with open(out, "a") as f:
        f.write("a line written by a run that died before it checkpointed\n")
    with Streamer("tcp://127.0.0.1:0", str(out)):
        pass
    assert out.read_text() == "a line of an earlier job\n"
