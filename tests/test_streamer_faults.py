"""The streamer under outages, load and hostile input."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import psutil
import pytest
import zmq
import zmq.auth
from _net import aggregate_cli, assert_exactly_once, finish, free_port, json_lines, rank_env, stop_stream, stream_cli
from conftest import child_env, emit, fill_disk, mounted_tmpfs, raw_record, run_worker, start_worker, wait_for

from nvrxlog import NodeAggregator, Streamer
from nvrxlog.config import LogConfig
from nvrxlog.errors import ConfigError, TransportError
from nvrxlog.rank.handler import NodeLocalHandler
from nvrxlog.wire.columns import pack
from nvrxlog.wire.curve import CurveKeys
from nvrxlog.wire.forwarder import Forwarder
from nvrxlog.wire.protocol import hello


def _node_records(path: Path) -> list[dict]:
    return [r for r in json_lines(path) if not r["msg"].startswith("nvrxlog ")]


@pytest.mark.timeout(240)
def test_long_outage_is_spooled_node_file_stays_current_and_all_arrives(tmp_path: Path) -> None:
    """Streamer away while 8 ranks log 1,000 records/s: node file current, memory bounded, then everything arrives."""
    address = f"tcp://127.0.0.1:{free_port()}"
    tmp, logs, stop = tmp_path / "n0", tmp_path / "logs", tmp_path / "stop"
    node_file = logs / "nvrx_log_n0.log"
    aggregator = aggregate_cli(tmp, logs, "n0", address, stop, "--warn-after", "2")
    count = 12_000  # 12 s at 1,000 records/s per rank
    writers = [start_worker("--count", count, "--rate", 1000, env=rank_env(tmp, "n0", r, r)) for r in range(8)]
    wait_for(lambda: node_file.exists() and node_file.stat().st_size > 0, what="the node file")
    proc = psutil.Process(aggregator.pid)
    time.sleep(2)  # the outage itself: the streamer stays away throughout
    rss_early = proc.memory_info().rss
    time.sleep(6)
    rss_late = proc.memory_info().rss
    newest = json_lines(node_file)[-1]["ts"]
    assert time.time_ns() - newest < 2_000_000_000, "the node file must stay current while the streamer is away"
    streamer, _ = stream_cli(tmp_path / "cluster.log", address)
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    stop.touch()
    finish(aggregator, timeout=90)
    stop_stream(streamer)
    # ~48,000 records (~10 MB) accumulated between the two readings; none of it may sit in memory.
    assert rss_late - rss_early < 8 << 20, f"aggregator grew {(rss_late - rss_early) >> 20} MiB during the outage"
    expected = {("n0", r): count for r in range(8)}
    assert_exactly_once(json_lines(tmp_path / "cluster.log"), expected)
    assert_exactly_once(json_lines(node_file), expected)
    warnings = [r for r in json_lines(node_file) if "has not answered" in r["msg"]]
    assert len(warnings) == 1 and warnings[0]["level"] == "WARNING"


@pytest.mark.timeout(180)
def test_spool_overflow_states_exactly_which_range_was_lost(tmp_path: Path) -> None:
    """Past the spool limit the oldest batches are dropped and a line names their range and record count."""
    address = f"tcp://127.0.0.1:{free_port()}"
    tmp, logs, stop = tmp_path / "n0", tmp_path / "logs", tmp_path / "stop"
    aggregator = aggregate_cli(tmp, logs, "n0", address, stop, "--spool-max-mb", "0.5")
    writers = [
        start_worker("--count", 4000, "--rate", 2000, "--pad", 100, env=rank_env(tmp, "n0", r, r)) for r in range(2)
    ]
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    streamer, _ = stream_cli(tmp_path / "cluster.log", address)
    stop.touch()
    finish(aggregator, timeout=90)
    stop_stream(streamer)
    node = json_lines(logs / "nvrx_log_n0.log")
    assert len([r for r in node if r["msg"].startswith("r")]) == 8000, "the node file has everything regardless"
    cluster = json_lines(tmp_path / "cluster.log")
    delivered = [r for r in cluster if r["msg"].startswith("r")]
    losses = [r["msg"] for r in cluster if "lost on the way" in r["msg"]]
    assert losses, "the loss must be stated in the cluster file"
    lost = sum(int(n) for m in losses for n in re.findall(r"batches \d+-\d+ \((\d+) records\)", m))
    # Every record the node wrote (its own notices too) is in the cluster file or stated lost.
    forwarded = [r for r in cluster if r["node"] == "n0" and not r["msg"].startswith("nvrxlog forwarder:")]
    assert len(forwarded) + lost == len(node), "the stated loss must be exact"
    keys = [(r["rank"], r["seq"]) for r in delivered]
    assert len(keys) == len(set(keys)), "nothing doubled"


@pytest.mark.timeout(240)
def test_sixteen_nodes_flat_out_no_deadlock_all_delivered(tmp_path: Path) -> None:
    """16 nodes send a backlog at once into one streamer process: everything arrives, nothing hangs."""
    streamer, address = stream_cli(tmp_path / "cluster.log")
    aggregators = []
    for n in range(16):
        tmp = tmp_path / f"n{n}"
        tmp.mkdir()
        handler = NodeLocalHandler(str(tmp), LogConfig(rank=n, local_rank=0))
        emit([handler], [f"r{n} i{i}" for i in range(2000)])
        handler.close()
        aggregators.append(NodeAggregator(str(tmp), str(tmp_path / "logs"), f"n{n}", address, drain_timeout=60))
    for aggregator in aggregators:
        aggregator.start()
    for aggregator in aggregators:
        aggregator.stop()
        assert aggregator.stats["undelivered"] == 0
    stop_stream(streamer)
    assert_exactly_once(json_lines(tmp_path / "cluster.log"), {(f"n{n}", n): 2000 for n in range(16)})


def _dealer(endpoint: str, context: zmq.Context, curve: CurveKeys | None = None, node: str = "") -> zmq.Socket:
    """A raw DEALER to the streamer; with ``node``, it has said hello and been welcomed."""
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    if curve:
        curve.apply(sock)
    sock.connect(endpoint)
    if node:
        sock.send_multipart(hello(node))
        assert sock.recv_multipart()[0] == b"W"
    return sock


def _batch(node_records: list[dict], b: int = 1) -> bytes:
    return orjson.dumps({"b": b, "c": time.time_ns(), "n": len(node_records), "r": node_records})


def _record(msg: str, seq: int = 0, **extra: object) -> dict:
    return raw_record(seq, msg, w="evil", **extra)


@pytest.mark.timeout(60)
def test_hostile_client_cannot_disturb_others_or_inject_paths_and_lines(tmp_path: Path) -> None:
    """Garbage frames, oversized messages and hostile names: others keep being served, nothing stray is written."""
    out = tmp_path / "cluster.log"
    with Streamer("tcp://127.0.0.1:0", str(out), json=True, max_message_bytes=1 << 20) as streamer:
        context = zmq.Context()
        evil = _dealer(streamer.endpoint, context)
        evil.send_multipart([b"B", b"\xff\xfe not a batch"])  # before hello: told to reset
        assert evil.recv_multipart() == [b"R"]
        evil.send_multipart(hello("../../etc/x\n[ERROR]"))
        assert evil.recv_multipart()[0] == b"W"
        evil.send_multipart([b"B", b"{not json"])
        evil.send_multipart([b"Z"])
        evil.send_multipart(
            [
                b"B",
                _batch(
                    [
                        _record("hello\n2024-01-01 00:00:00,000 [ERROR] [node9] forged"),
                        {"seq": "x"},
                        [1, 2],
                        _record("rel", 1, node="../../../tmp/y"),
                    ]
                ),
            ]
        )
        big = _dealer(streamer.endpoint, context)
        big.send_multipart(hello("big"))
        big.send_multipart([b"B", b"x" * (2 << 20)])  # over the cap: the connection is dropped
        with NodeAggregator(str(tmp_path / "tmp"), str(tmp_path / "logs"), "good", streamer.endpoint) as good:
            handler = NodeLocalHandler(str(tmp_path / "tmp"), LogConfig(rank=3, local_rank=0))
            emit([handler], [f"r3 i{i}" for i in range(500)])
            handler.close()
        assert good.stats["undelivered"] == 0
        context.destroy(linger=0)
    records = json_lines(out)
    assert [r["msg"] for r in records if r["node"] == "good"] == [f"r3 i{i}" for i in range(500)]
    assert {r["node"] for r in records} <= {"good", "streamer", "_._.._etc_x__ERROR_", "_._.._.._tmp_y"}
    assert streamer.stats["bad_frames"] >= 4
    # Names from the network never became paths: only the streamer's own files exist.
    own = [".cluster.log.ckpt", ".cluster.log.lock", "cluster.log", "logs", "tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == own
    text_out = tmp_path / "text.log"
    with Streamer("tcp://127.0.0.1:0", str(text_out)) as text_streamer:
        context = zmq.Context()
        evil = _dealer(text_streamer.endpoint, context, node="n\x1b[31m")
        evil.send_multipart([b"B", _batch([_record("hello\n2024-01-01 00:00:00,000 [ERROR] [node9] forged")])])
        wait_for(lambda: text_streamer.stats["records"] >= 1, what="the record")
        context.destroy(linger=0)
    lines = text_out.read_text().splitlines()
    assert not any(line.startswith("2024-01-01") for line in lines), "a message must not forge a line"
    assert "\x1b" not in text_out.read_text()


def _packed(node_records: list[dict], **replace: object) -> bytes:
    body = {**pack(node_records), **replace}
    return orjson.dumps({"b": 1, "c": time.time_ns(), "n": len(node_records), **body})


@pytest.mark.timeout(60)
def test_hostile_columns_are_dropped_or_defanged_never_written_as_given(tmp_path: Path) -> None:
    """Columns that lie about lengths, indexes or types are dropped and counted; their text cannot forge lines."""
    out = tmp_path / "text.log"
    with Streamer("tcp://127.0.0.1:0", str(out)) as streamer:
        context = zmq.Context()
        evil = _dealer(streamer.endpoint, context, node="evil")
        one = [_record("never written")]
        lies = [
            {"t": [1, 2]},  # columns of different lengths
            {"p": [7]},  # an index past its table
            {"t": [1.5]},  # a float time
            {"P": "x"},  # a profile that is not one
            {"L": []},  # an empty table
            {"P": [["evil", 0, 0, None, None]]},  # a profile without its pid
        ]
        for lie in lies:
            evil.send_multipart([b"B", _packed(one, **lie)])
        evil.send_multipart([b"B", _packed([])])  # empty, not malformed
        forged = [
            _record("hello\n2024-01-01 00:00:00,000 [ERROR] [node9] forged", 1),
            _record("coloured", 2, level="INFO\x1b[31m"),
            _record("relayed", 3, node="../../tmp/z\n[ERROR]"),
            _record("far future", 4, ts=2**63 - 1),
        ]
        evil.send_multipart([b"B", _packed(forged)])
        wait_for(lambda: streamer.stats["records"] >= 3, what="the records that are not from the future")
        context.destroy(linger=0)
    text = out.read_text()
    assert "never written" not in text
    assert streamer.stats["bad_frames"] == len(lies)
    assert text.count("dropped batch 1 from evil: malformed") == len(lies)  # each batch named
    assert not any(line.startswith("2024-01-01") for line in text.splitlines()), "a message must not forge a line"
    assert "\x1b" not in text and "[_._.._tmp_z__ERROR_]" in text
    far = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((2**63 - 1) // 10**9))  # the last 64-bit time
    assert f"{far},854 [INFO] [evil] [workload:0(0) infra:?(?)] t.py:1 far future" in text


@pytest.mark.timeout(60)
def test_curve_lets_only_allowed_clients_write(tmp_path: Path) -> None:
    """With CURVE on, an allowed node delivers; a client with another key, or none, gets nothing written."""
    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(str(keys), "server")
    node_public, node_secret = zmq.auth.create_certificates(str(keys), "node")
    _, stranger_secret = zmq.auth.create_certificates(str(keys), "stranger")
    (allowed / "node.key").write_bytes(Path(node_public).read_bytes())
    out = tmp_path / "cluster.log"
    with Streamer(
        "tcp://127.0.0.1:0", str(out), json=True, curve_secret_key=server_secret, curve_clients_dir=str(allowed)
    ) as streamer:
        context = zmq.Context()
        for curve in (CurveKeys(server_public=server_public, client_secret=stranger_secret), None):
            intruder = _dealer(streamer.endpoint, context, curve)
            intruder.send_multipart(hello("intruder"))
            intruder.send_multipart([b"B", _batch([_record("intrusion")])])
            assert not intruder.poll(500), "an unauthenticated client must get no answer"
        context.destroy(linger=0)
        trusted = CurveKeys(server_public=server_public, client_secret=node_secret)
        with NodeAggregator(
            str(tmp_path / "tmp"), str(tmp_path / "logs"), "n0", streamer.endpoint, curve=trusted
        ) as aggregator:
            handler = NodeLocalHandler(str(tmp_path / "tmp"), LogConfig(rank=0, local_rank=0))
            emit([handler], [f"r0 i{i}" for i in range(100)])
            handler.close()
        assert aggregator.stats["undelivered"] == 0
    records = json_lines(out)
    assert [r["msg"] for r in records if r["file"] != "nvrxlog"] == [f"r0 i{i}" for i in range(100)]
    assert {r["node"] for r in records} == {"n0", "streamer"}, "nothing from the intruders"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("json", [False, True])
def test_a_deeply_nested_message_does_not_kill_the_streamer(tmp_path: Path, json: bool) -> None:
    """One ~2 KB batch whose msg is a 1,000-deep list: that record is shown cut short, the streamer serves on."""
    out = tmp_path / "cluster.log"
    with Streamer("tcp://127.0.0.1:0", str(out), json=json) as streamer:
        context = zmq.Context()
        evil = _dealer(streamer.endpoint, context, node="evil")
        deep = _batch([_record("DEEP", 0), _record("honest 1", 1)]).replace(b'"DEEP"', b"[" * 1000 + b"]" * 1000)
        evil.send_multipart([b"B", deep])
        evil.send_multipart([b"B", _batch([_record("honest 2", 2)], 2)])
        wait_for(lambda: streamer.stats["records"] >= 3, what="all three records")
        assert streamer._thread.is_alive()
        context.destroy(linger=0)
    text = out.read_text()
    assert "honest 1" in text and "honest 2" in text and "[[[[[[[...]]]]]]]" in text
    assert streamer.stats["bad_messages"] == 1 and "had a msg that is not text" in text


@pytest.mark.timeout(60)
def test_one_bad_payload_in_a_message_costs_only_its_own_batch(tmp_path: Path) -> None:
    """Batches 1, {broken, a bad batch 3 and 4: 1 and 4 are written, both drops named before any ack covers them."""
    out = tmp_path / "cluster.log"
    with Streamer("tcp://127.0.0.1:0", str(out), json=True) as streamer:
        context = zmq.Context()
        node = _dealer(streamer.endpoint, context, node="n0")
        bad3 = orjson.dumps({"b": 3, "c": 0, "r": [_record("never", 9)], "t": "x"})
        node.send_multipart([b"B", _batch([_record("one", 0)], 1), b"{broken", bad3, _batch([_record("two", 1)], 2)])
        node.send_multipart([b"B", _batch([_record("four", 2)], 4)])
        acked = -1
        deadline = time.monotonic() + 20
        while acked < 4 and time.monotonic() < deadline:
            if node.poll(100):
                kind, body = node.recv_multipart()
                assert kind == b"A"
                acked = orjson.loads(body)["acked"]
                if acked >= 3:  # an ack covering the drops: their notices are in the file already
                    notices = [r["msg"] for r in json_lines(out) if "dropped" in r["msg"]]
                    assert any("dropped a batch from n0: malformed" in m for m in notices), notices
                    assert any("dropped batch 3 from n0: malformed" in m for m in notices), notices
        assert acked == 4
        context.destroy(linger=0)
    msgs = [r["msg"] for r in json_lines(out) if r["node"] == "n0"]
    assert msgs == ["one", "two", "four"]
    assert streamer.stats["dropped_batches"] == 2 and streamer.stats["batches"] == 3


@pytest.mark.timeout(120)
def test_a_huge_node_name_in_a_hello_is_refused_unread(tmp_path: Path) -> None:
    """Hellos naming distinct 32 MiB nodes are refused with the reason, said in the file, and keep nothing cached."""
    out = tmp_path / "cluster.log"
    with Streamer("tcp://127.0.0.1:0", str(out), json=True) as streamer:
        context = zmq.Context()
        evil = _dealer(streamer.endpoint, context)
        for i in range(4):
            evil.send_multipart(hello(f"{i}" + "n" * (32 << 20)))
            kind, body = evil.recv_multipart()
            assert kind == b"X" and "over the limit of 4096" in orjson.loads(body)["reason"]
        assert streamer._intake.ingest._names == {}
        _dealer(streamer.endpoint, context, node="honest")  # others are still welcomed
        context.destroy(linger=0)
    refusals = [r["msg"] for r in json_lines(out) if "refused a peer: a hello of" in r["msg"]]
    assert len(refusals) == 4 and streamer.stats["refused"] == 4


def _our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("nvrxlog-")]


@pytest.mark.timeout(30)
def test_bad_forward_keys_are_a_clear_error_at_start(tmp_path: Path) -> None:
    """A relay given unusable CURVE key files fails start() with a ConfigError naming the file; nothing runs."""
    keys = CurveKeys(server_public=str(tmp_path / "absent.key"), client_secret=str(tmp_path / "absent.key_secret"))
    relay = Streamer("tcp://127.0.0.1:0", str(tmp_path / "relay.log"), forward="tcp://127.0.0.1:9", forward_curve=keys)
    with pytest.raises(ConfigError, match="absent.key"):
        relay.start()
    assert _our_threads() == []


@pytest.mark.timeout(30)
def test_a_failed_bind_raises_promptly_and_leaves_no_thread_running(tmp_path: Path) -> None:
    """A relay whose port is taken fails start() within seconds, its own and its forwarder's threads gone."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bind = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        relay = Streamer(bind, str(tmp_path / "relay.log"), forward=f"tcp://127.0.0.1:{free_port()}")
        began = time.monotonic()
        with pytest.raises(TransportError, match="could not start"):
            relay.start()
        assert time.monotonic() - began < 5
    wait_for(lambda: not _our_threads(), timeout=5, what="no nvrxlog thread left")


@pytest.mark.timeout(60)
def test_two_streamers_with_one_out_the_second_refuses(tmp_path: Path) -> None:
    """A second `nvrxlog stream` on the same --out exits non-zero with one line naming the file and the first's pid."""
    out = tmp_path / "cluster.log"
    first, _ = stream_cli(out)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "nvrxlog", "stream", "--bind", "tcp://127.0.0.1:0", "--out", str(out)],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        stop_stream(first)
    assert second.returncode != 0
    assert f"{out} is already written by another process (pid {first.pid})" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr


