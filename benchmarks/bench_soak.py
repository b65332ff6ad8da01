"""Does the streamer stay flat for minutes of nodes, hostile peers, restarts and short-lived writers?

One ``nvrxlog stream`` takes, at once: simulated nodes forwarding steady
writers and, over the run, many short-lived writers of one record each (data
loader workers, per-epoch subprocesses); a real node (``nvrxlog aggregate``
and a rank) whose aggregator is killed with SIGKILL and restarted every few
seconds; and a hostile peer that ignores credit and floods garbage frames,
records stamped ten years ahead and seqs no writer reaches. Sampled every
second: the streamer's RSS and how far the cluster file lags the newest
record sent. At the end every honest record must be in the cluster file
exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import psutil
import zmq

from benchmarks._procs import clean_env, start_stream
from benchmarks._table import cli, machine, table
from nvrxlog.wire.protocol import PROTOCOL_VERSION

HERE = Path(__file__).resolve().parent
_TEN_YEARS_NS = 10 * 365 * 86_400 * 10**9


def _hostile(endpoint: str, stop: threading.Event, sent: Counter) -> None:
    """A peer that says hello, then floods without reading acks; says hello again when told to."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndhwm = 100
    sock.connect(endpoint)
    batch = 0
    record = {"level": "ERROR", "rank": 0, "local_rank": 0, "infra_rank": None, "infra_local_rank": None}
    record.update({"pid": 1, "file": "evil.py", "line": 1, "w": "steady"})
    try:
        while not stop.is_set():
            # A live node's name first (refused), then one of its own.
            sock.send_multipart([b"H", orjson.dumps({"node": "soak0", "v": PROTOCOL_VERSION, "sid": "f" * 32})])
            sock.send_multipart([b"H", orjson.dumps({"node": "evil", "v": PROTOCOL_VERSION, "sid": "e" * 32})])
            for _ in range(20):
                batch += 1
                future = time.time_ns() + _TEN_YEARS_NS
                records = [dict(record, seq=batch * 1000 + i, ts=future, msg="future") for i in range(200)]
                records.append(dict(record, seq=10**15 + batch * 10**12, ts=time.time_ns(), msg="jump", w="jumper"))
                frames = [b"B", orjson.dumps({"b": batch, "c": future, "n": 201, "r": records})]
                frames += [os.urandom(200), b"{broken", b"[" * 3000]
                try:
                    sock.send_multipart(frames, zmq.NOBLOCK)
                    sent["batches"] += 1
                except zmq.Again:
                    sent["blocked"] += 1
                sock.send_multipart([os.urandom(8), os.urandom(64)], zmq.NOBLOCK)  # junk kinds
                while sock.poll(0):
                    sent["replies"] += 1
                    sock.recv_multipart()
            stop.wait(0.1)
    except zmq.ZMQError:
        pass
    finally:
        context.destroy(linger=0)


