"""The streamer's view of its nodes, with no sockets: sessions, watermarks, idleness, credit, acks.

A session is one connected node (one DEALER connection, known by its peer
id). A node says hello and is welcomed with a share of the streamer's byte
credit; it sends batches, each acknowledged once its records are written;
it says quit when it is done. A batch that cannot be read is dropped, named
in a notice, and acknowledged once that notice is written: acks are
cumulative, so holding its ack back would hold every later batch's too and
the node would resend it forever; acknowledging it only after the notice
keeps "an ack means written" true of the drop's record. A node silent past the idle timeout is marked
gone (and stops holding the others back) until it is heard again.

Watermarks are kept in the streamer's time: a node's are corrected by its
clock's offset (``clocks.py``), and move with it when the offset does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from nvrxlog.streamer.clocks import NodeClock

__all__ = ["Expected", "Session", "Sessions"]

_MIN_CREDIT = 256 << 10
_MAX_CREDIT = 8 << 20
# A node sends while it has less than its credit in flight, so it may be one
# message over: up to 1 MiB of batches plus one batch (4 MiB estimated, a
# little more when escapes outgrow the estimate). Past this, it ignores credit.
_CREDIT_SLACK = 16 << 20


class Expected(NamedTuple):
    """A batch received and waiting for its acknowledgement."""

    seq: int  # the node's batch seq
    newest: int  # acknowledged once everything up to this time (and any drop notice) is written
    size: int = 0  # its bytes, counted against the node's credit until then
    run: str = ""  # its spool run ("": not said): what its acknowledgement settles, see ``floors``
    ended: tuple[tuple[str, str], ...] = ()  # (node, writer) whose last record is in it or before


@dataclass(slots=True)
class Session:
    """One connected node."""

    node: str
    credit: int = 0  # bytes of batches it may have in flight
    sid: str = ""  # the identity of the node's spool, the same across its restarts
    acks: list[Expected] = field(default_factory=list)  # batches received, in order, not yet acknowledged
    in_flight: int = 0  # bytes of its batches received and not yet acknowledged
    bad: int = 0  # malformed messages from it
    # Acks are cumulative: once a batch is dropped, no later ack may go out
    # before the notice naming the drop is written (the time of that notice).
    hold: int = -1

    def expect_ack(self, seq: int, newest: int, size: int = 0, run: str = "", ended: tuple = ()) -> None:
        """Batch ``seq`` (``size`` bytes) is acked once everything up to ``newest`` (and any drop notice) is written.

        ``run`` and ``ended`` (its spool run, the writers it says ended) are
        what its acknowledgement settles (see ``floors``).
        """
        self.acks.append(Expected(seq, max(newest, self.hold), size, run, ended))
        self.in_flight += size

    def over_credit(self, size: int) -> bool:
        """Taking ``size`` more bytes would put it past what a node keeping to its credit can have in flight."""
        return self.in_flight + size > self.credit + _CREDIT_SLACK


class Sessions:
    """Every connected node's session, watermark and last sign of life.

    Methods that change what the output should say return the notices to
    write (text, level); the caller writes them.
    """

    def __init__(self, *, credit_bytes: int, idle_timeout: float) -> None:
        self.credit_bytes = credit_bytes
        self.idle_timeout = idle_timeout
        self.by_peer: dict[bytes, Session] = {}
        self.watermarks: dict[str, int] = {}  # node -> it has handed over everything up to this time
        self.last_seen: dict[str, float] = {}
        self.gone: set[str] = set()
        self.clocks: dict[str, NodeClock] = {}  # node -> its clock, once it reported one or stamped ahead

    def get(self, peer: bytes) -> Session | None:
        """The session of ``peer``, if it said hello."""
        return self.by_peer.get(peer)

    def connected(self) -> set[str]:
        """The nodes with a session now."""
        return {s.node for s in self.by_peer.values()}

    @property
    def nodes(self) -> int:
        """How many distinct nodes are connected."""
        return len(self.connected())

    def conflict(self, node: str, sid: str, now: float) -> str | None:
        """Why a hello as ``node`` from spool ``sid`` cannot be served now, or None.

        A live session of ``node`` from another spool is another process (a
        second node given the same id, or a peer claiming to be it): taking
        its name would mix two writers' positions and drop the live node's
        records as duplicates. It keeps the name; the other may try again
        once the first has been silent past the idle timeout.
        """
        for session in self.by_peer.values():
            if session.node == node and session.sid != sid:
                silent = now - self.last_seen.get(node, float("-inf"))
                if silent <= self.idle_timeout:
                    return (
                        f"node {node} is connected from another process (its spool differs; heard {silent:.0f}s ago); "
                        f"give each node its own NVRX_NODE_ID, or wait {self.idle_timeout:.0f}s after the old one ends"
                    )
        return None

    def hello(self, peer: bytes, node: str, now: float, sid: str = "") -> tuple[int, list[tuple[str, str]]]:
        """``peer`` says hello as ``node`` (from spool ``sid``): its credit in bytes, and notices."""
        for other, old in list(self.by_peer.items()):
            if old.node == node:
                del self.by_peer[other]  # a reconnect replaces the old connection
        # The byte budget is shared: what all nodes may have in flight at once
        # bounds what the streamer holds.
        credit = max(_MIN_CREDIT, min(_MAX_CREDIT, self.credit_bytes // (1 + len(self.by_peer))))
        self.by_peer[peer] = Session(node, credit, sid)
        # Until it reports a watermark, a new node holds the others back
        # (at most max_hold): its first records may be older than theirs.
        self.watermarks.setdefault(node, 0)
        return credit, self.seen(node, now)

    def drop(self, peer: bytes) -> None:
        """Forget ``peer``'s session (it must say hello again); its unacknowledged batches are resent then."""
        self.by_peer.pop(peer, None)

    def quit(self, peer: bytes) -> list[tuple[str, str]]:
        """``peer`` finished cleanly: no more records, so it holds nobody back and is not "gone"."""
        session = self.by_peer.pop(peer, None)
        if session is None:
            return []
        self.watermarks.pop(session.node, None)
        self.last_seen.pop(session.node, None)
        self.clocks.pop(session.node, None)
        self.gone.discard(session.node)  # finished is not gone: a later hello is a new start, not a return
        return [(f"node {session.node} finished", "INFO")]

    def seen(self, node: str, now: float) -> list[tuple[str, str]]:
        """``node`` was heard from."""
        self.last_seen[node] = now
        if node in self.gone:
            self.gone.discard(node)
            return [(f"node {node} is back", "INFO")]
        return []

    def advance(self, node: str, watermark: int) -> None:
        """``node`` has handed over everything up to ``watermark`` (its clock; watermarks never go back)."""
        clock = self.clocks.get(node)
        if clock is not None:
            watermark += clock.offset
        if watermark > self.watermarks.get(node, 0):
            self.watermarks[node] = watermark

    def offset(self, node: str) -> int:
        """What to add to ``node``'s stamps for the streamer's time (0 until it reports an offset)."""
        clock = self.clocks.get(node)
        return 0 if clock is None else clock.offset

    def clock(self, node: str) -> NodeClock:
        """``node``'s clock (a new one, no offset, if it has not reported one)."""
        clock = self.clocks.get(node)
        if clock is None:
            clock = self.clocks[node] = NodeClock()
        return clock

    def report_clock(self, node: str, offset: object, rtt: object) -> list[tuple[str, str]]:
        """``node`` estimates the streamer's clock minus its own at ``offset`` ns (round trip ``rtt``); notices.

        Its watermark moves with the offset applied: it was the node's
        time plus the old offset. Raises TypeError/ValueError for a report
        that is no clock (see ``NodeClock.report``).
        """
        moved, notices = self.clock(node).report(node, offset, rtt)
        if moved and node in self.watermarks:
            self.watermarks[node] += moved
        return notices

    def check_idle(self, now: float) -> list[tuple[str, str]]:
        """Mark nodes silent past the idle timeout as gone."""
        notices = []
        for node, seen in self.last_seen.items():
            if node not in self.gone and now - seen > self.idle_timeout:
                self.gone.add(node)
                notices.append((f"node {node} has been silent for {now - seen:.0f}s: marked gone", "WARNING"))
        return notices

    def cutoff(self, now_ns: int, hold_ns: int) -> int:
        """Write up to the lowest watermark of the live nodes, holding back at most ``hold_ns``."""
        live = [w for node, w in self.watermarks.items() if node not in self.gone]
        return max(min(live, default=now_ns), now_ns - hold_ns)

    def has_unacked(self) -> bool:
        """Some batch received waits for its acknowledgement."""
        return any(s.acks for s in self.by_peer.values())

    def acks_due(
        self, cutoff: float, settled: list[tuple[str, list[Expected]]] | None = None
    ) -> list[tuple[bytes, int]]:
        """``(peer, last batch seq)`` for every session whose batches are now written up to ``cutoff``.

        A batch is acknowledged once its newest record is under the cutoff,
        so written by this flush or an earlier one; acknowledged batches are
        forgotten, after being added to ``settled`` (if given) as ``(node, batches)``.
        """
        due = []
        for peer, session in self.by_peer.items():
            acks = session.acks
            done = 0
            while done < len(acks) and acks[done][1] <= cutoff:
                session.in_flight -= acks[done][2]
                done += 1
            if done:
                due.append((peer, acks[done - 1][0]))
                if settled is not None:
                    settled.append((session.node, acks[:done]))
                del acks[:done]
        return due
