"""The streamer's intake (``nvrxlog.streamer.intake``): frames in, sessions and held records changed, a reply out."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_streamer_ingest import T0, payload, rec

from nvrxlog.core.lines import LineFormat
from nvrxlog.streamer.intake import Intake
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
    hello,
)

PEER = b"peer1"


def _intake() -> Intake:
    stats = {"batches": 0, "nodes": 0, "refused": 0, "dropped_batches": 0, "over_credit": 0}
    return Intake(
        "streamer", LineFormat(untrusted=True), stats=stats, credit_bytes=1 << 20, idle_timeout=10.0, keep_records=bool
    )


def _notices(intake: Intake) -> list[str]:
    """The streamer's own lines held for the merge, in order."""
    ready, _ = intake.pending.take(float("inf"))
    return [] if ready is None else [r["msg"] for r in ready.merged("records")]


def test_hello_is_welcomed_with_credit_and_makes_a_session() -> None:
    """A hello of this version gets WELCOME with the node's share of credit, and a session for the node."""
    intake = _intake()
    reply = intake.handle([PEER, *hello("node1")], 1.0)
    assert reply is not None and reply[:2] == [PEER, WELCOME]
    assert orjson.loads(reply[2]) == {"credit": 1 << 20, "max": MAX_MESSAGE_BYTES}
    assert intake.sessions.get(PEER).node == "node1"
    assert intake.stats["nodes"] == 1


def test_hello_of_another_version_is_refused_with_the_reason() -> None:
    """A hello of another protocol version is refused, counted and noticed; no session is made."""
    intake = _intake()
    reply = intake.handle([PEER, HELLO, orjson.dumps({"node": "node1", "v": 1})], 1.0)
    assert reply is not None and reply[:2] == [PEER, REFUSED]
    assert orjson.loads(reply[2])["v"] == PROTOCOL_VERSION
    assert intake.sessions.get(PEER) is None and intake.stats["refused"] == 1
    assert any("refused node node1" in text for text in _notices(intake))


def test_batches_and_pings_of_an_unknown_peer_are_told_to_say_hello() -> None:
    """A batch or ping from a peer without a session (the streamer restarted) is answered RESET, nothing taken."""
    intake = _intake()
    assert intake.handle([PEER, BATCH, payload(1, [rec(0, T0)])], 1.0) == [PEER, RESET]
    assert intake.handle([PEER, PING], 1.0) == [PEER, RESET]
    assert not intake.pending and intake.stats["batches"] == 0


def test_a_batch_is_held_for_the_merge_and_waits_for_its_ack() -> None:
    """A batch of a welcomed node is held, advances the node's watermark and is acked once the cutoff passes it."""
    intake = _intake()
    intake.handle([PEER, *hello("node1")], 1.0)
    assert intake.handle([PEER, BATCH, payload(7, [rec(0, T0), rec(1, T0 + 1)], watermark=T0 + 5)], 2.0) is None
    assert intake.stats["batches"] == 1 and intake.sessions.watermarks["node1"] == T0 + 5
    assert intake.sessions.acks_due(T0) == []
    assert intake.sessions.acks_due(T0 + 1) == [(PEER, 7)]
    ready, _ = intake.pending.take(T0 + 1)
    assert ready is not None and ready.merged("seqs") == [0, 1]  # not kept as dicts: nobody watches
    assert [line.split(" message ")[1] for line in ready.merged("lines")] == ["0\n", "1\n"]


def test_ping_advances_the_watermark_and_is_answered() -> None:
    """A ping with a watermark advances it and is answered with a ping."""
    intake = _intake()
    intake.handle([PEER, *hello("node1")], 1.0)
    assert intake.handle([PEER, PING, b"%d" % (T0 + 9)], 2.0) == [PEER, PING]
    assert intake.sessions.watermarks["node1"] == T0 + 9


