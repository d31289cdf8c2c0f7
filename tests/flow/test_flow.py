"""Flow control with two replicas on one NATS: key limits, fairness, priority, rate, crashes.

Every limit is checked from the function's own start/end stamps (tests.functions.journaled),
not from what the gateway says about itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Api, wait_all, wait_until
from tests.flow.conftest import Replicas, peak, runs, spans_by_key


async def test_key_concurrency_across_replicas_and_other_keys_keep_running(
    replicas: Replicas, http: aiohttp.ClientSession, journal: Path, unique: Any
) -> None:
    name = unique("keys")
    gateways = replicas(name, concurrency=6, key_concurrency=2)
    apis = [Api(http, gw.url) for gw in gateways]
    keys = {f"tenant-{k}/x@y.z": k for k in range(3)}
    key_of: dict[str, str] = {}
    for i in range(36):
        key = list(keys)[i % 3]
        task_id = await apis[i % 2].submit(name, {"seconds": 0.2}, X_Concurrency_Key=key)
        key_of[task_id] = key
    await wait_all(apis[0], list(key_of), "Succeeded", timeout=90)
    per_key, everything = spans_by_key(journal, key_of)
    assert {key: peak(spans) for key, spans in per_key.items()} == dict.fromkeys(keys, 2)
    assert peak(everything) > 2  # the keys ran beside each other, up to the function's concurrency
    assert peak(everything) <= 6
    status, summary = await apis[1].get(f"/v1/functions/{name}")
    assert status == 200 and summary["flow"]["key_concurrency"] == 2


async def test_waiting_key_holds_no_function_slot_and_light_key_progresses(
    replicas: Replicas, http: aiohttp.ClientSession, journal: Path, unique: Any
) -> None:
    name = unique("fair")
    gateways = replicas(name, concurrency=3, key_concurrency=1)
    apis = [Api(http, gw.url) for gw in gateways]
    heavy = 400  # well over what a leader keeps in memory per key: most of it is parked
    submitted = await asyncio.gather(
        *(apis[i % 2].submit(name, {"seconds": 0.05}, X_Concurrency_Key="heavy") for i in range(heavy))
    )
    heavy_ids = set(submitted)
    light_ids = [await apis[i % 2].submit(name, {"seconds": 0.05}, X_Concurrency_Key="light") for i in range(5)]
    await wait_all(apis[0], light_ids, "Succeeded", timeout=60)
    heavy_done = sum(1 for task_id, _, end, _ in runs(journal) if task_id in heavy_ids and end is not None)
    # The light key finished while most of the heavy key still waited (one at a time).
    assert 0 < heavy_done < heavy // 2, heavy_done

    async def waiting_by_key() -> bool:
        _, summary = await apis[1].get(f"/v1/functions/{name}")
        flow = summary["flow"]
        return bool(flow["waiting"]["key"] > 0 and flow["parked"] > 0)

    await wait_until(waiting_by_key, timeout=10)
    heavy_spans = [(s, e) for t, s, e, _ in runs(journal) if t in heavy_ids and e is not None]
    assert peak(heavy_spans) == 1
    async with http.get(f"{gateways[0].url}/metrics") as resp:
        text = await resp.text()
    assert f'fngate_tasks_waiting{{function="{name}",reason="key"}}' in text


async def test_higher_priority_starts_first_across_replicas(
    replicas: Replicas, http: aiohttp.ClientSession, journal: Path, unique: Any
) -> None:
    name = unique("prio")
    # No `priorities: true`: any flow-controlled function orders its whole backlog.
    gateways = replicas(name, concurrency=1, rate_limit="100000/s")
    apis = [Api(http, gw.url) for gw in gateways]
    blocker = await apis[0].submit(name, {"seconds": 3})
    await wait_until(lambda: _started(journal, blocker), timeout=20)
    priority_of: dict[str, str] = {}
    # A backlog of normal tasks deeper than the leader reads ahead of its one slot (a pull
    # request takes at most 256), then high and low ones behind it, through both replicas.
    normal = await asyncio.gather(*(apis[i % 2].submit(name, {"seconds": 0}) for i in range(400)))
    priority_of.update(dict.fromkeys(normal, "normal"))
    for i in range(12):
        priority = ("low", "normal", "high")[i % 3]
        task_id = await apis[i % 2].submit(name, {"seconds": 0}, X_Priority=priority)
        priority_of[task_id] = priority
    await wait_all(apis[1], list(priority_of), "Succeeded", timeout=90)
    order = [priority_of[t] for t, *_ in sorted(runs(journal), key=lambda r: r[1]) if t in priority_of]
    assert order == ["high"] * 4 + ["normal"] * 404 + ["low"] * 4


async def test_rate_limit_held_over_20s_and_nothing_dropped(
    replicas: Replicas, http: aiohttp.ClientSession, journal: Path, unique: Any
) -> None:
    name = unique("rate")
    rate = 50
    gateways = replicas(name, concurrency=32, rate_limit=f"{rate}/s")
    apis = [Api(http, gw.url) for gw in gateways]
    total = rate * 24
    task_ids: list[str] = []
    for start in range(0, total, 100):
        task_ids += await asyncio.gather(*(apis[i % 2].submit(name, {}) for i in range(start, start + 100)))
    records = await wait_all(apis[0], task_ids, "Succeeded", timeout=120)
    assert len(records) == total
    starts = sorted(start for _, start, _, _ in runs(journal))
    first = starts[0]
    within = sum(1 for s in starts if first + 2 <= s < first + 22)
    print(f"\nrate limit {rate}/s: {within / 20:.1f} starts/s over 20 s")
    assert 0.9 * rate * 20 <= within <= 1.1 * rate * 20


async def test_sigkilled_replica_frees_its_key_slot(
    replicas: Replicas, http: aiohttp.ClientSession, journal: Path, unique: Any
) -> None:
    name = unique("crash")
    ack_wait = 2.0
    gateways = replicas(name, concurrency=4, key_concurrency=1, ack_wait=f"{ack_wait:g}s")
    apis = [Api(http, gw.url) for gw in gateways]
    first = await apis[0].submit(name, {"seconds": 30}, X_Concurrency_Key="k")
    await wait_until(lambda: _started(journal, first), timeout=20)
    pid = next(p for t, _, _, p in runs(journal) if t == first)
    victim = next(i for i, gw in enumerate(gateways) if gw.proc is not None and gw.proc.pid == pid)
    survivor = apis[1 - victim]
    second = await survivor.submit(name, {"seconds": 0}, X_Concurrency_Key="k")

    async def held_by_key() -> bool:
        _, summary = await survivor.get(f"/v1/functions/{name}")
        return bool(summary["flow"]["waiting"]["key"] > 0)

    await wait_until(held_by_key, timeout=10)
    assert not _started_now(journal, second)  # held back by the key's one slot
    gateways[victim].kill()
    killed_at = time.time()

    async def slot_back() -> bool:
        # The key's slot comes back: the second task starts, or the first one again
        # (redelivered, at least once), on the surviving replica.
        return any(p != pid and s > killed_at for _, s, _, p in runs(journal))

    await wait_until(slot_back, timeout=4 * ack_wait + 10)
    spans = [(s, e if e is not None else (killed_at if p == pid else time.time())) for _, s, e, p in runs(journal)]
    assert peak(spans) == 1

    async def one_running() -> bool:
        _, summary = await survivor.get(f"/v1/functions/{name}")
        return bool(summary["flow"]["running"] == 1)

    await wait_until(one_running, timeout=10)


async def _started(journal: Path, task_id: str) -> bool:
    return _started_now(journal, task_id)


def _started_now(journal: Path, task_id: str) -> bool:
    return any(t == task_id for t, *_ in runs(journal))


async def test_rate_limited_excess_waits_and_counts_against_max_event_age(
    replicas: Replicas, http: aiohttp.ClientSession, journal: Path, unique: Any
) -> None:
    name = unique("age")
    gateways = replicas(name, concurrency=4, rate_limit="2/s", **{"async": {"max_event_age": "3s"}})
    apis = [Api(http, gw.url) for gw in gateways]
    task_ids = list(await asyncio.gather(*(apis[i % 2].submit(name, {}) for i in range(30))))
    ended: dict[str, str] = {}

    async def all_ended() -> bool:
        for task_id in task_ids:
            if task_id not in ended:
                record = await apis[0].task(task_id)
                if record["status"] in ("Succeeded", "Expired"):
                    ended[task_id] = record["status"]
        return len(ended) == len(task_ids)

    await wait_until(all_ended, timeout=60, interval=0.5)
    statuses = list(ended.values())
    # Nothing dropped: every task ended; those the rate held past max_event_age expired unrun.
    assert statuses.count("Expired") > 0 and statuses.count("Succeeded") > 0
    ran = {t for t, *_ in runs(journal)}
    assert {t for t, s in ended.items() if s == "Succeeded"} == ran


async def test_flow_headers_are_checked(replicas: Replicas, http: aiohttp.ClientSession, unique: Any) -> None:
    name = unique("hdr")
    (gateway,) = replicas(name, count=1, key_concurrency=1)
    api = Api(http, gateway.url)
    for headers, mode in (
        ({"X-Priority": "urgent"}, "async"),
        ({"X-Concurrency-Key": "has space"}, "async"),
        ({"X-Concurrency-Key": "k" * 129}, "async"),
        ({"X-Priority": "high"}, "sync"),
        ({"X-Concurrency-Key": "k"}, "sync"),
    ):
        status, body, _ = await api.invoke(name, {}, mode=mode, headers=headers)
        assert status == 400, (headers, mode, body)
        assert next(iter(headers)) in body["error"]["message"]
    status, body, _ = await api.invoke(name, {}, headers={"X-Priority": "HIGH", "X-Concurrency-Key": "a:b@c/d.e-f"})
    assert status == 202, body
    # A function that does not order its waiting tasks refuses a priority instead of ignoring it.
    plain = unique("plain")
    (other,) = replicas(plain, count=1)
    status, body, _ = await Api(http, other.url).invoke(plain, {}, headers={"X-Priority": "high"})
    assert status == 400 and "priorities: true" in body["error"]["message"], body
    status, body, _ = await Api(http, other.url).invoke(plain, {}, headers={"X-Priority": "normal"})
    assert status == 202, body
