"""A small HTTP receiver for event_bus destinations: records what it got, answers what it's told."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.services import free_port


@dataclass
class Receiver:
    port: int
    status: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append({"headers": dict(request.headers), "body": body, "status": self.status})
        return web.Response(status=self.status, text="ok" if self.status < 400 else "no")

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def down(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(free_port())
    await r.up()
    yield r
    await r.down()