@pytest.mark.timeout(60)
def test_a_full_out_disk_holds_acks_and_resumes_with_nothing_lost(small_fs: Path) -> None:
    """ENOSPC on --out: the streamer lives, says so once, acknowledges nothing, writes everything once space returns."""
    out = small_fs / "cluster.log"
    with Streamer("tcp://127.0.0.1:0", str(out), json=True) as streamer:
        context = zmq.Context()
        node = _dealer(streamer.endpoint, context, node="n0")
        filler = fill_disk(small_fs)
        records = [_record(f"r0 i{i} " + "p" * 50, i) for i in range(100)]  # ~25 KB, more than is left
        node.send_multipart([b"B", _batch(records, 1)])
        wait_for(lambda: streamer.stats["write_failures"] >= 3, what="a few write attempts on the full disk")
        assert not node.poll(300), "nothing may be acknowledged while it cannot be written"
        assert streamer._thread.is_alive()
        assert streamer.errors.counts == {"out:ENOSPC": 1}  # said once, however often it is retried
        filler.unlink()
        assert node.poll(20_000), "acknowledged once space returned"
        kind, body = node.recv_multipart()
        assert kind == b"A" and orjson.loads(body)["acked"] == 1
        context.destroy(linger=0)
    lines = json_lines(out)
    assert [r["msg"] for r in lines if r["node"] == "n0"] == [r["msg"] for r in records]
    assert any("is writable again after" in r["msg"] for r in lines)


