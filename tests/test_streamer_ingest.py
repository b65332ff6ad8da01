"""The streamer's ingest (``nvrxlog.streamer.ingest``): new records out exactly once, malformed batches refused."""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate
from typing import Any

import orjson
import pytest
from conftest import LINE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nvrxlog.streamer.ingest as ingest_module
from nvrxlog.config import sanitize_name
from nvrxlog.core.lines import LineFormat
from nvrxlog.streamer.ingest import Batch, Ingest, record_key
from nvrxlog.streamer.merge import Chunk
from nvrxlog.wire.columns import pack

NODE = "n1"
T0 = 1_700_000_000_000_000_000  # ns: 2023-11-14
MALFORMED = (ValueError, KeyError, TypeError)


def rec(seq: int, ts: int, w: str = "w0", msg: str | None = None, **extra: Any) -> dict:
    """A record the way a node's aggregator hands it to the spool."""
    return {
        "seq": seq,
        "ts": ts,
        "level": "INFO",
        "rank": 3,
        "local_rank": 1,
        "infra_rank": 7,
        "infra_local_rank": 0,
        "pid": 4242,
        "file": "train.py",
        "line": 12,
        "msg": f"message {seq}" if msg is None else msg,
        "w": w,
        **extra,
    }


def body_of(b: int, records: list[dict], *, form: str = "columns", watermark: int = 0) -> dict:
    """The decoded batch a node sends: columns (as the spool packs them) or the ``"r"`` list of records."""
    packed = pack(records) if form == "columns" else {"r": records}
    if form == "columns":
        assert "r" not in packed, "test records must be of the usual shape"
    return {"b": b, "c": watermark, "n": len(records), **packed}


def payload(b: int, records: list[dict], *, form: str = "columns", watermark: int = 0) -> bytes:
    return orjson.dumps(body_of(b, records, form=form, watermark=watermark))


def expected_line(record: dict, node: str) -> str:
    """The line a record gets when formatted alone by a fresh formatter."""
    return LineFormat(untrusted=True).line({k: v for k, v in record.items() if k != "node"}, node)


def cursor_state(ingest: Ingest) -> dict[str, tuple[int, int]]:
    return {key: (c.seq, c.key) for key, c in ingest.cursors.items()}


def new_ingest(**kwargs: Any) -> Ingest:
    return Ingest(LineFormat(untrusted=True), **kwargs)


FORMS = pytest.mark.parametrize("form", ["columns", "r"])


# -- new batches --------------------------------------------------------------------


@FORMS
def test_a_new_batch_yields_every_record_with_a_text_line(form: str) -> None:
    """A first batch gives a Chunk of all its records, in time order, each with its own formatted line."""
    records = [rec(0, T0 + 10), rec(1, T0 + 20, msg="second"), rec(2, T0 + 20)]
    ingest = new_ingest()
    result = ingest.batch(NODE, payload(5, records, form=form, watermark=T0 + 30))
    assert isinstance(result, Batch)
    assert result.seq == 5
    assert result.watermark == T0 + 30
    assert result.newest == T0 + 20
    chunk = result.chunk
    assert isinstance(chunk, Chunk)
    assert chunk.seqs == [0, 1, 2]
    assert chunk.ts == [T0 + 10, T0 + 20, T0 + 20]
    assert chunk.keys == ["n1|w0"] * 3
    assert chunk.lines == [expected_line(r, NODE) for r in records]
    for line, r in zip(chunk.lines, records, strict=True):
        assert line.endswith("\n")
        match = LINE.match(line[:-1])
        assert match is not None, line
        assert match["node"] == NODE
        assert match["msg"] == r["msg"]
        assert (match["rank"], match["local"], match["infra"], match["infra_local"]) == ("3", "1", "7", "0")
        assert (match["file"], match["line"], match["level"]) == ("train.py", "12", "INFO")
    assert ingest.stats["duplicates"] == 0
    assert {k: c.seq for k, c in ingest.cursors.items()} == {"n1|w0": 2}
    assert ingest.per_rank == {(NODE, 3): 3} and ingest.levels == {(NODE, "INFO"): 3}


def test_records_are_kept_when_asked() -> None:
    """With keep_records returning True, the chunk carries each record as a dict naming its node."""
    records = [rec(0, T0), rec(1, T0 + 1)]
    result = new_ingest(keep_records=lambda: True).batch(NODE, payload(1, records))
    assert [r["seq"] for r in result.chunk.records] == [0, 1]
    assert all(r["node"] == NODE and r["w"] == "w0" for r in result.chunk.records)
    assert result.chunk.records[1]["msg"] == "message 1"


