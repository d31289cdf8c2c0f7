"""Closed log streams cost nothing, and open ones are bounded per client (issue 11 item 12)."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import NatsServer

LIMIT = 16  # gateway/streams.py MAX_STREAMS_PER_CLIENT


async def open_streams(http: aiohttp.ClientSession, gw_url: str) -> float:
    async with http.get(f"{gw_url}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith("fngate_sse_streams_open "):
                return float(line.split()[1])
    raise AssertionError("no fngate_sse_streams_open metric")


async def test_closed_log_streams_end_and_open_ones_are_bounded(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        {"nats": {"url": nats_server.url}, "functions": {"echo": {"handler": "python:examples.functions:echo"}}}
    )
    api = Api(http, gw.url)
    task_id = await api.submit("echo", {}, X_Delay="3600")  # stays Enqueued: its streams never end by themselves
    url = f"{gw.url}/v1/tasks/{task_id}/logs"
    sse = {"Accept": "text/event-stream"}
    streams: list[Any] = []
    try:
        for _ in range(LIMIT):
            resp = await http.get(url, headers=sse)
            assert resp.status == 200
            streams.append(resp)
        async with http.get(url, headers=sse) as resp:
            assert resp.status == 429, await resp.text()
        assert await open_streams(http, gw.url) == LIMIT
    finally:
        for resp in streams:
            resp.close()

    async def all_closed() -> bool:
        return await open_streams(http, gw.url) == 0

    await wait_until(all_closed)
    async with http.get(url, headers=sse) as resp:  # the client's slots are free again
        assert resp.status == 200
