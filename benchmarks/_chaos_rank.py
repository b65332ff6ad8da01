"""A chaos-run rank: logs from its loop, a signal handler and finalizers, across reset storms and a clock step."""

from __future__ import annotations

import gc
import itertools
import logging
import os
import signal
import sys
import time

from nvrxlog import setup_logger


class _ClockStep(logging.Filter):
    """Stamps records an hour ahead for a while, then as they are: a clock that stepped back by an hour."""

    def __init__(self, start: int, end: int) -> None:
        super().__init__()
        self.window = range(start, end)
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.count += 1
        if self.count in self.window:
            record.created += 3600
        return True


def main() -> None:
    count, rate = int(sys.argv[1]), float(sys.argv[2])
    rank = os.environ["RANK"]
    log = setup_logger()
    ticks = itertools.count()
    freed = itertools.count()

    def on_alarm(signum: int, frame: object) -> None:
        log.info("r%s tick %d", rank, next(ticks))

    class Resource:
        def __init__(self) -> None:
            self.me = self  # a cycle, so the cyclic GC runs __del__, possibly inside an emit

        def __del__(self) -> None:
            log.info("r%s freed %d", rank, next(freed))

    step = _ClockStep(count // 3, count // 2)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
    gc.set_threshold(100)
    for i in range(count):
        if i % 1000 == 500:
            for _ in range(5):  # a storm of resets, as subprocess set-up code does
                log = setup_logger(force_reset=True)
            for handler in log.handlers:
                handler.addFilter(step)
        elif i == 0:
            for handler in log.handlers:
                handler.addFilter(step)
        log.info("r%s main %d", rank, i)
        if i % 20 == 0:
            Resource()
            time.sleep(20 / rate)  # pacing: the run lasts long enough for the chaos around it
    signal.setitimer(signal.ITIMER_REAL, 0)
    gc.collect()
    print(next(ticks), next(freed), flush=True)  # how many of each were logged


if __name__ == "__main__":
    main()