def test_an_empty_batch_yields_an_empty_chunk() -> None:
    """A batch with no records gives an empty chunk and newest -1 (nothing to wait for)."""
    for form in ("columns", "r"):
        result = new_ingest().batch(NODE, payload(1, [], form=form))
        assert result.chunk.seqs == [] and result.chunk.lines == []
        assert result.newest == -1


def test_a_multi_line_message_is_defanged() -> None:
    """Untrusted messages cannot forge lines: continuation lines are indented and control characters escaped."""
    records = [rec(0, T0, msg="first\nsecond"), rec(1, T0 + 1, msg="bell\x07")]
    chunk = new_ingest().batch(NODE, payload(1, records)).chunk
    assert chunk.lines[0].endswith(" first\n    second\n")
    assert chunk.lines[1].endswith(" bell\\x07\n")


def test_several_writers_in_one_batch_are_keyed_apart() -> None:
    """Each writer's records are keyed node|writer and come out sorted by time across writers."""
    records = [rec(0, T0 + 5, w="a"), rec(0, T0 + 1, w="b"), rec(1, T0 + 9, w="a"), rec(1, T0 + 2, w="b")]
    ingest = new_ingest()
    chunk = ingest.batch(NODE, payload(1, records)).chunk
    assert chunk.ts == [T0 + 1, T0 + 2, T0 + 5, T0 + 9]
    assert chunk.keys == ["n1|b", "n1|b", "n1|a", "n1|a"]
    assert chunk.seqs == [0, 1, 0, 1]
    assert cursor_state(ingest) == {"n1|a": (1, T0 + 9), "n1|b": (1, T0 + 2)}


def test_a_clock_stepping_back_keeps_the_writers_merge_keys_in_order() -> None:
    """A record older than its writer's previous one gets the previous merge key, so the writer's order holds."""
    records = [rec(0, T0 + 100), rec(1, T0 + 50), rec(2, T0 + 120)]
    chunk = new_ingest().batch(NODE, payload(1, records)).chunk
    assert chunk.seqs == [0, 1, 2]
    assert chunk.ts == [T0 + 100, T0 + 100, T0 + 120]
    # The line still shows the record's own time.
    assert chunk.lines == [expected_line(r, NODE) for r in records]


def test_written_seqs_count_as_already_received() -> None:
    """Records at or below what the checkpoint says was written are duplicates after a restart."""
    ingest = new_ingest(written={"n1|w0": 4})
    chunk = ingest.batch(NODE, payload(1, [rec(s, T0 + s) for s in range(3, 8)])).chunk
    assert chunk.seqs == [5, 6, 7]
    assert ingest.stats["duplicates"] == 2


# -- resends ------------------------------------------------------------------------


@FORMS
def test_a_resent_batch_yields_nothing_new(form: str) -> None:
    """The same batch again gives an empty chunk and counts each of its records as a duplicate."""
    records = [rec(s, T0 + s) for s in range(4)]
    ingest = new_ingest()
    ingest.batch(NODE, payload(1, records, form=form))
    before = cursor_state(ingest)
    again = ingest.batch(NODE, payload(1, records, form=form))
    assert again.chunk.seqs == [] and again.chunk.lines == []
    assert ingest.stats["duplicates"] == 4
    assert cursor_state(ingest) == before
    ingest.batch(NODE, payload(1, records, form=form))
    assert ingest.stats["duplicates"] == 8
    assert sum(ingest.per_rank.values()) == sum(ingest.levels.values()) == 4


@FORMS
def test_an_overlapping_batch_yields_only_the_new_records(form: str) -> None:
    """A batch that repeats the end of the previous one gives only the records past it."""
    ingest = new_ingest()
    first = ingest.batch(NODE, payload(1, [rec(s, T0 + s) for s in range(5)], form=form))
    assert first.chunk.seqs == [0, 1, 2, 3, 4]
    second = ingest.batch(NODE, payload(2, [rec(s, T0 + s) for s in range(3, 8)], form=form))
    assert second.chunk.seqs == [5, 6, 7]
    assert second.chunk.lines == [expected_line(rec(s, T0 + s), NODE) for s in (5, 6, 7)]
    assert ingest.stats["duplicates"] == 2
    assert second.newest == T0 + 7


