"""The streamer's two sockets: a ROUTER for nodes and an XPUB for live views, CURVE optional."""

from __future__ import annotations

from typing import Any

import zmq
import zmq.auth

from nvrxlog.wire.curve import load_server_secret

__all__ = ["bind_sockets"]


def bind_sockets(
    context: zmq.Context,
    bind: str,
    *,
    max_message: int,
    curve_secret: str | None,
    curve_clients: str | None,
    made: list[Any],
) -> tuple[zmq.Socket, zmq.Socket]:
    """Bind the ROUTER at ``bind`` and the XPUB beside it; everything made is appended to ``made``.

    ``made`` lets the caller close (and stop) everything even when binding
    fails half way: an open socket would make ``context.term()`` wait forever.
    Raises ``zmq.ZMQError`` or ``ConfigError``.
    """
    router = context.socket(zmq.ROUTER)
    made.append(router)
    # XPUB rather than PUB: it tells us whether anyone watches, so records
    # are only encoded for the live view while someone does.
    pub = context.socket(zmq.XPUB)
    made.append(pub)
    for sock in (router, pub):
        sock.linger = 0
    router.setsockopt(zmq.MAXMSGSIZE, max_message)  # a larger message drops its connection
    router.router_mandatory = False  # a vanished peer's reply is dropped, never an error
    router.sndhwm = 10000
    pub.sndhwm = 10000  # a slow `nvrxlog tail` loses lines; the streamer never waits for it
    if curve_secret:
        from zmq.auth.thread import ThreadAuthenticator

        public, secret = load_server_secret(curve_secret)
        auth = ThreadAuthenticator(context)
        made.append(auth)
        auth.start()
        auth.configure_curve(domain="*", location=curve_clients or zmq.auth.CURVE_ALLOW_ANY)
        for sock in (router, pub):
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_server = True
    router.bind(bind)
    endpoint = router.last_endpoint.decode()
    host = endpoint.rsplit(":", 1)[0]
    pub.bind(f"{host}:0" if endpoint.startswith("tcp://") else endpoint + ".pub")
    return router, pub
