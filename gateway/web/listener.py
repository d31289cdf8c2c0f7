"""The API's listening socket, bound before anything starts: a port in use is a one-line
error before the gateway has touched NATS, its store or its triggers."""

from __future__ import annotations

import errno
import logging
import socket

from gateway.errors import FngateError

log = logging.getLogger(__name__)


class ListenError(FngateError):
    code = "ListenError"


def bind_listener(host: str, port: int, where: str = "api.listen") -> socket.socket:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"{where}: cannot resolve {host!r} ({exc.strerror})") from None
    # One socket: for a name with both (localhost), the IPv4 address, which clients try first.
    family, kind, proto, _, address = sorted(found, key=lambda info: info[0] != socket.AF_INET)[0]
    sock = socket.socket(family, kind, proto)
    # As aiohttp does for its own sockets: a restarted gateway rebinds at once (TIME_WAIT),
    # while a port another process listens on still fails.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ListenError(f"{where}: cannot listen on {host}:{port}: {reason}") from None
    sock.setblocking(False)
    return sock


def listening_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def announce(sock: socket.socket) -> None:
    """The start line, once the API answers: where to point a browser or a client."""
    log.info("listening on %s (console at /)", listening_url(sock))
