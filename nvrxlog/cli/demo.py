"""``nvrxlog demo``: a small simulated multi-node job on this machine."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

from nvrxlog.cli.summary import plural
from nvrxlog.errors import ConfigError

__all__ = ["run_demo"]


def run_demo(work_dir: str | None, *, nodes: int = 2, ranks: int = 4, steps: int = 50, live: bool = False) -> int:
    """Run a streamer and ``nodes`` simulated nodes of ``ranks`` ranks; print where the outputs are.

    With ``live``, ``nvrxlog tail`` runs beside the job and shows the
    cluster's records as they arrive.
    """
    from nvrxlog.node.aggregator import NodeAggregator
    from nvrxlog.streamer.service import Streamer

    if nodes < 1 or ranks < 1 or steps < 1:
        raise ConfigError("--nodes, --ranks and --steps must be at least 1")
    work = os.path.abspath(work_dir or tempfile.mkdtemp(prefix="nvrxlog-demo-"))
    log_dir = os.path.join(work, "logs")
    cluster = os.path.join(work, "cluster.log")
    print(
        f"nvrxlog demo: a streamer and {plural(nodes, 'node')} x {plural(ranks, 'rank')}, "
        f"{plural(steps, 'step')}, in {work}",
        flush=True,
    )
    started = time.monotonic()
    aggregators = []
    viewer = None
    with Streamer("tcp://127.0.0.1:0", cluster) as streamer:
        if live:
            print(f"  live view (nvrxlog tail --connect {streamer.endpoint}):", flush=True)
            viewer = subprocess.Popen([sys.executable, "-m", "nvrxlog", "tail", "--connect", streamer.endpoint])
            # The ranks start once the view listens, so it shows the job from its first line.
            deadline = time.monotonic() + 10
            while not streamer.watched and viewer.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
        procs = []
        try:
            for n in range(nodes):
                node = f"node{n + 1:03d}"
                tmp = os.path.join(work, "tmp", node)
                aggregators.append(NodeAggregator(tmp, log_dir, node, streamer.endpoint).start())
                for local in range(ranks):
                    env = dict(
                        os.environ,
                        NVRX_NODE_LOCAL_TMPDIR=tmp,
                        NVRX_LOG_AGGREGATOR="external",
                        NVRX_NODE_ID=node,
                        RANK=str(n * ranks + local),
                        LOCAL_RANK=str(local),
                        WORLD_SIZE=str(nodes * ranks),
                        SLURM_PROCID=str(n * ranks + local),
                        SLURM_LOCALID=str(local),
                    )
                    procs.append(
                        subprocess.Popen([sys.executable, "-m", "nvrxlog.cli.demo", str(steps), str(live)], env=env)
                    )
            failed = sum(1 for p in procs if p.wait() != 0)
        finally:
            for aggregator in aggregators:
                aggregator.stop(drain=True)
    if viewer is not None:
        viewer.send_signal(signal.SIGINT)
        viewer.wait(10)
    levels: Counter[str] = Counter()
    for (_, level), count in streamer.levels.items():
        levels[str(level)] += count
    if failed:
        outcome = f"{plural(failed, 'rank')} of {len(procs)} failed"
    else:
        outcome = "the rank exited 0" if len(procs) == 1 else f"all {len(procs)} ranks exited 0"
    print(f"\nfinished in {time.monotonic() - started:.1f}s: {outcome}")
    print("per-node files:")
    for aggregator in aggregators:
        print(f"  {aggregator.out_path}  ({plural(aggregator.stats['records'], 'record')})")
    print(
        f"cluster-wide file:\n  {cluster}  ({plural(streamer.stats['records'], 'record')}: "
        f"{levels['ERROR']} ERROR, {levels['WARNING']} WARNING)"
    )
    if not live:
        print(f"\nlast lines of {os.path.basename(cluster)} (run with --live to watch them arrive):")
        with open(cluster, encoding="utf-8", errors="replace") as f:
            for line in f.readlines()[-8:]:
                print("  " + line.rstrip("\n"))
    print(
        "\nin a real job, run `nvrxlog stream` once, set NVRX_LOG_STREAMER on every rank and watch with "
        "`nvrxlog tail --connect ...` while it runs; see slurm/README.md"
    )
    return 1 if failed else 0


def _rank_main(steps: int, live: bool) -> None:
    from nvrxlog import setup_logger

    log = setup_logger()
    rank = int(os.environ["RANK"])
    rng = random.Random(rank)
    log.info("rank %d starting: world size %s", rank, os.environ.get("WORLD_SIZE"))
    loss = 2.5
    for step in range(steps):
        loss *= 0.97 + rng.random() * 0.02
        log.info("step %d loss %.4f lr %.2e", step, loss, 3e-4)
        time.sleep(0.1 if live else 0.005)  # live: slow enough to watch
        if rank == 1 and step == steps // 2:
            log.warning("gradient norm %.1f above clip threshold", 12.5)
        if rank == 2 and step == steps // 2:
            try:
                {}["missing_checkpoint_key"]
            except KeyError:
                log.exception("failed to restore optimizer state; continuing from scratch")
    log.info("rank %d done", rank)


if __name__ == "__main__":
    _rank_main(int(sys.argv[1]), sys.argv[2] == "True")
