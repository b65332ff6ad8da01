"""End to end on one node: real rank processes, the aggregator thread, real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import node_env, node_settled, parse_text_records, run_worker, start_worker

from nvrxlog import NodeAggregator


def _node_env(tmp_path: Path, rank: int, **extra: object) -> dict[str, str]:
    return node_env(tmp_path, rank, SLURM_PROCID=rank + 8, SLURM_LOCALID=rank, **extra)


@pytest.mark.timeout(300)
def test_eight_ranks_fast_rotation_deliver_every_record_once_in_order(tmp_path: Path) -> None:
    """8 ranks x 5,000 records with 10 KB files and 4 kept: every record exactly once, ordered, ranks right."""
    ranks, count = 8, 5000
    done = tmp_path / "done"
    done.mkdir()
    procs = []
    for rank in range(ranks):
        env = _node_env(tmp_path, rank, NVRX_LOG_MAX_FILE_SIZE_KB=10, NVRX_LOG_MAX_LOG_FILES=4)
        # Rank 0 hosts the aggregator thread, so it stays until all have logged.
        wait = ranks if rank == 0 else 0
        procs.append(start_worker("--count", count, "--pad", 60, "--done-dir", done, "--wait-ranks", wait, env=env))
    for proc in procs:
        assert proc.wait(timeout=240) == 0
    node_settled(tmp_path)

    records = parse_text_records(tmp_path / "logs" / "nvrx_log_node001.log")
    ours = [r for r in records if r["msg"].startswith("r")]
    others = [r for r in records if not r["msg"].startswith("r")]
    assert others == [], f"unexpected lines (losses or problems reported): {others[:3]}"
    assert len(ours) == ranks * count

    seen: dict[int, list[int]] = {rank: [] for rank in range(ranks)}
    for record in ours:
        rank_text, index_text = record["msg"].split()[:2]
        rank = int(rank_text[1:])
        assert record["rank"] == record["local"] == str(rank)
        assert record["infra"] == str(rank + 8) and record["infra_local"] == str(rank)
        assert record["node"] == "node001"
        seen[rank].append(int(index_text[1:]))
    for rank, indexes in seen.items():
        assert indexes == list(range(count)), f"rank {rank} out of order, lost or doubled"
    stamps = [r["date"] for r in records]
    assert stamps == sorted(stamps), "the per-node file is not in timestamp order"


@pytest.mark.timeout(120)
def test_consumed_files_of_exited_writers_are_deleted(tmp_path: Path) -> None:
    """Once writers have exited and the aggregator drains, no temp message file is left."""
    tmp = tmp_path / "tmp"
    with NodeAggregator(str(tmp), str(tmp_path / "logs"), "node001"):
        procs = [
            start_worker(
                "--count",
                2000,
                env=_node_env(tmp_path, rank, NVRX_LOG_AGGREGATOR="external", NVRX_LOG_MAX_FILE_SIZE_KB=10),
            )
            for rank in range(4)
        ]
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    records = parse_text_records(tmp_path / "logs" / "nvrx_log_node001.log")
    assert len(records) == 4 * 2000
    assert [p.name for p in tmp.iterdir() if not p.name.startswith(".")] == []


@pytest.mark.timeout(60)
def test_traceback_comes_out_as_one_unbroken_block(tmp_path: Path) -> None:
    """A logger.exception from each of several ranks keeps its traceback lines together."""
    done = tmp_path / "done"
    done.mkdir()
    procs = [
        start_worker(
            "--count",
            200,
            "--traceback",
            "--done-dir",
            done,
            "--wait-ranks",
            4 if rank == 0 else 0,
            env=_node_env(tmp_path, rank),
        )
        for rank in range(4)
    ]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    node_settled(tmp_path)
    records = parse_text_records(tmp_path / "logs" / "nvrx_log_node001.log")
    failures = [r for r in records if r["level"] == "ERROR"]
    assert len(failures) == 4
    for record in failures:
        lines = record["msg"].split("\n")
        rank = record["rank"]
        assert lines[0] == f"r{rank} failed"
        assert lines[1] == "Traceback (most recent call last):"
        assert lines[-1] == f"ValueError: boom from rank {rank}"


def test_records_logged_just_before_exit_reach_the_file(tmp_path: Path) -> None:
    """A single rank that logs and exits at once still has every record in the node file."""
    result = run_worker("--count", 3, env=_node_env(tmp_path, 0))
    assert result.returncode == 0, result.stderr
    records = parse_text_records(tmp_path / "logs" / "nvrx_log_node001.log")
    assert [r["msg"].split()[1] for r in records] == ["i0", "i1", "i2"]
