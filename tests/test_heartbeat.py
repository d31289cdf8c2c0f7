"""A task that runs for several ack_waits keeps its claim: the worker's heartbeats renew it,
so JetStream never hands the message to another worker and the task runs once; and a
function at its concurrency limit starts each task the moment a slot frees up."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Api, GatewayFactory, wait_all
from tests.functions import read_journal
from tests.services import NatsServer
from tests.test_faults import journaled_function


async def test_long_tasks_outlive_ack_wait_and_run_once(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path, unique: Any
) -> None:
    journal = tmp_path / "journal"
    name = unique("hb")
    ack_wait = 1.0
    config = {
        "nats": {"url": nats_server.url, "ack_wait": f"{ack_wait:g}s"},
        "functions": {name: journaled_function(4)},
    }
    # Two replicas: without renewal, a message whose ack_wait ran out would be fetched by
    # the other one (or the same one) and run a second time.
    gateways = [gateway_factory(config, env={"FNGATE_TEST_JOURNAL": str(journal)}) for _ in range(2)]
    api = Api(http, gateways[0].url)
    started = time.monotonic()
    task_ids = [await api.submit(name, {"seconds": 4 * ack_wait}) for _ in range(3)]
    # Short ones alongside, through the one slot left: each is started as soon as it is
    # delivered, not held back until a batch fills up (which would take the long ones' end).
    short_ids = [await api.submit(name, {"seconds": 0}) for _ in range(5)]
    await wait_all(api, short_ids, "Succeeded", timeout=3 * ack_wait)
    task_ids += short_ids

    records = await wait_all(api, task_ids, "Succeeded", timeout=60)
    assert time.monotonic() - started >= 4 * ack_wait
    starts = Counter(row[1] for row in read_journal(str(journal)) if row[0] == "start")
    assert {task_id: starts[task_id] for task_id in task_ids} == dict.fromkeys(task_ids, 1)
    for task_id in task_ids:
        assert records[task_id]["attempts"] == 1, records[task_id]
