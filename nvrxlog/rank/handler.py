"""The per-rank handler: the hot path of every training step.

One encode per record, copied into the mapped chunk of this process's own
temp file (``tempfiles.py``): the record is in the kernel when ``emit``
returns. Everything off that path (the first file, the end of a chunk,
rotation, ``write(2)`` mode, retention's losses) is ``TempFiles``' job.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from collections.abc import Callable

import orjson

from nvrxlog.config import LogConfig, current_ranks, sanitize_name
from nvrxlog.core.record import WriterId
from nvrxlog.rank.message import MAX_MESSAGE_CHARS, full_message, unformattable
from nvrxlog.rank.retention import Loss, Retention
from nvrxlog.rank.safe import SafeHandler
from nvrxlog.rank.tempfiles import TempFiles

__all__ = ["NodeLocalHandler"]

_QUOTE_CACHE = 1024
_RANK_LOOK_EVERY_S = 1.0


class NodeLocalHandler(SafeHandler):
    """Appends each record as one orjson line to this process's own temp file.

    A record is in the kernel when ``emit`` returns (see the module
    docstring for how it gets there). Files rotate by size;
    unconsumed files are deleted (and the loss written as a record) only when
    no aggregator holds the tmpdir's lock, or when one is far behind.
    """

    def __init__(
        self,
        tmp_dir: str,
        config: LogConfig,
        *,
        prefix: str | None = None,
    ) -> None:
        super().__init__()
        self.tmp_dir = tmp_dir
        self._config = config
        self._user_prefix = sanitize_name(prefix) if prefix else None
        self._max_bytes = config.max_file_size_kb * 1024
        self._max_files = config.max_log_files
        self._ranks = (config.rank, config.local_rank, config.infra_rank, config.infra_local_rank)
        self._start_writer()

    # -- writer identity and files -------------------------------------------------

    def _start_writer(self) -> None:
        pid = os.getpid()
        self.writer = WriterId(
            prefix=self._user_prefix or str(pid),
            local_rank=self._config.node_local_rank,
            pid=pid,
            start_ns=time.time_ns(),
        )
        retention = Retention(max_files=self._max_files, max_file_bytes=self._max_bytes, start_ns=self.writer.start_ns)
        self._files = TempFiles(self.tmp_dir, self.writer, max_bytes=self._max_bytes, retention=retention)
        # The mapped chunk of the current file (the same as _files.map): its
        # position is where the next record goes. None (no file yet, or
        # write(2) mode) sends records to _write_slow.
        self._map: mmap.mmap | None = None
        self._seq = 0
        self._quoted: dict[str, bytes] = {}
        self._fill_template()
        self.lost_records = 0
        if None in self._ranks[:2] and "emit" not in vars(self):
            # Ranks a launcher sets later (Lightning's LOCAL_RANK, torch.distributed's rank) are
            # looked up once a second until known; then this shadow goes and emit is as before.
            self._next_look = 0.0
            self.emit = self._emit_until_ranks_known  # type: ignore[method-assign]

    @property
    def ranks(self) -> tuple[int | None, ...]:
        """(rank, local rank, infra rank, infra local rank) as this writer labels its records now."""
        return self._ranks

    def _fill_template(self) -> None:
        rank, local_rank, infra_rank, infra_local_rank = self._ranks
        constant = orjson.dumps(
            {
                "rank": rank,
                "local_rank": local_rank,
                "infra_rank": infra_rank,
                "infra_local_rank": infra_local_rank,
                "pid": self.writer.pid,
            }
        )[1:-1]
        # One record: {"seq","ts","level","file","line", <constant>, "msg"}\n
        self._template = b'{"seq":%d,"ts":%d,"level":%b,"file":%b,"line":%d,' + constant + b',"msg":%b}\n'

    def _emit_until_ranks_known(self, record: logging.LogRecord) -> None:
        if record.created >= self._next_look:
            self._next_look = record.created + _RANK_LOOK_EVERY_S
            try:
                ranks = current_ranks(self._ranks)
            except Exception:  # reading the environment must never cost a record
                ranks = self._ranks
            if ranks != self._ranks:
                self._ranks = ranks
                self._fill_template()
            if None not in ranks[:2]:
                del self.emit
        NodeLocalHandler.emit(self, record)

    def _write_slow(self, data: bytes) -> None:
        try:
            loss = self._files.write(data, self._seq - 1)  # the record in hand is already numbered
        finally:
            self._map = self._files.map
        if loss is not None:
            self._report_loss(loss)

    def _report_loss(self, loss: Loss) -> None:
        self.lost_records += loss.records
        text = (
            f"nvrxlog: deleted {loss.files} unconsumed temp file(s) of this process, "
            f"records seq {loss.first}-{loss.last} ({loss.records}) are lost: the node aggregator "
            f"is absent or far behind (NVRX_LOG_MAX_LOG_FILES={self._max_files})"
        )
        self.errors.report("retention", text)
        notice = logging.makeLogRecord(
            {
                "name": "nvrx",
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": text,
                "filename": "nvrxlog",
                "lineno": 0,
            }
        )
        self.emit(notice)  # into the file just opened; far below a rotation

    # -- logging.Handler -----------------------------------------------------------

    def emit(self, record: logging.LogRecord, _dumps: Callable[[object], bytes] = orjson.dumps) -> None:
        # The hot path of every training step: one frame, one encode of the
        # message, one copy into the mapped file. The writer's constant fields
        # are encoded once (in _template) and level and file names once each
        # (in _quoted).
        # Anything unusual (first file, the end of a chunk, rotation, write(2)
        # mode, surrogates, exceptions) leaves this path for a helper.
        try:
            try:
                msg = record.getMessage()
            except RecursionError:
                raise
            except Exception as exc:
                msg = unformattable(record, exc, self.errors)
            if record.exc_info or record.exc_text or record.stack_info or len(msg) > MAX_MESSAGE_CHARS:
                msg = full_message(record, msg, self.errors)
            try:
                body = _dumps(msg)
            except TypeError:  # lone surrogates (e.g. from undecodable file names)
                body = _dumps(_escape_surrogates(msg))
            seq = self._seq
            self._seq = seq + 1
            level = record.levelname
            file = record.filename
            quoted = self._quoted
            data = self._template % (
                seq,
                int(record.created * 1e9),
                quoted[level] if level in quoted else self._quote(level),
                quoted[file] if file in quoted else self._quote(file),
                record.lineno,
                body,
            )
            try:
                self._map.write(data)  # type: ignore[union-attr]
            except (AttributeError, ValueError):  # no chunk mapped (None), or it is full: nothing written
                if self._successor is not None:  # closed by a set-up again: the new writer takes it
                    self._seq = seq
                    self._successor.handle(record)
                    return
                self._write_slow(data)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _quote(self, text: str) -> bytes:
        quoted = orjson.dumps(_escape_surrogates(text))
        if len(self._quoted) < _QUOTE_CACHE:  # bounded: names come from source files
            self._quoted[text] = quoted
        return quoted

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._deferred and not self._busy:
                self._write_deferred()
            try:
                self._files.close()
            except OSError:
                pass
            self._map = None
        super().close()

    def after_fork_in_child(self) -> None:
        """Start a writer of the child's own (new files, seq from 0)."""
        super().after_fork_in_child()
        self._files.forget_after_fork()
        self._start_writer()


def _escape_surrogates(text: str) -> str:
    # Lone surrogates (e.g. from undecodable file names) are not UTF-8.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
