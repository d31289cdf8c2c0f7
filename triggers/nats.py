"""The nats trigger: messages on a NATS subject become invocations.

With a `queue` group the replicas share the subject, each message going to one of them.
Headers carry lineage (Fngate-Chain-Id / Fngate-Chain-Depth), so a function whose results
come back to this subject through a destination is caught as a loop. A request (a message
with a reply subject) is answered with the task id once the task is durably enqueued.
Core NATS keeps no messages: what arrives while the trigger is disconnected is not seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import Field

from gateway.config.model import TriggerConfig
from gateway.supervise import supervised
from gateway.tasks.invocation import BatchItem, lineage_from_headers, new_task_id

from .base import RETRY_MAX, BaseTrigger, TriggerContext, TriggerState, parse_options
from .shaping import BatchedOptions, batch_max_bytes, batch_task, chunks

STOP_FLUSH_TIMEOUT = 5.0  # seconds a stopping trigger gives its last batch to be enqueued

log = logging.getLogger(__name__)


class NatsOptions(BatchedOptions):
    url: str | list[str] | None = Field(
        default=None, description="nats://host:port of the server carrying the subject; default: the gateway's own"
    )
    subject: str = Field(min_length=1, pattern=r"^[^\s]+$")
    queue: str | None = Field(default=None, pattern=r"^[^\s]+$")


class NatsTrigger(BaseTrigger):
    """Subscribes to `subject` (in `queue` when set); one invocation per message."""

    type = "nats"
    Options = NatsOptions

    def __init__(self, config: TriggerConfig, context: TriggerContext) -> None:
        super().__init__(config, context)
        self.options = parse_options(NatsOptions, config, self.path)
        url = self.options.url
        self.servers = [] if url is None else [url] if isinstance(url, str) else list(url)
        self.pattern = self.options.event_pattern()
        self.nc: NATS | None = None
        self._task: asyncio.Task[None] | None = None
        # With `batch:`: messages waiting to become one task, a timer that closes the batch
        # when its window ends, and one flush at a time.
        self._pending: list[tuple[Msg, BatchItem]] = []
        self._timer: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()

    async def start(self) -> None:
        if not self.servers:
            self.servers = self.context.nats_servers()
        self.state = TriggerState.CONNECTING
        # Connecting ends once subscribed (nats-py reconnects from there); a failure starts it over.
        connect = supervised(f"nats trigger {self.name}", self._connect, stopping=self._stopping, final_return=True)
        self._task = asyncio.get_running_loop().create_task(connect, name=f"nats {self.name}")

    async def stop(self) -> None:
        self._stopping.set()  # from here a submit is tried once, not held
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()  # the messages already received are handled first
        if self._timer is not None:
            self._timer.cancel()
        # Core NATS will not deliver these again: one try to enqueue them now (bounded wait).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._flush(), STOP_FLUSH_TIMEOUT)
        self.state = TriggerState.STOPPED

    def ready(self) -> bool:
        return self.state is TriggerState.RUNNING and self.nc is not None and self.nc.is_connected

    def health(self) -> dict[str, Any]:
        connected = self.nc is not None and self.nc.is_connected
        return {
            **super().health(),
            "subject": self.options.subject,
            "queue": self.options.queue,
            "connected": connected,
        }

    async def _connect(self) -> None:
        """Connect (retrying until the server is there) and subscribe; nats-py reconnects after."""

        async def on_disconnect() -> None:
            self.state = TriggerState.CONNECTING

        async def on_reconnect() -> None:
            self.state = TriggerState.RUNNING

        async def on_error(exc: Exception) -> None:
            log.warning("nats trigger %s: %s", self.name, exc)

        delay = 0.5
        while self.nc is None:
            try:
                self.nc = await nats.connect(
                    servers=self.servers,
                    name=f"fngate-trigger-{self.name}",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    error_cb=on_error,
                )
            except Exception as exc:
                self.count_error(f"cannot connect: {exc}")
                log.warning("nats trigger %s: cannot reach %s (%s)", self.name, self.servers, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        await self.nc.subscribe(self.options.subject, queue=self.options.queue or "", cb=self._on_message)
        await self.nc.flush()
        self.state = TriggerState.RUNNING

    async def _on_message(self, msg: Msg) -> None:
        # nats-py runs this callback for one message at a time: holding a message while the
        # gateway's NATS is down holds the ones behind it in the subscription's buffer.
        self.count_event()
        headers = dict(msg.headers or {})
        task_id = new_task_id()
        event = self.filtered_event(
            event_id=task_id,
            kind="message",
            subject=msg.subject,
            raw=msg.data,
            extra={"subject": msg.subject, "reply": msg.reply or None, "headers": headers, "queue": self.options.queue},
        )
        if event is None:
            await self._reply(msg, {"task_id": None, "status": "Dropped", "reason": "filter"})
            return
        item: BatchItem = (event, task_id, lineage_from_headers(headers))
        batch = self.options.batch
        if batch is None:
            enqueued = await self.submit_held(event, task_id=task_id, lineage=item[2])
            await self._answer(msg, enqueued)
            return
        self._pending.append((msg, item))
        if len(self._pending) >= batch.size:
            await self._flush()  # holds this callback, and so the subscription, until enqueued
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._close_after(batch.window))

    async def _close_after(self, window: float) -> None:
        await asyncio.sleep(window)
        self._timer = None  # from here on this flush is not cancelled: it may be enqueueing
        await self._flush()

    async def _flush(self) -> None:
        """Enqueue what is pending as batch tasks, then answer each request among them."""
        async with self._flushing:
            if self._timer is not None:
                self._timer.cancel()  # only ever a timer still in its sleep
                self._timer = None
            taken, self._pending = self._pending, []
            if not taken:
                return
            assert self.options.batch is not None
            start = 0
            for run in chunks([item for _, item in taken], self.options.batch.size, batch_max_bytes(self.context)):
                payload, task_id, lineage = batch_task(f"nats-{self.name}-batch", run)
                enqueued = await self.submit_held(payload, task_id=task_id, lineage=lineage)
                for msg, _ in taken[start : start + len(run)]:
                    await self._answer(msg, enqueued)
                start += len(run)

    async def _answer(self, msg: Msg, enqueued: str | None) -> None:
        answer = {"task_id": enqueued, "status": "Enqueued"} if enqueued else {"error": {"code": "NotEnqueued"}}
        await self._reply(msg, answer)

    @staticmethod
    async def _reply(msg: Msg, answer: dict[str, Any]) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(json.dumps(answer).encode())