def test_a_batch_that_skips_ahead_makes_the_skipped_records_duplicates() -> None:
    """The cursor keeps only a writer's highest seq: a batch arriving after a later one of its writer is not taken."""
    # This is why a node resends everything from its first unacknowledged batch, in order.
    ingest = new_ingest()
    later = ingest.batch(NODE, payload(2, [rec(s, T0 + s) for s in range(3, 6)]))
    assert later.chunk.seqs == [3, 4, 5]
    earlier = ingest.batch(NODE, payload(1, [rec(s, T0 + s) for s in range(3)]))
    assert earlier.chunk.seqs == []
    assert ingest.stats["duplicates"] == 3


def test_a_resend_of_records_still_held_keeps_the_ack_waiting_for_them() -> None:
    """A duplicate not yet written (past ``written``) counts towards newest, so its ack waits for the merge."""
    ingest = new_ingest()
    ingest.batch(NODE, payload(1, [rec(0, T0 + 1), rec(1, T0 + 2)]))
    assert ingest.batch(NODE, payload(1, [rec(0, T0 + 1), rec(1, T0 + 2)])).newest == T0 + 2
    ingest.written["n1|w0"] = 1  # the output wrote both
    assert ingest.batch(NODE, payload(1, [rec(0, T0 + 1), rec(1, T0 + 2)])).newest == -1


# -- writers that ended, batch floors ---------------------------------------------------


def _with(body: dict, **fields: Any) -> bytes:
    return orjson.dumps({**body, **fields})


@FORMS
def test_a_batch_names_the_writers_it_ends_keyed_as_deduplication_counts_them(form: str) -> None:
    """``"e"`` gives (node, writer) pairs: a writer of the sending node, or ``[writer, node]`` relayed, sanitized."""
    ingest = new_ingest()
    body = body_of(1, [rec(0, T0)], form=form)
    result = ingest.batch(NODE, _with(body, o="run1", e=["w0", ["w9", "n/2"], 7, "x" * 300]))
    assert result.run == "run1"
    assert result.ended == ((NODE, "w0"), (sanitize_name("n/2"), "w9"), (NODE, "7"), (NODE, "x" * 200))
    assert record_key(*result.ended[0]) == result.chunk.keys[0]


def test_retire_forgets_a_writers_cursor_and_written_seq() -> None:
    """``retire`` drops the writer from de-duplication and from what the checkpoint saves; others stay."""
    written = {"n1|w0": 4, "n1|w1": 2}
    ingest = new_ingest(written=written)
    assert ingest.retire([(NODE, "w0"), (NODE, "never-seen")], by=NODE) == [(NODE, "w0")]
    assert written == {"n1|w1": 2} and set(ingest.cursors) == {"n1|w1"}
    assert ingest.stats["retired"] == 1


def test_only_the_session_that_brought_a_writer_may_retire_it() -> None:
    """A peer naming another node's writer ended (relayed form) retires nothing: its resends stay duplicates."""
    ingest = new_ingest()
    ingest.batch(NODE, payload(1, [rec(0, T0), rec(1, T0 + 1)]))
    evil = ingest.batch("evil", orjson.dumps({"b": 1, "c": 0, "r": [], "o": "x", "e": [["w0", NODE]]}))
    assert ingest.retire(list(evil.ended), by="evil") == []
    assert ingest.cursors[f"{NODE}|w0"].seq == 1
    assert ingest.batch(NODE, payload(2, [rec(1, T0 + 1)])).chunk.seqs == []  # still a duplicate
    assert ingest.retire([(NODE, "w0")], by=NODE) == [(NODE, "w0")]


@FORMS
def test_a_batch_at_or_below_its_runs_floor_is_a_duplicate_as_a_whole(form: str) -> None:
    """Once a run's floor covers a batch, its resend yields nothing even for a writer forgotten since."""
    ingest = new_ingest()
    records = [rec(0, T0, w="gone"), rec(1, T0 + 1, w="gone")]
    body = body_of(3, records, form=form)
    first = ingest.batch(NODE, _with(body, o="run1", e=["gone"]))
    assert first.chunk.seqs == [0, 1]
    ingest.floors.raise_to(NODE, "run1", 3)
    ingest.retire(list(first.ended), by=NODE)
    assert ingest.cursors == {}
    again = ingest.batch(NODE, _with(body, o="run1", e=["gone"]))
    assert (again.chunk.seqs, again.newest, again.ended, again.seq) == ([], -1, (), 3)
    assert ingest.stats["duplicates"] == 2 and ingest.cursors == {}
    # Another run (a new spool: seqs from 1 again) and a later batch are not covered.
    assert ingest.batch(NODE, _with(body_of(1, [rec(0, T0, w="new")], form=form), o="run2")).chunk.seqs == [0]
    assert ingest.batch(NODE, _with(body_of(4, [rec(0, T0, w="next")], form=form), o="run1")).chunk.seqs == [0]