@pytest.mark.timeout(60)
def test_a_record_nested_past_the_encoders_limit_does_not_kill_the_live_view(tmp_path: Path) -> None:
    """With a live subscriber, a record with a 300-deep extra field is published bounded; the streamer serves on."""
    out = tmp_path / "cluster.log"
    with Streamer("tcp://127.0.0.1:0", str(out), json=True) as streamer:
        context = zmq.Context()
        live = context.socket(zmq.SUB)
        live.connect(streamer.pub_endpoint)
        live.subscribe(b"rec")
        wait_for(lambda: streamer.watched, what="the subscription to reach the streamer")
        evil = _dealer(streamer.endpoint, context, node="evil")
        deep = b"[" * 300 + b"]" * 300
        evil.send_multipart([b"B", _batch([_record("DEEPX", 0)]).replace(b'"msg":"DEEPX"', b'"msg":"x","x":' + deep)])
        evil.send_multipart([b"B", _batch([_record("after", 1)], 2)])
        wait_for(lambda: streamer.stats["records"] >= 2, what="both records")
        published: list[dict] = []
        while not any("x" in r for r in published):
            assert live.poll(10_000), "the live view must get the record"
            published += orjson.loads(live.recv_multipart()[1])
        assert [r["x"] for r in published if "x" in r] == ["[[[[[[[...]]]]]]]"]
        assert streamer._thread.is_alive()
        context.destroy(linger=0)
    assert [r["msg"] for r in json_lines(out) if r["node"] == "evil"] == ["x", "after"]


