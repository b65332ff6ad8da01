"""Nodes whose clocks are wrong, end to end: real streamer, real aggregators and ranks, real sockets on loopback."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import zmq
from _net import assert_exactly_once, finish, json_lines, rank_env
from conftest import HERE, WORKER, child_env, raw_record, wait_for

from nvrxlog import Streamer
from nvrxlog.wire.columns import pack
from nvrxlog.wire.protocol import BATCH, hello

_HOUR = 3600
_TEN_YEARS_NS = 10 * 365 * 86400 * 10**9
SKEWED = str(HERE / "_skewed_clock.py")


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; whatever it ends with, none goes on running."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _node(tmp_path: Path, node: str, streamer: str, skew: float, count: int) -> list[subprocess.Popen]:
    """A node on a host whose clock reads ``skew`` s off: its `nvrxlog aggregate` and one rank logging ``count``."""
    tmp, stop = tmp_path / node, tmp_path / f"stop-{node}"
    agg = [sys.executable, SKEWED, str(skew), "-m", "nvrxlog", "aggregate", "--tmp-dir", str(tmp)]
    agg += ["--log-dir", str(tmp_path / "logs"), "--node-id", node, "--streamer", streamer]
    agg += ["--wait-file", str(stop), "--json"]
    aggregator = subprocess.Popen(agg, env=child_env(), stderr=subprocess.PIPE, text=True)
    rank = int(node[-1])
    env = rank_env(tmp, node, rank, 0)
    writer = subprocess.Popen(
        [sys.executable, SKEWED, str(skew), WORKER, "--count", str(count), "--rate", "100"], env=env
    )
    return [aggregator, writer]


def _records(path: Path) -> list[dict]:
    return json_lines(path) if path.exists() else []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("relayed", [False, True], ids=["direct", "through-a-relay"])
def test_a_node_an_hour_ahead_is_merged_promptly_on_corrected_time(
    tmp_path: Path, relayed: bool, started: list[subprocess.Popen]
) -> None:
    """node1's clock is an hour ahead: its lines reach the cluster file as it logs, in time order with node0's.

    Through a relay, the relay corrects (it is the one node1 talks to) and
    passes corrected times up, so the top's file is the same.
    """
    out = tmp_path / "cluster.log"
    count = 500
    with contextlib.ExitStack() as stack:
        streamer = stack.enter_context(Streamer("tcp://127.0.0.1:0", str(out), json=True))
        entry = streamer.endpoint
        if relayed:
            relay = Streamer("tcp://127.0.0.1:0", str(tmp_path / "relay.log"), forward=entry, name="relay1")
            entry = stack.enter_context(relay).endpoint
        for n, skew in ((0, 0), (1, _HOUR)):
            started += _node(tmp_path, f"node{n}", entry, skew, count)
        agg0, rank0, agg1, rank1 = started
        for rank in (rank0, rank1):
            assert rank.wait(timeout=60) == 0
        done = time.monotonic()

        def node_lines() -> dict[str, int]:
            got = [r["node"] for r in _records(out) if r["msg"].startswith("r")]
            return {node: got.count(node) for node in ("node0", "node1")}

        # Before the fix none of node1's lines came for an hour.
        wait_for(lambda: node_lines() == {"node0": count, "node1": count}, 10, "every line of both nodes")
        assert time.monotonic() - done < 10
        for node in ("node0", "node1"):
            (tmp_path / f"stop-{node}").touch()
        for agg in (agg0, agg1):
            finish(agg)
    records = json_lines(out)
    assert_exactly_once(records, {("node0", 0): count, ("node1", 1): count})
    stamps = [r["ts"] for r in records]
    assert stamps == sorted(stamps), "the cluster file is in (corrected) time order"
    node1 = [r for r in records if r["node"] == "node1" and r["msg"].startswith("r")]
    node0 = [r for r in records if r["node"] == "node0" and r["msg"].startswith("r")]
    # Shown on the streamer's time, interleaved with node0's as they were logged (both at once).
    assert abs(node1[0]["ts"] - node0[0]["ts"]) < 5 * 10**9
    assert records.index(node1[0]) < records.index(node0[-1]) and records.index(node0[0]) < records.index(node1[-1])
    told = [r["msg"] for r in records if "clock is" in r["msg"]]
    assert len(told) == 1 and "node node1's clock is +3600.0 s ahead of the streamer's" in told[0], told
    assert streamer.stats["future_stamps"] == 0
    # The node's own file keeps the node's own stamps.
    own = [r for r in json_lines(tmp_path / "logs" / "nvrx_log_node1.log") if r["msg"].startswith("r")]
    assert own[0]["ts"] - node1[0]["ts"] == pytest.approx(_HOUR * 10**9, abs=10**9)


def _acked(sock: zmq.Socket, last: int, timeout: float) -> bool:
    """Read acks until one covers batch ``last``; False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(left * 1000):
            frames = sock.recv_multipart()
            if frames[0] == b"A" and orjson.loads(frames[1])["acked"] >= last:
                return True
    return False


@pytest.mark.timeout(60)
def test_records_stamped_ten_years_ahead_are_written_and_acked_promptly(tmp_path: Path) -> None:
    """A raw client (no clock fields) floods records stamped 10 years ahead: written by arrival, acked, none held."""
    out = tmp_path / "cluster.log"
    batches, per = 40, 1000
    with Streamer("tcp://127.0.0.1:0", str(out), json=True) as streamer, zmq.Context() as context:
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(streamer.endpoint)
        sock.send_multipart(hello("evil"))
        assert sock.poll(10_000) and sock.recv_multipart()[0] == b"W"
        future = time.time_ns() + _TEN_YEARS_NS
        for b in range(1, batches + 1):  # all at once, past any credit
            records = [raw_record(i, f"r0 i{i}", ts=future + i, w="w0") for i in range((b - 1) * per, b * per)]
            body = pack(records) if b % 2 else {"r": records}  # both of ingest's paths
            sock.send_multipart([BATCH, orjson.dumps({"b": b, "c": future, "n": per, **body})])
        assert _acked(sock, batches, 15), "every batch acknowledged, long before ten years pass"
        wait_for(lambda: not streamer._intake.pending, 5, "nothing held for the merge")
        sock.close()
    records = json_lines(out)
    assert_exactly_once(records, {("evil", 0): batches * per})
    shown = [r["ts"] for r in records if r["msg"].startswith("r0")]
    assert shown == [future + i for i in range(batches * per)], "shown with their own stamps"
    assert streamer.stats["future_stamps"] == batches * per
    told = [r["msg"] for r in records if "stamped more than" in r["msg"]]
    assert len(told) == 1 and "records from evil are stamped more than 1 s ahead" in told[0]
