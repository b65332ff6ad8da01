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
from itertools import islice, repeat
from operator import le, setitem

import orjson
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from ._checkpoint import load_checkpoint, open_output, save_checkpoint
from ._columns import COLUMNS, unpack
from ._config import sanitize_name
from ._exceptions import ConfigError, LifecycleError, TransportError
from ._fileio import write_all
from ._format import LineFormat
from ._merge import Chunk, MergeBuffer, Ready
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
        self._last_key: dict[str, int] = {}  # "node|writer" -> its latest merge key
        # Records held for merging, as sorted chunks (one per batch): a flush
        # takes what is ready from each chunk and sorts only that, instead of
        # re-sorting everything held while a slow node catches up.
        self._pending = MergeBuffer()
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
            self._out_fd, _ = open_output(self.out_path, ckpt, self.checkpoint_path)
        except OSError as exc:
            raise TransportError(f"cannot open {self.out_path}: {exc.strerror}") from exc
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
                    # Receive until the flush is due, so under load lines keep
                    # coming out, acks keep flowing and what is held stays small.
                    due = last_flush + self._ckpt_s
                    while True:
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(router, frames)
                        if time.monotonic() >= due:
                            break
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
        watermark = batch.get("c", 0)
        if type(seq) is not int or type(watermark) is not int:
            raise TypeError("a batch needs an int 'b' and an int 'c'")
        node = session.node
        if "t" in batch:
            chunk, newest = self._new_columns(node, batch)
        else:
            records = batch["r"]
            if type(records) is not list:
                raise TypeError("a batch needs columns or a list 'r'")
            chunk, newest = self._new_records_one_by_one(node, records)
        self._pending.add(chunk)
        self.stats["batches"] += 1
        session.acks.append((seq, newest))
        self._advance(node, watermark)

    def _new_columns(self, node: str, body: dict) -> tuple[Chunk, int]:
        """The new records of a packed batch (see ``_columns``), checked and formatted column by column.

        Everything that can find the batch malformed runs before anything
        is taken as received: a dropped batch leaves no trace to be resent into.
        """
        columns = [body[name] for name in COLUMNS]
        profiles, levels, files = body["P"], body["L"], body["F"]
        ts, seqs, p, lv, fi, line_numbers, msgs = columns
        n = len(ts)
        if any(type(column) is not list or len(column) != n for column in columns):
            raise TypeError("a batch's columns must be lists of one length")
        if not n:
            return Chunk.of([]), -1
        # Checked in C: a sum of ints is an int (a float or a string is not).
        for column in (ts, seqs, p, lv, fi):
            if type(sum(column)) is not int:
                raise TypeError("a batch's times, seqs and indexes must be ints")
        for index, table in ((p, profiles), (lv, levels), (fi, files)):
            if type(table) is not list or min(index) < 0 or max(index) >= len(table):
                raise ValueError("a batch's table index is out of range")
        keys_of, nodes_of, labels_of = [], [], []
        for profile in profiles:
            if type(profile) is not list or len(profile) < 6:
                raise ValueError("a batch's profile needs a writer, four ranks and a pid")
            raw = profile[6] if len(profile) > 6 else None
            name = node if raw is None else self._name(raw)  # a relay's records name their node
            keys_of.append(self._record_key(name, profile[0]))
            nodes_of.append(name)
            labels_of.append(self._format.label(tuple(profile[1:5])))
        lines = None
        if not self._format.json:
            lines = self._format.column_lines(
                ts,
                map(levels.__getitem__, lv),
                map(nodes_of.__getitem__, p),
                map(labels_of.__getitem__, p),
                map(files.__getitem__, fi),
                line_numbers,
                msgs,
                n,
            )
        keys = list(map(keys_of.__getitem__, p))
        if not self._all_new(keys, seqs, ts):
            return self._new_records_one_by_one(node, unpack(body))
        # Records as dicts cost more than everything else here: made only for
        # a relay, a live view or a format that needs them.
        records: list = [None] * n
        if lines is None or self._forwarder is not None or self._watchers:
            records = unpack(body)
            any(map(setitem, records, repeat("node"), map(nodes_of.__getitem__, p)))
            if lines is None:
                lines = self._format.lines(records)
        return Chunk(ts, keys, seqs, records, lines), ts[-1]

    def _all_new(self, keys: list[str], seqs: list[int], ts: list[int]) -> bool:
        """Take the records as new if they plainly are; False (nothing taken) if it needs a closer look.

        Plainly new: times never decrease, and each writer's first seq is past
        what arrived from it, at a time no earlier than its last (so its
        records stay in order). Resends overlap what arrived and look closer.
        """
        if not all(map(le, ts, islice(ts, 1, None))):
            return False
        received, last_key = self._received, self._last_key
        first_ts = dict(zip(reversed(keys), reversed(ts), strict=True))
        for key, first in dict(zip(reversed(keys), reversed(seqs), strict=True)).items():
            if first <= received.get(key, -1) or first_ts[key] < last_key.get(key, 0):
                return False
        # Later entries win: each writer's last seq and time.
        received.update(zip(keys, seqs, strict=True))
        last_key.update(zip(keys, ts, strict=True))
        return True

    def _new_records_one_by_one(self, node: str, records: list) -> tuple[Chunk, int]:
        """Check and de-duplicate record by record; return the new ones and the newest time held."""
        written, received, last_key = self._written, self._received, self._last_key
        items: list[tuple] = []
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
                raw = record.get("node")
                if raw is None:
                    key = keys.get(writer) or keys.setdefault(writer, self._record_key(node, writer))
                else:  # relayed: the record names its own node
                    record["node"] = name = self._name(raw)
                    key = self._record_key(name, writer)
            except (KeyError, TypeError, AttributeError):
                bad += 1
                continue
            if rseq > received.get(key, -1):  # the common case: new
                received[key] = rseq
                # A writer's merge key never goes back (a clock step back on a
                # rank, or a node resending out of order), so its records stay in order.
                previous = last_key.get(key, 0)
                if ts < previous:
                    ts = previous
                else:
                    last_key[key] = ts
                if ts > newest:
                    newest = ts
                if raw is None:
                    record["node"] = node
                items.append((ts, key, rseq, record))
                continue
            duplicates += 1
            if rseq > written.get(key, -1) and ts > newest:
                newest = ts  # held for merging already: its ack waits for it
        self.stats["duplicates"] += duplicates
        if bad:
            self.stats["bad_frames"] += bad
            self._notice(f"dropped {bad} malformed record(s) in a batch from {node}")
        if items:
            lines = self._format.lines([item[3] for item in items])
            items = [(*item, line) for item, line in zip(items, lines, strict=True)]
        return Chunk.of(items), newest

    @staticmethod
    def _record_key(node: str, writer: object) -> str:
        """``node|writer``: what de-duplication and the checkpoint count by."""
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
        self._pending.add(Chunk([ts], [key], [self._notice_seq], [record], self._format.lines([record])))

    # -- writing --------------------------------------------------------------------

    def _flush(self, router: zmq.Socket, pub: zmq.Socket, *, final: bool) -> None:
        cutoff = _INF if final else self._cutoff()
        ready, oldest_held = self._pending.take(cutoff)
        if ready is not None:
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

    def _write(self, ready: Ready, pub: zmq.Socket, watermark: int) -> None:
        write_all(self._out_fd, "".join(ready.merged("lines")).encode("utf-8", "backslashreplace"))
        last_written = self._last_written_ts
        for part in ready.parts:
            # In each part, and from part to part, a writer's records keep their order.
            self._written.update(zip(part.keys, part.seqs, strict=True))
            if part.ts[0] < last_written:
                # Older than lines already written: it came from a node that lagged
                # more than max_hold (or reached its own node late). Written, counted.
                self.stats["late"] += bisect.bisect_left(part.ts, last_written)
            self._last_written_ts = max(self._last_written_ts, part.ts[-1])
        self.stats["records"] += len(ready)
        if not self._watchers and self._forwarder is None:
            return
        records = ready.merged("records")
        if self._watchers:
            # Records that arrived before anyone watched were not kept as dicts.
            shown = [r for r in records if r is not None]
            try:
                if shown:
                    pub.send_multipart([b"rec", orjson.dumps(shown)], zmq.NOBLOCK)
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