@pytest.mark.timeout(120)
def test_a_relay_whose_spool_disk_is_full_holds_and_then_passes_everything_up(tmp_path: Path) -> None:
    """A relay's spool on a full disk: the relay does not die, holds, and once space returns all goes upward once."""
    relay_dir = tmp_path / "relay"
    relay_dir.mkdir()
    with (
        Streamer("tcp://127.0.0.1:0", str(tmp_path / "top.log"), json=True) as top,
        mounted_tmpfs(relay_dir / ".nvrx_spool_relay_relay", "64k", mode="0700") as spool,
    ):
        filler = fill_disk(spool)
        relay_out = str(relay_dir / "relay.log")
        relay = Streamer("tcp://127.0.0.1:0", relay_out, json=True, forward=top.endpoint, name="relay")
        with relay:
            tmp = tmp_path / "tmp"
            with NodeAggregator(str(tmp), str(tmp_path / "logs"), "n0", relay.endpoint) as aggregator:
                handler = NodeLocalHandler(str(tmp), LogConfig(rank=0, local_rank=0))
                emit([handler], [f"r0 i{i}" for i in range(300)])
                wait_for(lambda: relay.stats.get("write_failures", 0) > 0, 30, "the relay to meet the full spool")
                assert relay.running, "a full spool must not stop the relay"
                filler.unlink()
                emit([handler], [f"r0 i{i}" for i in range(300, 400)])
                handler.close()
            assert aggregator.stats["undelivered"] == 0
            wait_for(
                lambda: sum(r["msg"].startswith("r0 i") for r in json_lines(tmp_path / "top.log")) >= 400,
                60,
                "everything at the top streamer",
            )
    top_msgs = [r["msg"] for r in json_lines(tmp_path / "top.log") if r["msg"].startswith("r0 i")]
    assert top_msgs == [f"r0 i{i}" for i in range(400)]
    relay_msgs = [r["msg"] for r in json_lines(relay_dir / "relay.log") if r["msg"].startswith("r0 i")]
    assert relay_msgs == [f"r0 i{i}" for i in range(400)]


