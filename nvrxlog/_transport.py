"""The wire protocol between node aggregators and the streamer, and the node side of it.

Every message is a multipart ZeroMQ message whose first frame is its kind:

==========  ======================  ===============================================
direction   kind                    payload (orjson unless said otherwise)
==========  ======================  ===============================================
node ->     ``H`` hello             ``{"node": id, "v": 2}``
node ->     ``B`` batches           one or more spool lines (a frame each):
                                    ``{"b": seq, "c": watermark, "n": count, ...}``, the
                                    records as columns (``_columns``) or as ``"r": [...]``
node ->     ``P`` ping              optional watermark (ascii ns) once every batch is sent
node ->     ``Q`` quit              none: everything is acknowledged and nothing more will come
anyone ->   ``T`` tail info         none
-> node     ``W`` welcome           ``{"credit": bytes of batches in flight allowed}``
-> node     ``A`` ack               ``{"acked": seq}``: batches up to seq are durable
-> node     ``P`` pong              none
-> node     ``R`` reset             none: "say hello first" (e.g. after a restart)
-> anyone   ``I`` info              ``{"pub": endpoint of the live PUB socket}``
==========  ======================  ===============================================

A node sends batches in order, at most ``credit`` bytes beyond the last ack, and on a
reset, a reconnect or a silent streamer rewinds to the first unacknowledged
batch. The streamer de-duplicates per record (node, writer, writer seq), so a
resend can never double a line.

A watermark says "this node has handed over every record up to this time";
the streamer writes up to the lowest watermark of its live nodes, so lines
from different nodes come out in time order however late each arrives.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import zmq
import zmq.auth

from ._exceptions import ConfigError, LifecycleError, TransportError
from ._record import notice_record
from ._spool import Spool
from ._wakeup import Wakeup

__all__ = ["Forwarder", "CurveKeys", "HELLO", "BATCH", "PING", "TAIL", "QUIT", "WELCOME", "ACK", "RESET", "INFO"]

HELLO, BATCH, PING, TAIL, QUIT = b"H", b"B", b"P", b"T", b"Q"
WELCOME, ACK, RESET, INFO = b"W", b"A", b"R", b"I"
PROTOCOL_VERSION = 2
MAX_BATCH_RECORDS = 1000
MAX_MESSAGE_BYTES = 64 << 20
_MESSAGE_TARGET = 1 << 20  # consecutive small batches travel together up to this size
_WATERMARK_EVERY = 0.05  # seconds between watermark-only pings while the node is caught up

#: Reports a problem as a line in the node's output: ``notice(text)``.
Notice = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class CurveKeys:
    """CurveZMQ key files: the server's public key and this client's secret key.

    Both are files written by ``zmq.auth.create_certificates``.
    """

    server_public: str
    client_secret: str

    def apply(self, socket: zmq.Socket) -> None:
        """Configure ``socket`` as a CURVE client."""
        try:
            server_public, _ = zmq.auth.load_certificate(self.server_public)
            client_public, client_secret = zmq.auth.load_certificate(self.client_secret)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load CURVE keys: {exc}") from exc
        if client_secret is None:
            raise ConfigError(f"{self.client_secret} holds no secret key")
        socket.curve_serverkey = server_public
        socket.curve_publickey = client_public
        socket.curve_secretkey = client_secret


class Forwarder:
    """Delivers spooled batches to a streamer over a DEALER socket, in its own thread.

    ``submit()`` (any thread) appends to the on-disk spool and returns at
    once; nothing a rank or the aggregator does ever waits for the network.
    """

    def __init__(
        self,
        endpoint: str,
        node_id: str,
        spool_dir: str,
        *,
        spool_max_bytes: int = 1 << 30,
        warn_after: float = 30.0,
        heartbeat: float = 1.0,
        liveness: float = 5.0,
        notice: Notice | None = None,
        curve: CurveKeys | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        if not endpoint.startswith(("tcp://", "ipc://", "inproc://")):
            raise ConfigError(f"streamer address {endpoint!r} is not tcp://HOST:PORT")
        self.endpoint = endpoint
        self.node_id = node_id
        self.spool = Spool(spool_dir, max_bytes=spool_max_bytes)
        self.warn_after = warn_after
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.curve = curve
        # A context may be shared (it is thread-safe); each socket stays in one thread.
        self._context = context
        self.welcomed = threading.Event()
        #: Every record up to this time (ns) has been submitted; set by the producer.
        self.watermark = 0
        self.stats: dict[str, int] = {"sent": 0, "acked_batches": 0, "resets": 0, "reconnects": 0, "dropped": 0}
        self._notice = notice or (lambda text: None)
        self._wake = Wakeup()
        self._stopping = False
        self._stop_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._owner_pid = os.getpid()
        self._lost_lock = threading.Lock()
        self._lost = self.spool.load_lost()
        self._loss_batch: tuple[int, int] | None = None  # (batch seq, ranges it reports)
        self._loss_seq = 0
        self._started_ns = time.time_ns()

    def start(self) -> Forwarder:
        """Start the forwarding thread."""
        if self._thread is not None:
            raise LifecycleError("Forwarder.start() called twice")
        self._thread = threading.Thread(target=self._run, name=f"nvrxlog-forwarder-{self.node_id}", daemon=True)
        self._thread.start()
        return self

    def submit(self, records: list, watermark: int) -> None:
        """Spool ``records`` (everything up to ``watermark``) and wake the sender."""
        starts = range(0, len(records), MAX_BATCH_RECORDS)
        # A batch's watermark promises nothing older will follow it, so every
        # batch but the last stays below the earliest record still to come.
        later = watermark
        marks = []
        for start in reversed(starts):
            marks.append(later)
            later = min(later, min(r["ts"] for r in records[start : start + MAX_BATCH_RECORDS]) - 1)
        for start, mark in zip(starts, reversed(marks), strict=True):
            _, dropped = self.spool.append(records[start : start + MAX_BATCH_RECORDS], mark)
            if dropped:
                self._record_loss(dropped)
        self._wake.poke()

    def _record_loss(self, dropped: list) -> None:
        with self._lost_lock:
            self._lost.extend(dropped)
            self.spool.save_lost(self._lost)
        for loss in dropped:
            self.stats["dropped"] += loss.records
        self._notice(
            f"forwarding spool over its limit ({self.spool.max_bytes / (1 << 20):g} MiB) while the streamer "
            "did not acknowledge: dropping the oldest batches; the cluster log will say which (this file has them)"
        )

    def _report_loss(self) -> None:
        """Spool one notice stating every unreported loss; cleared only once it is acknowledged.

        A loss notice is itself spooled, so it could be dropped in turn: the
        ranges stay on record (on disk) until the streamer has acknowledged it.
        """
        with self._lost_lock:
            if not self._lost or self._loss_batch is not None:
                return
            lost = list(self._lost)
        ranges = ", ".join(f"batches {d.first}-{d.last} ({d.records} records)" for d in lost)
        now = time.time_ns()
        self._loss_seq += 1
        record = notice_record(
            self._loss_seq,
            now,
            f"nvrxlog forwarder: records lost on the way to the streamer (spool limit): {ranges}",
            w=f"forwarder.{self._started_ns}",
        )
        seq, dropped = self.spool.append([record], max(self.watermark, now), count=0)
        with self._lost_lock:
            self._loss_batch = (seq, len(lost))
        if dropped:
            self._record_loss(dropped)

    def _loss_acknowledged(self) -> None:
        with self._lost_lock:
            if self._loss_batch is not None and self.spool.acked >= self._loss_batch[0]:
                del self._lost[: self._loss_batch[1]]
                self._loss_batch = None
                self.spool.save_lost(self._lost)

    def stop(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` s for every batch to be acknowledged; return records not delivered."""
        if self._thread is None or os.getpid() != self._owner_pid:
            return 0
        self._stop_deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.poke()
        self._thread.join(timeout + 5)
        undelivered = self.spool.unacked
        self.spool.close()
        return undelivered

    def _handle(self, frames: list[bytes], credit: int) -> int:
        """Act on one message from the streamer; return the new credit."""
        kind = frames[0]
        if kind == ACK:
            acked = int(orjson.loads(frames[1])["acked"])
            before = self.spool.acked
            self.spool.ack(acked)
            self.stats["acked_batches"] += self.spool.acked - before
        elif kind == WELCOME:
            if not self.welcomed.is_set():
                credit = max(1, int(orjson.loads(frames[1])["credit"]))
                self.spool.rewind()  # resend everything unacknowledged, in order
                self.welcomed.set()
        elif kind == RESET:
            # The streamer does not know us (it restarted): hello again, then resend.
            self.welcomed.clear()
            self.stats["resets"] += 1
        return credit

    def _poke(self) -> None:
        try:
            self._wake.poke()
        except OSError:
            pass  # the counter is saturated: the thread is awake anyway

    # -- the forwarding thread ------------------------------------------------------

    def _socket(self, context: zmq.Context) -> zmq.Socket:
        sock = context.socket(zmq.DEALER)
        sock.linger = 0  # unacknowledged batches live in the spool, not in the socket
        sock.immediate = True  # no queueing to a streamer that is not there: we resend
        sock.sndhwm = 1000
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if self.curve is not None:
            self.curve.apply(sock)
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise TransportError(f"cannot connect to {self.endpoint}: {exc}") from exc
        return sock

    def _run(self) -> None:
        context = self._context or zmq.Context()
        sock = self._socket(context)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        credit = 0
        in_flight: deque[tuple[int, int]] = deque()  # (last batch seq, bytes) per message sent
        in_flight_bytes = 0
        started = last_recv = last_hello = time.monotonic()
        last_sent = 0.0
        sent_watermark = 0
        warned = False
        hello = [HELLO, orjson.dumps({"node": self.node_id, "v": PROTOCOL_VERSION})]
        try:
            while True:
                now = time.monotonic()
                if self._stopping and (self.spool.pending_batches == 0 or now > self._stop_deadline):
                    if self.welcomed.is_set() and self.spool.pending_batches == 0:
                        # A clean goodbye: the streamer stops waiting for our watermark.
                        _try_send(sock, [QUIT])
                    return
                welcomed = self.welcomed.is_set()
                if not welcomed and now - last_hello >= min(0.25, self.heartbeat):
                    _try_send(sock, hello)
                    last_hello = now
                if not welcomed and not warned and now - started > self.warn_after:
                    warned = True
                    self._notice(
                        f"the streamer {self.endpoint} has not answered for {self.warn_after:.0f}s; "
                        "records are spooled and forwarding keeps retrying"
                    )
                if welcomed and now - last_recv > self.liveness:
                    # A silent streamer (killed, restarted, network gone): start
                    # over on a fresh connection and resend what is unacknowledged.
                    poller.unregister(sock)
                    sock.close()
                    sock = self._socket(context)
                    poller.register(sock, zmq.POLLIN)
                    self.welcomed.clear()
                    self.stats["reconnects"] += 1
                    started = now
                    continue
                if welcomed:
                    self._loss_acknowledged()
                    self._report_loss()
                while welcomed and in_flight_bytes < credit:
                    frames = [BATCH]
                    size = 0
                    last = 0
                    while size < _MESSAGE_TARGET and (batch := self.spool.next_batch()) is not None:
                        frames.append(batch[1])
                        size += len(batch[1])
                        last = batch[0]
                    if not last:
                        break
                    if not _try_send(sock, frames):
                        self.spool.rewind()  # the pipe is full or gone: resend from the first unacked
                        in_flight.clear()
                        in_flight_bytes = 0
                        break
                    in_flight.append((last, size))
                    in_flight_bytes += size
                    last_sent = now
                    self.stats["sent"] += len(frames) - 1
                # Read the watermark before asking whether all is sent: the
                # producer spools a batch and then raises the watermark, so in
                # this order a watermark is never announced ahead of its batch.
                watermark = self.watermark
                if welcomed and self.spool.all_sent:
                    # Idle or caught up: the watermark alone tells the streamer
                    # it need not wait for us (often enough to keep lines live).
                    if (
                        watermark > sent_watermark
                        and now - last_sent >= _WATERMARK_EVERY
                        or (now - last_sent >= self.heartbeat)
                    ):
                        _try_send(sock, [PING, b"%d" % watermark])
                        sent_watermark = watermark
                        last_sent = now
                elif welcomed and now - last_sent >= self.heartbeat:
                    _try_send(sock, [PING])
                    last_sent = now
                timeout = _WATERMARK_EVERY if welcomed else min(0.25, self.heartbeat)
                for item, _ in poller.poll(timeout * 1000):
                    if item is self._wake:
                        self._wake.drain()
                        continue
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        last_recv = time.monotonic()
                        try:
                            credit = self._handle(frames, credit)
                        except (ValueError, KeyError, TypeError, IndexError):
                            self.stats["bad_replies"] = self.stats.get("bad_replies", 0) + 1
                        if frames[0] == RESET:
                            last_hello = 0.0
                        if frames[0] == WELCOME or not self.welcomed.is_set():
                            in_flight.clear()  # everything unacknowledged is resent
                            in_flight_bytes = 0
                        while in_flight and in_flight[0][0] <= self.spool.acked:
                            in_flight_bytes -= in_flight.popleft()[1]
        except Exception as exc:
            self._notice(f"forwarding stopped after an unexpected error: {exc!r}")
        finally:
            sock.close(linger=0)
            if self._context is None:
                context.term()


def _try_send(sock: zmq.Socket, frames: list[bytes]) -> bool:
    try:
        sock.send_multipart(frames, zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False
