"""Checking ZeroMQ endpoints before they reach a socket, so a typo is one clear line."""

from __future__ import annotations

import re
import socket

from nvrxlog.errors import ConfigError

__all__ = ["check_endpoint", "same_endpoint"]

_TCP = re.compile(r"tcp://(?P<host>\[[^\]]*\]|[^:/\[\]]*):(?P<port>[^:/]*)")


def check_endpoint(text: str, *, bind: bool = False, resolve: bool = True, what: str = "address") -> str:
    """Return ``text`` if it is a usable ``tcp://HOST:PORT`` (or ipc://, inproc://); raise ConfigError.

    The port must be 1-65535 (0, "any free port", only for ``bind``); with
    ``resolve`` the host must resolve (a bind host must also be one of this
    machine's addresses, which the bind itself then checks).
    """
    if text.startswith(("ipc://", "inproc://")) and len(text.split("://", 1)[1]) > 0:
        return text
    match = _TCP.fullmatch(text)
    if match is None:
        raise ConfigError(f"{what} {text!r} is not tcp://HOST:PORT")
    host, port_text = match["host"], match["port"]
    if not host:
        raise ConfigError(f"{what} {text!r} has no host (e.g. tcp://127.0.0.1:5555)")
    if not port_text.isdigit():
        raise ConfigError(f"{what} {text!r}: port {port_text!r} is not a number from 1 to 65535")
    port = int(port_text)
    if port > 65535 or (port == 0 and not bind):
        allowed = "0 (any free port) to 65535" if bind else "1 to 65535"
        raise ConfigError(f"{what} {text!r}: port {port} is not in {allowed}")
    if resolve and not (bind and host in ("*", "0.0.0.0", "[::]")):
        try:
            socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ConfigError(f"{what} {text!r}: host {host!r} cannot be resolved") from exc
    return text


def same_endpoint(a: str, b: str) -> bool:
    """True if two tcp endpoints name the same port on the same machine (a relay forwarding to itself)."""
    ma, mb = _TCP.fullmatch(a), _TCP.fullmatch(b)
    if ma is None or mb is None:
        return a == b
    if ma["port"] != mb["port"]:
        return False

    def addresses(host: str) -> set[str]:
        host = host.strip("[]")
        if host in ("*", "0.0.0.0", "::"):
            return {"*"}
        try:
            return {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            return {host}

    left, right = addresses(ma["host"]), addresses(mb["host"])
    local = {"*", "127.0.0.1", "::1"}
    return bool(left & right) or ("*" in left and bool(right & local)) or ("*" in right and bool(left & local))
