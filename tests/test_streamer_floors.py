"""Batch floors (``nvrxlog.streamer.floors``): per node and spool run, the highest batch acknowledged."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nvrxlog.streamer.floors import BatchFloors, settled
from nvrxlog.streamer.sessions import Expected


def test_a_floor_covers_its_run_up_to_the_highest_seq_raised_and_never_goes_down() -> None:
    """Seqs at or below the floor of a node's run are covered; other runs and other nodes are not."""
    floors = BatchFloors()
    assert not floors.covers("n0", "run-a", 1)
    floors.raise_to("n0", "run-a", 5)
    floors.raise_to("n0", "run-a", 3)  # an older ack cannot lower it
    assert floors.covers("n0", "run-a", 5) and floors.covers("n0", "run-a", 1)
    assert not floors.covers("n0", "run-a", 6)
    assert not floors.covers("n0", "run-b", 1), "a new spool run (seqs from 1 again) is never covered"
    assert not floors.covers("n1", "run-a", 1)
    assert len(floors) == 1


def test_floors_are_bounded_per_node_and_in_all_least_recently_raised_first() -> None:
    """Past its runs per node the oldest run goes; past the limit the node raised longest ago goes."""
    floors = BatchFloors(runs_per_node=2, limit=4)
    for run in ("r1", "r2", "r3"):
        floors.raise_to("n0", run, 1)
    assert [floors.covers("n0", run, 1) for run in ("r1", "r2", "r3")] == [False, True, True]
    floors.raise_to("n1", "r1", 1)
    floors.raise_to("n0", "r3", 2)  # n0 raised again: n1 is now the older node
    floors.raise_to("n2", "r1", 1)
    assert len(floors) == 4
    floors.raise_to("n3", "r1", 1)
    assert len(floors) == 4 and not floors.covers("n1", "r1", 1)
    assert floors.covers("n0", "r3", 2) and floors.covers("n3", "r1", 1)


def test_saved_floors_come_back_as_they_were() -> None:
    """What ``saved`` gives (as the checkpoint keeps it) makes the same floors, in the same order."""
    floors = BatchFloors()
    floors.raise_to("n1", "b", 9)
    floors.raise_to("n0", "a", 4)
    floors.raise_to("n1", "c", 2)
    again = BatchFloors(floors.saved())
    assert again.saved() == floors.saved() == {"n0": {"a": 4}, "n1": {"b": 9, "c": 2}}
    assert list(again.saved()) == ["n0", "n1"]


def test_only_batches_of_a_known_run_raise_a_floor_or_retire_writers() -> None:
    """Acknowledged batches settle floors per run and writers ended; a batch without a run settles nothing."""
    batches = [
        Expected(1, -1, 10, "run", (("n0", "w1"),)),
        Expected(2, -1, 10, "", (("n0", "w2"),)),  # an older node: no floor would cover a resend
        Expected(3, -1, 10, "run", ()),
    ]
    assert settled(batches) == ([("run", 1), ("run", 3)], [("n0", "w1")])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("xyz"), st.integers(0, 50)), max_size=60))
def test_floors_stay_within_bounds_and_a_floor_is_the_highest_raised_since_it_was_kept(raises: list) -> None:
    """Whatever is raised, at most the limit is kept, and a run's floor is the maximum raised since it was (re)kept."""
    floors = BatchFloors(runs_per_node=2, limit=4)
    for node, run, seq in raises:
        kept = floors.saved().get(node, {}).get(run)
        floors.raise_to(node, run, seq)
        expected = seq if kept is None else max(kept, seq)
        assert floors.covers(node, run, expected) and not floors.covers(node, run, expected + 1)
        assert len(floors) <= 4 and len(floors) == sum(map(len, floors.saved().values()))
        assert all(len(runs) <= 2 for runs in floors.saved().values())


def test_made_up_names_cannot_push_out_the_floors_of_connected_nodes() -> None:
    """Past the limit the oldest floors of nodes not connected go first; a connected node's stays."""
    floors = BatchFloors(limit=4)
    floors.protected = lambda: {"honest"}
    floors.raise_to("honest", "run", 7)
    for i in range(50):
        floors.raise_to(f"evil{i}", "run", 1)
    assert floors.covers("honest", "run", 7) and len(floors) == 4
    assert not floors.covers("evil0", "run", 1) and floors.covers("evil49", "run", 1)
