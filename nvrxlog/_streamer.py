"""Streamer: receive every node's batches, write the cluster-wide file, publish live.

One thread owns every socket and does everything in turn: receive, de-duplicate,
merge by time, write, publish, checkpoint, acknowledge. Nothing waits on a pool
or on another thread, so no slow part can starve or deadlock another; a slow
disk only slows acknowledgements, and credit then slows the nodes.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from operator import itemgetter

import orjson
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from ._checkpoint import load_checkpoint, open_output, save_checkpoint
from ._config import sanitize_name
from ._exceptions import ConfigError, LifecycleError, TransportError
from ._fileio import write_all
from ._format import LineFormat
from ._record import notice_record
from ._report import ErrorCounter
from ._service import Service
from ._transport import (
    ACK,
    BATCH,
    HELLO,
    INFO,
    MAX_MESSAGE_BYTES,
    PING,
    QUIT,
    RESET,
    TAIL,
    WELCOME,
    CurveKeys,
    Forwarder,
)
from ._wakeup import Wakeup

__all__ = ["Streamer"]

_key = itemgetter(0)
_INF = float("inf")
_MAX_NAME = 64


class _Session:
    """One connected node (one DEALER connection)."""

    __slots__ = ("node", "acks", "bad")

    def __init__(self, node: str) -> None:
        self.node = node
        self.acks: list[tuple[int, int]] = []  # (batch seq, newest ts in it not yet durable)
        self.bad = 0


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
            "batches": 0,
            "bad_frames": 0,
            "nodes": 0,
            "late": 0,
        }
        self.errors = ErrorCounter(f"streamer {self.name}")
        self.checkpoint_path = os.path.join(os.path.dirname(self.out_path), f".{os.path.basename(self.out_path)}.ckpt")
        self._format = LineFormat(json=json, untrusted=True)
        self._hold_ns = int(max_hold * 1e9)
        self._idle_s = idle_timeout
        self._credit_bytes = credit_bytes
        self._ckpt_s = checkpoint_interval
        self._curve_secret = curve_secret_key
        self._curve_clients = curve_clients_dir
        self._forward_curve = forward_curve
        self._spool_max = spool_max_bytes
        self._max_message = max_message_bytes
        self._forwarder: Forwarder | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failure: BaseException | None = None
        self._wake = Wakeup()
        self._start_ns = time.time_ns()
        self._notice_seq = 0
        self._sessions: dict[bytes, _Session] = {}
        self._last_seen: dict[str, float] = {}
        self._gone: set[str] = set()
        self._watchers: set[bytes] = set()  # topics someone subscribes to on the live socket
        self._watermarks: dict[str, int] = {}  # node -> it has sent everything up to this time
        self._written: dict[str, int] = {}  # "node|writer" -> highest seq in the file
        self._received: dict[str, int] = {}  # the same, counting records still held for merging
        # Records held for merging, as sorted chunks (one per batch): a flush
        # takes what is ready from each chunk and sorts only that, instead of
        # re-sorting everything held while a slow node catches up.
        self._pending: list[list[tuple]] = []
        self._names: dict[str, str] = {}
        self._last_written_ts = 0
        self._out_fd = -1

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Streamer:
        """Bind and start serving; returns once ``endpoint`` is known."""
        if self._thread is not None:
            raise LifecycleError("Streamer.start() called twice")
        self._recover()
        if self.forward:
            spool = os.path.join(os.path.dirname(self.out_path), f".nvrx_spool_relay_{self.name}")
            self._forwarder = Forwarder(
                self.forward,
                self.name,
                spool,
                spool_max_bytes=self._spool_max,
                notice=self._notice,
                curve=self._forward_curve,
            ).start()
        self._thread = threading.Thread(target=self._run, name=f"nvrxlog-streamer-{self.name}", daemon=True)
        self._thread.start()
        if not self.started.wait(timeout) or self._failure is not None:
            self._thread.join(1)
            failure = self._failure
            raise TransportError(f"streamer could not start on {self.bind}: {failure}") from failure
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Flush everything received, acknowledge it, close. Safe to call twice."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake.poke()
        self._thread.join(timeout)
        if self._forwarder is not None:
            undelivered = self._forwarder.stop(timeout)
            self.stats["undelivered"] = undelivered
            self._forwarder = None

    def _recover(self) -> None:
        ckpt, problem = load_checkpoint(self.checkpoint_path)
        self._ckpt = ckpt
        try:
            os.makedirs(os.path.dirname(self.out_path), exist_ok=True)
            self._out_fd, _ = open_output(self.out_path, ckpt)
        except OSError as exc:
            raise TransportError(f"cannot open {self.out_path}: {exc.strerror}") from exc
        if ckpt.out == self.out_path:
            self._written = dict(ckpt.writers)
            self._received = dict(ckpt.writers)
        if problem:
            self._notice(problem)

    # -- the loop -------------------------------------------------------------------

    def _sockets(self, context: zmq.Context) -> tuple[zmq.Socket, zmq.Socket]:
        router = context.socket(zmq.ROUTER)
        # XPUB rather than PUB: it tells us whether anyone watches, so records
        # are only encoded for the live view while someone does.
        pub = context.socket(zmq.XPUB)
        for sock in (router, pub):
            sock.linger = 0
        router.setsockopt(zmq.MAXMSGSIZE, self._max_message)  # a larger message drops its connection
        router.router_mandatory = False  # a vanished peer's reply is dropped, never an error
        router.sndhwm = 10000
        pub.sndhwm = 10000  # a slow `nvrxlog tail` loses lines; the streamer never waits for it
        if self._curve_secret:
            try:
                public, secret = zmq.auth.load_certificate(self._curve_secret)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot load CURVE secret key {self._curve_secret}: {exc}") from exc
            if secret is None:
                raise ConfigError(f"{self._curve_secret} holds no secret key")
            self._auth = ThreadAuthenticator(context)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=self._curve_clients or zmq.auth.CURVE_ALLOW_ANY)
            for sock in (router, pub):
                sock.curve_secretkey = secret
                sock.curve_publickey = public
                sock.curve_server = True
        router.bind(self.bind)
        self.endpoint = router.last_endpoint.decode()
        host = self.endpoint.rsplit(":", 1)[0]
        pub.bind(f"{host}:0" if self.endpoint.startswith("tcp://") else self.endpoint + ".pub")
        self.pub_endpoint = pub.last_endpoint.decode()
        return router, pub

    def _run(self) -> None:
        context = zmq.Context()
        router = pub = None
        self._auth = None
        try:
            try:
                router, pub = self._sockets(context)
            except (zmq.ZMQError, ConfigError) as exc:
                self._failure = exc
                self.started.set()
                return
            self.started.set()
            poller = zmq.Poller()
            poller.register(router, zmq.POLLIN)
            poller.register(pub, zmq.POLLIN)
            poller.register(self._wake, zmq.POLLIN)
            last_flush = time.monotonic()
            while not self._stopping:
                wait = max(0.0, self._ckpt_s - (time.monotonic() - last_flush))
                for item, _ in poller.poll(wait * 1000 if self._pending or self._has_unacked() else 1000):
                    if item is self._wake:
                        self._wake.drain()
                        continue
                    if item is pub:
                        self._subscriptions(pub)
                        continue
                    for _ in range(2000):  # then flush, so acks keep flowing under load
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(router, frames)
                now = time.monotonic()
                if now - last_flush >= self._ckpt_s:
                    last_flush = now
                    self._flush(router, pub, final=False)
                    self._check_idle(now)
            self._flush(router, pub, final=True)
        except BaseException as exc:
            self._failure = exc
            self.errors.report("fatal", f"stopped after an unexpected error: {exc!r}")
        finally:
            for sock in (router, pub):
                if sock is not None:
                    sock.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            context.term()
            if self._out_fd >= 0:
                os.close(self._out_fd)
                self._out_fd = -1

    def _subscriptions(self, pub: zmq.Socket) -> None:
        # XPUB passes a topic's first subscription (b"\x01...") and, when its
        # last subscriber leaves, the unsubscription (b"\x00...").
        while True:
            try:
                message = pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                self._watchers.add(message[1:])
            elif message[:1] == b"\x00":
                self._watchers.discard(message[1:])

    def _has_unacked(self) -> bool:
        return any(s.acks for s in self._sessions.values())

    # -- messages -------------------------------------------------------------------

    def _handle(self, router: zmq.Socket, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.stats["bad_frames"] += 1
            return
        peer, kind = frames[0], frames[1]
        session = self._sessions.get(peer)
        try:
            if kind == BATCH and session is not None and len(frames) >= 3:
                self._seen(session.node)
                for payload in frames[2:]:
                    self._batch(session, payload)
            elif kind == PING and session is not None:
                self._seen(session.node)
                if len(frames) == 3:
                    self._advance(session.node, int(frames[2]))
                router.send_multipart([peer, PING], zmq.NOBLOCK)
            elif kind == HELLO and len(frames) == 3:
                hello = orjson.loads(frames[2])
                node = self._name(hello["node"])
                for other, old in list(self._sessions.items()):
                    if old.node == node:
                        del self._sessions[other]  # a reconnect replaces the old connection
                self._sessions[peer] = _Session(node)
                # Until it reports a watermark, a new node holds the others back
                # (at most max_hold): its first records may be older than theirs.
                self._watermarks.setdefault(node, 0)
                self.stats["nodes"] = len({s.node for s in self._sessions.values()})
                self._seen(node)
                # The byte budget is shared: what all nodes may have in flight
                # at once bounds what the streamer holds.
                credit = max(256 << 10, min(8 << 20, self._credit_bytes // max(1, len(self._sessions))))
                router.send_multipart([peer, WELCOME, orjson.dumps({"credit": credit})], zmq.NOBLOCK)
            elif kind == QUIT and session is not None:
                # Finished cleanly: no more records, so it holds nobody back and is not "gone".
                del self._sessions[peer]
                self._watermarks.pop(session.node, None)
                self._last_seen.pop(session.node, None)
                self._notice(f"node {session.node} finished", level="INFO")
            elif kind == TAIL:
                router.send_multipart([peer, INFO, orjson.dumps({"pub": self.pub_endpoint})], zmq.NOBLOCK)
            elif kind in (BATCH, PING):
                router.send_multipart([peer, RESET], zmq.NOBLOCK)  # unknown peer (we restarted): hello first
            else:
                raise ValueError(f"unknown message kind {kind[:8]!r}")
        except zmq.Again:
            pass  # the peer's queue is full; it will ask again
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.stats["bad_frames"] += 1
            who = session.node if session else "an unknown peer"
            if session is None or not session.bad:
                self._notice(f"dropped a malformed message from {who}: {str(exc)[:200]}")
            if session is not None:
                session.bad += 1

    def _batch(self, session: _Session, payload: bytes) -> None:
        batch = orjson.loads(payload)
        seq = batch["b"]
        records = batch["r"]
        watermark = batch.get("c", 0)
        if type(seq) is not int or type(records) is not list or type(watermark) is not int:
            raise TypeError("a batch needs an int 'b', an int 'c' and a list 'r'")
        node = session.node
        written, received = self._written, self._received
        chunk: list[tuple] = []
        keys: dict[object, str] = {}  # writer -> "node|writer", per batch (a batch holds few writers)
        newest = -1
        bad = 0
        duplicates = 0
        for record in records:
            try:
                rseq = record["seq"]
                ts = record["ts"]
                if type(rseq) is not int or type(ts) is not int:
                    raise TypeError
                writer = record.get("w", "?")
                key = keys.get(writer) if "node" not in record else None
                if key is None:
                    key = self._record_key(record, node, writer)
                    if "node" not in record:
                        keys[writer] = key
            except (KeyError, TypeError, AttributeError):
                bad += 1
                continue
            if rseq > received.get(key, -1):  # the common case: new
                received[key] = rseq
                if ts > newest:
                    newest = ts
                if "node" not in record:
                    record["node"] = node
                chunk.append((ts, key, rseq, record))
                continue
            duplicates += 1
            if rseq > written.get(key, -1) and ts > newest:
                newest = ts  # held for merging already: its ack waits for it
        self.stats["duplicates"] += duplicates
        if chunk:
            chunk.sort()  # a node's batch is already (nearly) in time order: cheap
            self._pending.append(chunk)
        self.stats["batches"] += 1
        session.acks.append((seq, newest))
        self._advance(node, watermark)
        if bad:
            self.stats["bad_frames"] += bad
            self._notice(f"dropped {bad} malformed record(s) in a batch from {node}")

    def _record_key(self, record: dict, node: str, writer: object) -> str:
        """``node|writer`` for de-duplication; relayed records name their own node."""
        raw = record.get("node")
        if raw is not None:
            record["node"] = node = self._name(raw)
        return f"{node}|{str(writer)[:200]}"

    def _advance(self, node: str, watermark: int) -> None:
        if watermark > self._watermarks.get(node, 0):
            self._watermarks[node] = watermark

    def _cutoff(self) -> int:
        """Write up to the lowest watermark of the live nodes, holding back at most max_hold."""
        now = time.time_ns()
        live = [w for node, w in self._watermarks.items() if node not in self._gone]
        return max(min(live, default=now), now - self._hold_ns)

    def _name(self, raw: object) -> str:
        # Names from the network reach file names and lines: sanitised once, cached.
        text = str(raw)
        name = self._names.get(text)
        if name is None:
            name = sanitize_name(text, limit=_MAX_NAME)
            if len(self._names) < 100_000:
                self._names[text] = name
        return name

    def _seen(self, node: str) -> None:
        self._last_seen[node] = time.monotonic()
        if node in self._gone:
            self._gone.discard(node)
            self._notice(f"node {node} is back", level="INFO")

    def _check_idle(self, now: float) -> None:
        for node, seen in self._last_seen.items():
            if node not in self._gone and now - seen > self._idle_s:
                self._gone.add(node)
                self._notice(f"node {node} has been silent for {now - seen:.0f}s: marked gone")

    def _notice(self, text: str, level: str = "WARNING") -> None:
        self._notice_seq += 1
        ts = time.time_ns()
        key = f"{self.name}|streamer.{self._start_ns}"
        record = notice_record(
            self._notice_seq, ts, f"nvrxlog streamer: {text}", level, node=self.name, w=f"streamer.{self._start_ns}"
        )
        self._received[key] = self._notice_seq
        self._pending.append([(ts, key, self._notice_seq, record)])

    # -- writing --------------------------------------------------------------------

    def _flush(self, router: zmq.Socket, pub: zmq.Socket, *, final: bool) -> None:
        cutoff = _INF if final else self._cutoff()
        ready: list[tuple] = []
        held: list[list[tuple]] = []
        oldest_held = _INF
        for chunk in self._pending:
            cut = len(chunk) if final else bisect.bisect_right(chunk, cutoff, key=_key)
            ready.extend(chunk[:cut])
            if cut < len(chunk):
                held.append(chunk[cut:])
                oldest_held = min(oldest_held, chunk[cut][0])
        self._pending = held
        if ready:
            ready.sort()  # merges the chunks' sorted runs
            self._write(ready, pub, time.time_ns() if cutoff == _INF else cutoff)
            # Only writing changes what is durable; an idle flush saves nothing.
            # Acks below stay safe: a batch is acked once its newest record is
            # under the cutoff, so written by this flush or an earlier one.
            self._checkpoint()
        if self._forwarder is not None:
            self._forwarder.watermark = time.time_ns() if cutoff == _INF else int(min(cutoff, oldest_held - 1))
        for peer, session in self._sessions.items():
            acks = session.acks
            done = 0
            while done < len(acks) and acks[done][1] <= cutoff:
                done += 1
            if done:
                last = acks[done - 1][0]
                del acks[:done]
                try:
                    router.send_multipart([peer, ACK, orjson.dumps({"acked": last})], zmq.NOBLOCK)
                except zmq.Again:
                    pass  # the node resends and is acknowledged again

    def _write(self, ready: list[tuple], pub: zmq.Socket, watermark: int) -> None:
        line = self._format.line
        records = [item[3] for item in ready]
        data = "".join([line(r, r["node"]) for r in records]).encode("utf-8", "backslashreplace")
        write_all(self._out_fd, data)
        written = self._written
        for _, key, seq, _ in ready:
            written[key] = seq
        if ready[0][0] < self._last_written_ts:
            # Older than lines already written: it came from a node that lagged
            # more than max_hold (or reached its own node late). Written, counted.
            self.stats["late"] += sum(1 for r in ready if r[0] < self._last_written_ts)
        self._last_written_ts = max(self._last_written_ts, ready[-1][0])
        self.stats["records"] += len(ready)
        if self._watchers:
            try:
                pub.send_multipart([b"rec", orjson.dumps(records)], zmq.NOBLOCK)
            except zmq.Again:
                pass  # no subscriber keeps up: live view only, the file has everything
        if self._forwarder is not None:
            self._forwarder.submit(records, watermark)

    def _checkpoint(self) -> None:
        ckpt = self._ckpt
        ckpt.out = self.out_path
        ckpt.out_size = os.lseek(self._out_fd, 0, os.SEEK_END)
        ckpt.writers = self._written
        save_checkpoint(self.checkpoint_path, ckpt)