def test_without_a_spool_run_no_floor_applies() -> None:
    """A batch of an older node (no ``"o"``) is de-duplicated per record only, whatever floors exist."""
    ingest = new_ingest()
    ingest.floors.raise_to(NODE, "", 9)
    assert ingest.batch(NODE, payload(2, [rec(0, T0)])).chunk.seqs == [0]


# -- malformed batches --------------------------------------------------------------


def _truncated(body: dict) -> bytes:
    return orjson.dumps(body)[:-3]


def _set(key: str, value: Any) -> Callable[[dict], bytes]:
    def change(body: dict) -> bytes:
        body[key] = value
        return orjson.dumps(body)

    return change


def _drop(key: str) -> Callable[[dict], bytes]:
    def change(body: dict) -> bytes:
        del body[key]
        return orjson.dumps(body)

    return change


def _edit(key: str, index: int, value: Any) -> Callable[[dict], bytes]:
    def change(body: dict) -> bytes:
        body[key][index] = value(body) if callable(value) else value
        return orjson.dumps(body)

    return change


def _shorten(key: str) -> Callable[[dict], bytes]:
    def change(body: dict) -> bytes:
        body[key] = body[key][:-1]
        return orjson.dumps(body)

    return change


COLUMN_DAMAGE = {
    "not JSON": (_truncated, ValueError),
    "not an object": (lambda body: b"[1, 2]", TypeError),
    "no batch seq": (_drop("b"), KeyError),
    "a string batch seq": (_set("b", "1"), TypeError),
    "a string watermark": (_set("c", "0"), TypeError),
    "a string record seq": (_edit("s", 0, "0"), TypeError),
    "a float time": (_edit("t", -1, T0 + 0.5), TypeError),
    "a column too short": (_shorten("m"), TypeError),
    "a column missing": (_drop("i"), KeyError),
    "a column not a list": (_set("t", {"0": T0}), TypeError),
    "a profile index out of range": (_edit("p", -1, lambda body: len(body["P"])), ValueError),
    "a negative level index": (_edit("l", 0, -1), ValueError),
    "a file index out of range": (_edit("f", 0, 5), ValueError),
    "a short profile": (_edit("P", 0, ["w0", 1, 2]), ValueError),
    "a level not a string": (_edit("L", 0, 5), TypeError),
    "a spool run not a string": (_set("o", 5), TypeError),
    "a spool run too long": (_set("o", "r" * 65), TypeError),
    "ended writers not a list": (_set("e", {"w0": 1}), TypeError),
    "a relayed ended writer without its node": (_set("e", [["w0"]]), ValueError),
}

RECORDS_DAMAGE = {
    "not JSON": (_truncated, ValueError),
    "no batch seq": (_drop("b"), KeyError),
    "a string batch seq": (_set("b", "7"), TypeError),
    "no records at all": (_drop("r"), KeyError),
    "records not a list": (_set("r", {"seq": 0}), TypeError),
    "a spool run not a string": (_set("o", ["run"]), TypeError),
    "ended writers not a list": (_set("e", "w0"), TypeError),
}


def _check_refused_then_resend_taken(form: str, damage: Any, error: type[Exception]) -> None:
    ingest = new_ingest()
    ingest.batch(NODE, payload(1, [rec(0, T0), rec(1, T0 + 1)], form=form))
    records = [rec(2, T0 + 2), rec(3, T0 + 3), rec(4, T0 + 4)]
    before = cursor_state(ingest)
    stats = dict(ingest.stats)
    tally = (dict(ingest.per_rank), dict(ingest.levels))
    with pytest.raises(error):
        ingest.batch(NODE, damage(body_of(2, records, form=form)))
    assert cursor_state(ingest) == before
    assert ingest.stats == stats
    assert (dict(ingest.per_rank), dict(ingest.levels)) == tally
    resent = ingest.batch(NODE, payload(2, records, form=form))
    assert resent.chunk.seqs == [2, 3, 4]
    assert ingest.stats["duplicates"] == 0


@pytest.mark.parametrize("case", sorted(COLUMN_DAMAGE))
def test_a_malformed_column_batch_raises_and_leaves_no_trace(case: str) -> None:
    """A damaged column batch raises ValueError/KeyError/TypeError, takes nothing, and its good resend is taken."""
    damage, error = COLUMN_DAMAGE[case]
    _check_refused_then_resend_taken("columns", damage, error)


