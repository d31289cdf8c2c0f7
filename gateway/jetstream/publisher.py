"""JetStream publish-with-ack, leaner than the client library's request path.

Every async submit and every task-state write waits for one JetStream acknowledgement, so
the per-publish cost of the client decides those rates. nats-py's request path draws random
bytes from the OS and arms an `asyncio.wait_for` timer per request; here one inbox
subscription serves every publish, ids come from a counter, and a single sweeper expires
stale waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError

from gateway.errors import FngateError

from .raw import STATUS_PREFIX, install_raw

# What nats-py refuses in a subject it publishes to (whitespace would split the command).
_UNSAFE_SUBJECT = re.compile(r"\s")


# An ack as it arrived: its payload, and whether it is the server's 503 (no stream took the
# subject) rather than JetStream's answer.
Ack = tuple[bytes, bool]


@dataclass(frozen=True, slots=True)
class PendingAck:
    token: str
    future: asyncio.Future[Ack]


class AckPublisher:
    def __init__(self, nc: NATS, timeout: float) -> None:
        self.nc = nc
        self.timeout = timeout
        self._prefix = ""
        self._ids = itertools.count()
        self._waiting: dict[str, tuple[asyncio.Future[Ack], float]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        # The library's internals the direct path uses (nats-py 2.x); without them, its publish.
        self._direct = all(hasattr(nc, name) for name in ("_send_command", "_flush_queue", "_flush_pending", "stats"))

    async def start(self) -> None:
        self._prefix = f"{self.nc.new_inbox()}."
        sub = await self.nc.subscribe(f"{self._prefix}*", cb=self._on_ack)
        handlers = install_raw(self.nc)
        if handlers is not None:  # the acks straight from the parser (raw.py); else through _on_ack
            handlers[sub._id] = self._on_raw_ack
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> int:
        """Publish to a stream and return the stored sequence.

        Raises what the client library's `js.publish` raises: APIError when JetStream refuses,
        NoRespondersError when no stream takes the subject, TimeoutError when no ack came.
        """
        return await self.acked(await self.send(subject, payload, headers))

    async def send(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> PendingAck:
        """Publish without waiting: a batch sends everything first, then awaits the acks."""
        token = f"{next(self._ids):x}"
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._waiting[token] = (future, time.monotonic() + self.timeout)
        try:
            command = self._command(subject, self._prefix + token, payload, headers) if self._direct else None
            if command is None:
                await self.nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            else:
                # What the library's publish does after its checks: queue, count, wake the flusher.
                nc: Any = self.nc
                await nc._send_command(command)
                nc.stats["out_msgs"] += 1
                nc.stats["out_bytes"] += len(payload)
                if nc._flush_queue is not None and nc._flush_queue.empty():
                    await nc._flush_pending()
        except BaseException:
            self._waiting.pop(token, None)
            raise
        return PendingAck(token, future)

    def _command(self, subject: str, reply: str, payload: bytes, headers: dict[str, str] | None) -> bytes | None:
        """The HPUB command nats-py's publish would queue, without its per-call checks of every
        header name and value and of both subjects (a tenth of a submit's CPU): the names are
        fngate's. None (the library's path) for a message without headers, a value with a line
        break, a subject with white space, and a connection that is not up (where the library
        buffers or refuses)."""
        nc = self.nc
        if not headers or not nc.is_connected or nc.is_draining_pubs or len(payload) > nc.max_payload:
            return None
        if _UNSAFE_SUBJECT.search(subject):
            return None
        lines = ["NATS/1.0\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                return None
            lines.append(f"{name}: {value.strip()}\r\n")
        lines.append("\r\n")
        block = "".join(lines).encode()
        head = f"HPUB {subject} {reply} {len(block)} {len(block) + len(payload)}\r\n".encode()
        return head + block + payload + b"\r\n"

    async def acked(self, pending: PendingAck) -> int:
        """The stored sequence of a sent message, once JetStream acknowledged it (see publish)."""
        try:
            data, no_responders = await pending.future
        finally:
            self._waiting.pop(pending.token, None)
        return parse_ack(data, no_responders)

    async def _on_ack(self, msg: Msg) -> None:
        no_responders = bool(msg.headers and msg.headers.get("Status") == "503")
        self._arrived(msg.subject[len(self._prefix) :], (msg.data, no_responders))

    def _on_raw_ack(self, subject: bytes, _reply: bytes, data: bytes, headers: bytes | None) -> None:
        no_responders = headers is not None and headers.startswith(STATUS_PREFIX + b"503")
        self._arrived(subject[len(self._prefix) :].decode(), (data, no_responders))

    def _arrived(self, token: str, ack: Ack) -> None:
        entry = self._waiting.get(token)
        if entry is not None and not entry[0].done():
            entry[0].set_result(ack)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.timeout / 4))
            now = time.monotonic()
            for future, deadline in list(self._waiting.values()):
                if deadline < now and not future.done():
                    future.set_exception(NatsTimeout())


class DuplicateMessage(FngateError):
    """JetStream already holds a message with this `Nats-Msg-Id` (within the stream's
    duplicate window): nothing was stored; `seq` is the sequence of the one it holds."""

    status = 409
    code = "DuplicateMessage"

    def __init__(self, seq: int) -> None:
        super().__init__(f"a message with this id is stored already (sequence {seq})")
        self.seq = seq


def parse_ack(data: bytes, no_responders: bool = False) -> int:
    if no_responders:
        raise NoRespondersError
    # The common ack, {"stream":"S","seq":N}, read without a JSON parse (one per submit and
    # per state write); anything else (an error, a duplicate, a domain) takes the parse.
    if data.endswith(b"}") and b'"error"' not in data and b'"duplicate"' not in data:
        start = data.rfind(b'"seq":')
        if start != -1:
            digits = data[start + 6 : -1]
            if digits.isdigit():
                return int(digits)
    ack: dict[str, Any] = json.loads(data)
    error = ack.get("error")
    if error:
        raise APIError(code=error.get("code"), err_code=error.get("err_code"), description=error.get("description"))
    seq: int = ack["seq"]
    if ack.get("duplicate"):
        raise DuplicateMessage(seq)
    return seq
