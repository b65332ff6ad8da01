"""How much can one streamer take, how far does it scale, how fresh are its lines?

- Ingest: 16 simulated nodes (forwarders in another process, spools filled in
  advance) send flat out into one streamer; records/s against a bare ROUTER
  that only receives the same messages, measured in the same run.
- Churn: one steady writer into a streamer that has already seen N one-record
  writers come and go (data-loader workers, per-epoch subprocesses), each
  named ended by its node: records/s against the same steady writer into a
  fresh streamer, and the checkpoint's size then.
- Scale: 512 simulated nodes (DEALER sockets in a few processes) into one
  streamer process: all delivered? peak RSS of the streamer.
- Latency: 8 ranks log 1,000 records/s each through an aggregator to a
  streamer: p50/p99 from logger.info() to the per-node file and to the
  cluster file (seen on the streamer's live PUB socket right after the write).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import orjson
import psutil
import zmq

from benchmarks._procs import start_stream
from benchmarks._table import cli, machine, table
from nvrxlog import NodeAggregator, Streamer
from nvrxlog.wire.forwarder import Forwarder
from nvrxlog.wire.spool import Spool

_RECORD = {
    "seq": 0,
    "ts": 0,
    "level": "INFO",
    "rank": 0,
    "local_rank": 0,
    "infra_rank": 0,
    "infra_local_rank": 0,
    "pid": 4242,
    "file": "train.py",
    "line": 42,
    "msg": "step 1234 loss 0.1234 lr 3.00e-04",
    "w": "w0",
}


def fill_spools(root: str, nodes: int, per_node: int, batch: int = 1000) -> None:
    """Write ``per_node`` records per simulated node into its spool, in batches.

    Timestamps advance 25 us a record, as if each node logged 40,000 records/s,
    and each batch carries the watermark of its last record, so the streamer
    merges as the nodes send instead of holding everything to the end.
    """
    start_ns = time.time_ns()
    for n in range(nodes):
        spool = Spool(os.path.join(root, f"spool{n}"))
        for start in range(0, per_node, batch):
            records = [dict(_RECORD, seq=i, ts=start_ns + i * 25_000, rank=n) for i in range(start, start + batch)]
            spool.append(records, records[-1]["ts"])
        spool.close()


def _senders_main(endpoint: str, root: str, first: int, count: int, timeout: float) -> None:
    """In a child process: one forwarder per spool, all sharing one context.

    Every sender process starts at once, when ``root/go`` appears, so the
    clock (started at the first batch received) does not count the time the
    other process spent importing.
    """
    open(os.path.join(root, f"ready.{first}"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(root, "go")) and time.monotonic() < deadline:
        time.sleep(0.001)  # a start line, not synchronisation of results
    context = zmq.Context()
    forwarders = [
        Forwarder(endpoint, f"node{n}", os.path.join(root, f"spool{n}"), context=context).start()
        for n in range(first, first + count)
    ]
    for forwarder in forwarders:
        forwarder.stop(timeout)
    context.term()


def _start_senders(
    endpoint: str, root: str, nodes: int, processes: int, timeout: float, first: int = 0
) -> list[subprocess.Popen]:
    """Send spools ``first`` .. ``first + nodes - 1`` of ``root`` from ``processes`` processes, starting together."""
    per = -(-nodes // processes)
    procs = []
    end = first + nodes
    firsts = list(range(first, end, per))
    for start in firsts:
        code = (
            f"from benchmarks.bench_streamer import _senders_main; "
            f"_senders_main({endpoint!r}, {root!r}, {start}, {min(per, end - start)}, {timeout})"
        )
        procs.append(subprocess.Popen([sys.executable, "-c", code]))
    deadline = time.monotonic() + 60
    while not all(os.path.exists(os.path.join(root, f"ready.{first}")) for first in firsts):
        if time.monotonic() > deadline:
            raise RuntimeError("the sender processes did not start")
        time.sleep(0.005)
    open(os.path.join(root, "go"), "w").close()
    return procs


def bare_router(root: str, nodes: int, total: int) -> float:
    """Records/s through a ROUTER that acks but neither decodes nor writes (the transport's ceiling)."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    endpoint = router.bind_to_random_port("tcp://127.0.0.1")
    procs = _start_senders(f"tcp://127.0.0.1:{endpoint}", root, nodes, 2, 60)
    received = 0
    start = None
    while received < total:
        peer, kind, *payload = router.recv_multipart()
        if kind == b"H":
            router.send_multipart([peer, b"W", orjson.dumps({"credit": 8 << 20})])
        elif kind == b"B":
            start = start or time.perf_counter()
            for line in payload:
                received += int(line[line.index(b'"n":') + 4 : line.index(b",", line.index(b'"n":'))])
            last = int(payload[-1][5 : payload[-1].index(b",")])
            router.send_multipart([peer, b"A", orjson.dumps({"acked": last})])
        elif kind == b"P":
            router.send_multipart([peer, b"P"])
    elapsed = time.perf_counter() - start
    for proc in procs:
        proc.wait(60)
    context.destroy(linger=0)
    return total / elapsed


def ingest(work: str, nodes: int, per_node: int) -> dict[str, float]:
    """Records/s into one streamer from ``nodes`` flat-out nodes, and the bare ceiling."""
    total = nodes * per_node
    fill_spools(os.path.join(work, "a"), nodes, per_node)
    shutil.copytree(os.path.join(work, "a"), os.path.join(work, "b"))
    ceiling = bare_router(os.path.join(work, "b"), nodes, total)
    with Streamer("tcp://127.0.0.1:0", os.path.join(work, "cluster.log")) as streamer:
        procs = _start_senders(streamer.endpoint, os.path.join(work, "a"), nodes, 2, 120)
        while streamer.stats["batches"] == 0:
            time.sleep(0.0005)  # the benchmark's clock starts at the first batch received
        start = time.perf_counter()
        deadline = time.monotonic() + 300
        while streamer.stats["records"] < total and time.monotonic() < deadline:
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        for proc in procs:
            proc.wait(120)
    delivered = _node_lines(os.path.join(work, "cluster.log"))
    return {"records": total, "delivered": delivered, "rate": delivered / elapsed, "ceiling": ceiling}


def fill_churn(root: str, writers: int, steady: int, batch: int = 1000) -> None:
    """Spool 0: ``writers`` one-record writers, each named ended in its batch; spool 1: ``steady`` records of one.

    Stamped 25 us apart and ending now, so no stamp is ahead of the clock.
    """
    start_ns = time.time_ns() - (writers + steady) * 25_000
    spool = Spool(os.path.join(root, "spool0"))
    for first in range(0, writers, batch):
        ids = [f"loader.{i}" for i in range(first, min(first + batch, writers))]
        records = [dict(_RECORD, w=w, ts=start_ns + (first + i) * 25_000) for i, w in enumerate(ids)]
        spool.append(records, records[-1]["ts"], ended=ids)
    spool.close()
    start_ns += writers * 25_000
    spool = Spool(os.path.join(root, "spool1"))
    for first in range(0, steady, batch):
        records = [dict(_RECORD, seq=i, ts=start_ns + i * 25_000) for i in range(first, min(first + batch, steady))]
        spool.append(records, records[-1]["ts"])
    spool.close()


def _steady_rate(streamer: Streamer, root: str, steady: int) -> float:
    """Records/s of spool 1 (the steady writer) into ``streamer``, from its first batch to its last record."""
    records, batches = streamer.stats["records"], streamer.stats["batches"]
    procs = _start_senders(streamer.endpoint, root, 1, 1, 120, first=1)
    while streamer.stats["batches"] == batches:
        time.sleep(0.0005)  # the clock starts at the first batch received
    start = time.perf_counter()
    deadline = time.monotonic() + 300
    while streamer.stats["records"] < records + steady and time.monotonic() < deadline:
        time.sleep(0.002)
    elapsed = time.perf_counter() - start
    for proc in procs:
        proc.wait(120)
    return (streamer.stats["records"] - records) / elapsed


def churn(work: str, writers: int, steady: int) -> dict[str, float]:
    """A steady writer's records/s after ``writers`` one-record writers came and went, and into a fresh streamer."""
    root = os.path.join(work, "churn")
    fill_churn(root, writers, steady)
    fresh = os.path.join(work, "churn-fresh")
    shutil.copytree(os.path.join(root, "spool1"), os.path.join(fresh, "spool1"))
    with Streamer("tcp://127.0.0.1:0", os.path.join(work, "fresh.log")) as streamer:
        alone = _steady_rate(streamer, fresh, steady)
    with Streamer("tcp://127.0.0.1:0", os.path.join(work, "churn.log")) as streamer:
        procs = _start_senders(streamer.endpoint, root, 1, 1, 300)
        for proc in procs:
            proc.wait(600)  # every one-record writer is written and acknowledged
        after = _steady_rate(streamer, root, steady)
        checkpoint = os.path.getsize(streamer.checkpoint_path)
    return {"writers": writers, "steady": steady, "alone": alone, "after": after, "checkpoint": checkpoint}


def _node_lines(path: str) -> int:
    """Lines of a cluster file that are the nodes' records (not the streamer's own notices)."""
    with open(path, "rb") as f:
        return sum(1 for line in f if b"nvrxlog streamer: " not in line)


def scale(work: str, nodes: int, per_node: int) -> dict[str, float]:
    """``nodes`` simulated nodes into one streamer process: delivered count and peak RSS."""
    root = os.path.join(work, "scale")
    fill_spools(root, nodes, per_node, batch=per_node)
    out = os.path.join(work, "scale.log")
    streamer, endpoint = start_stream(out)
    proc = psutil.Process(streamer.pid)
    peak = proc.memory_info().rss
    start = time.perf_counter()
    senders = _start_senders(endpoint, root, nodes, 8, 120)
    while any(s.poll() is None for s in senders):
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    streamer.terminate()
    streamer.wait(60)
    delivered = _node_lines(out)
    return {
        "nodes": nodes,
        "records": nodes * per_node,
        "delivered": delivered,
        "peak_rss_mb": peak / 2**20,
        "seconds": elapsed,
    }


_RANK = """
import os, sys, time
from nvrxlog import setup_logger
log = setup_logger()
rate, count = float(sys.argv[1]), int(sys.argv[2])
next_at = time.monotonic()
for i in range(count):
    log.info("t=%d", time.time_ns())
    next_at += 1.0 / rate
    delay = next_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"""


def latency(work: str, ranks: int, rate: float, seconds: float) -> dict[str, float]:
    """p50/p99 seconds from logger.info() to the per-node file and to the cluster file."""
    tmp, logs = os.path.join(work, "lat-tmp"), os.path.join(work, "lat-logs")
    node_file = os.path.join(logs, "nvrx_log_lat.log")
    cluster, node = [], []
    with Streamer("tcp://127.0.0.1:0", os.path.join(work, "lat-cluster.log")) as streamer:
        context = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.connect(streamer.pub_endpoint)
        sub.subscribe(b"rec")
        deadline = time.monotonic() + 30
        while not streamer.watched and time.monotonic() < deadline:
            time.sleep(0.01)  # polling: the subscription reaches the PUB socket before measuring
        with NodeAggregator(tmp, logs, "lat", streamer.endpoint):
            env = dict(os.environ, NVRX_NODE_LOCAL_TMPDIR=tmp, NVRX_LOG_AGGREGATOR="external")
            procs = [
                subprocess.Popen(
                    [sys.executable, "-c", _RANK, str(rate), str(int(rate * seconds))],
                    env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                )
                for r in range(ranks)
            ]
            offset = 0
            while any(p.poll() is None for p in procs):
                if sub.poll(5):
                    now = time.time_ns()
                    for record in orjson.loads(sub.recv_multipart()[1]):
                        if record["msg"].startswith("t="):
                            cluster.append(now - int(record["msg"][2:]))
                if os.path.exists(node_file):
                    with open(node_file, "rb") as f:
                        f.seek(offset)
                        data = f.read()
                    cut = data.rfind(b"\n") + 1
                    offset += cut
                    now = time.time_ns()
                    for line in data[:cut].splitlines():
                        at = line.rfind(b" t=")
                        if at > 0:
                            node.append(now - int(line[at + 3 :]))
        context.destroy(linger=0)

    def pct(values: list[int], q: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))] / 1e9 if values else float("nan")

    return {
        "node_p50": pct(node, 0.5),
        "node_p99": pct(node, 0.99),
        "cluster_p50": pct(cluster, 0.5),
        "cluster_p99": pct(cluster, 0.99),
        "samples": len(cluster),
    }


