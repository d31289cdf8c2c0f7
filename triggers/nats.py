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

from gateway.config import TriggerConfig
from gateway.invocation import lineage_from_headers, new_task_id

from .base import RETRY_MAX, BaseTrigger, TriggerContext, TriggerOptions, parse_options

log = logging.getLogger(__name__)


class NatsOptions(TriggerOptions):
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
        self.nc: NATS | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.servers:
            self.servers = self.context.nats_servers()
        self.state = "connecting"
        self._task = asyncio.get_running_loop().create_task(self._connect(), name=f"nats {self.name}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        self.state = "stopped"

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
            self.state = "connecting"

        async def on_reconnect() -> None:
            self.state = "running"

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
        self.state = "running"

    async def _on_message(self, msg: Msg) -> None:
        # nats-py runs this callback for one message at a time: holding a message while the
        # gateway's NATS is down holds the ones behind it in the subscription's buffer.
        self.count_event()
        headers = dict(msg.headers or {})
        task_id = new_task_id()
        event = self.cloud_event(
            event_id=task_id,
            kind="message",
            subject=msg.subject,
            raw=msg.data,
            extra={"subject": msg.subject, "reply": msg.reply or None, "headers": headers, "queue": self.options.queue},
        )
        enqueued = await self.submit_held(event, task_id=task_id, lineage=lineage_from_headers(headers))
        if msg.reply:
            answer = {"task_id": enqueued, "status": "Enqueued"} if enqueued else {"error": {"code": "NotEnqueued"}}
            with contextlib.suppress(Exception):
                await msg.respond(json.dumps(answer).encode())
