"""Writers that come and go: each is forgotten once its end is acknowledged, and exactly once still holds."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import zmq
from _net import aggregate_cli, finish, free_port, json_lines, stop_stream, stream_cli
from conftest import emit, raw_record, wait_for

from nvrxlog import NodeAggregator, Streamer
from nvrxlog.config import LogConfig
from nvrxlog.core.record import WriterId, file_name
from nvrxlog.rank.handler import NodeLocalHandler
from nvrxlog.wire.columns import pack
from nvrxlog.wire.protocol import hello


def _gone_writers(tmp: Path, first: int, count: int) -> list[str]:
    """``count`` writers that wrote one record each and are gone (our pid, but started long before it)."""
    tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = []
    for n in range(first, first + count):
        writer = WriterId("loader", 0, os.getpid(), n + 1)  # started at ns n+1: not this process, so dead
        # Written whole, then named: a writer that is dead does not write any more.
        (tmp.parent / "partial").write_bytes(orjson.dumps(raw_record(0, f"loader {n}")) + b"\n")
        os.rename(tmp.parent / "partial", tmp / file_name(writer, 0))
        keys.append(str(writer))
    return keys


def _checkpoint(path: Path) -> dict:
    return orjson.loads(path.read_bytes()) if path.exists() else {"writers": {}, "floors": {}}


def _messages(path: Path) -> Counter[str]:
    """The nodes' messages in a JSON output so far (its whole lines: it may be being written)."""
    data = path.read_bytes() if path.exists() else b""
    records = map(orjson.loads, data[: data.rfind(b"\n") + 1].splitlines())
    return Counter(r["msg"] for r in records if not r["msg"].startswith("nvrxlog "))


def _loaders(first: int, count: int) -> Counter[str]:
    return Counter(f"loader {n}" for n in range(first, first + count))


@pytest.mark.timeout(60)
def test_a_node_names_the_writers_that_ended_after_their_records_in_its_spool(tmp_path: Path) -> None:
    """Writers done for good are named in a batch after every batch holding their records; the node forgets them."""
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    keys = _gone_writers(tmp, 0, 50)
    spool = logs / ".nvrx_spool_n0"
    with NodeAggregator(str(tmp), str(logs), "n0", "tcp://127.0.0.1:1", json=True, drain_timeout=0.1) as node:

        def batches() -> list[dict]:
            segments = sorted(spool.glob("seg-*.nvs"))
            return [orjson.loads(line) for seg in segments for line in seg.read_bytes().splitlines()]

        wait_for(lambda: {k for b in batches() for k in b.get("e", ())} == set(keys), 30, "every writer's end spooled")
        assert node._writers.tails == {}
    holding: dict[str, int] = {}
    ended: dict[str, int] = {}
    for batch in batches():
        for profile in batch.get("P", ()):
            holding[profile[0]] = batch["b"]
        for key in batch.get("e", ()):
            ended[key] = batch["b"]
    assert all(ended[key] >= holding[key] for key in keys), "an end is told only after the writer's records"
    assert len({b["o"] for b in batches()}) == 1
    assert len(_checkpoint(logs / ".nvrx_log_n0.ckpt")["writers"]) <= 1  # the node's own notices at most


