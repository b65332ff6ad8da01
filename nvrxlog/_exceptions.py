"""The one exception tree of nvrxlog.

::

    NvrxLogError                 base of everything nvrxlog raises
    ├── ConfigError              a setting or argument that cannot be used
    ├── TmpDirError              the node-local tmpdir is missing, unsafe or unusable
    ├── AggregatorBusyError      another aggregator already serves this tmpdir
    ├── LifecycleError           start() twice, use after stop(), ...
    └── TransportError           ZeroMQ or network failures, translated where they enter

Errors from the OS or from ZeroMQ are translated where they enter nvrxlog
with ``raise ... from exc`` so callers only ever catch these.
"""

from __future__ import annotations


class NvrxLogError(Exception):
    """Base class of every error nvrxlog raises."""


class ConfigError(NvrxLogError, ValueError):
    """A setting, environment variable or argument that cannot be used."""


class TmpDirError(NvrxLogError, OSError):
    """The node-local temp directory is missing, unsafe or not writable."""


class AggregatorBusyError(NvrxLogError):
    """Another live aggregator already holds the lock of this temp directory."""


class LifecycleError(NvrxLogError, RuntimeError):
    """A component was used out of order (started twice, used after stop)."""


class TransportError(NvrxLogError, OSError):
    """A ZeroMQ or network operation failed."""