@pytest.mark.parametrize("case", sorted(RECORDS_DAMAGE))
def test_a_malformed_records_batch_raises_and_leaves_no_trace(case: str) -> None:
    """A damaged "r" batch raises ValueError/KeyError/TypeError, takes nothing, and its good resend is taken."""
    damage, error = RECORDS_DAMAGE[case]
    _check_refused_then_resend_taken("r", damage, error)


def test_a_malformed_first_batch_of_a_writer_leaves_no_cursor() -> None:
    """A refused batch from a writer never seen does not create a cursor for it."""
    ingest = new_ingest()
    body = body_of(1, [rec(0, T0, w="new")])
    body["p"][0] = 9
    with pytest.raises(ValueError):
        ingest.batch(NODE, orjson.dumps(body))
    assert ingest.cursors == {}
    assert ingest.batch(NODE, payload(1, [rec(0, T0, w="new")])).chunk.seqs == [0]


def test_malformed_records_in_the_records_form_are_dropped_and_counted() -> None:
    """In the "r" form, a record without an int seq and time is dropped (bad_frames, a notice); the rest are taken."""
    notices: list[str] = []
    ingest = new_ingest(notice=notices.append)
    records = [
        rec(0, T0),
        {**rec(1, T0 + 1), "seq": "1"},
        "not a record",
        {**rec(2, T0 + 2), "ts": 1.5},
        rec(3, T0 + 3),
    ]
    chunk = ingest.batch(NODE, payload(1, records, form="r")).chunk
    assert chunk.seqs == [0, 3]
    assert ingest.stats["bad_frames"] == 3
    assert notices == [f"dropped 3 malformed record(s) in a batch from {NODE}"]


def test_odd_field_types_in_the_records_form_are_shown_leniently() -> None:
    """An "r" record with an unhashable rank is still taken, shown, and tallied as unknown."""
    ingest = new_ingest()
    chunk = ingest.batch(NODE, payload(1, [rec(0, T0, rank=[1, 2])], form="r")).chunk
    assert chunk.seqs == [0]
    assert "[workload:[1, 2](1) infra:7(0)]" in chunk.lines[0]
    assert ingest.per_rank == {(NODE, None): 1} and ingest.levels == {(NODE, "INFO"): 1}


# -- relayed records ----------------------------------------------------------------


def test_a_relayed_column_record_is_keyed_by_its_own_sanitized_node() -> None:
    """A profile with a 7th (node) element keys and shows the record by that node, sanitized."""
    ingest = new_ingest(keep_records=lambda: True)
    records = [rec(0, T0, node="../far away"), rec(0, T0 + 1), rec(1, T0 + 2, node="../far away")]
    body = body_of(1, records)
    assert any(len(entry) == 7 and entry[6] == "../far away" for entry in body["P"])
    chunk = ingest.batch(NODE, orjson.dumps(body)).chunk
    relay = sanitize_name("../far away")
    assert relay == "_._far_away"
    assert chunk.keys == [f"{relay}|w0", "n1|w0", f"{relay}|w0"]
    assert chunk.seqs == [0, 0, 1]
    assert f"[{relay}]" in chunk.lines[0] and "[n1]" in chunk.lines[1]
    assert [r["node"] for r in chunk.records] == [relay, NODE, relay]
    assert set(ingest.cursors) == {f"{relay}|w0", "n1|w0"}
    assert ingest.per_rank == {(relay, 3): 2, (NODE, 3): 1}
    assert ingest.levels == {(relay, "INFO"): 2, (NODE, "INFO"): 1}


def test_a_relayed_record_in_the_records_form_is_keyed_by_its_own_sanitized_node() -> None:
    """An "r" record with a "node" key is keyed, shown and de-duplicated by that node, sanitized."""
    ingest = new_ingest()
    records = [rec(0, T0, node="other/node"), rec(0, T0 + 1)]
    chunk = ingest.batch(NODE, payload(1, records, form="r")).chunk
    assert chunk.keys == ["other_node|w0", "n1|w0"]
    assert "[other_node]" in chunk.lines[0]
    again = ingest.batch(NODE, payload(2, [rec(0, T0, node="other/node"), rec(1, T0 + 3, node="other/node")], form="r"))
    assert again.chunk.seqs == [1]
    assert again.chunk.keys == ["other_node|w0"]