def test_a_malformed_batch_is_dropped_named_and_acked_after_its_notice() -> None:
    """A batch that cannot be read is counted and named; its ack waits for the notice naming it."""
    intake = _intake()
    intake.handle([PEER, *hello("node1")], 1.0)
    intake.handle([PEER, BATCH, b'{"b": 3, "c": 0, "r": 5}'], 2.0)
    assert intake.stats["dropped_batches"] == 1 and intake.stats["bad_frames"] == 1
    (hold,) = [batch.newest for batch in intake.sessions.get(PEER).acks if batch.seq == 3]
    assert intake.sessions.acks_due(hold - 1) == []
    assert intake.sessions.acks_due(hold) == [(PEER, 3)]
    assert any("dropped batch 3 from node1" in text for text in _notices(intake))


def test_tail_is_told_the_live_endpoint_and_quit_ends_the_session() -> None:
    """TAIL is answered with the live socket's endpoint; QUIT ends the session with a notice that it finished."""
    intake = _intake()
    intake.pub_endpoint = "tcp://127.0.0.1:5555"
    assert intake.handle([b"viewer", TAIL], 1.0) == [b"viewer", INFO, b'{"pub":"tcp://127.0.0.1:5555"}']
    intake.handle([PEER, *hello("node1")], 1.0)
    assert intake.handle([PEER, QUIT], 2.0) is None
    assert intake.sessions.get(PEER) is None
    assert "nvrxlog streamer: node node1 finished" in _notices(intake)


def test_an_unknown_kind_or_a_short_message_is_a_bad_frame() -> None:
    """A message of an unknown kind is noticed once per peer; one without a kind is only counted."""
    intake = _intake()
    assert intake.handle([PEER], 1.0) is None
    assert intake.handle([PEER, b"Z"], 1.0) is None
    assert intake.handle([PEER, b"Z"], 1.0) is None
    assert intake.stats["bad_frames"] == 3
    assert sum("malformed message from an unknown peer" in text for text in _notices(intake)) == 2


def test_a_peer_sending_past_its_credit_is_refused_and_must_say_hello_again() -> None:
    """Bytes in flight past the credit (plus one message) are not taken: RESET, session ended, counted, named.

    What was taken before stays held and is acknowledged to nobody (the
    session is gone), so an honest node would resend it: nothing is lost.
    """
    intake = _intake()
    reply = intake.handle([PEER, *hello("node1")], 1.0)
    credit = orjson.loads(reply[2])["credit"]
    big = "x" * 1000
    sent = 0
    seq = 0
    while True:
        seq += 1
        body = payload(seq, [rec(seq * 1000 + i, T0 + seq, msg=big) for i in range(1000)])
        reply = intake.handle([PEER, BATCH, body], 2.0)
        if reply is not None:
            break
        sent += len(body)
        assert sent < credit + (32 << 20), "never refused"
    assert reply == [PEER, RESET]
    assert sent > credit  # what a node keeping to its credit could send was all taken
    assert intake.stats["over_credit"] == 1 and intake.stats["batches"] == seq - 1
    assert intake.sessions.get(PEER) is None
    assert intake.handle([PEER, BATCH, body], 3.0) == [PEER, RESET]  # unknown now: hello first
    ready, _ = intake.pending.take(float("inf"))
    assert ready is not None and any("sent past its credit" in line for line in ready.merged("lines"))


