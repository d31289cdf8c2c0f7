"""Faults injected for real: a gateway SIGKILLed mid-flight, nats-server restarted, two replicas."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Api, GatewayFactory, wait_all, wait_until
from tests.functions import max_overlap, read_journal
from tests.services import NatsServer


def journaled_function(concurrency: int, **extra: Any) -> dict[str, Any]:
    return {"handler": "python:tests.functions:journaled", "concurrency": concurrency, "timeout": "30s", **extra}


async def test_gateway_sigkill_loses_nothing(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path, unique: Any
) -> None:
    journal = tmp_path / "journal"
    name = unique("crash")
    concurrency = 16
    config = {"nats": {"url": nats_server.url, "ack_wait": "2s"}, "functions": {name: journaled_function(concurrency)}}
    gw = gateway_factory(config, env={"FNGATE_TEST_JOURNAL": str(journal)})
    api = Api(http, gw.url)
    total = 300
    task_ids = list(await asyncio.gather(*(api.submit(name, {"seconds": 0.05}) for _ in range(total))))
    assert len(set(task_ids)) == total
    await wait_until(lambda: _ended_at_least(journal, total // 4), timeout=30)
    gw.kill()
    killed_at_ends = len([r for r in read_journal(str(journal)) if r[0] == "end"])
    assert killed_at_ends < total, "the kill came too late to test anything"
    gw.start()
    records = await wait_all(api, task_ids, "Succeeded", timeout=90)
    assert set(records) == set(task_ids)
    starts = Counter(r[1] for r in read_journal(str(journal)) if r[0] == "start")
    assert set(starts) == set(task_ids)
    duplicates = sum(n - 1 for n in starts.values())
    print(f"\ncrash test: {total} tasks, killed after {killed_at_ends} ends, duplicate executions: {duplicates}")
    # At-least-once: only what was in flight at the kill (at most `concurrency`) may run again.
    assert duplicates <= concurrency


async def _ended_at_least(journal: Path, count: int) -> bool:
    return len([r for r in read_journal(str(journal)) if r[0] == "end"]) >= count


async def test_nats_restart_submits_get_503_and_no_202_is_lost(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path, unique: Any
) -> None:
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    try:
        name = unique("outage")
        gw = gateway_factory(
            {"nats": {"url": nats.url}, "functions": {name: {"handler": "python:examples.functions:echo"}}}
        )
        api = Api(http, gw.url)
        accepted: list[str] = []
        refused = 0
        stop = asyncio.Event()

        async def load() -> None:
            nonlocal refused
            while not stop.is_set():
                status, body, _ = await api.invoke(name, {"t": time.time()})
                if status == 202:
                    accepted.append(body["task_id"])
                else:
                    assert status == 503, body
                    assert body["error"]["code"] == "ServiceUnavailable"
                    refused += 1
                await asyncio.sleep(0.01)

        loader = asyncio.create_task(load())
        await wait_until(lambda: _at_least(accepted, 20))
        nats.kill()
        await wait_until(lambda: _ready_is(api, 503))
        # A submit already waiting for its ack when the server died times out first (5 s);
        # every one after it is refused at once.
        await wait_until(lambda: _positive(lambda: refused), timeout=15)
        before_restart = refused
        nats.start()
        await wait_until(lambda: _ready_is(api, 200), timeout=30)
        count_after_recovery = len(accepted)
        await wait_until(lambda: _at_least(accepted, count_after_recovery + 20), timeout=30)
        stop.set()
        await loader
        assert before_restart > 0, "no submit was refused during the outage"
        records = await wait_all(api, accepted, "Succeeded", timeout=60)
        assert len(records) == len(accepted)

        async def listed_and_counted() -> bool:
            # The replica's task view follows the streams again after the outage.
            _, listing = await api.get(f"/v1/tasks?function={name}&limit=1000")
            _, summary = await api.get(f"/v1/functions/{name}")
            ids = {t["task_id"] for t in listing["tasks"]}
            return set(accepted) <= ids and summary["counts"]["totals"]["completed"] == len(accepted)

        await wait_until(listed_and_counted, timeout=30)
        print(f"\nnats restart: {len(accepted)} accepted, {refused} refused with 503, none lost")
    finally:
        nats.stop()


async def _positive(value: Any) -> bool:
    return bool(value() > 0)


async def _at_least(items: list[str], count: int) -> bool:
    return len(items) >= count


async def _ready_is(api: Api, status: int) -> bool:
    code, _ = await api.get("/readyz")
    return code == status


@pytest.mark.parametrize("concurrency", [3])
async def test_concurrency_limit_holds_across_two_replicas(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    unique: Any,
    concurrency: int,
) -> None:
    journal = tmp_path / "journal"
    name = unique("limit")
    config = {"nats": {"url": nats_server.url}, "functions": {name: journaled_function(concurrency)}}
    env = {"FNGATE_TEST_JOURNAL": str(journal)}
    first = gateway_factory(config, env=env)
    second = gateway_factory(config, env=env)
    apis = [Api(http, first.url), Api(http, second.url)]
    task_ids = list(await asyncio.gather(*(apis[i % 2].submit(name, {"seconds": 0.2}) for i in range(30))))
    await wait_all(apis[0], task_ids, "Succeeded", timeout=60)
    rows = read_journal(str(journal))
    peak = max_overlap(rows)
    pids = {r[4] for r in rows}
    print(f"\ntwo replicas: peak concurrent executions {peak} (limit {concurrency}), pids {len(pids)}")
    assert peak <= concurrency
    assert peak == concurrency, "the queue was not drained at full concurrency"
    assert len(pids) == 2, "both replicas should have run tasks"
