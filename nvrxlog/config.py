"""Resolved settings: every NVRX_* variable, the rank fields and the node id."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["LogConfig", "current_ranks", "parse_levels", "sanitize_name"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

DEFAULT_MAX_FILE_SIZE_KB = 10240
DEFAULT_MAX_LOG_FILES = 4
DEFAULT_LOG_DIR = "nvrx_logs"
DEFAULT_EXIT_WAIT = 30


def sanitize_name(name: str, *, limit: int = 64) -> str:
    """Return ``name`` made safe for a file name and a log line.

    Anything outside ``[A-Za-z0-9._-]`` becomes ``_`` and a leading dot is
    replaced, so a name can never be ``..``, a hidden file or a path.
    """
    safe = _UNSAFE.sub("_", name)[:limit]
    if not safe or safe.startswith("."):
        safe = "_" + safe[1:] if safe else "_"
    return safe


def parse_levels(text: str | None) -> dict[str, int]:
    """``"transformers=INFO,torch.distributed=DEBUG"`` as ``{logger name: level}``; ValueError if malformed."""
    levels: dict[str, int] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, level = item.partition("=")
        number = logging.getLevelName(level.strip().upper()) if sep else None
        if not sep or not name.strip() or not isinstance(number, int):
            raise ValueError(f"NVRX_LOG_LEVELS entry {item!r} is not LOGGER=LEVEL (e.g. transformers=INFO)")
        levels[name.strip()] = number
    return levels


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """Every setting nvrxlog reads from the environment, resolved once.

    Ranks that are unset or malformed are ``None`` (printed as ``?``); a
    malformed value is described in ``problems`` instead of raising.
    """

    node_local_tmp_dir: str | None = None
    debug: bool = False
    to_stdout: bool = False
    max_file_size_kb: int = DEFAULT_MAX_FILE_SIZE_KB
    max_log_files: int = DEFAULT_MAX_LOG_FILES
    log_dir: str = DEFAULT_LOG_DIR
    streamer: str | None = None
    aggregator: str = "thread"
    node_id: str = "localhost"
    exit_wait: float = DEFAULT_EXIT_WAIT
    capture: str | None = None
    levels: tuple[tuple[str, int], ...] = ()  # NVRX_LOG_LEVELS: (logger name, level) for captured loggers
    curve_server_key: str | None = None
    curve_client_key: str | None = None
    rank: int | None = None
    local_rank: int | None = None
    infra_rank: int | None = None
    infra_local_rank: int | None = None
    problems: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LogConfig:
        """Read the settings from ``environ`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def integer(name: str, *, minimum: int | None = None) -> int | None:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return None
            try:
                value = int(raw.strip())
            except ValueError:
                problems.append(f"{name}={raw!r} is not an integer; treated as unset")
                return None
            if minimum is not None and value < minimum:
                problems.append(f"{name}={raw!r} is below {minimum}; treated as unset")
                return None
            return value

        infra_rank = integer("SLURM_PROCID", minimum=0)
        array_task = integer("SLURM_ARRAY_TASK_ID", minimum=0)
        nnodes = integer("SLURM_NNODES", minimum=1)
        # Job arrays run the same SLURM_PROCIDs once per task; offsetting keeps
        # infra ranks distinct across the array.
        if infra_rank is not None and array_task is not None and nnodes is not None:
            infra_rank += array_task * nnodes

        aggregator = (env.get("NVRX_LOG_AGGREGATOR") or "thread").strip().lower()
        if aggregator not in ("thread", "external"):
            problems.append(f"NVRX_LOG_AGGREGATOR={aggregator!r} is not 'thread' or 'external'; using 'thread'")
            aggregator = "thread"

        node = env.get("NVRX_NODE_ID") or env.get("SLURMD_NODENAME") or socket.gethostname()
        curve_server = env.get("NVRX_LOG_CURVE_SERVER_KEY") or None
        curve_client = env.get("NVRX_LOG_CURVE_CLIENT_KEY") or None
        if bool(curve_server) != bool(curve_client):
            # Fail closed: a half-set pair means the user wants CURVE, so no plaintext forwarding.
            problems.append(
                "NVRX_LOG_CURVE_SERVER_KEY and NVRX_LOG_CURVE_CLIENT_KEY go together; "
                "not forwarding until both are set (the per-node file is written as usual)"
            )
        try:
            levels = parse_levels(env.get("NVRX_LOG_LEVELS"))
        except ValueError as exc:
            problems.append(f"{exc}; NVRX_LOG_LEVELS ignored")
            levels = {}
        return cls(
            levels=tuple(levels.items()),
            node_local_tmp_dir=env.get("NVRX_NODE_LOCAL_TMPDIR") or None,
            debug=_flag(env.get("NVRX_LOG_DEBUG")),
            to_stdout=_flag(env.get("NVRX_LOG_TO_STDOUT")),
            max_file_size_kb=integer("NVRX_LOG_MAX_FILE_SIZE_KB", minimum=1) or DEFAULT_MAX_FILE_SIZE_KB,
            max_log_files=integer("NVRX_LOG_MAX_LOG_FILES", minimum=1) or DEFAULT_MAX_LOG_FILES,
            log_dir=env.get("NVRX_LOG_DIR") or DEFAULT_LOG_DIR,
            streamer=env.get("NVRX_LOG_STREAMER") or None,
            aggregator=aggregator,
            node_id=sanitize_name(node),
            capture=env.get("NVRX_LOG_CAPTURE") or None,
            curve_server_key=curve_server,
            curve_client_key=curve_client,
            exit_wait=float(_or_default(integer("NVRX_LOG_EXIT_WAIT", minimum=0), DEFAULT_EXIT_WAIT)),
            rank=integer("RANK", minimum=0),
            local_rank=integer("LOCAL_RANK", minimum=0),
            infra_rank=infra_rank,
            infra_local_rank=integer("SLURM_LOCALID", minimum=0),
            problems=tuple(problems),
        )

    @property
    def curve_half_set(self) -> bool:
        """One CURVE key file named without the other: forwarding stays off rather than in plaintext."""
        return bool(self.curve_server_key) != bool(self.curve_client_key)

    @property
    def node_local_rank(self) -> int | None:
        """The rank of this process on its node: workload's if known, else SLURM's."""
        return self.local_rank if self.local_rank is not None else self.infra_local_rank


def current_ranks(known: tuple[int | None, ...]) -> tuple[int | None, ...]:
    """``known`` (rank, local rank, infra rank, infra local rank) with what has become known since.

    Sources, in order: the environment (``RANK``, ``LOCAL_RANK``; launchers such
    as Lightning's set them after start-up), then ``torch.distributed`` once it
    is initialised (its rank, if the environment has none). Known fields stay.
    """
    fresh = LogConfig.from_env()
    rank = known[0] if known[0] is not None else fresh.rank
    if rank is None:
        dist = sys.modules.get("torch.distributed")  # never imported here: only asked if the job uses it
        try:
            if dist is not None and dist.is_available() and dist.is_initialized():
                rank = dist.get_rank()
        except Exception:  # a half-initialised process group must not break logging
            rank = None
    local = known[1] if known[1] is not None else fresh.local_rank
    infra = known[2] if known[2] is not None else fresh.infra_rank
    infra_local = known[3] if known[3] is not None else fresh.infra_local_rank
    return (rank, local, infra, infra_local)


def _or_default(value: int | None, default: int) -> int:
    # 0 is a valid setting, so `value or default` would not do.
    return default if value is None else value


def _flag(raw: str | None) -> bool:
    return raw is not None and raw.strip().lower() in _TRUE