@pytest.mark.timeout(120)
def test_a_client_ignoring_its_credit_is_cut_off_at_it(tmp_path: Path) -> None:
    """Batches sent past the credit without waiting for acks are refused (RESET), counted and said; others go on."""
    out = tmp_path / "cluster.log"
    # A node that never reports a watermark holds the cutoff back, so nothing
    # the flood sends is acknowledged and all of it counts against its credit.
    with Streamer("tcp://127.0.0.1:0", str(out), json=True, max_hold=60, credit_bytes=4 << 20) as streamer:
        context = zmq.Context()
        _dealer(streamer.endpoint, context, node="holder")
        flood = context.socket(zmq.DEALER)
        flood.linger = 0
        flood.connect(streamer.endpoint)
        flood.send_multipart(hello("flood"))
        kind, body = flood.recv_multipart()
        assert kind == b"W"
        credit = orjson.loads(body)["credit"]
        batch = 0
        sent = 0
        reply = None
        deadline = time.monotonic() + 60
        while reply is None and time.monotonic() < deadline:
            batch += 1
            records = [_record("x" * 1000, batch * 1000 + i) for i in range(1000)]
            payload = orjson.dumps({"b": batch, "c": 0, "n": 1000, "r": records})
            flood.send_multipart([b"B", payload])
            sent += len(payload)
            while flood.poll(0):
                kind, *_ = flood.recv_multipart()
                if kind == b"R":
                    reply = kind
            assert sent < credit + (64 << 20), "the flood was never cut off"
        assert reply == b"R"
        wait_for(lambda: streamer.stats["over_credit"] >= 1, 10)
        taken = streamer.stats["batches"]
        assert taken * len(payload) <= credit + (16 << 20) + len(payload)
        _dealer(streamer.endpoint, context, node="honest")  # others are still welcomed
        context.destroy(linger=0)
    assert any("flood: it sent past its credit" in r["msg"] for r in json_lines(out))