class _Tail:
    """Reads the cluster file as it grows: counts honest records, the newest stamp, the lag."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.seen: Counter = Counter()
        self.newest = 0

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            record = orjson.loads(line)
            node, msg = record.get("node", ""), str(record.get("msg", ""))
            if node.startswith("soak") and msg.startswith(("steady ", "short ")) or msg.startswith("soak "):
                self.seen[node, msg] += 1
                self.newest = max(self.newest, record["ts"])


def run(
    nodes: int = 16, seconds: float = 180, rate: float = 300, short: int = 100_000, restart_every: float = 4.0
) -> dict[str, object]:
    """Run the soak; return the RSS and lag curves and what the cluster file holds."""
    work = Path(tempfile.mkdtemp(prefix="nvrxlog-soak-"))
    cluster = work / "cluster.log"
    stream, endpoint = start_stream(cluster, "--json")
    live = {"streamer": stream}
    stop = threading.Event()
    try:
        tmp, logs = work / "tmp", work / "logs"
        aggregate = [sys.executable, "-m", "nvrxlog", "aggregate", "--tmp-dir", str(tmp), "--log-dir", str(logs)]
        aggregate += ["--node-id", "soak-real", "--streamer", endpoint, "--json"]
        env = clean_env(NVRX_NODE_LOCAL_TMPDIR=tmp, NVRX_LOG_AGGREGATOR="external", NVRX_NODE_ID="soak-real")
        rank_count = int(seconds * 100)
        rank_code = (
            "import sys, time; from nvrxlog import setup_logger; log = setup_logger(); n = int(sys.argv[1])\n"
            "for i in range(n):\n    log.info(f'soak {i}'); time.sleep(0.01)\n"
        )
        rank = live["rank"] = subprocess.Popen(
            [sys.executable, "-c", rank_code, str(rank_count)], env=dict(env, RANK="0", LOCAL_RANK="0")
        )
        agg = live["aggregator"] = subprocess.Popen(
            aggregate, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        senders = live["senders"] = subprocess.Popen(
            [sys.executable, str(HERE / "_soak_nodes.py"), endpoint, str(work), str(nodes - 1), str(seconds)]
            + [str(rate), str(short)],
            env=clean_env(PYTHONPATH=os.pathsep.join(sys.path)),
            stdout=subprocess.PIPE,
            text=True,
        )
        hostile_sent: Counter = Counter()
        hostile = threading.Thread(target=_hostile, args=(endpoint, stop, hostile_sent), daemon=True)
        hostile.start()
        tail = _Tail(cluster)
        curve: list[tuple[float, float, float]] = []  # (seconds in, streamer RSS MiB, cluster lag s)
        restarts = 0
        started = last_restart = time.monotonic()
        streamer = psutil.Process(stream.pid)
        while senders.poll() is None:
            time.sleep(1.0)  # the sampling interval of the curves
            now = time.monotonic()
            tail.poll()
            lag = (time.time_ns() - tail.newest) / 1e9 if tail.newest else float("nan")
            curve.append((now - started, streamer.memory_info().rss / 2**20, lag))
            if rank.poll() is None and now - last_restart > restart_every:
                agg.send_signal(signal.SIGKILL)
                agg.wait(timeout=30)
                agg = live["aggregator"] = subprocess.Popen(
                    aggregate, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                restarts += 1
                last_restart = now
        stop.set()
        hostile.join(30)
        sent = orjson.loads(senders.stdout.read())
        rank.wait(timeout=120)
        agg.send_signal(signal.SIGTERM)
        agg.wait(timeout=120)
        stream.send_signal(signal.SIGTERM)
        stream.wait(timeout=120)
        tail.poll()
        expected = {(f"soak{n}", f"steady {i}") for n in range(nodes - 1) for i in range(sent["steady"][n])}
        shorts = {msg for (_, msg) in tail.seen if msg.startswith("short ")}
        expected |= {("soak-real", f"soak {i}") for i in range(rank_count)}
        got = {key for key in tail.seen if not key[1].startswith("short ")}
        result = {
            "nodes": nodes,
            "seconds": seconds,
            "records": sum(sent["steady"]) + sum(sent["short"]) + rank_count,
            "short-lived writers": sum(sent["short"]),
            "restarts": restarts,
            "hostile batches": hostile_sent["batches"],
            "missing": len(expected - got) + (sum(sent["short"]) - len(shorts)),
            "doubled": sum(n - 1 for n in tail.seen.values() if n > 1),
            "undelivered": sent["undelivered"],
            # What the streamer keeps per writer: bounded by the live ones, not by all ever seen.
            "checkpoint bytes": (work / ".cluster.log.ckpt").stat().st_size,
            "curve": curve,
        }
    finally:
        # Whatever happened, nothing this started is left running.
        stop.set()
        for proc in live.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return result


def _points(curve: list[tuple[float, float, float]], column: int, parts: int = 6) -> str:
    if not curve:
        return "-"
    picks = [curve[min(len(curve) - 1, i * len(curve) // parts)] for i in range(parts)] + [curve[-1]]
    return ", ".join(f"{row[0]:.0f}s {row[column]:.{0 if column == 1 else 1}f}" for row in picks)


def report(quick: bool = False) -> str:
    """The soak table, as markdown."""
    got = run(seconds=40, short=20_000) if quick else run()
    curve = got["curve"]
    rss = [row[1] for row in curve]
    lags = sorted(row[2] for row in curve if row[2] == row[2])
    rows = [
        ["nodes, seconds", f"{got['nodes']} nodes ({got['restarts']} restarts of one), {got['seconds']:.0f}s", ""],
        ["records sent", f"{got['records']:,} ({got['short-lived writers']:,} short-lived writers)", ""],
        ["hostile batches (credit ignored, 10 y ahead, seq jumps, junk)", f"{got['hostile batches']:,}", ""],
        ["cluster file", f"{got['missing']} missing, {got['doubled']} doubled", f"{got['undelivered']} undelivered"],
        ["streamer checkpoint at the end", f"{got['checkpoint bytes']:,} bytes", "per-writer state retired"],
        ["streamer RSS (MiB) over the run", _points(curve, 1), f"min {min(rss):.0f}, max {max(rss):.0f}"],
        [
            "cluster file lag behind the newest record (s)",
            _points(curve, 2),
            f"median {lags[len(lags) // 2]:.1f}, max {lags[-1]:.1f}" if lags else "-",
        ],
    ]
    return f"soak ({machine()})\n\n" + table(["measure", "value", "note"], rows)


def main() -> None:
    cli(__doc__, report)


if __name__ == "__main__":
    main()
