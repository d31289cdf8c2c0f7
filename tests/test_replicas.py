"""A replica whose config lacks a function leaves that function's tasks to the replicas
that have it; only a function no live replica has ends its queue Invalid (issue 11 item 14)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import NatsServer

# Announcements every 2 s (a TTL of 6 s) instead of 5 s (15 s): the replica grace this test
# waits out twice, shortened; still long enough that a loaded machine's pauses keep entries.
# On a nats-server of its own: the replicas bucket's TTL is part of its stream config.
SHORT_BEAT = {"FNGATE_REPLICA_BEAT": "2"}


async def test_a_replica_without_the_function_leaves_its_tasks_alone(
    own_nats: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    added = unique("added")
    echo = {"handler": "python:examples.functions:echo"}
    # The replica already upgraded has the new function; the old one does not.
    new = gateway_factory({"nats": {"url": own_nats.url}, "functions": {added: echo, "base": echo}}, env=SHORT_BEAT)
    old = gateway_factory({"nats": {"url": own_nats.url}, "functions": {"base": echo}}, env=SHORT_BEAT)

    async def old_defers() -> bool:
        return f"function {added!r} is served by another replica" in old.log()

    await wait_until(old_defers, timeout=45)
    api = Api(http, new.url)
    task_ids = await asyncio.gather(*(api.submit(added, {"n": n}) for n in range(40)))
    records = [await api.wait_status(t, "Succeeded", "Invalid") for t in task_ids]
    assert [r["status"] for r in records].count("Succeeded") == 40

    # Once no live replica has the function, its queued tasks end Invalid.
    delayed = await api.submit(added, {"late": True}, X_Delay="1")
    new.stop()
    record = await Api(http, old.url).wait_status(delayed, "Invalid", timeout=45)
    assert record["error"]["type"] == "Invalid"
