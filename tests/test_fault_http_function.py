"""An HTTP function that is down, then slow (timeouts), then back: every task still ends
exactly once, and nothing is lost."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import TERMINAL, Api, GatewayFactory, wait_all, wait_until
from tests.services import Endpoint, NatsServer, free_port


class FlakyEndpoint:
    """A function endpoint whose behaviour the test switches: down, slow, or fine."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.mode = "fine"
        self.calls: Counter[str] = Counter()
        self.successes: Counter[str] = Counter()
        self.double = Endpoint({"/fn": self.handle}, port)

    async def handle(self, request: web.Request) -> web.Response:
        task_id = request.headers["X-Task-Id"]
        self.calls[task_id] += 1
        if self.mode == "slow":
            await asyncio.sleep(2)
        self.successes[task_id] += 1
        return web.json_response({"ok": task_id})

    async def up(self) -> None:
        await self.double.up()

    async def down(self) -> None:
        await self.double.down()


async def retried(api: Api, task_id: str, times: int) -> None:
    async def enough() -> bool:
        record = await api.task(task_id)
        return sum(1 for step in record["timeline"] if step["status"] == "Retrying") >= times

    await wait_until(enough, timeout=30)


async def test_http_function_down_then_slow_then_back(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    endpoint = FlakyEndpoint(free_port())
    name = unique("remote")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {
                name: {
                    "url": f"http://127.0.0.1:{endpoint.port}/fn",
                    "timeout": "300ms",
                    "concurrency": 8,
                    "async": {"max_retries": 8, "retry_delay": "200ms", "max_event_age": "2m"},
                }
            },
        }
    )
    api = Api(http, gw.url)
    try:
        down_ids = [await api.submit(name, {"i": i}) for i in range(20)]
        # Several transient failures each while the endpoint is down, then while it is slow.
        await retried(api, down_ids[0], 3)
        assert not endpoint.calls
        endpoint.mode = "slow"
        await endpoint.up()
        slow_ids = [await api.submit(name, {"j": i}) for i in range(10)]
        await retried(api, slow_ids[0], 2)
        endpoint.mode = "fine"
        records = await wait_all(api, down_ids + slow_ids, "Succeeded", timeout=60)
    finally:
        await endpoint.down()

    timed_out = 0
    for record in records.values():
        ends = [t["status"] for t in record["timeline"] if t["status"] in TERMINAL]
        assert ends == ["Succeeded"]
        timed_out += sum(1 for t in record["timeline"] if t["status"] == "Retrying")
    duplicates = sum(n - 1 for n in endpoint.successes.values())
    print(f"\nhttp function faults: 30 tasks, {timed_out} retries on the way, {duplicates} duplicate calls answered")
    assert set(endpoint.successes) == set(records)
    # Transient failures (down) were not counted against max_retries: the down-phase tasks
    # would otherwise have exhausted their retries long before the endpoint came back.
    assert any(record["attempts"] > 1 for record in records.values())
