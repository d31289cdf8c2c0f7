"""Pull requests on a durable consumer, each message handed over the moment it arrives.

A function's consumer has `max_ack_pending` = its concurrency, so a busy function's pull
request is often only partly served: the server delivers what the limit allows and keeps
the request open. nats-py's `fetch(n)` then keeps what did arrive to itself until `n`
messages came or its timeout ran out; a message may sit there unstarted past ack_wait, be
handed out again, and run twice (seen with ack_wait 1s: one copy ran three times). Here the
request is ours: every message that arrives starts at once, and the credits of a request
that ends (expired, or cut short by the server) are given back to the caller.

One request is open at a time. A message that arrives after its request was given up (a
race at expiry) is still run at once: JetStream counted it against max_ack_pending, so
running it keeps within the concurrency limit, and leaving it would strand it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

EXPIRES = 5.0  # seconds a pull request lingers on the server when nothing can be delivered
GRACE = 1.0  # beyond EXPIRES, for a request whose end the server never announced (reconnect)


class Puller:
    def __init__(
        self, nc: NATS, stream: str, consumer: str, deliver: Callable[[Msg, bool], None], expires: float = EXPIRES
    ) -> None:
        """`deliver(msg, counted)` is called for every message; `counted` is False for one
        that came after its request was given up (its credit was already returned)."""
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.deliver = deliver
        self.expires = expires
        self._inbox = ""
        self._sub: Subscription | None = None
        self._credit = 0
        self._done = asyncio.Event()

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_message)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def pull(self, batch: int) -> int:
        """Ask for up to `batch` messages and wait until the request ends; returns how many
        of them did not come (the credits to give back)."""
        self._credit = batch
        self._done.clear()
        request = {"batch": batch, "expires": int(self.expires * 1e9)}
        try:
            await self.nc.publish(self.subject, json.dumps(request).encode(), reply=self._inbox)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), self.expires + GRACE)
        finally:
            unused, self._credit = self._credit, 0
        return unused

    async def _on_message(self, msg: Msg) -> None:
        if not msg.data and msg.headers and "Status" in msg.headers:
            # 404/408: nothing (more) for this request; 409: the server ended it (leader
            # change, consumer deleted, limits). Either way, the next request starts afresh.
            # A status left over from an earlier request ends this one early: harmless.
            self._done.set()
            return
        counted = self._credit > 0
        if counted:
            self._credit -= 1
            if self._credit == 0:
                self._done.set()
        self.deliver(msg, counted)
