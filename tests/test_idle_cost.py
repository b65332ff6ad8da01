"""Services that have nothing to do sleep: no busy loop in the forwarder or the streamer."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil
import pytest
from _net import stream_cli
from conftest import aggregate_cli, node_env, run_worker, wait_for

# A spinning loop burns a whole core (~1.0 s of CPU per second); a sleeping
# service a few milliseconds. The bound sits far from both, so machine noise
# cannot decide the test.
_IDLE_WINDOW_S = 2.0
_MAX_CPU_S = 0.5


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _cpu_over_window(pid: int) -> float:
    proc = psutil.Process(pid)
    before = _cpu_seconds(proc)
    time.sleep(_IDLE_WINDOW_S)  # the measured interval itself, not synchronisation
    return _cpu_seconds(proc) - before


@pytest.mark.timeout(120)
def test_an_idle_forwarding_aggregator_and_its_streamer_sleep(tmp_path: Path) -> None:
    """After forwarding a record, an idle `nvrxlog aggregate` and `nvrxlog stream` use almost no CPU."""
    cluster = tmp_path / "cluster.log"
    stream, endpoint = stream_cli(cluster)
    agg = None
    try:
        agg = aggregate_cli(
            tmp_path / "tmp", tmp_path / "logs", "node001", "--streamer", endpoint, stdout=subprocess.DEVNULL
        )
        env = node_env(tmp_path, 0, NVRX_LOG_AGGREGATOR="external")
        assert run_worker("--count", 1, env=env).returncode == 0
        wait_for(lambda: cluster.exists() and "r0 i0" in cluster.read_text(), what="the record in the cluster file")
        assert _cpu_over_window(agg.pid) < _MAX_CPU_S
        assert _cpu_over_window(stream.pid) < _MAX_CPU_S
    finally:
        for proc in (agg, stream):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