def _forward(forwarder: Forwarder, first: int, count: int, timeout: float = 30) -> None:
    """Submit records ``first`` .. ``first + count - 1`` of writer "w0" and wait until all are acknowledged."""
    records = [raw_record(seq, f"r0 i{seq}", w="w0") for seq in range(first, first + count)]
    forwarder.submit(records, records[-1]["ts"])
    wait_for(lambda: forwarder.spool.unacked == 0 and forwarder.link.ready, timeout, "the records to be acknowledged")


@pytest.mark.timeout(120)
def test_a_second_process_claiming_a_live_node_is_refused_and_served_after_it(tmp_path: Path) -> None:
    """Two forwarders with one node id (two spools): the second is refused while the first lives, then served."""
    out = tmp_path / "cluster.log"
    notices: list[str] = []
    with Streamer("tcp://127.0.0.1:0", str(out), json=True, idle_timeout=3) as streamer:
        first = Forwarder(streamer.endpoint, "node0", str(tmp_path / "spool-a")).start()
        _forward(first, 0, 500)
        second = Forwarder(streamer.endpoint, "node0", str(tmp_path / "spool-b"), notice=notices.append).start()
        wait_for(lambda: any("cannot take this node yet" in n for n in notices), 20, "the refusal")
        assert not second.link.ready
        _forward(first, 500, 500)  # the first is not disturbed
        assert first.stop(10) == 0
        # Its session ended cleanly: the name is free, and the second is welcomed on its own retry.
        records = [raw_record(seq, f"r0 i{seq}", w="w1") for seq in range(300)]
        second.submit(records, records[-1]["ts"])
        wait_for(lambda: second.spool.unacked == 0, 60, "the second to be served")
        assert any("took this node after all" in n for n in notices)
        assert second.stop(10) == 0
    lines = json_lines(out)
    mine = [r for r in lines if not r["msg"].startswith("nvrxlog ")]
    assert sorted((r["w"], r["seq"]) for r in mine) == sorted(
        [("w0", s) for s in range(1000)] + [("w1", s) for s in range(300)]
    )
    assert any("refused a second session of node node0" in r["msg"] for r in lines)


