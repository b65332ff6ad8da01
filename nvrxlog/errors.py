"""The one exception tree of nvrxlog, named for where an error happens.

::

    NvrxLogError                 base of everything nvrxlog raises
    ├── ConfigError              a setting, variable, argument or key file that cannot be used
    ├── TmpDirError              the node-local tmpdir is missing, unsafe or unusable
    ├── OutputError              a per-node file, cluster file, checkpoint or spool cannot be used
    ├── AggregatorBusyError      another aggregator already serves this tmpdir (or output)
    ├── LifecycleError           start() twice, use after stop(), ...
    └── TransportError           ZeroMQ or network failures, translated where they enter
        └── ProtocolError        a peer speaks another protocol version, or refused us

Errors from the OS or from ZeroMQ are translated where they enter nvrxlog
with ``raise ... from exc`` so callers only ever catch these.
"""

from __future__ import annotations

__all__ = [
    "AggregatorBusyError",
    "ConfigError",
    "LifecycleError",
    "NvrxLogError",
    "OutputError",
    "ProtocolError",
    "TmpDirError",
    "TransportError",
]


class NvrxLogError(Exception):
    """Base class of every error nvrxlog raises."""


class ConfigError(NvrxLogError, ValueError):
    """A setting, environment variable, argument or key file that cannot be used."""


class TmpDirError(NvrxLogError, OSError):
    """The node-local temp directory is missing, unsafe or not writable."""


class OutputError(NvrxLogError, OSError):
    """An output (per-node file, cluster file, their checkpoints, the spool) cannot be opened or written."""


class AggregatorBusyError(NvrxLogError):
    """Another live aggregator already holds the lock of this temp directory."""


class LifecycleError(NvrxLogError, RuntimeError):
    """A component was used out of order (started twice, used after stop)."""


class TransportError(NvrxLogError, OSError):
    """A ZeroMQ or network operation failed."""


class ProtocolError(TransportError):
    """The peer speaks another protocol version or refused the connection."""
