"""A small HTTP receiver for event_bus destinations: records what it got, answers what it's told."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.services import Endpoint, free_port


@dataclass
class Receiver:
    port: int
    status: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)
    double: Endpoint | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append({"headers": dict(request.headers), "body": body, "status": self.status})
        return web.Response(status=self.status, text="ok" if self.status < 400 else "no")

    async def up(self) -> None:
        self.double = Endpoint({"/events": self.handle}, self.port)
        await self.double.up()

    async def down(self) -> None:
        if self.double is not None:
            await self.double.down()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(free_port())
    await r.up()
    yield r
    await r.down()
