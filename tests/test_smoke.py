from __future__ import annotations

import aiohttp

from tests.conftest import Api, GatewayFactory
from tests.services import NatsServer


async def test_async_task_succeeds(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        {"nats": {"url": nats_server.url}, "functions": {"echo": {"handler": "python:examples.functions:echo"}}}
    )
    api = Api(http, gw.url)
    task_id = await api.submit("echo", {"hello": "world"})
    record = await api.wait_status(task_id, "Succeeded")
    assert record["result"]["echo"] == {"hello": "world"}
    assert [t["status"] for t in record["timeline"]] == ["Enqueued", "Dequeued", "Running", "Succeeded"]
