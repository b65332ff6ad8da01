"""HoldBack: the node's records held behind the window, taken in merge-key order."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from nvrxlog.node.merge import HoldBack

INF = math.inf


def _item(key: int, tid: int, seq: int) -> tuple[int, int, int, dict]:
    return (key, tid, seq, {"seq": seq, "ts": key, "msg": f"t{tid}s{seq}"})


def test_empty_holdback() -> None:
    """An empty HoldBack has length 0, oldest inf, and takes nothing."""
    held = HoldBack()
    assert len(held) == 0
    assert held.oldest == INF
    assert held.take(INF) == []
    assert held.take(10**18) == []


def test_oldest_is_the_smallest_key() -> None:
    """oldest is the merge key of the earliest record, whatever order they were added in."""
    held = HoldBack()
    held.add([_item(30, 0, 0), _item(10, 1, 0)])
    held.add([_item(20, 2, 0)])
    assert held.oldest == 10
    assert len(held) == 3


def test_take_returns_records_up_to_the_cutoff_in_order_and_keeps_the_rest() -> None:
    """take(cutoff) gives records with key <= cutoff sorted by key, tail id, seq; the later ones stay held."""
    held = HoldBack()
    held.add([_item(30, 0, 2), _item(10, 0, 0), _item(20, 1, 5)])
    held.add([_item(20, 0, 1), _item(40, 1, 6), _item(20, 1, 4)])
    ready = held.take(20)
    assert [item[:3] for item in ready] == [(10, 0, 0), (20, 0, 1), (20, 1, 4), (20, 1, 5)]
    assert len(held) == 2
    assert held.oldest == 30
    assert [item[:3] for item in held.take(35)] == [(30, 0, 2)]
    assert held.oldest == 40


def test_take_below_everything_takes_nothing() -> None:
    """A cutoff below the oldest key takes nothing and holds everything."""
    held = HoldBack()
    held.add([_item(10, 0, 0), _item(11, 0, 1)])
    assert held.take(9) == []
    assert len(held) == 2
    assert held.oldest == 10


def test_take_inf_empties_it() -> None:
    """take(inf) gives every record in order and leaves nothing held."""
    held = HoldBack()
    held.add([_item(3, 0, 1), _item(1, 0, 0), _item(2**62, 1, 0)])
    assert [item[0] for item in held.take(INF)] == [1, 3, 2**62]
    assert len(held) == 0
    assert held.oldest == INF


def test_float_cutoff_is_compared_with_int_keys() -> None:
    """A float cutoff between integer keys splits them correctly."""
    held = HoldBack()
    held.add([_item(10, 0, 0), _item(11, 0, 1)])
    assert [item[0] for item in held.take(10.5)] == [10]


def test_add_of_nothing_is_harmless() -> None:
    """Adding an empty list leaves the HoldBack as it was."""
    held = HoldBack()
    held.add([])
    assert len(held) == 0
    held.add([_item(5, 0, 0)])
    held.add([])
    assert held.oldest == 5


def test_put_back_holds_records_again_ahead_of_the_rest() -> None:
    """Records taken but not written are held again ahead of later ones and come out first next time."""
    held = HoldBack()
    held.add([_item(k, 0, k) for k in (1, 2, 3, 4, 5)])
    ready = held.take(3)
    assert [item[0] for item in ready] == [1, 2, 3]
    held.put_back(ready)
    assert len(held) == 5
    assert held.oldest == 1
    assert held.take(2) == ready[:2]
    assert [item[0] for item in held.take(INF)] == [3, 4, 5]


def test_put_back_then_add_keeps_order() -> None:
    """Records added after a put_back merge into the order by key."""
    held = HoldBack()
    held.add([_item(10, 0, 0), _item(30, 0, 2)])
    ready = held.take(10)
    held.put_back(ready)
    held.add([_item(20, 1, 0), _item(5, 2, 0)])
    assert [item[0] for item in held.take(INF)] == [5, 10, 20, 30]


_ITEMS = st.lists(
    st.tuples(st.integers(0, 50), st.integers(-1, 4), st.integers(0, 1000)),
    max_size=60,
    unique_by=lambda t: (t[1], t[2]),
)


@settings(max_examples=200, deadline=None)
@given(_ITEMS, st.lists(st.integers(0, 60), max_size=8), st.randoms(use_true_random=False))
def test_takes_at_any_cutoffs_give_everything_once_in_order(
    triples: list[tuple[int, int, int]], cutoffs: list[int], rnd
) -> None:
    """Taking at rising cutoffs, then inf, yields each record once; each take sorted and at or below its cutoff."""
    items = [_item(*t) for t in triples]
    rnd.shuffle(items)
    pieces = [items[i : i + 7] for i in range(0, len(items), 7)]
    held = HoldBack()
    for piece in pieces:
        held.add(piece)
    out: list[tuple] = []
    for cutoff in [*sorted(cutoffs), INF]:
        ready = held.take(cutoff)
        assert ready == sorted(ready)
        assert all(item[0] <= cutoff for item in ready)
        assert held.oldest > cutoff or not len(held)
        out.extend(ready)
        # A failed write puts the records back: taking again gives the same.
        held.put_back(ready)
        assert held.take(cutoff) == ready
    assert len(held) == 0
    assert out == sorted(items)