def test_relayed_records_are_the_same_writer_in_both_forms() -> None:
    """A relayed record sent as columns and resent as "r" is recognised as the same writer's (a duplicate)."""
    ingest = new_ingest()
    ingest.batch(NODE, payload(1, [rec(0, T0, node="a b")]))
    assert ingest.batch(NODE, payload(1, [rec(0, T0, node="a b")], form="r")).chunk.seqs == []
    assert ingest.stats["duplicates"] == 1


# -- names --------------------------------------------------------------------------


def test_record_key_joins_node_and_writer_and_bounds_the_writer() -> None:
    """record_key is "node|writer", the writer cut at 200 characters."""
    assert record_key("n1", "w0") == "n1|w0"
    assert record_key("n1", 5) == "n1|5"
    assert record_key("n1", "x" * 500) == "n1|" + "x" * 200


def test_name_sanitizes_and_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """name() sanitizes a network name once per distinct text and then answers from its cache."""
    calls: list[str] = []

    def counting(text: str, *, limit: int = 64) -> str:
        calls.append(text)
        return sanitize_name(text, limit=limit)

    monkeypatch.setattr(ingest_module, "sanitize_name", counting)
    ingest = new_ingest()
    assert ingest.name("../etc/passwd") == "_._etc_passwd"
    assert ingest.name("../etc/passwd") == "_._etc_passwd"
    assert ingest.name(12) == "12"
    assert ingest.name("n" * 100) == "n" * 64
    assert ingest.name(".hidden") == "_hidden"
    assert ingest.name("") == "_"
    assert calls == ["../etc/passwd", "12", "n" * 64, ".hidden", ""]


@pytest.mark.timeout(30)
def test_the_name_cache_keeps_no_raw_name_of_any_size() -> None:
    """Distinct huge names are sanitised from their first characters; the cache holds short keys, a bounded number."""
    ingest = new_ingest()
    for i in range(3 * ingest_module._NAME_CACHE):
        assert ingest.name(f"{i:08d}" + "x" * (1 << 12)) == (f"{i:08d}" + "x" * 56)
    assert len(ingest._names) <= ingest_module._NAME_CACHE
    assert max(map(len, ingest._names)) <= 64
    deep: list = []
    for _ in range(2000):
        deep = [deep]
    assert ingest.name(deep) == "_______..._______"  # not text: its short repr, sanitised


# -- messages that are not text -------------------------------------------------------

#: A msg 1,000 lists deep: valid JSON, but str() of it raises RecursionError.
DEEP = b"[" * 1000 + b"]" * 1000


