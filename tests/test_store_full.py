"""A JetStream store that fills up mid-run: a task's final record is retried until it is
stored, and the condition shows in /readyz, /metrics and the log (issue 11 item 8)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import APIError

from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import NatsServer, configured_nats


@pytest.fixture
def small_nats(tmp_path: Path) -> Iterator[NatsServer]:
    with configured_nats(tmp_path / "small-store", "jetstream {\n  max_file_store: 8MB\n}\n") as server:
        yield server


async def test_outcome_written_once_the_store_has_room(
    small_nats: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        {
            "nats": {"url": small_nats.url},
            "functions": {"sleepy": {"handler": "python:examples.functions:sleepy", "timeout": "30s"}},
        }
    )
    api = Api(http, gw.url)
    task_id = await api.submit("sleepy", {"seconds": 2})
    await api.wait_status(task_id, "Running")
    nc = await nats.connect(small_nats.url)
    js = nc.jetstream()
    try:
        await js.add_stream(StreamConfig(name="FILLER", subjects=["filler.>"], storage=StorageType.FILE))
        with pytest.raises(APIError):  # fill the server's store until JetStream refuses
            for _ in range(10_000):
                await js.publish("filler.x", b"x" * 64_000)

        async def refused() -> bool:
            return "JetStream refused to store its outcome" in gw.log()

        await wait_until(refused, timeout=30)
        status, body = await api.get("/readyz")
        assert status == 503 and body["checks"]["store_writable"] is False, body
        async with http.get(f"{gw.url}/metrics") as resp:
            text = await resp.text()
        assert "fngate_store_writable 0.0" in text
        refusals = [line for line in text.splitlines() if line.startswith("fngate_state_writes_refused_total")]
        assert refusals and float(refusals[0].split()[1]) >= 1
        assert (await api.task(task_id))["status"] == "Running"
        status, body, _ = await api.invoke("sleepy", {"seconds": 0})
        assert status == 503 and "nothing was enqueued" in body["error"]["message"], body
        await js.delete_stream("FILLER")
    finally:
        await nc.close()
    record: dict[str, Any] = await api.wait_status(task_id, "Succeeded", timeout=30)
    assert record["result"] == {"slept": 2}

    async def ready() -> bool:
        status, body = await api.get("/readyz")
        return status == 200 and body["checks"]["store_writable"] is True

    await wait_until(ready)
