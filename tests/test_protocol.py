"""The wire protocol's version check, on real sockets, and what importing nvrxlog costs a rank."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import zmq
from conftest import child_env, wait_for

from nvrxlog import Streamer
from nvrxlog.wire.forwarder import Forwarder
from nvrxlog.wire.link import LinkState
from nvrxlog.wire.protocol import PROTOCOL_VERSION, REFUSED, WELCOME, hello, version_problem


def test_version_problem_names_both_versions() -> None:
    """A hello of another (or no) version is described with both versions; the current one passes."""
    assert version_problem({"node": "n", "v": PROTOCOL_VERSION}) is None
    problem = version_problem({"node": "n", "v": 1})
    assert problem is not None and "1" in problem and str(PROTOCOL_VERSION) in problem
    assert version_problem({"node": "n"}) is not None


def test_streamer_refuses_another_version_with_a_reason_and_says_so(tmp_path: Path) -> None:
    """A node of another protocol version gets one refusal (X) with the reason, and the cluster file says so."""
    out = tmp_path / "cluster.log"
    context = zmq.Context()
    try:
        with Streamer("tcp://127.0.0.1:0", str(out), json=True, checkpoint_interval=0.01) as streamer:
            old = context.socket(zmq.DEALER)
            old.linger = 0
            old.connect(streamer.endpoint)
            old.send_multipart([b"H", orjson.dumps({"node": "old", "v": PROTOCOL_VERSION - 1})])
            assert old.poll(10_000), "no answer to a hello"
            kind, body = old.recv_multipart()
            assert kind == REFUSED
            assert str(PROTOCOL_VERSION) in orjson.loads(body)["reason"]
            current = context.socket(zmq.DEALER)
            current.linger = 0
            current.connect(streamer.endpoint)
            current.send_multipart(hello("new"))
            assert current.poll(10_000) and current.recv_multipart()[0] == WELCOME
            assert streamer.stats["refused"] == 1
    finally:
        context.destroy(linger=0)
    assert any("refused node old" in line for line in out.read_text().splitlines())


def test_forwarder_stops_and_says_why_when_refused(tmp_path: Path) -> None:
    """A refused forwarder stops its thread, keeps its records spooled and reports the streamer's reason."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    notices: list[str] = []
    forwarder = Forwarder(f"tcp://127.0.0.1:{port}", "n0", str(tmp_path / "spool"), notice=notices.append).start()
    try:
        forwarder.submit([{"seq": 0, "ts": 1, "msg": "kept", "w": "w"}], watermark=1)
        assert router.poll(10_000), "the forwarder never said hello"
        peer, kind, _ = router.recv_multipart()
        assert kind == b"H"
        router.send_multipart([peer, REFUSED, orjson.dumps({"reason": "protocol version 9 is not ours", "v": 9})])
        wait_for(lambda: forwarder.link.state is LinkState.REFUSED, timeout=10, what="the refusal")
        wait_for(lambda: not forwarder._thread.is_alive(), timeout=10, what="the forwarder to stop")
        assert any("refused this node: protocol version 9 is not ours" in text for text in notices)
    finally:
        undelivered = forwarder.stop(timeout=0)
        context.destroy(linger=0)
    assert undelivered == 1, "the record stays spooled for a streamer that will take it"


def test_importing_nvrxlog_loads_no_zeromq() -> None:
    """Every rank imports nvrxlog; ZeroMQ is loaded only where forwarding or the streamer is used."""
    code = "import sys, nvrxlog; from nvrxlog import CurveKeys, setup_logger; print('zmq' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_batch_too_large_for_the_streamer_is_stated_lost_once_however_often_it_is_handed_out(tmp_path: Path) -> None:
    """After a rewind (a reconnect) the same undeliverable batch is skipped again, not counted and said again."""
    notices: list[str] = []
    forwarder = Forwarder("tcp://127.0.0.1:1", "n0", str(tmp_path / "spool"), notice=notices.append)
    try:
        forwarder.spool.append([{"seq": 0, "ts": 1, "msg": "x" * 200_000, "w": "w"}], 1)
        forwarder.spool.append([{"seq": 1, "ts": 2, "msg": "small", "w": "w"}], 2)
        forwarder.link.max_message = 64 << 10
        for _ in range(3):
            frames, last = forwarder._message()
            assert last == 2 and len(frames) == 2  # only the small batch travels
            forwarder._rewind()
        assert forwarder.stats["dropped"] == 1
        assert sum("message limit" in text for text in notices) == 1
    finally:
        forwarder.spool.close()