@pytest.mark.timeout(30)
@pytest.mark.parametrize("json", [False, True])
@FORMS
def test_a_deeply_nested_message_costs_only_its_own_record(form: str, json: bool) -> None:
    """A msg that is a 1,000-deep list is shown cut short, counted and noticed; the batch's other records are taken."""
    records = [rec(0, T0, msg="DEEP0"), rec(1, T0 + 1), rec(2, T0 + 2)]
    body = body_of(1, records, form=form)
    notices: list[str] = []
    ingest = Ingest(LineFormat(json=json, untrusted=True), notice=notices.append)
    result = ingest.batch(NODE, orjson.dumps(body).replace(b'"DEEP0"', DEEP))
    assert result.chunk.seqs == [0, 1, 2]
    shown = [orjson.loads(line)["msg"] for line in result.chunk.lines] if json else result.chunk.lines
    assert "[[[[[[[...]]]]]]]" in shown[0] and "message 1" in shown[1]
    assert ingest.stats["bad_messages"] == 1
    assert notices == [f"1 record(s) in a batch from {NODE} had a msg that is not text; shown cut short"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("json", [False, True])
def test_a_field_nested_past_any_limit_is_shown_bounded(json: bool) -> None:
    """A record whose other fields are nested past any limit formats as a bounded line instead of raising."""
    deep: list = []
    for _ in range(2000):
        deep = [deep]
    record = rec(0, T0, file=deep, extra=deep)
    line = LineFormat(json=json, untrusted=True).line(record, NODE)
    assert line.endswith("\n") and "[[[[[[[...]]]]]]]" in line
    assert LineFormat(json=json).lines([{**record, "node": NODE}]) == [line]


# -- the property -------------------------------------------------------------------

_MSGS = st.sampled_from(["ok", "two\nlines", "bell\x07", "", "tab\there", "ünïcode"])


@st.composite
def _streams(draw: st.DrawFn) -> tuple[list[dict], list[list[dict]], dict[str, list[int]]]:
    """Writers' records interleaved into one stream, cut into batches; and each writer's times by key."""
    n_writers = draw(st.integers(1, 3))
    back = draw(st.booleans())  # let a writer's clock step back now and then
    per_writer: list[list[dict]] = []
    times: dict[str, list[int]] = {}
    for w in range(n_writers):
        relay = draw(st.sampled_from([None, "../relay one", "r2"]))
        n = draw(st.integers(1, 12))
        steps = draw(st.lists(st.integers(-3 if back else 0, 5), min_size=n, max_size=n))
        ts = list(accumulate(steps, initial=T0 + draw(st.integers(0, 20))))[1:]
        extra = {} if relay is None else {"node": relay}
        records = [rec(seq, t, w=f"w{w}", msg=draw(_MSGS), **extra) for seq, t in enumerate(ts)]
        per_writer.append(records)
        times[record_key(NODE if relay is None else sanitize_name(relay), f"w{w}")] = ts
    order = draw(st.permutations([w for w, records in enumerate(per_writer) for _ in records]))
    nexts = [iter(records) for records in per_writer]
    stream = [next(nexts[w]) for w in order]
    cuts = sorted(draw(st.sets(st.integers(1, len(stream) - 1), max_size=len(stream) - 1)) if len(stream) > 1 else [])
    bounds = [0, *cuts, len(stream)]
    batches = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return stream, batches, times


def _key_of(record: dict) -> str:
    return record_key(sanitize_name(record["node"]) if "node" in record else NODE, record["w"])


def _damage(body: dict, how: int) -> bytes:
    """A malformed version of a batch that Ingest must refuse."""
    if "r" in body:
        choices = [_truncated, _drop("b"), _set("b", "x"), _set("r", 5), _drop("r")]
    else:
        choices = [
            _truncated,
            _drop("b"),
            _set("c", 1.5),
            _edit("s", -1, "9"),
            _shorten("t"),
            _edit("p", 0, lambda b: len(b["P"])),
            _edit("f", -1, -1),
            _edit("P", -1, [1]),
        ]
    return choices[how % len(choices)](body)


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=_streams(), keep=st.booleans(), data=st.data())
def test_every_record_comes_out_exactly_once_in_writer_order(scenario: Any, keep: bool, data: st.DataObject) -> None:
    """Resends, duplicates, reorderings and malformed batches: each record comes out once, merge keys in order."""
    # Reorderings never deliver a batch before an earlier batch holding the same writer (the node resends
    # in order from its first unacknowledged batch; see the skip-ahead test above).
    stream, batches, times = scenario
    forms = [data.draw(st.sampled_from(["columns", "r"]), label=f"form {i}") for i in range(len(batches))]
    bodies = [lambda i=i: body_of(i + 1, batches[i], form=forms[i]) for i in range(len(batches))]
    keys_in = [{_key_of(r) for r in batch} for batch in batches]
    ingest = new_ingest(keep_records=lambda: keep)
    delivered: list[bool] = [False] * len(batches)
    extras = data.draw(st.integers(0, 12), label="extras")
    resent_records = 0
    out: list[tuple[str, int, int]] = []  # (key, seq, merge key) in arrival order

    def eligible() -> list[int]:
        return [
            i
            for i, done in enumerate(delivered)
            if not done and all(delivered[j] or not keys_in[j] & keys_in[i] for j in range(i))
        ]

    while not all(delivered) or extras:
        ready = eligible()
        if ready and (not extras or data.draw(st.booleans(), label="deliver")):
            i = data.draw(st.sampled_from(ready), label="batch")
            action = "new"
        else:
            extras -= 1
            i = data.draw(st.integers(0, len(batches) - 1), label="which")
            action = "bad" if not delivered[i] or data.draw(st.booleans(), label="bad") else "resend"
        if action == "bad":
            before, stats = cursor_state(ingest), dict(ingest.stats)
            with pytest.raises(MALFORMED):
                ingest.batch(NODE, _damage(bodies[i](), data.draw(st.integers(0, 20), label="how")))
            assert cursor_state(ingest) == before
            assert ingest.stats == stats
            continue
        result = ingest.batch(NODE, orjson.dumps(bodies[i]()))
        chunk = result.chunk
        assert result.seq == i + 1
        assert len(chunk.ts) == len(chunk.keys) == len(chunk.seqs) == len(chunk.records) == len(chunk.lines)
        assert chunk.ts == sorted(chunk.ts)
        if action == "resend":
            assert chunk.seqs == []
            resent_records += len(batches[i])
        else:
            delivered[i] = True
            by_id = {(_key_of(r), r["seq"]): r for r in batches[i]}
            assert sorted(zip(chunk.keys, chunk.seqs, strict=True)) == sorted(by_id)
            for key, seq, line, record in zip(chunk.keys, chunk.seqs, chunk.lines, chunk.records, strict=True):
                original = by_id[key, seq]
                assert line == expected_line(original, key.split("|")[0])
                if keep:
                    assert record["seq"] == seq and record["msg"] == original["msg"]
        out.extend(zip(chunk.keys, chunk.seqs, chunk.ts, strict=True))
    assert ingest.stats["duplicates"] == resent_records
    assert ingest.stats["bad_frames"] == 0
    assert sum(ingest.per_rank.values()) == sum(ingest.levels.values()) == len(stream)
    assert {key for key, _, _ in out} == set(times)
    for key, ts in times.items():
        mine = [(seq, merge_key) for k, seq, merge_key in out if k == key]
        assert [seq for seq, _ in mine] == list(range(len(ts)))  # each exactly once, in seq order
        assert [merge_key for _, merge_key in mine] == list(accumulate(ts, max))  # never decreasing