@contextlib.contextmanager
def _without_syncs() -> Iterator[None]:
    """The baseline of durable acks: fsync and fdatasync do nothing (what an ack cost before they were made)."""
    real = os.fsync, os.fdatasync
    os.fsync = os.fdatasync = lambda fd: None
    try:
        yield
    finally:
        os.fsync, os.fdatasync = real


def report(quick: bool = False) -> str:
    """The streamer table, as markdown."""
    work = tempfile.mkdtemp(prefix="nvrxlog-bench-stream-")
    try:
        with _without_syncs():
            loose = ingest(os.path.join(work, "loose"), 16, 10_000 if quick else 40_000)
            loose_lat = latency(os.path.join(work, "loose"), 8, 1000, 5 if quick else 15)
        got = ingest(work, 16, 10_000 if quick else 40_000)
        gone = churn(work, 30_000 if quick else 300_000, 300_000 if quick else 1_000_000)
        big = scale(work, 128 if quick else 512, 200)
        lat = latency(work, 8, 1000, 5 if quick else 15)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return f"streamer ({machine()})\n\n" + (
        table(
            ["measure", "value", "vs baseline"],
            [
                [
                    f"ingest, 16 nodes flat out, {got['records']:,} records",
                    f"{got['rate']:,.0f} rec/s",
                    f"{got['rate'] / got['ceiling']:.2f}x bare ROUTER ({got['ceiling']:,.0f} rec/s)",
                ],
                [
                    "durable acks (a sync per flush, node and streamer): ingest",
                    f"{got['rate'] / loose['rate']:.2f}x of no syncs",
                    f"{got['rate']:,.0f} vs {loose['rate']:,.0f} rec/s",
                ],
                [
                    "durable acks: cluster-file latency",
                    f"p99 {lat['cluster_p99'] * 1e3:.0f} ms vs {loose_lat['cluster_p99'] * 1e3:.0f} ms",
                    f"p50 {lat['cluster_p50'] * 1e3:.0f} ms vs {loose_lat['cluster_p50'] * 1e3:.0f} ms",
                ],
                [
                    f"ingest of one steady writer ({gone['steady']:,} records) "
                    f"after {gone['writers']:,} one-record writers came and went",
                    f"{gone['after']:,.0f} rec/s (checkpoint {gone['checkpoint']:,} bytes)",
                    f"{gone['after'] / gone['alone']:.2f}x into a fresh streamer ({gone['alone']:,.0f} rec/s)",
                ],
                [
                    f"scale: {big['nodes']} nodes x 200 records",
                    f"{big['delivered']:,}/{big['records']:,} delivered in {big['seconds']:.1f}s",
                    f"peak streamer RSS {big['peak_rss_mb']:.0f} MiB",
                ],
                [
                    "latency to per-node file, 8 ranks x 1,000 rec/s",
                    f"p50 {lat['node_p50'] * 1e3:.0f} ms",
                    f"p99 {lat['node_p99'] * 1e3:.0f} ms",
                ],
                [
                    "latency to cluster file (live PUB)",
                    f"p50 {lat['cluster_p50'] * 1e3:.0f} ms",
                    f"p99 {lat['cluster_p99'] * 1e3:.0f} ms ({lat['samples']:,} samples)",
                ],
            ],
        )
    )


def main() -> None:
    cli(__doc__, report)


if __name__ == "__main__":
    main()