@pytest.mark.timeout(120)
def test_a_forged_seq_far_ahead_does_not_make_a_writer_s_records_duplicates(tmp_path: Path) -> None:
    """A peer as node0 claims seq 10**15 of its writer: refused and said; the writer's later records all arrive."""
    out = tmp_path / "cluster.log"
    with Streamer("tcp://127.0.0.1:0", str(out), json=True) as streamer:
        spool = str(tmp_path / "spool")
        genuine = Forwarder(streamer.endpoint, "node0", spool).start()
        _forward(genuine, 0, 1000)
        assert genuine.stop(10) == 0  # the node is between sessions (restarting, say)
        context = zmq.Context()
        evil = _dealer(streamer.endpoint, context, node="node0")
        forged = raw_record(10**15, "forged: node0 rank 0 failed", w="w0", level="ERROR")
        evil.send_multipart([b"B", _batch([forged], 1)])
        evil.send_multipart([b"Q"])
        wait_for(lambda: streamer.stats["implausible_seqs"] == 1, 20, "the forged record to be judged")
        context.destroy(linger=0)
        genuine = Forwarder(streamer.endpoint, "node0", spool).start()
        _forward(genuine, 1000, 1000)
        assert genuine.stop(10) == 0
    lines = json_lines(out)
    assert [r["seq"] for r in lines if r.get("w") == "w0"] == list(range(2000))
    assert not any(r["msg"].startswith("forged") for r in lines)
    assert any("with seq 1000000000000000 after 999" in r["msg"] for r in lines)


