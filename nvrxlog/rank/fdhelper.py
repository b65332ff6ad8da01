"""The fd-capture helper process: reads a rank's stdout/stderr pipes, writes records.

It is a separate process so that a rank that crashes still has its last words
recorded: the pipes reach EOF when the rank dies, and the helper drains them.
"""

from __future__ import annotations

import logging
import os
import selectors
import sys


def _helper_main(out_fd: int, err_fd: int, echo: bool) -> None:
    """The fd-capture helper: pipes in, records out, until both pipes reach EOF."""
    from nvrxlog.rank.setup import setup_logger

    logger = setup_logger(node_local_tmp_prefix="fd")
    names = {out_fd: ("<stdout>", logging.INFO, 1), err_fd: ("<stderr>", logging.WARNING, 2)}
    partial = {out_fd: b"", err_fd: b""}
    selector = selectors.DefaultSelector()
    for fd in names:
        os.set_blocking(fd, True)
        selector.register(fd, selectors.EVENT_READ)
    open_fds = set(names)

    def emit(fd: int, raw: bytes) -> None:
        name, level, _ = names[fd]
        text = raw.decode("utf-8", "backslashreplace")
        logger.handle(logger.makeRecord(logger.name, level, name, 0, text, None, None))

    while open_fds:
        for key, _ in selector.select():
            fd = key.fd
            chunk = os.read(fd, 65536)
            if echo and chunk:
                os.write(names[fd][2], chunk)
            if not chunk:
                selector.unregister(fd)
                open_fds.discard(fd)
                if partial[fd]:
                    emit(fd, partial[fd])  # a last line without its newline (a crash's last words)
                continue
            lines = (partial[fd] + chunk).split(b"\n")
            partial[fd] = lines.pop()
            for line in lines:
                emit(fd, line)


if __name__ == "__main__":
    _helper_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1")
