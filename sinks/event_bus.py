"""The event_bus destination: the record as a CloudEvents 1.0 event, over HTTP or NATS.

Both transports take the binary content mode (the default: ce-* headers, the record as the
body) or the structured mode (`mode: structured`: application/cloudevents+json), as the
HTTP and NATS protocol bindings define them (see cloudevent.py). The event's type is
fngate.task.succeeded or fngate.task.failed, its source names the function and its
subject is the task id. 2xx is delivered; 429, 5xx and connection errors are retried;
other 4xx are permanent.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import aiohttp
from pydantic import model_validator

from gateway.tasks.invocation import lineage_headers

from . import cloudevent
from .base import Delivery, KiB, PermanentDeliveryError, SinkContext, SinkOptions, TransientDeliveryError
from .queue import NatsBackend

SEND_TIMEOUT = 10.0


class EventBusOptions(SinkOptions):
    url: str | None = None
    subject: str | None = None
    mode: Literal["binary", "structured"] = "binary"
    headers: dict[str, str] = {}

    @model_validator(mode="after")
    def _target(self) -> EventBusOptions:
        if bool(self.url) == bool(self.subject):
            raise ValueError("exactly one of url (HTTP) or subject (NATS) must be set")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return self


class EventBusSink:
    Options: ClassVar[type[SinkOptions]] = EventBusOptions
    default_max_payload: ClassVar[int] = 64 * KiB

    def __init__(self, options: EventBusOptions, context: SinkContext) -> None:
        self.options = options
        self.context = context
        self._session: aiohttp.ClientSession | None = None
        self._nats = NatsBackend(options.subject, None, context) if options.subject else None

    @property
    def target(self) -> str:
        return self.options.subject or (self.options.url or "").split("?", 1)[0]

    async def deliver(self, delivery: Delivery) -> None:
        event_headers, body = cloudevent.encode(delivery, self.options.mode, http=self._nats is None)
        # Lineage and the W3C trace headers go along in both modes, for consumers that are
        # not CloudEvents-aware (and fngate's own triggers).
        headers = {**lineage_headers(delivery.lineage), **delivery.trace_headers(), **event_headers}
        if self._nats is not None:
            await self._nats.send(body, headers)
            return
        await self._post(body, {**self.options.headers, **headers})

    async def _post(self, body: bytes, headers: dict[str, str]) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT))
        url = self.options.url
        assert url is not None
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                text = (await resp.read())[:300].decode(errors="replace")
                if 200 <= resp.status < 300:
                    return
                if resp.status == 429 or resp.status >= 500:
                    raise TransientDeliveryError(f"{self.target} answered {resp.status}: {text}")
                raise PermanentDeliveryError(f"{self.target} answered {resp.status}: {text}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TransientDeliveryError(f"{self.target} unreachable: {type(exc).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
