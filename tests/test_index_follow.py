"""The task list follows the streams again after its consumers vanished from the server.

The list and the live counts come from ordered consumers, ephemeral consumers that live on
one server. When that server dies (a node of a cluster) or drops them, the client library
is not told. Here the consumers are deleted on the server under a running gateway: tasks
submitted afterwards must still show up in the list and the counts, without a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import nats

from gateway import constants as c
from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import NatsServer


async def test_task_list_recovers_when_its_consumers_vanish(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        gw = gateway_factory(
            {"nats": {"url": server.url}, "functions": {"echo": {"handler": "python:examples.functions:echo"}}}
        )
        api = Api(http, gw.url)
        before = [(await api.invoke("echo", {"n": n}))[1]["task_id"] for n in range(3)]

        async def listed(ids: list[str]) -> dict[str, Any] | None:
            status, body = await api.get("/v1/tasks?function=echo&status=Succeeded&limit=100")
            assert status == 200, body
            return body if set(ids) <= {t["task_id"] for t in body["tasks"]} else None

        await wait_until(lambda: listed(before), timeout=15)

        nc = await nats.connect(server.url)
        try:
            jsm = nc.jsm()
            deleted = 0
            for stream in (c.TASKS_STREAM, c.STATE_STREAM):
                for consumer in await jsm.consumers_info(stream):
                    if consumer.config.durable_name is None:  # the gateway's ordered consumers
                        await jsm.delete_consumer(stream, consumer.name)
                        deleted += 1
            assert deleted == 2
        finally:
            await nc.close()

        after = [(await api.invoke("echo", {"n": n}))[1]["task_id"] for n in range(3, 6)]
        # The watchdog looks every 5 s and revives a follow that made no progress for a round.
        body = await wait_until(lambda: listed(after), timeout=30, interval=0.5)
        assert {t["task_id"] for t in body["tasks"]} >= set(before) | set(after)
        status, summary = await api.get("/v1/functions/echo")
        assert status == 200 and summary["counts"]["totals"]["completed"] == 6, summary
        assert "stalled" in gw.log()
    finally:
        server.stop()
