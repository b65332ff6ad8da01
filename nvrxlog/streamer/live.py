"""The streamer's live view: who watches on the XPUB socket, what it is sent, and heartbeats.

``nvrxlog tail`` subscribes to the topics it shows. XPUB tells the streamer
which topics someone watches, so records are only kept as dicts and encoded
while someone does; a heartbeat tells a watcher the streamer is there when
no record is. The live view is best effort: a slow watcher loses lines, the
file has everything, and the streamer never waits for it.
"""

from __future__ import annotations

import orjson
import zmq

from nvrxlog.core.record import bounded_record
from nvrxlog.wire.send import try_send

__all__ = ["LIVE_HEARTBEAT", "LiveView", "encoded"]

#: Seconds between heartbeats on the live socket (``nvrxlog tail`` says when they stop).
LIVE_HEARTBEAT = 1.0


def encoded(records: list[dict]) -> bytes:
    """The live view's JSON of ``records``; a record nested past orjson's limit goes bounded, not the thread."""
    try:
        return orjson.dumps(records)
    except TypeError:
        return orjson.dumps([bounded_record(record) for record in records])


class LiveView:
    """The topics watched on the streamer's XPUB socket, and what is published on it.

    Used by the streamer's thread only, which owns ``pub`` (``attach``-ed once bound).
    """

    __slots__ = ("pub", "watchers", "_last_beat")

    def __init__(self) -> None:
        self.pub: zmq.Socket | None = None
        self.watchers: set[bytes] = set()  # topics someone subscribes to
        self._last_beat = 0.0

    def attach(self, pub: zmq.Socket, now: float) -> None:
        """Publish on ``pub`` from now on; the first heartbeat is due ``LIVE_HEARTBEAT`` after ``now``."""
        self.pub = pub
        self._last_beat = now

    def subscription(self, message: bytes) -> None:
        """Take one message XPUB passes up: a topic's first subscription or its last unsubscription."""
        # XPUB passes a topic's first subscription (b"\x01...") and, when its
        # last subscriber leaves, the unsubscription (b"\x00...").
        if message[:1] == b"\x01":
            self.watchers.add(message[1:])
        elif message[:1] == b"\x00":
            self.watchers.discard(message[1:])

    def subscriptions(self) -> None:
        """Take every (un)subscription waiting on the socket."""
        pub = self.pub
        while True:
            try:
                message = pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.subscription(message)

    def watching_records(self) -> bool:
        """Someone subscribes to the records (a topic that ``rec`` starts with)."""
        return any(b"rec".startswith(topic) for topic in self.watchers)

    def heartbeat(self, now: float) -> None:
        """Send a heartbeat if someone watches and the last one is ``LIVE_HEARTBEAT`` old."""
        if self.watchers and now - self._last_beat >= LIVE_HEARTBEAT:
            self._last_beat = now
            self._send([b"hb", b""])

    def publish(self, records: list) -> None:
        """Show the written ``records``; those that arrived before anyone watched were not kept as dicts."""
        shown = [r for r in records if r is not None]
        if shown:
            self._send([b"rec", encoded(shown)])

    def _send(self, frames: list[bytes]) -> None:
        try_send(self.pub, frames)  # dropped if no subscriber keeps up: live view only, the file has everything
