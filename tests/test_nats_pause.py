"""NATS stops answering (a paused or partitioned server) under a gateway: a submit whose
ack was lost says it may have landed, a retry with the same id tells which, and reads
answer 503 rather than 500 until NATS is back (issue 11 items 11 and 17)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Api, GatewayFactory
from tests.services import NatsServer


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.thaw()
    server.stop()


async def test_submit_and_read_while_nats_is_paused(
    own_nats: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    gw = gateway_factory(
        {"nats": {"url": own_nats.url}, "functions": {"echo": {"handler": "python:examples.functions:echo"}}}
    )
    api = Api(http, gw.url)
    accepted = await api.submit("echo", {"n": 1})
    await api.wait_status(accepted, "Succeeded")
    own_nats.freeze()
    try:
        # The connection stays up, so the submit is sent and its ack never comes back.
        task_id = unique("paused")
        status, body, _ = await api.invoke("echo", {"n": 2}, headers={"X-Task-Id": task_id})
        assert status == 503, body
        message = body["error"]["message"]
        assert "may or may not have been enqueued" in message and "same X-Task-Id" in message
        status, body = await api.get(f"/v1/tasks/{accepted}")
        assert status == 503, body
        assert body["error"]["code"] == "ServiceUnavailable"
    finally:
        own_nats.thaw()
    # The accepted task was only unreadable, not lost.
    assert (await api.task(accepted))["status"] == "Succeeded"
    # The 503'd submit had in fact reached JetStream: the retry with its id says so.
    status, body, _ = await api.invoke("echo", {"n": 2}, headers={"X-Task-Id": task_id})
    assert status in (202, 409), body
    if status == 409:
        assert body["task"]["task_id"] == task_id and body["task"]["function"] == "echo"
    record = await api.wait_status(task_id, "Succeeded")
    assert record["attempts"] == 1
