"""The fd-capture helper process: reads a rank's stdout/stderr pipes, writes records.

It is a separate process so that a rank that crashes still has its last words
recorded: the pipes reach EOF when the rank dies (and every process that
inherited them), and the helper drains them. A Python traceback in the
output is one ERROR record, not one record per line (``tracebacks.py``).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import sys

from nvrxlog.rank.progress import Frames, keep_from_last_frame
from nvrxlog.rank.tracebacks import Block, LineGrouper

# A traceback's lines arrive together; one whose next line has not come within
# this long is complete (or its writer died) and is recorded as it is.
_TRACEBACK_QUIET_S = 0.2


def _helper_main(out_fd: int, err_fd: int, echo: bool) -> None:
    """The fd-capture helper: pipes in, records out, until both pipes reach EOF."""
    from nvrxlog.rank.setup import never_host, setup_logger

    # Launchers stop a rank by signalling its whole process group (torchrun's
    # killpg, a terminal's Ctrl-C), which holds this helper too. It must
    # outlive the rank to record its last words, and it ends by itself once
    # every process holding the pipes is gone (EOF).
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)

    # In thread mode the helper watches the node's aggregator like a rank that
    # does not host it, and at its exit (EOF: its rank is gone, maybe killed
    # by a signal with its peers) starts a successor if none serves the node.
    never_host()
    logger = setup_logger(node_local_tmp_prefix="fd")
    names = {out_fd: ("<stdout>", logging.INFO, 1), err_fd: ("<stderr>", logging.WARNING, 2)}
    partial = {out_fd: b"", err_fd: b""}
    groupers = {out_fd: LineGrouper(), err_fd: LineGrouper()}
    frames = {out_fd: Frames(), err_fd: Frames()}
    selector = selectors.DefaultSelector()
    for fd in names:
        os.set_blocking(fd, True)
        selector.register(fd, selectors.EVENT_READ)
    open_fds = set(names)

    def emit(fd: int, blocks: list[Block]) -> None:
        name, level, _ = names[fd]
        for block in blocks:
            if block.is_traceback:
                where, line, block_level = block.file or name, block.line, logging.ERROR
            else:
                where, line, block_level = name, 0, level
            logger.handle(logger.makeRecord(logger.name, block_level, where, line, block.text, None, None))

    def take(fd: int, raw: bytes) -> None:
        text = frames[fd].finished(raw.decode("utf-8", "backslashreplace"))
        if text is not None:
            emit(fd, groupers[fd].feed(text))

    while open_fds:
        holding = any(groupers[fd].holding for fd in open_fds)
        events = selector.select(_TRACEBACK_QUIET_S if holding else None)
        if not events:
            for fd in open_fds:
                emit(fd, groupers[fd].flush())
            continue
        for key, _ in events:
            fd = key.fd
            chunk = os.read(fd, 65536)
            if echo and chunk:
                os.write(names[fd][2], chunk)
            if not chunk:
                selector.unregister(fd)
                open_fds.discard(fd)
                if partial[fd]:
                    take(fd, partial[fd])  # a last line without its newline (a crash's last words)
                emit(fd, groupers[fd].flush())
                continue
            lines = (partial[fd] + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                take(fd, line)
            if b"\r" in rest:  # a progress bar: its latest frame now and then, not all of them at the end
                rest = keep_from_last_frame(rest)
                frame = frames[fd].unfinished(rest.decode("utf-8", "backslashreplace"))
                if frame is not None:
                    emit(fd, groupers[fd].feed(frame))
            partial[fd] = rest


if __name__ == "__main__":
    _helper_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1")
