"""Sending on a ZeroMQ socket without ever waiting: what every sender here does."""

from __future__ import annotations

import zmq

__all__ = ["try_send"]


def try_send(sock: zmq.Socket, frames: list[bytes]) -> bool:
    """Send ``frames`` if the socket takes them now; False (nothing sent) if its queue is full.

    Nothing here may block on a peer: every message is one its receiver
    asks for again, or that is resent from the spool.
    """
    try:
        sock.send_multipart(frames, zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False
