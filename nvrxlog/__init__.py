"""nvrxlog: per-node log aggregation for multi-GPU, multi-node training jobs.

Every rank calls :func:`setup_logger` and logs through ``logging``; local rank 0
merges the node's records into one per-node file (and forwards them to a
central :class:`Streamer`).
"""

from ._aggregator import NodeAggregator
from ._config import LogConfig
from ._exceptions import (
    AggregatorBusyError,
    ConfigError,
    LifecycleError,
    NvrxLogError,
    TmpDirError,
    TransportError,
)
from ._setup import setup_logger
from ._streamer import Streamer

__all__ = [
    "AggregatorBusyError",
    "ConfigError",
    "LifecycleError",
    "LogConfig",
    "NodeAggregator",
    "NvrxLogError",
    "Streamer",
    "TmpDirError",
    "TransportError",
    "setup_logger",
]
__version__ = "0.1.0"
