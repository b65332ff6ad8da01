"""What reaches the streamer, with no sockets: a message's frames -> sessions and ingest -> its reply.

Every message a node (or ``nvrxlog tail``) sends on the ROUTER is judged
here: a hello is checked and welcomed with credit or refused with a reason,
batches go through ``ingest.py`` into the merge buffer and wait for their
acks in ``sessions.py``, pings advance watermarks. A hello or ping stamped
with the node's clock is answered with the stamp and the streamer's clock, so
the node can estimate its offset, which it reports in its pings
(``clocks.py``). The streamer's own lines
(notices) enter the same merge buffer as one more writer, so they are
written in time order and de-duplicated like any other. Once batches are
acknowledged, ``settle`` raises their spool runs' floors and retires the
writers they said ended (``floors.py``). The caller sends the reply, if
any, and owns the sockets; this is testable with plain frames.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import orjson

from nvrxlog.core.cursor import WriterCursor
from nvrxlog.core.lines import LineFormat
from nvrxlog.core.record import notice_record
from nvrxlog.core.report import describe
from nvrxlog.streamer.clocks import FUTURE_NS
from nvrxlog.streamer.floors import BatchFloors, settled
from nvrxlog.streamer.ingest import MALFORMED, Ingest, batch_seq, record_key
from nvrxlog.streamer.merge import Chunk, MergeBuffer
from nvrxlog.streamer.sessions import Expected, Session, Sessions
from nvrxlog.wire.protocol import (
    BATCH,
    HELLO,
    INFO,
    MAX_MESSAGE_BYTES,
    PING,
    PROTOCOL_VERSION,
    QUIT,
    REFUSED,
    RESET,
    TAIL,
    WELCOME,
    hello_size_problem,
    version_problem,
)

__all__ = ["Intake"]

#: Dropped batches named one by one per session; past this a hostile peer's flood is only counted.
_NAMED_DROPS = 20
#: Nodes whose retried refusals are remembered (said once each); past this a flood of names is only counted.
_TOLD_TO_RETRY = 1000


class Intake:
    """The streamer's sessions, ingest and records held for merging, fed one message at a time.

    ``stats`` is the streamer's, updated in place. ``keep_records`` says
    whether records must be kept as dicts (a relay, a live view).
    """

    def __init__(
        self,
        name: str,
        lines: LineFormat,
        *,
        stats: dict[str, int],
        credit_bytes: int,
        idle_timeout: float,
        keep_records: Callable[[], bool],
        max_message: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.stats = stats
        self.max_message = max_message  # told to every node: a larger message would drop its connection
        stats.setdefault("future_stamps", 0)  # records merged by arrival, stamped too far ahead
        stats.setdefault("over_credit", 0)  # batches refused from peers past their credit
        self.sessions = Sessions(credit_bytes=credit_bytes, idle_timeout=idle_timeout)
        # Records held for merging, as sorted chunks (one per batch): a flush
        # takes what is ready from each chunk and sorts only that, instead of
        # re-sorting everything held while a slow node catches up.
        self.pending = MergeBuffer()
        self.pub_endpoint: str | None = None  # the live socket, told to whoever asks (TAIL)
        self._name = name
        self._lines = lines
        self._keep_records = keep_records
        self._start_ns = time.time_ns()
        self._notice_seq = 0
        self._over_credit_named = 0  # sessions refused for ignoring credit, named in notices
        self._told_to_retry: set[str] = set()  # nodes refused for now, said once until welcomed
        self._foreign: deque[tuple[str, str]] = deque()  # notices from other threads, not yet put in
        self._notice_key = record_key(name, f"streamer.{self._start_ns}")
        self.ingest = self._new_ingest(None, None)

    def recover(self, written: dict[str, int], floors: BatchFloors, keys: dict[str, int] | None = None) -> None:
        """Start from what the output already holds (per ``node|writer``: the highest seq written, its merge key;
        the floors)."""
        self.ingest = self._new_ingest(written, floors, keys)

    def _new_ingest(
        self, written: dict[str, int] | None, floors: BatchFloors | None, keys: dict[str, int] | None = None
    ) -> Ingest:
        ingest = Ingest(
            self._lines,
            written=written,
            floors=floors,
            keys=keys,
            notice=self.notice,
            keep_records=self._keep_records,
            stats=self.stats,
        )
        ingest.floors.protected = self.sessions.connected
        return ingest

    def settle(self, acknowledged: list[tuple[str, list[Expected]]]) -> tuple[bool, list[tuple[str, str]]]:
        """Batches written and acknowledged: raise their floors, retire the writers they ended.

        Returns whether a floor moved (the checkpoint should say so) and the writers retired.

        Called after the checkpoint that covers the batches: the floors
        raised here and the writers dropped go into the next one together,
        so no checkpoint forgets a writer without the floor that covers it.
        """
        floors, moved, retired = self.ingest.floors, False, []
        for node, batches in acknowledged:
            raised, ended = settled(batches)
            for run, seq in raised:
                floors.raise_to(node, run, seq)
                moved = True
            if ended:
                retired += self.ingest.retire(ended, by=node)
        return moved, retired

    # -- messages -------------------------------------------------------------------

    def handle(self, frames: list[bytes], now: float) -> list[bytes] | None:
        """Take one message (``[peer, kind, ...]``) at monotonic time ``now``; the reply to send, if any.

        A reply may be dropped (the peer's queue is full): each one is
        something the peer asks for again.
        """
        if len(frames) < 2:
            self.stats["bad_frames"] += 1
            return None
        peer, kind = frames[0], frames[1]
        sessions = self.sessions
        session = sessions.get(peer)
        try:
            if kind == BATCH and session is not None and len(frames) >= 3:
                self.notices(sessions.seen(session.node, now))
                size = sum(map(len, frames[2:]))
                if session.over_credit(size):
                    return self._over_credit(peer, session, size, len(frames) - 2)
                for payload in frames[2:]:
                    self._batch(session, payload)
            elif kind == PING and session is not None:
                self.notices(sessions.seen(session.node, now))
                # [P], [P, watermark], or [P, watermark or b"", clock]: the
                # clock first, so the watermark is corrected by its offset.
                pong = self._clock(peer, session, frames[3]) if len(frames) >= 4 else [peer, PING]
                if len(frames) >= 3 and frames[2]:
                    sessions.advance(session.node, int(frames[2]))
                return pong
            elif kind == HELLO and len(frames) == 3:
                return self._hello(peer, frames[2], now)
            elif kind == QUIT and session is not None:
                self.notices(sessions.quit(peer))
            elif kind == TAIL:
                return [peer, INFO, orjson.dumps({"pub": self.pub_endpoint})]
            elif kind in (BATCH, PING):
                return [peer, RESET]  # unknown peer (we restarted): hello first
            else:
                raise ValueError(f"unknown message kind {kind[:8]!r}")
        except MALFORMED as exc:
            self.stats["bad_frames"] += 1
            who = session.node if session else "an unknown peer"
            if session is None or not session.bad:
                self.notice(f"dropped a malformed message from {who}: {str(exc)[:200]}")
            if session is not None:
                session.bad += 1
        return None

    def _hello(self, peer: bytes, body: bytes, now: float) -> list[bytes]:
        """Welcome ``peer`` with its credit, or refuse it with the reason."""
        problem = hello_size_problem(len(body))
        if problem is not None:  # not parsed: its name would cost memory as large as the frame
            return self._refuse(peer, "a peer", problem)
        t1 = time.time_ns()
        hello = orjson.loads(body)
        node = self.ingest.name(hello["node"])
        problem = version_problem(hello)
        if problem is not None:
            return self._refuse(peer, f"node {node}", problem)
        sid = hello.get("sid", "")
        sid = sid[:64] if type(sid) is str else ""
        problem = self.sessions.conflict(node, sid, now)
        if problem is not None:
            return self._refuse(peer, f"a second session of node {node}", problem, retry=node)
        self._told_to_retry.discard(node)
        credit, notices = self.sessions.hello(peer, node, now, sid)
        self.notices(notices)
        self.stats["nodes"] = self.sessions.nodes
        welcome = {"credit": credit, "max": self.max_message}
        if type(hello.get("t")) is int:  # stamped: the first sample of the node's clock offset
            welcome.update(t0=hello["t"], t1=t1)
        return [peer, WELCOME, orjson.dumps(welcome)]

    def _clock(self, peer: bytes, session: Session, frame: bytes) -> list[bytes]:
        """Take a ping's clock part (its stamp, the node's offset estimate); the pong, echoing the stamp."""
        t1 = time.time_ns()
        clock = orjson.loads(frame)
        if type(clock) is not dict:
            raise TypeError("a ping's clock part must be an object")
        if "o" in clock:
            self.notices(self.sessions.report_clock(session.node, clock["o"], clock.get("r")))
        if type(clock.get("t")) is not int:
            return [peer, PING]
        return [peer, PING, orjson.dumps({"t0": clock["t"], "t1": t1})]

    def _refuse(self, peer: bytes, who: str, problem: str, *, retry: str = "") -> list[bytes]:
        """Refuse ``peer``'s hello with ``problem``, said in the output.

        ``retry`` names the node a refusal is for when the peer may be served
        later: it asks again (it was told to), so that refusal is said once
        until the node is welcomed, and a loop of them cannot flood the file.
        """
        self.stats["refused"] += 1
        if not retry:
            self.notice(f"refused {who}: {problem}")
        elif retry not in self._told_to_retry and len(self._told_to_retry) < _TOLD_TO_RETRY:
            self._told_to_retry.add(retry)
            self.notice(f"refused {who}: {problem}")
        return [peer, REFUSED, orjson.dumps({"reason": problem, "v": PROTOCOL_VERSION, "retry": bool(retry)})]

    def _over_credit(self, peer: bytes, session: Session, size: int, batches: int) -> list[bytes]:
        """A message past the peer's credit: not taken, and its session ends (RESET: hello, then resend).

        Credit is what bounds the streamer's memory, so a peer ignoring it is
        not served past it; a node that keeps to it never gets here, and one
        that did would lose nothing (it resends what is not acknowledged).
        """
        self.stats["over_credit"] += batches
        self.sessions.drop(peer)
        self._over_credit_named += 1
        if self._over_credit_named <= _NAMED_DROPS:
            more = "; further ones are counted, not named" if self._over_credit_named == _NAMED_DROPS else ""
            self.notice(
                f"refused {batches} batch(es) ({size} bytes) from {session.node}: it sent past its credit "
                f"({session.in_flight} bytes unacknowledged of {session.credit}); told to say hello and resend{more}"
            )
        return [peer, RESET]

    def _batch(self, session: Session, payload: bytes) -> None:
        """Take one batch payload of a message; each is judged alone, so a bad one costs only itself."""
        sessions = self.sessions
        try:
            batch = self.ingest.batch(session.node, payload, offset=sessions.offset(session.node))
        except MALFORMED as exc:
            self._dropped(session, payload, exc)
            return
        self.pending.add(batch.chunk)
        self.stats["batches"] += 1
        session.expect_ack(batch.seq, batch.newest, len(payload), batch.run, batch.ended)
        sessions.advance(session.node, batch.watermark)
        if batch.future:
            self._ahead(session.node, batch.future)

    def _ahead(self, node: str, count: int) -> None:
        """Count records of ``node`` merged by arrival, stamped too far ahead; said once per node."""
        self.stats["future_stamps"] += count
        clock = self.sessions.clock(node)
        if not clock.future:
            self.notice(
                f"records from {node} are stamped more than {FUTURE_NS / 1e9:g} s ahead of the streamer's clock "
                "(after correcting for its clock's offset); they are merged by arrival, shown with their own stamps "
                "(this is said once; they are counted)"
            )
        clock.future += count

    def _dropped(self, session: Session, payload: bytes, exc: BaseException) -> None:
        """Count and name a dropped batch; its ack (and every later one) waits for the notice to be written."""
        self.stats["bad_frames"] += 1
        self.stats["dropped_batches"] += 1
        session.bad += 1
        seq = batch_seq(payload)
        if session.bad <= _NAMED_DROPS:
            what = "a batch" if seq is None else f"batch {seq}"
            more = "; further ones are counted, not named" if session.bad == _NAMED_DROPS else ""
            session.hold = self.notice(f"dropped {what} from {session.node}: malformed ({describe(exc)[:200]}){more}")
        if seq is not None:
            session.expect_ack(seq, -1)

    # -- the streamer's own lines -----------------------------------------------------

    def notices(self, notices: list[tuple[str, str]]) -> None:
        """``notice`` each ``(text, level)``."""
        for text, level in notices:
            self.notice(text, level)

    def notice_from_thread(self, text: str, level: str = "WARNING") -> None:
        """``notice`` from another thread (a relay's forwarder): queued, put in on the streamer's own thread."""
        self._foreign.append((text, level))  # deque.append is atomic; the merge buffer is not thread-safe

    def take_foreign_notices(self) -> None:
        """Put in what other threads said since the last flush (on the streamer's thread)."""
        while self._foreign:
            self.notice(*self._foreign.popleft())

    def notice(self, text: str, level: str = "WARNING") -> int:
        """Put a line of the streamer's own in the output; its time (written once the cutoff passes it)."""
        self._notice_seq += 1
        ts = time.time_ns()
        record = notice_record(
            self._notice_seq, ts, f"nvrxlog streamer: {text}", level, node=self._name, w=f"streamer.{self._start_ns}"
        )
        # Our own writer, de-duplicated like any other (a relay's upstream sees it as one).
        self.ingest.cursors.setdefault(self._notice_key, WriterCursor()).seq = self._notice_seq
        self.pending.add(Chunk([ts], [self._notice_key], [self._notice_seq], [record], self._lines.lines([record])))
        return ts
