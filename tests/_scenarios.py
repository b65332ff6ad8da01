"""Processes for the fork-safety tests: each scenario logs through setup_logger()."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time


def _child_logs(tag: str, count: int) -> None:
    from nvrxlog import setup_logger

    log = setup_logger()  # inherited under fork; configured afresh under spawn/forkserver
    for i in range(count):
        log.info("%s i%d", tag, i)


def multiprocessing_children(method: str, children: int, count: int) -> None:
    from nvrxlog import setup_logger

    log = setup_logger()
    log.info("parent before children")
    ctx = multiprocessing.get_context(method)
    procs = [ctx.Process(target=_child_logs, args=(f"child{k}", count)) for k in range(children)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        if proc.exitcode != 0:
            sys.exit(f"child exit code {proc.exitcode}")
    log.info("parent after children")


def fork_while_logging(forks: int, count: int) -> None:
    from nvrxlog import setup_logger

    log = setup_logger()
    stop = threading.Event()
    background = 0

    def chatter() -> None:
        nonlocal background
        while not stop.is_set():
            log.info("thread i%d", background)
            background += 1

    thread = threading.Thread(target=chatter)
    thread.start()
    pids = []
    for k in range(forks):
        pid = os.fork()
        if pid == 0:
            for i in range(count):
                log.info("fork%d i%d", k, i)
            os._exit(0)
        pids.append(pid)
    deadline = time.monotonic() + 60
    for pid in pids:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                if os.waitstatus_to_exitcode(status) != 0:
                    sys.exit(f"forked child failed: {status}")
                break
            if time.monotonic() > deadline:
                sys.exit("a forked child hung (deadlock after fork?)")
            time.sleep(0.01)
    stop.set()
    thread.join()
    log.info("thread total %d", background)


def forked_child_shuts_down(count: int) -> None:
    """A plain fork() child logs, then closes its handlers as interpreter exit
    does; the parent goes on logging into the file it had at the fork."""
    from nvrxlog import setup_logger

    log = setup_logger()
    for i in range(count):
        log.info("parent i%d", i)
    pid = os.fork()
    if pid == 0:
        for i in range(count):
            log.info("child i%d", i)
        logging.shutdown()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"forked child failed: {status}")
    for i in range(count, 2 * count):
        log.info("parent i%d", i)


def force_reset_subprocess(count: int) -> None:
    import subprocess

    from nvrxlog import setup_logger

    log = setup_logger()
    log.info("parent")
    code = (
        "from nvrxlog import setup_logger\n"
        "log = setup_logger(force_reset=True, node_local_tmp_prefix='sub')\n"
        f"[log.info('sub i%d', i) for i in range({count})]\n"
    )
    env = dict(os.environ, LOCAL_RANK="1", RANK="1")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    log.info("parent done")


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    globals()[name](*(a if not a.isdigit() else int(a) for a in args))