@pytest.mark.timeout(120)
def test_many_one_record_writers_leave_the_streamer_state_bounded_and_each_record_once(tmp_path: Path) -> None:
    """900 one-record writers come and go beside a steady one: the checkpoint and cursors stay small, no line lost."""
    tmp, logs, out = tmp_path / "tmp", tmp_path / "logs", tmp_path / "cluster.log"
    checkpoint = tmp_path / ".cluster.log.ckpt"
    with Streamer("tcp://127.0.0.1:0", str(out), json=True) as streamer:
        with NodeAggregator(str(tmp), str(logs), "n0", streamer.endpoint, json=True) as node:
            steady = NodeLocalHandler(str(tmp), LogConfig(rank=3, local_rank=1))
            for wave in range(3):
                _gone_writers(tmp, wave * 300, 300)
                emit([steady], [f"steady {wave * 10 + i}" for i in range(10)])
                wait_for(lambda w=wave: _messages(out) >= _loaders(0, (w + 1) * 300), 60, "the wave to arrive")
            steady.close()
            # The node's own notices and the steady writer's may stay; no loader may.
            wait_for(lambda: len(_checkpoint(checkpoint)["writers"]) <= 3, 30, "the streamer to forget the loaders")
            assert len(streamer._intake.ingest.cursors) <= 3
            assert checkpoint.stat().st_size < 2048
        assert node.stats["undelivered"] == 0
    assert streamer.stats["retired"] >= 900
    assert _messages(out) == _loaders(0, 900) + Counter(f"steady {i}" for i in range(30))
    assert [r["msg"] for r in json_lines(out) if r["msg"].startswith("steady")] == [f"steady {i}" for i in range(30)]


def _dealer(context: zmq.Context, endpoint: str, node: str) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    sock.send_multipart(hello(node))
    assert sock.poll(10_000), "no welcome"
    assert sock.recv_multipart()[0] == b"W"
    return sock


