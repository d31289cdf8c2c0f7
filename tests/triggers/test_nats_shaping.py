"""nats trigger: `filter:` answers a dropped request as such, `batch:` replies after the batch is enqueued."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats

from tests.conftest import Api, GatewayFactory
from tests.services import NatsServer
from tests.triggers.conftest import event_of, trigger_config, trigger_health


async def test_batched_requests_share_a_task_and_dropped_ones_say_so(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("natsbatch")
    subject = f"events.{unique('b')}"
    trigger = {
        "name": fn,
        "type": "nats",
        "url": nats_server.url,
        "subject": f"{subject}.>",
        "batch": {"size": 3, "window": "300ms"},
        "filter": {"data": {"n": [{"anything-but": {"prefix": "skip"}}]}},
    }
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, [trigger]))
    api = Api(http, gw.url)
    assert (await trigger_health(api, fn))["ready"] is True

    nc = await nats.connect(nats_server.url)
    try:
        names = ["a", "skip-1", "b", "c", "d", "skip-2", "e", "f", "g"]
        replies = await asyncio.gather(
            *(nc.request(f"{subject}.x", json.dumps({"n": n}).encode(), timeout=20) for n in names)
        )
    finally:
        await nc.close()
    answers = {n: json.loads(r.data) for n, r in zip(names, replies, strict=True)}
    assert answers["skip-1"] == answers["skip-2"] == {"task_id": None, "status": "Dropped", "reason": "filter"}
    kept = {n: a for n, a in answers.items() if not n.startswith("skip")}
    assert all(a["status"] == "Enqueued" for a in kept.values())
    per_task = Counter(a["task_id"] for a in kept.values())
    assert sum(per_task.values()) == 7 and max(per_task.values()) <= 3 and len(per_task) >= 3

    seen: list[str] = []
    for task_id, members in per_task.items():
        record = await api.wait_status(task_id, "Succeeded")
        batch: list[dict[str, Any]] = event_of(record)
        assert isinstance(batch, list) and len(batch) == members
        seen += [event["data"]["n"] for event in batch]
    assert sorted(seen) == ["a", "b", "c", "d", "e", "f", "g"]
    health = await trigger_health(api, fn)
    assert (health["events_received"], health["matched"], health["dropped"]) == (9, 7, 2)
    assert health["invocations"] == len(per_task)
