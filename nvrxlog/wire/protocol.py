"""The wire protocol between node aggregators (or relays) and the streamer.

Every message is a multipart ZeroMQ message whose first frame is its kind:

==========  ======================  ===============================================
direction   kind                    payload (orjson unless said otherwise)
==========  ======================  ===============================================
node ->     ``H`` hello             ``{"node": id, "v": PROTOCOL_VERSION, "sid": spool identity}``,
                                    optional ``"t"``: the node's clock (ns) when sent
node ->     ``B`` batches           one or more spool lines (a frame each):
                                    ``{"b": seq, "c": watermark, "n": count, ...}``, the
                                    records as columns (``columns``) or as ``"r": [...]``;
                                    optional ``"o"``: the spool run (a short string), and
                                    ``"e"``: writers whose last record is in this batch or
                                    an earlier one (a writer, or ``[writer, node]`` relayed)
node ->     ``P`` ping              optional watermark (ascii ns; ``b""``: none) once every
                                    batch is sent; then optionally the clock:
                                    ``{"t": node's clock when sent, "o": offset, "r": rtt}``
                                    (``"o"``, ``"r"`` in ns once the node has an estimate)
node ->     ``Q`` quit              none: everything is acknowledged and nothing more will come
anyone ->   ``T`` tail info         none
-> node     ``W`` welcome           ``{"credit": bytes of batches in flight allowed,
                                    "max": the largest message it takes, in bytes}``, and
                                    ``"t0"``: the hello's ``"t"``, ``"t1"``: the streamer's
                                    clock on receipt, if the hello had ``"t"``
-> node     ``A`` ack               ``{"acked": seq}``: batches up to seq are durable
-> node     ``P`` pong              none, or ``{"t0": the ping's "t", "t1": the streamer's clock}``
-> node     ``R`` reset             none: "say hello first" (e.g. after a restart)
-> node     ``X`` refused           ``{"reason": text, "v": the streamer's version, "retry": bool}``
-> anyone   ``I`` info              ``{"pub": endpoint of the live PUB socket}``
==========  ======================  ===============================================

A node sends batches in order, at most ``credit`` bytes beyond the last ack, in
messages of at most ``max`` bytes (a larger one would drop its connection; a
batch that cannot fit alone is stated lost, its records are in the node's
file), and on a
reset, a reconnect or a silent streamer rewinds to the first unacknowledged
batch. The streamer de-duplicates per record (node, writer, writer seq), so a
resend can never double a line. Once a batch naming ended writers (``"e"``)
is acknowledged the streamer forgets them, keeping instead, per node and
spool run (``"o"``: one opening of the node's spool, whose seqs only grow),
the highest batch acknowledged; a resend at or below it is a duplicate as a
whole. Without ``"o"`` nothing is forgotten. A hello of another protocol
version, or over ``MAX_HELLO_BYTES``, is refused, and both sides say so.

A node's ``sid`` is made with its spool and kept across its restarts. While
a node's session is live (heard within the idle timeout), a hello naming
that node with another ``sid`` (a second process given the same node id, or
a peer claiming to be it) is refused with ``"retry": true``: the first
session keeps its name and its writers' positions, and the refused peer
tries again later (it is welcomed once the first has been silent past the
timeout, as a restarted node whose spool was lost is). Without CURVE a peer
that can reach the streamer can still write lines of its own under any
name; run with CURVE on any network others can reach.

A watermark says "this node has handed over every record up to this time";
the streamer writes up to the lowest watermark of its live nodes, so lines
from different nodes come out in time order however late each arrives.

Clocks: ``"t"``, ``"t0"``, ``"t1"`` let the node estimate the streamer's clock
minus its own, NTP-style (``wire/clock.py``); it reports that ``"o"`` (and its
round trip ``"r"``) in its pings, the first right after the welcome, before
any batch. The streamer adds the offset to the node's stamps and watermarks
(``streamer/clocks.py``). Every clock field is optional: a peer without them
is not corrected, and a record stamped far ahead of the streamer's clock is
merged by its arrival whatever the peer.
"""

from __future__ import annotations

import orjson

__all__ = [
    "ACK",
    "BATCH",
    "HELLO",
    "INFO",
    "MAX_BATCH_RECORDS",
    "MAX_HELLO_BYTES",
    "MAX_MESSAGE_BYTES",
    "PING",
    "PROTOCOL_VERSION",
    "QUIT",
    "REFUSED",
    "RESET",
    "TAIL",
    "WELCOME",
    "announced_max",
    "hello",
    "hello_size_problem",
    "version_problem",
]

HELLO, BATCH, PING, TAIL, QUIT = b"H", b"B", b"P", b"T", b"Q"
WELCOME, ACK, RESET, INFO, REFUSED = b"W", b"A", b"R", b"I", b"X"
PROTOCOL_VERSION = 3
MAX_BATCH_RECORDS = 1000
MAX_MESSAGE_BYTES = 64 << 20
#: A hello names a node (64 characters once sanitised) and a version: anything
#: much larger is not a hello, and its name must not be parsed, sanitised or kept.
MAX_HELLO_BYTES = 4096


def hello(node_id: str, sid: str = "", *, now_ns: int | None = None) -> list[bytes]:
    """The frames of a node's hello (``sid``: its spool's identity); stamped with ``now_ns`` (its clock),
    the welcome answers with the streamer's."""
    body: dict[str, object] = {"node": node_id, "v": PROTOCOL_VERSION, "sid": sid}
    if now_ns is not None:
        body["t"] = now_ns
    return [HELLO, orjson.dumps(body)]


def announced_max(welcome_body: dict) -> int:
    """The message limit a welcome announces (``MAX_MESSAGE_BYTES`` if it says none), at least 64 KiB."""
    limit = welcome_body.get("max")
    if type(limit) is not int:
        return MAX_MESSAGE_BYTES
    return max(64 << 10, min(limit, MAX_MESSAGE_BYTES))


def hello_size_problem(size: int) -> str | None:
    """Why a hello frame of ``size`` bytes is refused unread (too large for any node name), or None."""
    if size <= MAX_HELLO_BYTES:
        return None
    return f"a hello of {size} bytes is over the limit of {MAX_HELLO_BYTES} (a node name has at most 64 characters)"


def version_problem(hello_body: dict) -> str | None:
    """Why a peer's hello cannot be served (another protocol version), or None."""
    version = hello_body.get("v")
    if version == PROTOCOL_VERSION:
        return None
    return f"protocol version {version!r} is not this streamer's ({PROTOCOL_VERSION}); upgrade nvrxlog on both ends"
