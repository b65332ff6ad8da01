"""Run a Python program as on a host whose wall clock is set SKEW seconds off.

``python _skewed_clock.py SKEW -m MODULE ARGS...`` or ``python _skewed_clock.py SKEW SCRIPT ARGS...``

Every wall-clock read in the process (``time.time``, ``time.time_ns``, and
so logging's record times) is shifted before anything else is imported;
monotonic time is not (a host's uptime does not depend on its clock
setting). The tests run a whole simulated node this way, its ranks and its
aggregator, as real processes, with no test hook in nvrxlog itself.
"""

from __future__ import annotations

import runpy
import sys
import time


def main() -> None:
    skew_ns = int(float(sys.argv[1]) * 1e9)
    real_ns, real = time.time_ns, time.time
    time.time_ns = lambda: real_ns() + skew_ns
    time.time = lambda: real() + skew_ns / 1e9
    if sys.argv[2] == "-m":
        sys.argv = [sys.argv[3], *sys.argv[4:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[2:]
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
