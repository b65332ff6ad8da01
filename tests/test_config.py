"""LogConfig.from_env: every variable, rank detection, node id, malformed values."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvrxlog import LogConfig
from nvrxlog.config import DEFAULT_MAX_FILE_SIZE_KB, sanitize_name


def test_defaults_when_nothing_is_set() -> None:
    """An empty environment gives regular mode, INFO, thread aggregator and unknown ranks."""
    config = LogConfig.from_env({"SLURMD_NODENAME": "nodeA"})
    assert config.node_local_tmp_dir is None and not config.debug and not config.to_stdout
    assert config.max_file_size_kb == DEFAULT_MAX_FILE_SIZE_KB and config.max_log_files == 4
    assert config.aggregator == "thread" and config.streamer is None
    assert (config.rank, config.local_rank, config.infra_rank, config.infra_local_rank) == (None,) * 4
    assert config.node_id == "nodeA" and config.problems == ()


def test_every_variable_is_read() -> None:
    """Each documented variable lands in its field."""
    config = LogConfig.from_env(
        {
            "NVRX_NODE_LOCAL_TMPDIR": "/dev/shm/x",
            "NVRX_LOG_DEBUG": "Yes",
            "NVRX_LOG_TO_STDOUT": "1",
            "NVRX_LOG_MAX_FILE_SIZE_KB": "10",
            "NVRX_LOG_MAX_LOG_FILES": "7",
            "NVRX_LOG_DIR": "/shared/logs",
            "NVRX_LOG_STREAMER": "tcp://head:5555",
            "NVRX_LOG_AGGREGATOR": "External",
            "NVRX_NODE_ID": "gpu17",
            "SLURMD_NODENAME": "ignored",
            "RANK": "12",
            "LOCAL_RANK": "4",
            "SLURM_PROCID": "3",
            "SLURM_LOCALID": "1",
        }
    )
    assert config.node_local_tmp_dir == "/dev/shm/x" and config.debug and config.to_stdout
    assert (config.max_file_size_kb, config.max_log_files) == (10, 7)
    assert config.log_dir == "/shared/logs" and config.streamer == "tcp://head:5555"
    assert config.aggregator == "external" and config.node_id == "gpu17"
    assert (config.rank, config.local_rank, config.infra_rank, config.infra_local_rank) == (12, 4, 3, 1)


@pytest.mark.parametrize("value", ["0", "false", "no", "off", "", "maybe"])
def test_debug_is_off_unless_truthy(value: str) -> None:
    """NVRX_LOG_DEBUG is on only for 1/true/yes/on."""
    assert not LogConfig.from_env({"NVRX_LOG_DEBUG": value}).debug


def test_job_array_offsets_the_infra_rank() -> None:
    """SLURM_ARRAY_TASK_ID * SLURM_NNODES is added to SLURM_PROCID."""
    config = LogConfig.from_env({"SLURM_PROCID": "5", "SLURM_ARRAY_TASK_ID": "3", "SLURM_NNODES": "4"})
    assert config.infra_rank == 17


@pytest.mark.parametrize(
    "env, field",
    [
        ({"RANK": "abc"}, "rank"),
        ({"LOCAL_RANK": "-1"}, "local_rank"),
        ({"SLURM_PROCID": "1.5"}, "infra_rank"),
        ({"NVRX_LOG_MAX_FILE_SIZE_KB": "big"}, "max_file_size_kb"),
        ({"NVRX_LOG_MAX_LOG_FILES": "0"}, "max_log_files"),
        ({"NVRX_LOG_AGGREGATOR": "sidecar"}, "aggregator"),
    ],
)
def test_malformed_values_are_reported_and_treated_as_unset(env: dict[str, str], field: str) -> None:
    """A malformed value becomes the default/unknown and is described in problems, never raised."""
    config = LogConfig.from_env(env)
    default = getattr(LogConfig(), field)
    assert getattr(config, field) == default
    assert len(config.problems) == 1 and next(iter(env)) in config.problems[0]


def test_config_is_frozen_keyword_only_with_a_useful_repr() -> None:
    """LogConfig cannot be changed after creation and names its fields in repr."""
    config = LogConfig(rank=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rank = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        LogConfig("/tmp")  # type: ignore[misc]
    assert "rank=3" in repr(config)


@pytest.mark.parametrize(
    "raw, safe",
    [("node001", "node001"), ("../../etc/x", "_._.._etc_x"), ("a b\nc", "a_b_c"), ("", "_"), (".hidden", "_hidden")],
)
def test_sanitize_name_examples(raw: str, safe: str) -> None:
    """Known names map to the expected safe names."""
    assert sanitize_name(raw) == safe


# Path and line characters drawn often, so leading dots, slashes and controls really occur.
_NAMES = st.text(alphabet=st.one_of(st.sampled_from("./\\\n\r\x00 -_"), st.characters()), max_size=200)


@given(_NAMES)
def test_sanitize_name_never_yields_a_path_or_control_character(raw: str) -> None:
    """For any text, the result is a non-empty, non-hidden file name of safe characters, at most 64 long."""
    safe = sanitize_name(raw)
    assert 0 < len(safe) <= 64
    assert not safe.startswith(".")
    assert set(safe) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def test_node_local_rank_prefers_the_workload_rank() -> None:
    """The node-local rank is LOCAL_RANK when set, else SLURM_LOCALID."""
    assert LogConfig(local_rank=2, infra_local_rank=5).node_local_rank == 2
    assert LogConfig(infra_local_rank=5).node_local_rank == 5
