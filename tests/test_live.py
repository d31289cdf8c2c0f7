"""Live status from any replica: a task run on replica A, watched on replica B (which does
not even configure its function), by long-poll (`?wait=`) and by the SSE event stream."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest

from gateway.config.model import STREAMS_PER_CLIENT
from tests.conftest import TERMINAL, Api, GatewayFactory, wait_until
from tests.services import GatewayProcess, NatsServer


@pytest.fixture
def replicas(nats_server: NatsServer, gateway_factory: GatewayFactory, unique: Any) -> tuple[str, Any, Any]:
    name = unique("live")
    # The watcher starts first: a replica that finds a consumer of a function it lacks drains
    # that function's queue into Invalid (issue 11 item 14).
    watcher = gateway_factory({"nats": {"url": nats_server.url}, "functions": {}}, env={"FNGATE_SSE_KEEPALIVE": "0.5"})
    runner = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {name: {"handler": "python:examples.functions:sleepy", "timeout": "60s"}},
        },
        env={"FNGATE_SSE_KEEPALIVE": "0.5"},
    )
    return name, runner, watcher


async def events(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    """Every `status` event of an SSE stream, until the server ends it."""
    records: list[dict[str, Any]] = []
    async with http.get(url, headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        kind = None
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "status":
                records.append(json.loads(line[6:]))
    return records


async def live_watchers(gateway: GatewayProcess, http: aiohttp.ClientSession) -> tuple[float, float]:
    async with http.get(f"{gateway.url}/metrics") as resp:
        text = await resp.text()

    def value(name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(match.group(1)) if match else -1.0

    return value("fngate_live_watchers"), value("fngate_live_subscriptions")


async def test_event_stream_on_another_replica(replicas: Any, http: aiohttp.ClientSession) -> None:
    name, runner, watcher = replicas
    task_id = await Api(http, runner.url).submit(name, {"seconds": 1})
    records = await events(http, f"{watcher.url}/v1/tasks/{task_id}/events")
    statuses = [r["status"] for r in records]
    # From the current status on, one event per change, in order, ending with the terminal one.
    assert statuses[-1] == "Succeeded" and "Running" in statuses, statuses
    assert all(s not in TERMINAL for s in statuses[:-1]), statuses
    lengths = [len(r["timeline"]) for r in records]
    assert lengths == sorted(set(lengths)), lengths
    assert records[-1]["result"] == {"slept": 1.0} and records[-1]["task_id"] == task_id
    # A finished task: its terminal record, and the stream ends.
    again = await events(http, f"{watcher.url}/v1/tasks/{task_id}/events")
    assert [r["status"] for r in again] == ["Succeeded"]
    async with http.get(f"{watcher.url}/v1/tasks/nope/events") as resp:
        assert resp.status == 404


async def test_clients_share_one_subscription_and_leave_nothing(replicas: Any, http: aiohttp.ClientSession) -> None:
    name, runner, watcher = replicas
    task_id = await Api(http, runner.url).submit(name, {"seconds": 0}, X_Delay="3600")
    url = f"{watcher.url}/v1/tasks/{task_id}/events"
    # As many streams as one client may open (one address, here: every session's).
    sessions = [aiohttp.ClientSession() for _ in range(STREAMS_PER_CLIENT)]
    try:
        streams = [await s.get(url) for s in sessions]
        for stream in streams:
            assert (await stream.content.readuntil(b"\n\n")).startswith(b"event: status")
        assert await live_watchers(watcher, http) == (STREAMS_PER_CLIENT, 1.0)
        # A slow client (it reads nothing) and the others: a stop reaches them all.
        status, _ = await Api(http, watcher.url).post(f"/v1/tasks/{task_id}/stop")
        assert status == 202
        for stream in streams[1:]:
            tail = (await stream.content.read()).decode()
            assert '"status":"Stopped"' in tail
    finally:
        for s in sessions:
            await s.close()
    # Clients that went away, or whose task ended, leave no watcher and no subscription.
    await wait_until(lambda: _idle(watcher, http), timeout=10)


async def _idle(gateway: GatewayProcess, http: aiohttp.ClientSession) -> bool:
    return await live_watchers(gateway, http) == (0.0, 0.0)


async def test_abandoned_stream_is_dropped(replicas: Any, http: aiohttp.ClientSession) -> None:
    name, runner, watcher = replicas
    task_id = await Api(http, runner.url).submit(name, {"seconds": 0}, X_Delay="3600")
    async with aiohttp.ClientSession() as session:
        stream = await session.get(f"{watcher.url}/v1/tasks/{task_id}/events")
        await stream.content.readuntil(b"\n\n")
        assert (await live_watchers(watcher, http))[0] == 1.0
        stream.close()
    await wait_until(lambda: _idle(watcher, http), timeout=10)
    await Api(http, runner.url).post(f"/v1/tasks/{task_id}/stop")


async def test_long_poll_on_another_replica(replicas: Any, http: aiohttp.ClientSession) -> None:
    name, runner, watcher = replicas
    api = Api(http, watcher.url)
    task_id = await Api(http, runner.url).submit(name, {"seconds": 1})
    status, record = await api.get(f"/v1/tasks/{task_id}?wait=30")
    assert status == 200 and record["status"] == "Succeeded", record
    # Not terminal when the wait runs out: the record as it then is.
    delayed = await Api(http, runner.url).submit(name, {"seconds": 0}, X_Delay="3600")
    status, record = await api.get(f"/v1/tasks/{delayed}?wait=0.3")
    assert status == 200 and record["status"] == "Enqueued"
    status, record = await api.get(f"/v1/tasks/{delayed}?wait=0")
    assert status == 200 and record["status"] == "Enqueued"
    # A stop made on the runner ends a long-poll on the watcher.
    poll = asyncio.create_task(api.get(f"/v1/tasks/{delayed}?wait=60"))
    await wait_until(lambda: _watching(watcher, http))
    await Api(http, runner.url).post(f"/v1/tasks/{delayed}/stop")
    status, record = await poll
    assert status == 200 and record["status"] == "Stopped"
    for bad in ("61", "-1", "soon", "nan"):
        status, body = await api.get(f"/v1/tasks/{delayed}?wait={bad}")
        assert status == 400 and "wait" in body["error"]["message"], bad
    status, body = await api.get("/v1/tasks/nope?wait=5")
    assert status == 404 and body["error"]["code"] == "TaskNotFound"


async def _watching(gateway: GatewayProcess, http: aiohttp.ClientSession) -> bool:
    return (await live_watchers(gateway, http))[0] >= 1


async def test_stream_survives_a_nats_restart(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Any, unique: Any
) -> None:
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    try:
        name = unique("livern")
        gw = gateway_factory(
            {"nats": {"url": nats.url}, "functions": {name: {"handler": "python:examples.functions:sleepy"}}},
            env={"FNGATE_SSE_KEEPALIVE": "0.5"},
        )
        api = Api(http, gw.url)
        task_id = await api.submit(name, {"seconds": 0}, X_Delay="3600")
        async with http.get(f"{gw.url}/v1/tasks/{task_id}/events") as stream:
            assert b'"status":"Enqueued"' in await stream.content.readuntil(b"\n\n")
            nats.stop()
            nats.start()
            await wait_until(lambda: _ready(api))
            status, _ = await api.post(f"/v1/tasks/{task_id}/stop")
            assert status == 202
            tail = (await stream.content.read()).decode()
        assert '"status":"Stopped"' in tail
    finally:
        nats.stop()


async def _ready(api: Api) -> bool:
    status, body = await api.get("/readyz")
    return status == 200 and body["ready"] is True
