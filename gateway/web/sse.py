"""Long-lived answers (Server-Sent Events): each is bounded per client, and ends as soon as
its client has gone.

aiohttp does not cancel a handler whose client disconnected, and a stream that only polls
and waits never writes, so it would never notice: a closed log stream went on reading the
task's log and record from JetStream for as long as the task lived (300 closed streams kept
nats-server at ~1,500 messages/s). A log stream therefore asks `gone()` on every turn of
its polling; a status stream (gateway/web/live.py), which waits without polling, is woken
by the replica's keep-alive timer when `gone()` says so. Both write a comment line when
they have been quiet, which fails on a closed connection.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import Gauge

from gateway.errors import ResourceExhausted

KEEPALIVE = b": keepalive\n\n"
OPEN_STREAMS = Gauge("fngate_sse_streams_open", "Server-Sent Event streams open in this replica")


class StreamLimiter:
    """How many streams each client (by remote address) has open here, log and status
    streams together (api.streams_per_client); over the limit: 429."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self.open: Counter[str] = Counter()

    @contextlib.contextmanager
    def slot(self, request: web.Request) -> Iterator[None]:
        client = request.remote or "?"
        if self.open[client] >= self.per_client:
            raise ResourceExhausted(f"too many open event streams from this client (limit {self.per_client})")
        self.open[client] += 1
        OPEN_STREAMS.inc()
        try:
            yield
        finally:
            OPEN_STREAMS.dec()
            self.open[client] -= 1
            if not self.open[client]:
                del self.open[client]


def gone(request: web.Request) -> bool:
    """True once the client closed its connection."""
    transport = request.transport
    return transport is None or transport.is_closing()