def _send(sock: zmq.Socket, b: int, run: str, records: list[dict], ended: list[str] = ()) -> None:
    """Send batch ``b`` of spool run ``run`` and wait for its acknowledgement."""
    body = {"b": b, "c": time.time_ns(), "n": len(records), "o": run, **pack(records)}
    if ended:
        body["e"] = list(ended)
    sock.send_multipart([b"B", orjson.dumps(body)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sock.poll(100) and (reply := sock.recv_multipart())[0] == b"A" and orjson.loads(reply[1])["acked"] >= b:
            return
    raise AssertionError(f"batch {b} was not acknowledged")


def _loader_batch(run: str = "run-1") -> tuple[int, str, list[dict], list[str]]:
    """Batch 1 of a node's spool run: three records of a data loader, and its end."""
    return 1, run, [raw_record(i, f"loader {i}", w="loader") for i in range(3)], ["loader"]


def _retired(checkpoint: Path, run: str = "run-1") -> bool:
    saved = _checkpoint(checkpoint)
    return "n0|loader" not in saved["writers"] and saved["floors"].get("n0", {}).get(run) == 1


@pytest.mark.timeout(60)
def test_a_resend_after_a_writer_retired_and_a_streamer_restart_is_not_written_again(tmp_path: Path) -> None:
    """After the loader is forgotten its batch resent (lost ack, restart) is dropped, while a new spool run is taken."""
    out, checkpoint = tmp_path / "cluster.log", tmp_path / ".cluster.log.ckpt"
    context = zmq.Context()
    try:
        with Streamer("tcp://127.0.0.1:0", str(out), json=True) as streamer:
            sock = _dealer(context, streamer.endpoint, "n0")
            _send(sock, *_loader_batch())
            wait_for(lambda: _retired(checkpoint), 10, "the loader to be retired in the checkpoint")
            assert "n0|loader" not in streamer._intake.ingest.cursors
            _send(sock, *_loader_batch())  # its ack was lost: sent again
            _send(sock, 2, "run-1", [raw_record(0, "steady 0", w="steady")])
        with Streamer("tcp://127.0.0.1:0", str(out), json=True) as streamer:
            sock = _dealer(context, streamer.endpoint, "n0")
            _send(sock, *_loader_batch())  # the node never heard the ack: it resends to the new streamer
            _send(sock, 2, "run-1", [raw_record(0, "steady 0", w="steady")])
            # The node's spool was deleted: a new run, seqs from 1 again, is new.
            _send(sock, 1, "run-2", [raw_record(0, "fresh 0", w="fresh")])
            assert streamer.stats["duplicates"] == 4
    finally:
        context.destroy(linger=0)
    assert _messages(out) == Counter(["loader 0", "loader 1", "loader 2", "steady 0", "fresh 0"])


@pytest.mark.timeout(90)
def test_a_streamer_killed_after_retiring_a_writer_drops_its_resent_batch(tmp_path: Path) -> None:
    """kill -9 of `nvrxlog stream` once the loader is retired: restarted, its checkpoint drops the resent batch."""
    out, checkpoint = tmp_path / "cluster.log", tmp_path / ".cluster.log.ckpt"
    address = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.Context()
    proc, _ = stream_cli(out, address)
    try:
        _send(_dealer(context, address, "n0"), *_loader_batch())
        wait_for(lambda: _retired(checkpoint), 10, "the loader to be retired in the checkpoint")
        proc.kill()
        proc.wait(timeout=10)
        proc, _ = stream_cli(out, address)
        sock = _dealer(context, address, "n0")
        _send(sock, *_loader_batch())
        _send(sock, 2, "run-1", [raw_record(0, "steady 0", w="steady")])
    finally:
        context.destroy(linger=0)
        stop_stream(proc)
    assert _messages(out) == Counter(["loader 0", "loader 1", "loader 2", "steady 0"])


@pytest.mark.timeout(120)
def test_a_relay_passes_writers_ends_up_and_both_streamers_stay_bounded(tmp_path: Path) -> None:
    """Through a relay, 300 one-record writers arrive upstream once each and neither streamer keeps them."""
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    top, relay_out = tmp_path / "top.log", tmp_path / "relay.log"
    with (
        Streamer("tcp://127.0.0.1:0", str(top), json=True, name="top") as upstream,
        Streamer("tcp://127.0.0.1:0", str(relay_out), json=True, forward=upstream.endpoint, name="relay") as relay,
        NodeAggregator(str(tmp), str(logs), "n0", relay.endpoint, json=True),
    ):
        _gone_writers(tmp, 0, 300)
        wait_for(lambda: _messages(top) >= _loaders(0, 300), 60, "the loaders upstream")
        for path in (tmp_path / ".relay.log.ckpt", tmp_path / ".top.log.ckpt"):
            wait_for(lambda p=path: len(_checkpoint(p)["writers"]) <= 4, 30, f"{path.name} to forget them")
    records = [r for r in json_lines(top) if r["msg"].startswith("loader")]
    assert Counter(r["msg"] for r in records) == _loaders(0, 300)
    assert {r["node"] for r in records} == {"n0"}, "relayed records name their own node"


@pytest.mark.timeout(180)
def test_an_aggregator_killed_between_waves_of_writers_delivers_each_record_once(tmp_path: Path) -> None:
    """kill -9 of `nvrxlog aggregate` after a wave of writers retired, a restart, a second wave: once each, bounded."""
    out, checkpoint = tmp_path / "cluster.log", tmp_path / ".cluster.log.ckpt"
    tmp, logs, stop = tmp_path / "tmp", tmp_path / "logs", tmp_path / "stop"
    streamer, address = stream_cli(out)
    aggregator = aggregate_cli(tmp, logs, "n0", address, stop)
    try:
        _gone_writers(tmp, 0, 200)
        wait_for(lambda: _messages(out) >= _loaders(0, 200), 60, "the first wave")
        wait_for(lambda: len(_checkpoint(checkpoint)["writers"]) <= 3, 30, "the first wave retired")
        aggregator.kill()
        aggregator.wait(timeout=10)
        aggregator = aggregate_cli(tmp, logs, "n0", address, stop)
        _gone_writers(tmp, 200, 200)
        wait_for(lambda: _messages(out) >= _loaders(0, 400), 60, "the second wave")
        wait_for(lambda: len(_checkpoint(checkpoint)["writers"]) <= 4, 30, "the second wave retired")
    finally:
        stop.touch()
        finish(aggregator)
        stop_stream(streamer)
    assert _messages(out) == _loaders(0, 400)