def test_a_second_live_session_for_a_node_is_refused_until_the_first_falls_silent() -> None:
    """Another spool claiming a live node's name is refused (retry), said once; the same spool reconnects freely."""
    intake = _intake()
    assert intake.handle([PEER, *hello("node1", "a" * 32)], 1.0)[1] == WELCOME
    for now in (2.0, 3.0):
        reply = intake.handle([b"other", *hello("node1", "b" * 32)], now)
        assert reply is not None and reply[1] == REFUSED
        body = orjson.loads(reply[2])
        assert body["retry"] is True and "connected from another process" in body["reason"]
    assert intake.sessions.get(PEER).node == "node1" and intake.sessions.get(b"other") is None
    assert intake.stats["refused"] == 2
    said = [text for text in _notices(intake) if "refused a second session of node node1" in text]
    assert len(said) == 1
    # The same spool from a new connection (a restart of that node) takes over at once.
    assert intake.handle([b"again", *hello("node1", "a" * 32)], 4.0)[1] == WELCOME
    # Silent past the idle timeout, the node's name is free for another spool.
    assert intake.handle([b"other", *hello("node1", "b" * 32)], 15.0)[1] == WELCOME
    assert intake.sessions.get(b"other").node == "node1" and intake.sessions.get(b"again") is None


# -- fuzz: an honest node among random and mutated frames -----------------------------------

_KINDS = [BATCH, PING, HELLO, QUIT, TAIL, b"Z", b""]


def _mutated(data: st.DataObject, good: bytes) -> bytes:
    """``good`` damaged: cut, bytes flipped, spliced with junk, or replaced by some other JSON."""
    how = data.draw(st.integers(0, 5), label="mutation")
    if how == 0:
        return good[: data.draw(st.integers(0, len(good)), label="cut")]
    if how == 1:
        raw = bytearray(good)
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            raw[data.draw(st.integers(0, len(raw) - 1), label="at")] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(raw)
    if how == 2:
        at = data.draw(st.integers(0, len(good)), label="splice")
        return good[:at] + data.draw(st.binary(max_size=40), label="junk") + good[at:]
    if how == 3:
        return orjson.dumps(data.draw(_json, label="json"))
    if how == 4:  # a batch whose records claim far-future stamps or seqs no writer reaches
        body = orjson.loads(good)
        body["t"] = [t + 10**18 for t in body["t"]] if "t" in body else body.get("t")
        body["s"] = [s + 10**15 for s in body["s"]] if "s" in body else body.get("s")
        return orjson.dumps(body)
    return b"[" * 2000 + b"]" * 2000  # nested past any limit


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(list("bcnrtsplfiPLFm")), inner),
    max_leaves=20,
)