# -- seqs no writer reaches -------------------------------------------------------------


@FORMS
def test_a_seq_far_ahead_of_its_writer_is_refused_not_believed(form: str) -> None:
    """A record claiming seq 10**15 of a writer at seq 2 is dropped, counted, said once; the real ones go on."""
    said: list[str] = []
    ingest = new_ingest(notice=said.append)
    now = __import__("time").time_ns()
    ingest.batch("n0", payload(1, [rec(0, now - 3000), rec(1, now - 2000), rec(2, now - 1000)], form=form))
    forged = ingest.batch("n0", payload(2, [rec(10**15, now, msg="forged"), rec(10**15 + 1, now)], form=form))
    assert forged.chunk.ts == []
    assert ingest.stats["implausible_seqs"] == 2
    assert len(said) == 1 and "seq 1000000000000000 after 2" in said[0]
    genuine = ingest.batch("n0", payload(3, [rec(3, now + 1), rec(4, now + 2)], form=form))
    assert genuine.chunk.seqs == [3, 4]
    # Within one batch too: the run up to the jump is taken, the jump is not.
    mixed = ingest.batch("n0", payload(4, [rec(5, now + 3), rec(5 + 10**12, now + 4)], form=form))
    assert mixed.chunk.seqs == [5] and ingest.stats["implausible_seqs"] == 3


@FORMS
def test_a_seq_far_ahead_is_refused_after_a_restart_too(form: str) -> None:
    """A writer restored from the checkpoint (no time known) gets no credit for the years before: 10**15 is refused."""
    now = __import__("time").time_ns()
    ingest = new_ingest(written={f"{NODE}|w0": 5})
    assert ingest.batch(NODE, payload(1, [rec(10**15, now)], form=form)).chunk.ts == []
    assert ingest.stats["implausible_seqs"] == 1
    assert ingest.batch(NODE, payload(2, [rec(6, now)], form=form)).chunk.seqs == [6]


@FORMS
def test_a_held_record_resent_under_another_offset_keeps_its_ack_behind_it(form: str) -> None:
    """First received corrected by +5 s and held; resent when the offset is 0: the ack still waits for +5 s."""
    ingest = new_ingest()
    first = ingest.batch(NODE, payload(1, [rec(0, T0)], form=form), offset=5 * 10**9, arrival=T0 + 6 * 10**9)
    assert first.newest == T0 + 5 * 10**9
    again = ingest.batch(NODE, payload(1, [rec(0, T0)], form=form), offset=0, arrival=T0 + 6 * 10**9)
    assert again.chunk.seqs == [] and again.newest >= first.newest


def test_a_restarted_streamer_judges_a_writers_jumps_from_its_last_line() -> None:
    """With the merge key of each writer's last line saved, a restart believes an honest gap in a backlog
    (stamped before the restart) and refuses a seq no writer reaches, as before it."""
    now = __import__("time").time_ns()
    last = now - 100 * 10**9  # the writer's last line written, 100 s ago
    ingest = new_ingest(written={f"{NODE}|w0": 5}, keys={f"{NODE}|w0": last})
    assert ingest.cursors[f"{NODE}|w0"].key == last
    # 5,000 records lost on the node, the next one stamped 50 s later: spooled while the streamer was down.
    assert ingest.batch(NODE, payload(1, [rec(5006, last + 50 * 10**9)])).chunk.seqs == [5006]
    assert ingest.batch(NODE, payload(2, [rec(10**15, now)])).chunk.ts == []
    assert ingest.stats["implausible_seqs"] == 1
