"""nats trigger: `filter:` answers a dropped request as such, `batch:` replies after the batch is enqueued."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from tests.conftest import Api, GatewayFactory
from tests.services import NatsServer, configured_nats
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


@pytest.fixture
def small_payload_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server taking messages of 64 KiB at most (1 MiB is the default)."""
    with configured_nats(tmp_path / "small-payload", "max_payload: 65536\n") as server:
        yield server


async def test_a_batch_closes_before_the_servers_max_payload(
    small_payload_nats: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """150 events of ~1 KiB, batched by 150: one task would be over the server's 64 KiB (and
    refused, so dropped); cut by the server's limit they are all in tasks."""
    fn = unique("natsmax")
    subject = f"events.{unique('m')}"
    trigger = {
        "name": fn,
        "type": "nats",
        "url": small_payload_nats.url,
        "subject": f"{subject}.>",
        "batch": {"size": 150, "window": "2s"},
    }
    gw = gateway_factory(trigger_config(small_payload_nats.url, tmp_path / "data", fn, [trigger]))
    api = Api(http, gw.url)
    assert (await trigger_health(api, fn))["ready"] is True

    nc = await nats.connect(small_payload_nats.url)
    try:
        bodies = [json.dumps({"n": n, "pad": "x" * 1000}).encode() for n in range(150)]
        replies = await asyncio.gather(*(nc.request(f"{subject}.x", body, timeout=20) for body in bodies))
    finally:
        await nc.close()
    answers = [json.loads(r.data) for r in replies]
    assert all(a.get("status") == "Enqueued" for a in answers), answers[0]
    per_task = Counter(a["task_id"] for a in answers)
    assert len(per_task) >= 3  # 150 KiB of events in tasks under 60 KiB each
    numbers: list[int] = []
    for task_id, members in per_task.items():
        batch: list[dict[str, Any]] = event_of(await api.wait_status(task_id, "Succeeded"))
        assert len(batch) == members
        numbers += [event["data"]["n"] for event in batch]
    assert sorted(numbers) == list(range(150))
