"""The processes benchmarks start: a clean environment, and ``nvrxlog stream`` with its endpoint."""

from __future__ import annotations

import os
import subprocess
import sys


def clean_env(**extra: object) -> dict[str, str]:
    """This environment without the job's variables (a benchmark sets its own), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NVRX_", "SLURM", "RANK", "LOCAL_RANK"))}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_stream(out: str | os.PathLike, *extra: str) -> tuple[subprocess.Popen, str]:
    """``nvrxlog stream`` on a free loopback port writing ``out``; the process and the endpoint it bound."""
    stream = subprocess.Popen(
        [sys.executable, "-m", "nvrxlog", "stream", "--bind", "tcp://127.0.0.1:0", "--out", str(out), *extra],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return stream, stream.stdout.readline().split("listening on ")[1].split(",")[0]
