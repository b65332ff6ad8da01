"""Streamer: receive every node's batches, write the cluster-wide file, publish live.

One thread owns every socket and does everything in turn: receive and judge
each message (``intake.py``, which ingests with ``ingest.py`` and keeps the
sessions of ``sessions.py``), then flush (``flush.py``: merge by time, write,
publish live with ``live.py``, checkpoint) and acknowledge. Nothing waits on a
pool or on another thread, so no slow part can starve or deadlock another; a
slow disk only slows acknowledgements, and credit then slows the nodes. This
module is the lifecycle and the loop around those steps.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import orjson
import zmq

from nvrxlog.config import sanitize_name
from nvrxlog.core.lines import LineFormat
from nvrxlog.core.report import ErrorCounter
from nvrxlog.core.service import Service
from nvrxlog.errors import ConfigError, LifecycleError, OutputError, TransportError
from nvrxlog.streamer.flush import Flush
from nvrxlog.streamer.intake import Intake
from nvrxlog.streamer.live import LiveView
from nvrxlog.streamer.output import ClusterOutput
from nvrxlog.streamer.sockets import bind_sockets
from nvrxlog.wire.curve import CurveKeys
from nvrxlog.wire.forwarder import Forwarder
from nvrxlog.wire.protocol import ACK, MAX_MESSAGE_BYTES
from nvrxlog.wire.send import try_send
from nvrxlog.wire.wakeup import Wakeup

__all__ = ["Streamer"]


class Streamer(Service):
    """The central receiver: ``start()``, ``stop()``, ``endpoint``, context manager.

    ``bind`` may use port 0 (``tcp://127.0.0.1:0``); ``endpoint`` is then the
    address actually bound. With ``forward`` it is a relay that also passes
    every record upward with the same delivery guarantees.
    """

    def __init__(
        self,
        bind: str,
        out_file: str,
        *,
        json: bool = False,
        forward: str | None = None,
        name: str = "streamer",
        max_hold: float = 1.0,
        idle_timeout: float = 10.0,
        credit_bytes: int = 256 << 20,
        checkpoint_interval: float = 0.05,
        curve_secret_key: str | None = None,
        curve_clients_dir: str | None = None,
        forward_curve: CurveKeys | None = None,
        spool_max_bytes: int = 1 << 30,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        if not bind.startswith(("tcp://", "ipc://", "inproc://")):
            raise ConfigError(f"bind address {bind!r} is not tcp://HOST:PORT")
        self.bind = bind
        self.out_path = os.path.abspath(out_file)
        self.name = sanitize_name(name)
        self.forward = forward
        self.endpoint: str | None = None
        self.pub_endpoint: str | None = None
        self.started = threading.Event()
        self.stats: dict[str, int] = {
            "records": 0,
            "duplicates": 0,
            "retired": 0,  # writers forgotten once their end was acknowledged
            "batches": 0,
            "bad_frames": 0,
            "nodes": 0,
            "late": 0,
            "refused": 0,
            "dropped_batches": 0,
            "over_credit": 0,
            "write_failures": 0,
            "future_stamps": 0,
        }
        self.errors = ErrorCounter(f"streamer {self.name}")
        self.checkpoint_path = os.path.join(os.path.dirname(self.out_path), f".{os.path.basename(self.out_path)}.ckpt")
        self._cluster = ClusterOutput(self.out_path, self.checkpoint_path)
        self._ckpt_s = checkpoint_interval
        self._curve_secret = curve_secret_key
        self._curve_clients = curve_clients_dir
        self._forward_curve = forward_curve
        self._spool_max = spool_max_bytes
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failure: BaseException | None = None
        self._wake = Wakeup()
        self._live = LiveView()
        self._intake = Intake(
            self.name,
            LineFormat(json=json, untrusted=True),
            stats=self.stats,
            credit_bytes=credit_bytes,
            idle_timeout=idle_timeout,
            keep_records=self._keeps_records,
            max_message=max_message_bytes,
        )
        self._flush = Flush(
            self._cluster,
            self._intake,
            self._live,
            out_path=self.out_path,
            hold_ns=int(max_hold * 1e9),
            stats=self.stats,
            errors=self.errors,
        )

    @property
    def per_rank(self) -> Counter[tuple]:
        """Records received, by (node, rank)."""
        return self._intake.ingest.per_rank

    @property
    def levels(self) -> Counter[tuple]:
        """Records received, by (node, level)."""
        return self._intake.ingest.levels

    @property
    def watched(self) -> bool:
        """True once a live view (``nvrxlog tail``) has subscribed."""
        return bool(self._live.watchers)  # len() of a set is atomic: safe from another thread

    def _keeps_records(self) -> bool:
        """Records are kept as dicts while a relay passes them up or someone watches them live."""
        return self._flush.forwarder is not None or self._live.watching_records()

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Streamer:
        """Bind and start serving; returns once ``endpoint`` is known."""
        if self._thread is not None:
            raise LifecycleError("Streamer.start() called twice")
        self._recover()
        if self.forward:
            spool = os.path.join(os.path.dirname(self.out_path), f".nvrx_spool_relay_{self.name}")
            try:
                self._flush.forwarder = Forwarder(
                    self.forward,
                    self.name,
                    spool,
                    spool_max_bytes=self._spool_max,
                    notice=self._intake.notice_from_thread,
                    errors=self.errors,
                    curve=self._forward_curve,
                ).start()
            except BaseException:
                self._cluster.close()  # nothing runs: the output is free for the next try
                raise
        self._thread = threading.Thread(target=self._run, name=f"nvrxlog-streamer-{self.name}", daemon=True)
        self._thread.start()
        if not self.started.wait(timeout) or self._failure is not None:
            self._thread.join(1)
            failure = self._failure
            if self._flush.forwarder is not None:
                self._flush.forwarder.stop(0)
                self._flush.forwarder = None
            if isinstance(failure, ConfigError):
                raise failure
            raise TransportError(f"streamer could not start on {self.bind}: {failure}") from failure
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Flush everything received, acknowledge it, close. Safe to call twice."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake.poke()
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Still flushing when the wait ran out: the thread keeps its relay
            # forwarder (taking it now would pull it from under the flush).
            self.errors.once(f"the streamer did not finish flushing within {timeout}s")
            return
        if self._flush.forwarder is not None:
            undelivered = self._flush.forwarder.stop(timeout)
            self.stats["undelivered"] = undelivered
            self._flush.forwarder = None

    def _recover(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.out_path), exist_ok=True)
            written = self._cluster.open()
        except OutputError:
            raise  # another process writes it: the message says so
        except OSError as exc:
            raise OutputError(f"cannot open {self.out_path}: {exc.strerror}") from exc
        self._intake.recover(written, self._cluster.floors, self._cluster.keys)
        if self._cluster.file.problem:
            self._intake.notice(self._cluster.file.problem)

    # -- the loop -------------------------------------------------------------------

    def _run(self) -> None:
        context = zmq.Context()
        made: list = []
        try:
            try:
                router, pub = bind_sockets(
                    context,
                    self.bind,
                    max_message=self._intake.max_message,
                    curve_secret=self._curve_secret,
                    curve_clients=self._curve_clients,
                    made=made,
                )
            except (zmq.ZMQError, ConfigError) as exc:
                self._failure = exc
                self.started.set()
                return
            self.endpoint = router.last_endpoint.decode()
            self.pub_endpoint = self._intake.pub_endpoint = pub.last_endpoint.decode()
            self.started.set()
            self._serve(router, pub)
        except BaseException as exc:
            self._failure = exc
            self.errors.report("fatal", f"stopped after an unexpected error: {exc!r}")
        finally:
            # Everything made is closed, also when binding failed half way:
            # an open socket would make context.term() wait forever.
            for thing in reversed(made):
                if isinstance(thing, zmq.Socket):
                    thing.close(linger=0)
                else:
                    thing.stop()
            context.term()
            self._cluster.close()

    def _serve(self, router: zmq.Socket, pub: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pub, zmq.POLLIN)
        # pyzmq's poll names a non-socket by its descriptor, never by the object registered.
        wake = self._wake.fileno()
        poller.register(wake, zmq.POLLIN)
        intake, sessions, pending, live = self._intake, self._intake.sessions, self._intake.pending, self._live
        handle, recv = intake.handle, router.recv_multipart
        last_flush = time.monotonic()
        live.attach(pub, last_flush)
        while not self._stopping:
            wait = max(0.0, self._ckpt_s - (time.monotonic() - last_flush))
            busy = pending or sessions.has_unacked()
            for item, _ in poller.poll(wait * 1000 if busy else 1000):
                if item == wake:
                    self._wake.drain()
                    continue
                if item is pub:
                    live.subscriptions()
                    continue
                # Receive until the flush is due, so under load lines keep
                # coming out, acks keep flowing and what is held stays small.
                due = last_flush + self._ckpt_s
                while True:
                    try:
                        frames = recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    reply = handle(frames, time.monotonic())
                    if reply is not None:
                        try_send(router, reply)  # dropped if full: the peer asks again
                    if time.monotonic() >= due:
                        break
            now = time.monotonic()
            if now - last_flush >= self._ckpt_s:
                last_flush = now
                self._acknowledge(router, self._flush(final=False))
                intake.notices(sessions.check_idle(now))
            live.heartbeat(now)  # tells a live view the streamer is there when no record is
        self._acknowledge(router, self._flush(final=True))
        self._flush.unwritten()

    @staticmethod
    def _acknowledge(router: zmq.Socket, acks: list[tuple[bytes, int]]) -> None:
        for peer, last in acks:
            try_send(router, [peer, ACK, orjson.dumps({"acked": last})])  # lost: the node resends, is acked again
