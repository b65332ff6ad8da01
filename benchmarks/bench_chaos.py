"""Does everything still arrive exactly once when everything goes wrong at once?

Ranks log from their loop, a 200 Hz signal handler and finalizers, across
force_reset storms and a clock that steps back an hour; meanwhile the node's
aggregator (``nvrxlog aggregate``, forwarding to a streamer) is killed with
SIGKILL and restarted every few seconds, and the log dir (a small tmpfs, as
root) fills and empties. At the end both the per-node and the cluster file
must hold every record exactly once; the table gives what each holds and the
RSS of every process over the run (sampled every half second).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson
import psutil

from benchmarks._procs import clean_env, start_stream
from benchmarks._table import cli, machine, table

HERE = Path(__file__).resolve().parent


def _mount(path: Path, size: str) -> bool:
    path.mkdir(parents=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)]
    return subprocess.run(command, capture_output=True).returncode == 0


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def _count(records: list[dict]) -> Counter:
    return Counter((r.get("node"), r.get("rank"), r["msg"]) for r in records if " main " in str(r.get("msg")))


def run(ranks: int = 4, count: int = 20_000, rate: float = 1000.0, kill_every: float = 3.0) -> dict[str, object]:
    """Run the chaos; return what each file holds and the RSS samples."""
    work = Path(tempfile.mkdtemp(prefix="nvrxlog-chaos-"))
    logs = work / "logs"
    tmpfs = _mount(logs, "8m")
    tmp = work / "tmp"
    cluster = work / "cluster.log"
    stream = agg = None
    procs: list[subprocess.Popen] = []
    try:
        stream, endpoint = start_stream(cluster, "--json")
        aggregate = [sys.executable, "-m", "nvrxlog", "aggregate", "--tmp-dir", str(tmp), "--log-dir", str(logs)]
        aggregate += ["--node-id", "n0", "--streamer", endpoint, "--json"]
        env = clean_env(NVRX_NODE_LOCAL_TMPDIR=tmp, NVRX_LOG_AGGREGATOR="external", NVRX_NODE_ID="n0")

        def start_aggregator() -> subprocess.Popen:
            return subprocess.Popen(aggregate, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        agg = start_aggregator()
        procs += [
            subprocess.Popen(
                [sys.executable, str(HERE / "_chaos_rank.py"), str(count), str(rate)],
                env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for r in range(ranks)
        ]
        rss: dict[str, list[float]] = {"streamer": [], "aggregator": [], "ranks": []}
        kills = fills = 0
        filler = None
        started = last_kill = time.monotonic()
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)  # the sampling interval of the curve
            now = time.monotonic()
            for name, group in (("streamer", [stream]), ("aggregator", [agg]), ("ranks", procs)):
                for proc in group:
                    try:
                        mib = psutil.Process(proc.pid).memory_info().rss / 2**20
                    except psutil.Error:
                        continue
                    if mib:  # a process that has just exited shows 0
                        rss[name].append(mib)
            if now - last_kill > kill_every:
                agg.send_signal(signal.SIGKILL)
                agg.wait(timeout=30)
                agg = start_aggregator()
                kills += 1
                last_kill = now
            if tmpfs and filler is None and now - started > 2 and fills == 0:
                filler, fills = _fill(logs), 1
            elif filler is not None and now - started > 5:
                filler.unlink()
                filler = None
        if filler is not None:
            filler.unlink()
        logged = [tuple(map(int, p.stdout.read().split())) for p in procs]
        agg.send_signal(signal.SIGTERM)
        agg.wait(timeout=120)
        stream.send_signal(signal.SIGTERM)
        stream.wait(timeout=60)
        node, cluster_records = _lines(logs / "nvrx_log_n0.log"), _lines(cluster)
        expected = {("n0", r, f"r{r} main {i}") for r in range(ranks) for i in range(count)}
        result = {
            "ranks": ranks,
            "count": count,
            "kills": kills,
            "disk filled": bool(fills),
            "ticks and finalizer records": sum(t + f for t, f in logged),
            "rss": rss,
        }
        for name, records in (("per-node file", node), ("cluster file", cluster_records)):
            got = _count(records)
            result[name] = {
                "missing": len(expected - set(got)),
                "doubled": sum(n - 1 for n in got.values() if n > 1),
                "side records": len(records) - sum(got.values()),
            }
    finally:
        # Whatever happened, nothing this started is left running or mounted.
        for proc in (stream, agg, *procs):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)
        if tmpfs:
            subprocess.run(["umount", "-l", str(logs)], check=False)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return result


def report(quick: bool = False) -> str:
    """The chaos table, as markdown."""
    result = run(ranks=2 if quick else 4, count=10_000 if quick else 30_000)
    rows = [[name, v["missing"], v["doubled"]] for name, v in result.items() if name.endswith("file")]
    curve = result["rss"]
    rss_rows = [
        [name, f"{min(s):.0f}", f"{max(s):.0f}", " ".join(f"{x:.0f}" for x in s[:: max(1, len(s) // 12)])]
        for name, s in curve.items()
        if s
    ]
    head = (
        f"{result['ranks']} ranks x {result['count']:,} loop records, plus "
        f"{result['ticks and finalizer records']:,} from signal handlers and finalizers; "
        f"aggregator killed {result['kills']} times; log dir filled: {result['disk filled']} ({machine()})"
    )
    return (
        head
        + "\n\n"
        + table(["file", "loop records missing", "doubled"], rows)
        + "\n\n"
        + table(["process", "RSS min (MiB)", "RSS max (MiB)", "RSS curve (MiB)"], rss_rows)
    )


def main() -> None:
    cli(__doc__, report)


if __name__ == "__main__":
    main()