@pytest.mark.timeout(300)
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_intake_never_dies_never_acks_unwritten_and_the_honest_node_arrives_once(data: st.DataObject) -> None:
    """Random and mutated frames from other peers around an honest node's batches, resends and flushes."""
    intake = _intake()
    honest, sid = b"honest", "a" * 32
    assert intake.handle([honest, *hello("n0", sid)], 0.0)[1] == WELCOME
    batches = []
    seq = 0
    for b in range(1, data.draw(st.integers(1, 6), label="batches") + 1):
        records = []
        for _ in range(data.draw(st.integers(0, 5), label="records")):
            records.append(rec(seq, T0 + seq * 10, w=f"w{seq % 2}"))
            seq += 1
        form = data.draw(st.sampled_from(["columns", "r"]), label="form") if records else "r"
        batches.append((b, records, payload(b, records, form=form)))
    written: list[tuple[str, int]] = []  # (writer key, seq) of every record taken for writing
    acked = 0
    sent = 0  # honest batches sent in order so far (resends rewind it)
    now = 1.0
    for _ in range(data.draw(st.integers(len(batches), 40), label="steps")):
        now += 0.001
        step = data.draw(st.integers(0, 9), label="step")
        if step <= 3 and sent < len(batches):
            frames = [honest, BATCH, batches[sent][2]]
            sent += 1
        elif step == 4:
            sent = acked  # a reconnect: resend from the first unacknowledged batch
            continue
        elif step == 5:
            cutoff = T0 + data.draw(st.integers(0, seq * 10 + 10), label="cutoff")
            ready, _ = intake.pending.take(cutoff)  # as a flush does: take, write, then acks due at that cutoff
            if ready is not None:
                written.extend(zip(ready.merged("keys"), ready.merged("seqs"), strict=True))
            for peer, last in intake.sessions.acks_due(cutoff):
                if peer == honest:
                    acked = max(acked, last)
            # An ack covers only batches whose honest records are all taken for writing.
            for b, records, _ in batches[:acked]:
                assert all((f"n0|{r['w']}", r["seq"]) in written for r in records), f"batch {b} acked unwritten"
            continue
        else:
            peer = data.draw(st.sampled_from([b"evil", b"evil2", honest + b"?"]), label="peer")
            kind = data.draw(st.sampled_from(_KINDS), label="kind")
            if kind == HELLO:
                name = data.draw(st.sampled_from(["n0", "evil", "x" * 100]), label="name")
                frames = [peer, *hello(name, data.draw(st.sampled_from(["", "b" * 32, "c"]), label="sid"))]
            else:
                good = batches[data.draw(st.integers(0, len(batches) - 1), label="copy")][2]
                payloads = [_mutated(data, good) for _ in range(data.draw(st.integers(0, 3), label="frames"))]
                frames = [peer, kind, *payloads]
        intake.handle(frames, now)  # never raises
    # The end: everything still sent, everything written, everything acknowledged.
    for _b, _, body in batches[acked:]:
        intake.handle([honest, BATCH, body], now)
    ready, _ = intake.pending.take(float("inf"))
    if ready is not None:
        written.extend(zip(ready.merged("keys"), ready.merged("seqs"), strict=True))
    assert intake.sessions.get(honest) is not None and intake.sessions.get(honest).node == "n0"
    last = [seq for peer, seq in intake.sessions.acks_due(float("inf")) if peer == honest]
    assert max([acked, *last]) == len(batches)
    mine = sorted(item for item in written if item[0].startswith("n0|"))
    assert mine == sorted((f"n0|{r['w']}", r["seq"]) for _, records, _ in batches for r in records)


def _ended_batch(b: int, records: list, run: str, ended: list) -> bytes:
    return orjson.dumps({**orjson.loads(payload(b, records, watermark=T0 + 10)), "o": run, "e": ended})


def test_an_acknowledged_end_retires_the_writer_and_its_resend_is_dropped_whole() -> None:
    """Once the batch ending a writer is acked, settle forgets the writer, and a resend of it yields nothing."""
    intake = _intake()
    intake.handle([PEER, *hello("node1")], 1.0)
    end = _ended_batch(4, [rec(0, T0, w="loader"), rec(1, T0 + 1, w="loader")], "run1", ["loader"])
    intake.handle([PEER, BATCH, end], 1.0)
    assert "node1|loader" in intake.ingest.cursors
    settled: list = []
    assert intake.sessions.acks_due(T0 + 1, settled) == [(PEER, 4)]
    assert intake.settle(settled) == (True, [("node1", "loader")])
    assert "node1|loader" not in intake.ingest.cursors and intake.ingest.floors.covers("node1", "run1", 4)
    intake.pending.take(float("inf"))
    intake.handle([PEER, BATCH, end], 2.0)  # the ack was lost: the node sends it again
    assert not intake.pending, "a resend of a batch the floor covers is not written again"
    assert intake.sessions.acks_due(0) == [(PEER, 4)], "and it is acknowledged again at once"


def test_an_end_in_a_batch_without_a_spool_run_retires_nothing() -> None:
    """Without a run no floor would cover a resend, so the writer's cursor is kept."""
    intake = _intake()
    intake.handle([PEER, *hello("node1")], 1.0)
    body = {**orjson.loads(payload(1, [rec(0, T0, w="loader")], watermark=T0)), "e": ["loader"]}
    intake.handle([PEER, BATCH, orjson.dumps(body)], 1.0)
    settled: list = []
    intake.sessions.acks_due(T0, settled)
    assert intake.settle(settled) == (False, [])
    assert "node1|loader" in intake.ingest.cursors
