"""Bulk operations (redrive) against real NATS and each index backend: dry-run counts, a
rerun of every Failed task of a function since T (each exactly once), a stop by status,
scopes, and an operation that finishes after the replica running it is SIGKILLed."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import aiohttp

from gateway.tasks.invocation import iso
from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import NatsServer

FAIL = {"handler": "python:examples.functions:fail", "async": {"max_retries": 0}}
ECHO = {"handler": "python:examples.functions:echo"}


async def post_json(api: Api, path: str, body: Any) -> tuple[int, Any]:
    headers = {**api.headers, "Content-Type": "application/json"}
    async with api.session.post(f"{api.url}{path}", data=json.dumps(body), headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def listed(api: Api, **query: str) -> list[dict[str, Any]]:
    """Every task the index lists for the query (all pages)."""
    tasks: list[dict[str, Any]] = []
    cursor = ""
    while True:
        params = {**query, "limit": "1000", **({"cursor": cursor} if cursor else {})}
        async with api.session.get(f"{api.url}/v1/tasks", params=params, headers=api.headers) as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.json()
        tasks.extend(page["tasks"])
        if not page["next_cursor"]:
            return tasks
        cursor = page["next_cursor"]


async def wait_listed(api: Api, n: int, timeout: float = 60, **query: str) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        tasks = await listed(api, **query)
        return tasks if len(tasks) >= n else None

    result: list[dict[str, Any]] = await wait_until(enough, timeout, interval=0.2)
    return result


async def finished(api: Api, op_id: str, timeout: float = 60) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status, body = await api.get(f"/v1/operations/{op_id}")
        assert status == 200, body
        return body if body["status"] != "Running" else None

    result: dict[str, Any] = await wait_until(check, timeout, interval=0.2)
    return result


async def test_dry_run_rerun_since_and_stop_by_status(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any, index_url: str
) -> None:
    fail, echo = unique("bulkfail"), unique("bulkecho")
    gw = gateway_factory(
        {"nats": {"url": nats_server.url}, "index": {"url": index_url}, "functions": {fail: FAIL, echo: ECHO}}
    )
    api = Api(http, gw.url)
    before = await asyncio.gather(*(api.submit(fail, {"n": n}) for n in range(5)))
    await wait_listed(api, 5, function=fail, status="Failed")
    since = iso(time.time())
    await asyncio.sleep(0.01)  # a millisecond apart from the tasks before
    after = await asyncio.gather(*(api.submit(fail, {"n": n}) for n in range(20)))
    await wait_listed(api, 25, function=fail, status="Failed")

    flt = {"function": fail, "status": "Failed", "since": since}
    assert await post_json(api, "/v1/tasks/rerun", {"filter": flt, "dry_run": True}) == (200, {"matched": 20})
    assert await post_json(
        api, "/v1/tasks/rerun", {"filter": {**flt, "status": ["Failed"]}, "dry_run": True, "limit": 7}
    ) == (200, {"matched": 7})
    status, accepted = await post_json(api, "/v1/tasks/rerun", {"filter": flt})
    assert status == 202 and accepted["matched"] == 20 and accepted["operation_id"].startswith("op-")
    op = await finished(api, accepted["operation_id"])
    assert op["status"] == "Succeeded" and (op["kind"], op["matched"], op["done"], op["failed"]) == ("rerun", 20, 20, 0)
    assert op["filter"] == flt and op["finished_at"] is not None

    # Each task since T rerun exactly once, none from before it.
    tasks = await wait_listed(api, 45, function=fail)
    reruns = Counter(t["rerun_of"] for t in tasks if t.get("rerun_of"))
    assert reruns == Counter(after) and not set(before) & set(reruns)

    # Stop by status: the tasks waiting on a delay are Enqueued.
    delayed = await asyncio.gather(*(api.submit(echo, {"n": n}, X_Delay="600") for n in range(12)))
    await wait_listed(api, 12, function=echo, status="Enqueued")
    stop_filter = {"function": echo, "status": "Enqueued"}
    assert await post_json(api, "/v1/tasks/stop", {"filter": stop_filter, "dry_run": True}) == (200, {"matched": 12})
    status, accepted_stop = await post_json(api, "/v1/tasks/stop", {"filter": stop_filter})
    assert status == 202 and accepted_stop["matched"] == 12
    op = await finished(api, accepted_stop["operation_id"])
    assert (op["status"], op["kind"], op["done"], op["failed"]) == ("Succeeded", "stop", 12, 0)
    assert {(await api.task(t))["status"] for t in delayed} == {"Stopped"}

    status, page = await api.get("/v1/operations")
    assert status == 200
    ids = [o["operation_id"] for o in page["operations"]]
    assert ids.index(accepted_stop["operation_id"]) < ids.index(accepted["operation_id"])  # newest first


async def test_bulk_requests_are_checked_and_scoped(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    fail = unique("bulkscope")
    tokens: list[dict[str, Any]] = [
        {"name": "ops", "token": "admin-token-123", "scopes": ["admin"]},
        {"name": "ci", "token": "invoke-token-123", "scopes": ["invoke"]},
        {"name": "dash", "token": "read-token-123", "scopes": ["read"]},
    ]
    gw = gateway_factory({"nats": {"url": nats_server.url}, "api": {"tokens": tokens}, "functions": {fail: FAIL}})
    admin, invoker, reader = (Api(http, gw.url, t["token"]) for t in tokens)
    task = await admin.submit(fail, {})
    await admin.wait_status(task, "Failed")
    flt = {"filter": {"function": fail, "status": "Failed"}, "dry_run": True}
    bad_bodies: list[Any] = [
        {"filter": {}},
        {"filter": {"source": "api"}},
        {"filter": {"function": fail}, "limit": 0},
        {"filter": {"function": fail}, "limit": 1_000_001},
        {"filter": {"status": "Nope"}},
        {"filter": {"function": fail, "colour": "red"}},
        [],
        {"filter": {"function": fail}, "dry_run": "yes"},
    ]
    for bad in bad_bodies:
        status, body = await post_json(admin, "/v1/tasks/rerun", bad)
        assert status == 400, (bad, body)
    assert (await post_json(invoker, "/v1/tasks/rerun", flt))[0] == 200
    assert (await post_json(invoker, "/v1/tasks/stop", flt))[0] == 403
    assert (await post_json(reader, "/v1/tasks/rerun", flt))[0] == 403
    assert (await post_json(admin, "/v1/tasks/stop", flt))[0] == 200
    assert (await reader.get("/v1/operations"))[0] == 200
    assert (await reader.get("/v1/operations/op-unknown"))[0] == 404


async def test_an_operation_finishes_once_per_task_after_its_replica_is_killed(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    fail = unique("bulkkill")
    config = {"nats": {"url": nats_server.url}, "functions": {fail: FAIL}}
    first, second = gateway_factory(json.loads(json.dumps(config))), gateway_factory(json.loads(json.dumps(config)))
    api, other = Api(http, first.url), Api(http, second.url)
    n = 3000
    for start in range(0, n, 500):
        await asyncio.gather(*(api.submit(fail, {"n": i}) for i in range(start, start + 500)))
    originals = await wait_listed(api, n, timeout=120, function=fail, status="Failed")
    status, accepted = await post_json(api, "/v1/tasks/rerun", {"filter": {"function": fail, "status": "Failed"}})
    assert status == 202 and accepted["matched"] == n
    first.kill()  # SIGKILL, with chunks of the operation in its hands
    op = await finished(other, accepted["operation_id"], timeout=120)
    assert (op["status"], op["done"], op["failed"]) == ("Succeeded", n, 0)
    tasks = await wait_listed(other, 2 * n, timeout=120, function=fail)
    reruns = Counter(t["rerun_of"] for t in tasks if t.get("rerun_of"))
    assert reruns == Counter(t["task_id"] for t in originals)  # each rerun once, no more
