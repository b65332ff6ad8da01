"""nvrxlog: per-node log aggregation for multi-GPU, multi-node training jobs.

Every rank calls :func:`setup_logger` and logs through ``logging``; local rank 0
merges the node's records into one per-node file (and forwards them to a
central :class:`Streamer`). The README's architecture section describes the
stages, one folder each: ``rank/``, ``node/``, ``wire/``, ``streamer/``, ``cli/``.
"""

import typing as _typing

from nvrxlog.config import LogConfig
from nvrxlog.errors import (
    AggregatorBusyError,
    ConfigError,
    LifecycleError,
    NvrxLogError,
    OutputError,
    ProtocolError,
    TmpDirError,
    TransportError,
)
from nvrxlog.node.aggregator import NodeAggregator
from nvrxlog.rank.setup import setup_logger
from nvrxlog.wire.curve import CurveKeys

if _typing.TYPE_CHECKING:
    from nvrxlog.streamer.service import Streamer

__all__ = [
    "AggregatorBusyError",
    "ConfigError",
    "CurveKeys",
    "LifecycleError",
    "LogConfig",
    "NodeAggregator",
    "NvrxLogError",
    "OutputError",
    "ProtocolError",
    "Streamer",
    "TmpDirError",
    "TransportError",
    "setup_logger",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> _typing.Any:
    # Every rank and data-loader worker imports nvrxlog; only the streamer's
    # process needs ZeroMQ's server side, so it is imported on first use.
    if name == "Streamer":
        from nvrxlog.streamer.service import Streamer

        return Streamer
    raise AttributeError(f"module 'nvrxlog' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, *(name for name in globals() if name.startswith("_"))})
