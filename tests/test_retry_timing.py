"""A due retry runs when it is due, also after an idle spell (issue 11 item 6)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from gateway.tasks.invocation import parse_iso
from tests.conftest import Api, GatewayFactory
from tests.services import NatsServer


def gap(record: dict[str, Any], first: str, then: str) -> float:
    """Seconds from the first `first` to the next `then` in the record's timeline."""
    timeline = record["timeline"]
    i = next(n for n, step in enumerate(timeline) if step["status"] == first)
    j = next(n for n in range(i + 1, len(timeline)) if timeline[n]["status"] == then)
    return parse_iso(timeline[j]["at"]) - parse_iso(timeline[i]["at"])


async def test_first_retry_after_idle_is_on_time(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    name = unique("flaky")
    config = {
        "nats": {"url": nats_server.url},
        "functions": {
            name: {"handler": "python:examples.functions:flaky", "async": {"max_retries": 2, "retry_delay": "500ms"}}
        },
    }
    gw = gateway_factory(config)
    api = Api(http, gw.url)
    gaps = []
    for idle in (5.2, 6.9, 8.6):
        # The condition under test, not a synchronisation: the delay scheduler idle for
        # longer than one of its pull requests lasts (5 s), ending at different points of
        # its cycle (a late retry came from a message held until its request ended).
        await asyncio.sleep(idle)
        task_id = await api.submit(name, {"succeed_on": 2})
        record = await api.wait_status(task_id, "Succeeded", "Failed")
        assert record["status"] == "Succeeded", record
        gaps.append(gap(record, "Retrying", "Dequeued"))
    # Due 0.5 s after Retrying; a generous bound (a loaded 2-core machine) that the held
    # fetch (2-5 s late) could not meet.
    assert max(gaps) < 1.5, gaps