@pytest.mark.timeout(120)
def test_batches_fit_the_message_limit_the_streamer_announces(tmp_path: Path) -> None:
    """A streamer taking 256 KiB messages: later batches are cut to fit, one spooled before that is stated lost."""
    out = tmp_path / "cluster.log"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    forwarder = Forwarder(endpoint, "n0", str(tmp_path / "spool")).start()
    try:
        # Spooled before any streamer said its limit: one batch of about 900 KB.
        forwarder.submit([raw_record(seq, f"big{seq} " + "x" * 300_000, w="w") for seq in range(3)], time.time_ns())
        with Streamer(endpoint, str(out), json=True, max_message_bytes=256 << 10):
            wait_for(lambda: forwarder.link.ready, 30, "the welcome")
            assert forwarder.link.max_message == 256 << 10
            small = [raw_record(seq, f"small{seq} " + "y" * 100, w="w") for seq in range(3, 1003)]
            forwarder.submit([*small, raw_record(1003, "huge " + "z" * 300_000, w="w")], time.time_ns())
            wait_for(lambda: forwarder.spool.unacked == 0, 60, "everything to be acknowledged")
    finally:
        forwarder.stop(5)
    lines = json_lines(out)
    assert [r["seq"] for r in lines if r.get("w") == "w"] == list(range(3, 1004))
    huge = lines[-1]["msg"] if lines[-1].get("w") == "w" else next(r["msg"] for r in lines if r.get("seq") == 1003)
    assert huge.startswith("huge zzz") and "[nvrxlog: cut" in huge
    (lost,) = [r["msg"] for r in lines if "lost on the way" in r["msg"]]
    assert "batches 1-1 (3 records): larger" in lost and "message limit (262144 bytes)" in lost
    assert forwarder.stats["dropped"] == 3
    # The next run of this node cuts what it spools to that limit before any streamer says it again.
    again = Forwarder(endpoint, "n0", str(tmp_path / "spool"))
    try:
        assert again.link.max_message == 256 << 10
    finally:
        again.spool.close()


@pytest.mark.timeout(120)
def test_two_aggregators_given_one_node_id_are_told_on_stderr(tmp_path: Path) -> None:
    """A set-up mistake a user makes (one NVRX_NODE_ID on two machines): the second says why on stderr, once."""
    out = tmp_path / "cluster.log"
    streamer, endpoint = stream_cli(out)
    stop = tmp_path / "stop"
    first = aggregate_cli(tmp_path / "a", tmp_path / "la", "node7", endpoint, stop)
    procs = [first]
    try:
        rank = run_worker("--count", 10, env=rank_env(tmp_path / "a", "node7", 0, 0))
        assert rank.returncode == 0, rank.stderr
        wait_for(lambda: out.exists() and out.read_text().count('"node":"node7"') >= 10, 30, "the first node's lines")
        procs.append(aggregate_cli(tmp_path / "b", tmp_path / "lb", "node7", endpoint, stop))
        wait_for(lambda: "refused a second session of node node7" in out.read_text(), 30, "the refusal")
    finally:
        stop.touch()
        errors = [finish(proc) for proc in procs]
        stop_stream(streamer)
    assert errors[1].count("cannot take this node yet: node node7 is connected from another process") == 1
    assert "cannot take this node yet" not in errors[0]


@pytest.mark.timeout(120)
def test_after_a_restart_a_writers_honest_gap_is_believed_and_a_forged_jump_is_not(tmp_path: Path) -> None:
    """The checkpoint keeps each writer's last merge key: jumps are judged across a streamer restart as before it."""
    out = tmp_path / "cluster.log"
    now = time.time_ns()
    spool = str(tmp_path / "spool")
    with Streamer("tcp://127.0.0.1:0", str(out), json=True) as streamer:
        first = Forwarder(streamer.endpoint, "node0", spool).start()
        records = [raw_record(seq, f"r0 i{seq}", w="w0", ts=now - 60 * 10**9 + seq) for seq in range(100)]
        first.submit(records, records[-1]["ts"])
        wait_for(lambda: first.spool.unacked == 0 and first.link.ready, 30, "the first records acknowledged")
        assert first.stop(10) == 0
    with Streamer("tcp://127.0.0.1:0", str(out), json=True) as streamer:
        # 5,000 records lost on the node, then one stamped 30 s later, sent after the restart.
        later = Forwarder(streamer.endpoint, "node0", spool).start()
        gap = raw_record(5100, "r0 after the gap", w="w0", ts=now - 30 * 10**9)
        later.submit([gap], gap["ts"])
        wait_for(lambda: later.spool.unacked == 0 and later.link.ready, 30, "the record after the gap")
        assert later.stop(10) == 0
        context = zmq.Context()
        evil = _dealer(streamer.endpoint, context, node="node0")
        evil.send_multipart([b"B", _batch([raw_record(10**15, "forged", w="w0")], 1)])
        wait_for(lambda: streamer.stats["implausible_seqs"] == 1, 20, "the forged record to be judged")
        context.destroy(linger=0)
    lines = json_lines(out)
    assert [r["seq"] for r in lines if r.get("w") == "w0"] == [*range(100), 5100]
