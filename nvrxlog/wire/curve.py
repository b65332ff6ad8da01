"""CurveZMQ key files for a node (or relay) that forwards to a streamer with CURVE on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nvrxlog.errors import ConfigError

__all__ = ["CurveKeys", "load_server_secret"]


@dataclass(frozen=True, kw_only=True)
class CurveKeys:
    """CurveZMQ key files: the server's public key and this client's secret key.

    Both are files written by ``nvrxlog keys`` (or ``zmq.auth.create_certificates``).
    """

    server_public: str
    client_secret: str

    def load(self) -> tuple[bytes, bytes, bytes]:
        """``(server public, client public, client secret)``; raises ConfigError with the file at fault."""
        import zmq.auth  # only a process that forwards with CURVE pays for it

        server_public, _ = _load(zmq.auth, self.server_public)
        client_public, client_secret = _load(zmq.auth, self.client_secret)
        if client_secret is None:
            raise ConfigError(f"CURVE key {self.client_secret} holds no secret key (use NAME.key_secret)")
        return server_public, client_public, client_secret

    def apply(self, socket: Any) -> None:
        """Configure a ZeroMQ ``socket`` as a CURVE client."""
        server_public, client_public, client_secret = self.load()
        socket.curve_serverkey = server_public
        socket.curve_publickey = client_public
        socket.curve_secretkey = client_secret


def load_server_secret(path: str) -> tuple[bytes, bytes]:
    """A streamer's ``(public, secret)`` key pair from its secret key file; raises ConfigError."""
    import zmq.auth

    public, secret = _load(zmq.auth, path)
    if secret is None:
        raise ConfigError(f"CURVE key {path} holds no secret key (use NAME.key_secret)")
    return public, secret


def _load(auth: Any, path: str) -> tuple[bytes, bytes | None]:
    try:
        return auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load CURVE key {path}: {exc}") from exc
