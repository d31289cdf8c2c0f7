"""A trigger's `concurrency_key:` and `priority:` with two replicas: the nats trigger (one
subscriber per replica, in a queue group) sets both, and the limits hold as for the API's
headers, from the function's own start/end stamps."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import nats

from tests.conftest import Api, wait_all, wait_until
from tests.flow.conftest import Replicas, peak, runs, spans_by_key
from tests.services import NatsServer


async def _triggers_running(apis: list[Api]) -> None:
    async def running() -> bool:
        for api in apis:
            _, body = await api.get("/v1/triggers")
            if not all(t["state"] == "running" for t in body["triggers"]):
                return False
        return True

    await wait_until(running, timeout=20)


async def test_trigger_concurrency_key_limits_each_key(
    replicas: Replicas, nats_server: NatsServer, http: aiohttp.ClientSession, journal: Path, unique: Any
) -> None:
    name = unique("tkeys")
    trigger = {
        "name": name,
        "type": "nats",
        "url": nats_server.url,
        "subject": f"{name}.in",
        "queue": "q",
        "concurrency_key": "data.customer.name",
    }
    gateways = replicas(name, concurrency=6, key_concurrency=2, triggers=[trigger])
    apis = [Api(http, gw.url) for gw in gateways]
    await _triggers_running(apis)
    # A name with a space is no key as it is: it becomes a digest, still one key.
    customers = ["acme", "Globex Corp", "initech"]
    key_of: dict[str, str] = {}
    nc = await nats.connect(nats_server.url)
    try:
        # Most of one customer's events first: without the key limit they would take all
        # six slots; with it that customer runs two at once and the others take the rest.
        for i in range(24):
            customer = customers[0] if i < 12 else customers[i % 3]
            event = {"customer": {"name": customer}, "seconds": 0.2}
            reply = await nc.request(f"{name}.in", json.dumps(event).encode(), timeout=10)
            key_of[json.loads(reply.data)["task_id"]] = customer
    finally:
        await nc.close()
    await wait_all(apis[0], list(key_of), "Succeeded", timeout=90)
    per_key, everything = spans_by_key(journal, key_of)
    assert {key: peak(spans) for key, spans in per_key.items()} == dict.fromkeys(customers, 2)
    assert 2 < peak(everything) <= 6  # the keys ran beside each other, within the function's concurrency


async def test_trigger_priority_starts_before_a_normal_backlog(
    replicas: Replicas, nats_server: NatsServer, http: aiohttp.ClientSession, journal: Path, unique: Any
) -> None:
    name = unique("tprio")
    common = {"type": "nats", "url": nats_server.url, "queue": "q"}
    triggers = [
        {"name": f"{name}-bulk", "subject": f"{name}.bulk", "priority": "low", **common},
        {"name": f"{name}-usual", "subject": f"{name}.usual", **common},
        {"name": f"{name}-urgent", "subject": f"{name}.urgent", "priority": "high", **common},
    ]
    gateways = replicas(name, concurrency=1, rate_limit="100000/s", triggers=triggers)
    apis = [Api(http, gw.url) for gw in gateways]
    await _triggers_running(apis)
    blocker = await apis[0].submit(name, {"seconds": 3})
    await wait_until(lambda: _started(journal, blocker), timeout=20)
    kind_of: dict[str, str] = {}
    nc = await nats.connect(nats_server.url)
    try:

        async def send(kind: str) -> None:
            reply = await nc.request(f"{name}.{kind}", b"{}", timeout=10)
            kind_of[json.loads(reply.data)["task_id"]] = kind

        # Low first, then a backlog deeper than the leader reads ahead, then high ones.
        for kind, count in (("bulk", 5), ("usual", 300), ("urgent", 5)):
            await asyncio.gather(*(send(kind) for _ in range(count)))
    finally:
        await nc.close()
    await wait_all(apis[1], list(kind_of), "Succeeded", timeout=90)
    order = [kind_of[t] for t, *_ in sorted(runs(journal), key=lambda r: r[1]) if t in kind_of]
    assert order == ["urgent"] * 5 + ["usual"] * 300 + ["bulk"] * 5


async def _started(journal: Path, task_id: str) -> bool:
    return any(t == task_id for t, *_ in runs(journal))
