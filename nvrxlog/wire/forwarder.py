"""The node side of the wire: a thread that delivers spooled batches to a streamer.

``submit()`` (the aggregator's or relay's thread) appends to the on-disk spool
and returns at once; the forwarder's thread, sole owner of its DEALER socket,
sends within the streamer's credit, deletes what is acknowledged, and resends
after a reconnect. What to do when is decided by ``Link`` (``link.py``); the
messages are described in ``protocol.py``. Its hello and pings carry this
node's clock, so it keeps an estimate of the streamer's clock minus its own
(``clock.py``) and reports it in every ping, the first before any batch of a
session: the streamer merges this node's records on its own time.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import orjson
import zmq

from nvrxlog.core.record import notice_record
from nvrxlog.core.report import ErrorCounter
from nvrxlog.core.watermark import batch_watermarks
from nvrxlog.errors import ConfigError, LifecycleError, TransportError
from nvrxlog.wire.batching import MAX_BATCH_BYTES, split_batches
from nvrxlog.wire.clock import ClockEstimate
from nvrxlog.wire.curve import CurveKeys
from nvrxlog.wire.link import Link, LinkState
from nvrxlog.wire.losses import LossLedger
from nvrxlog.wire.protocol import (
    ACK,
    BATCH,
    MAX_MESSAGE_BYTES,
    PING,
    QUIT,
    REFUSED,
    RESET,
    WELCOME,
    announced_max,
    hello,
)
from nvrxlog.wire.send import try_send
from nvrxlog.wire.spool import Dropped, Spool
from nvrxlog.wire.wakeup import Wakeup

__all__ = ["Forwarder"]

_MESSAGE_TARGET = 1 << 20  # consecutive small batches travel together up to this size
_ACK_SAVE_RETRY_S = 1.0  # a full disk is not retried on every message

#: Reports a problem as a line in the node's output: ``notice(text)``.
Notice = Callable[[str], None]


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
        errors: ErrorCounter | None = None,
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
        self.link = Link(heartbeat=heartbeat, liveness=liveness, now=time.monotonic())
        # What the streamer announced last time: batches spooled before this run's welcome fit it.
        self.link.max_message = self.spool.load_limit(MAX_MESSAGE_BYTES)
        #: The streamer's clock minus ours, from the answers to our hellos and pings.
        self.clock = ClockEstimate()
        self._tell_clock = False  # a session began: report the estimate before any batch
        #: Every record up to this time (ns) has been submitted; set by the producer.
        self.watermark = 0
        self.stats: dict[str, int] = {"sent": 0, "acked_batches": 0, "resets": 0, "reconnects": 0, "dropped": 0}
        self.failure: BaseException | None = None
        self._notice = notice or (lambda text: None)
        # A refusal is a set-up problem (two nodes given one id, versions apart): stderr too, once.
        self._errors = errors
        self._wake = Wakeup()
        self._stopping = False
        self._stop_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._owner_pid = os.getpid()
        self._losses_lock = threading.Lock()  # the producer adds losses, the sender reports them
        self._losses = LossLedger(self.spool.load_lost())
        self._loss_seq = 0
        self._started_ns = time.time_ns()
        self._ack_problem = False  # the last save of the acknowledged position failed (reported)
        self._ack_retry_at = 0.0
        self._turned_away = False  # refused for now (another session holds our name), said once
        self._carry: tuple[int, bytes] | None = None  # a batch handed out that goes first in the next message
        self._undeliverable_seqs: set[int] = set()  # batches stated lost as too large (few: each is a loss)

    def start(self) -> Forwarder:
        """Start the forwarding thread; raises ConfigError for unusable CURVE keys (before any thread runs)."""
        if self._thread is not None:
            raise LifecycleError("Forwarder.start() called twice")
        if self.curve is not None:
            self.curve.load()  # a key problem is a clear error now, not a dead thread later
        self._thread = threading.Thread(target=self._run, name=f"nvrxlog-forwarder-{self.node_id}", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """True while the forwarding thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, records: list, watermark: int, ended: list | tuple = ()) -> None:
        """Spool ``records`` (everything up to ``watermark``) and wake the sender.

        ``ended``: writers whose every record is spooled now, in ``records`` or
        before (a writer key, or ``[writer, node]`` from a relay); the last
        batch says so, and the streamer then forgets them. With no records,
        one empty batch says it, promising only the watermark already given.
        """
        # Estimated at 4 bytes a character, a quarter of the limit stays under it even escaped (6).
        batches = split_batches(records, max_bytes=min(MAX_BATCH_BYTES, self.link.max_message // 4))
        marks = batch_watermarks([min(r["ts"] for r in batch) for batch in batches], watermark)
        if not batches and ended:
            batches, marks = [[]], [self.watermark]
        last = len(batches) - 1
        for i, (batch, mark) in enumerate(zip(batches, marks, strict=True)):
            _, dropped = self.spool.append(batch, mark, ended=ended if i == last else ())
            if dropped:
                self._spool_full(dropped)
        self._wake.poke()

    def _spool_full(self, dropped: list[Dropped]) -> None:
        self._record_loss(
            dropped,
            f"forwarding spool over its limit ({self.spool.max_bytes / (1 << 20):g} MiB) while the streamer "
            "did not acknowledge: dropping the oldest batches; the cluster log will say which (this file has them)",
        )

    def _record_loss(self, dropped: list[Dropped], text: str) -> None:
        """Keep ``dropped`` until the streamer is told (on disk too), count it, and say ``text`` here."""
        with self._losses_lock:
            self._losses.add(dropped)
            self.spool.save_lost(self._losses.entries)
        self.stats["dropped"] += sum(loss.records for loss in dropped)
        self._notice(text)

    def _undeliverable(self, seq: int, payload: bytes) -> None:
        """Batch ``seq`` is larger than the streamer takes: never sent (it would drop the connection), stated lost.

        Later batches are acknowledged past it, so nothing waits for it; its
        records are in this node's file.
        """
        if seq in self._undeliverable_seqs:
            return  # handed out again after a rewind: stated once
        self._undeliverable_seqs.add(seq)
        try:
            count = int(orjson.loads(payload)["n"])
        except (ValueError, KeyError, TypeError):
            count = 0
        limit = self.link.max_message
        why = f"larger ({len(payload)} bytes) than the streamer's message limit ({limit} bytes)"
        self._record_loss(
            [Dropped(seq, seq, count, why)],
            f"batch {seq} ({count} records) is {why}: not sent; the cluster log will say so (this file has them)",
        )

    def _rewind(self) -> None:
        """Hand out again from the first unacknowledged batch (a batch held for the next message too)."""
        self._carry = None
        self.spool.rewind()

    def _report_loss(self) -> None:
        """Spool one notice stating every unreported loss (see ``LossLedger``)."""
        with self._losses_lock:
            if self._losses.acknowledged(self.spool.acked):
                self.spool.save_lost(self._losses.entries)
            text = self._losses.report_text()
        if text is None:
            return
        self._loss_seq += 1
        now = time.time_ns()
        record = notice_record(self._loss_seq, now, text, w=f"forwarder.{self._started_ns}")
        seq, dropped = self.spool.append([record], max(self.watermark, now), count=0)
        with self._losses_lock:
            self._losses.reported(seq)
        if dropped:
            self._spool_full(dropped)

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

    def _handle(self, frames: list[bytes], now: float) -> None:
        """Act on one message from the streamer."""
        t3 = time.time_ns()  # first: the clock sample's time of arrival
        link = self.link
        link.heard(now)
        kind = frames[0]
        if kind == ACK:
            acked = int(orjson.loads(frames[1])["acked"])
            before = self.spool.acked
            self._ack_saved(self.spool.ack(acked), now)
            self.stats["acked_batches"] += self.spool.acked - before
            link.acked(self.spool.acked)
        elif kind == WELCOME:
            if self._turned_away:
                self._turned_away = False
                self._notice(f"the streamer {self.endpoint} took this node after all")
            welcome = orjson.loads(frames[1])
            self.clock.add(welcome.get("t0"), welcome.get("t1"), t3)
            limit = announced_max(welcome)
            if limit != link.max_message:
                try:
                    self.spool.save_limit(limit)
                except OSError:
                    pass  # a full disk: this run cuts to it all the same
            if link.welcome(int(welcome["credit"]), limit):
                self._rewind()  # resend everything unacknowledged, in order
                self._tell_clock = True
        elif kind == PING and len(frames) > 1:  # a pong answering our clock
            pong = orjson.loads(frames[1])
            self.clock.add(pong.get("t0"), pong.get("t1"), t3)
        elif kind == RESET:
            link.reset(now)
            self.stats["resets"] += 1
        elif kind == REFUSED:
            body = orjson.loads(frames[1])
            reason = str(body.get("reason", "no reason given"))[:300]
            if body.get("retry") is True:
                link.turned_away(now)
                if not self._turned_away:
                    self._turned_away = True
                    self._problem(f"the streamer {self.endpoint} cannot take this node yet: {reason}; retrying")
                return
            link.refuse(reason)
            self._problem(
                f"the streamer {self.endpoint} refused this node: {reason}; "
                f"forwarding stopped, records stay spooled in {self.spool.directory}"
            )

    def _message(self) -> tuple[list[bytes], int]:
        """The next message of batches (up to ``_MESSAGE_TARGET``, under the streamer's limit), and its last seq.

        A batch that would take the message past the limit waits for the
        next one; one that could never fit is stated lost instead.
        """
        limit = self.link.max_message
        frames = [BATCH]
        size = last = 0
        while size < _MESSAGE_TARGET:
            batch = self._carry or self.spool.next_batch()
            self._carry = None
            if batch is None:
                break
            seq, payload = batch
            if not _frames_fit(0, len(payload), limit):
                self._undeliverable(seq, payload)
                continue
            if last and not _frames_fit(size, len(payload), limit):
                self._carry = batch
                break
            frames.append(payload)
            size += len(payload)
            last = seq
        return frames, last

    def _clock_frame(self) -> bytes:
        """A ping's clock part: stamped now, with our estimate of the streamer's clock."""
        return orjson.dumps(self.clock.report(time.time_ns()))

    def _problem(self, text: str) -> None:
        """Say ``text`` in the output and, the first time, on stderr."""
        if self._errors is not None:
            self._errors.once(text)
        self._notice(text)

    def _ack_saved(self, problem: OSError | None, now: float) -> None:
        """Note how saving the acknowledged position went: a failure is reported once and retried later."""
        if problem is None:
            if self._ack_problem:
                self._ack_problem = False
                self._notice(f"the acknowledged position in {self.spool.directory} is saved again")
            return
        self._ack_retry_at = now + _ACK_SAVE_RETRY_S
        if not self._ack_problem:
            self._ack_problem = True
            self.stats["ack_save_failures"] = self.stats.get("ack_save_failures", 0) + 1
            self._notice(
                f"cannot save the acknowledged position in {self.spool.directory}: {problem.strerror}; "
                "forwarding goes on with it kept in memory and retries the save"
            )

    # -- the forwarding thread ------------------------------------------------------

    def _socket(self, context: zmq.Context) -> zmq.Socket:
        sock = context.socket(zmq.DEALER)
        try:
            sock.linger = 0  # unacknowledged batches live in the spool, not in the socket
            sock.immediate = True  # no queueing to a streamer that is not there: we resend
            sock.sndhwm = 1000
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            sock.reconnect_ivl_max = 32_000  # a streamer that is gone is retried ever less often, up to 32 s
            if self.curve is not None:
                self.curve.apply(sock)
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise TransportError(f"cannot connect to {self.endpoint}: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        return sock

    def _run(self) -> None:
        context = self._context or zmq.Context()
        self._sock: zmq.Socket | None = None
        try:
            self._loop(context)
        except Exception as exc:
            self.failure = exc
            self._notice(f"forwarding stopped after an unexpected error: {exc!r}")
        finally:
            if self._sock is not None:
                self._sock.close(linger=0)
            if self._context is None:
                context.term()

    def _loop(self, context: zmq.Context) -> None:
        sock = self._sock = self._socket(context)
        link = self.link
        spool = self.spool
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        # pyzmq's poll names a non-socket by its descriptor, never by the object registered.
        wake = self._wake.fileno()
        poller.register(wake, zmq.POLLIN)
        warned = False
        while True:
            now = time.monotonic()
            if link.state is LinkState.REFUSED:
                return
            if self._stopping and (spool.pending_batches == 0 or now > self._stop_deadline):
                if link.ready and spool.pending_batches == 0:
                    # A clean goodbye: the streamer stops waiting for our watermark.
                    try_send(sock, [QUIT])
                return
            if link.hello_due(now):
                link.said_hello(now, try_send(sock, hello(self.node_id, self.spool.identity, now_ns=time.time_ns())))
            if not warned and link.waited_past(now, self.warn_after):
                warned = True
                self._notice(
                    f"the streamer {self.endpoint} has not answered for {self.warn_after:.0f}s; "
                    "records are spooled and forwarding keeps retrying"
                )
            if link.silent(now):
                # A silent streamer (killed, restarted, network gone): start
                # over on a fresh connection and resend what is unacknowledged.
                poller.unregister(sock)
                sock.close()
                self._sock = None
                sock = self._sock = self._socket(context)
                poller.register(sock, zmq.POLLIN)
                link.reconnected(now)
                self.stats["reconnects"] += 1
                continue
            if self._ack_problem and now >= self._ack_retry_at:
                self._ack_saved(spool.save_acked(), now)
            if link.ready:
                self._report_loss()
                if self._tell_clock and self.clock.best is not None:
                    # Before the session's first batch, so its stamps are corrected
                    # (a DEALER delivers in order). No watermark: batches are not sent yet.
                    self._tell_clock = not try_send(sock, [PING, b"", self._clock_frame()])
            while link.has_room():
                frames, last = self._message()
                if not last:
                    break
                size = sum(map(len, frames)) - 1
                if not try_send(sock, frames):
                    self._rewind()  # the pipe is full or gone: resend from the first unacked
                    link.send_failed()
                    break
                link.sent(last, size, now)
                self.stats["sent"] += len(frames) - 1
            # Read the watermark before asking whether all is sent: the
            # producer spools a batch and then raises the watermark, so in
            # this order a watermark is never announced ahead of its batch.
            watermark = self.watermark
            # A batch held back for the next message is not sent yet: the watermark must not pass it.
            ping = link.ping(now, watermark, spool.all_sent and self._carry is None)
            if ping is not None:
                try_send(sock, [PING, ping, self._clock_frame()])
            for item, _ in poller.poll(link.poll_timeout(now) * 1000):
                if item == wake:
                    self._wake.drain()
                    continue
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        self._handle(frames, time.monotonic())
                    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                        self.stats["bad_replies"] = self.stats.get("bad_replies", 0) + 1


def _frames_fit(size: int, more: int, limit: int) -> bool:
    # A message under the streamer's limit (frames carry a few bytes of framing each).
    return size + more + 64 <= limit
