"""Task ids are unique across the deployment (issue 11 item 1), and async-only headers are
refused on a sync invocation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import Api, module_gateway
from tests.services import InProcessGateway, NatsServer

FUNCTIONS: dict[str, Any] = {
    "echo": {"handler": "python:examples.functions:echo"},
    "other": {"handler": "python:examples.functions:echo"},
    "sleepy": {"handler": "python:examples.functions:sleepy", "timeout": "10s"},
    "flaky": {"handler": "python:examples.functions:flaky", "async": {"max_retries": 3, "retry_delay": "50ms"}},
}


@pytest.fixture(scope="module")
async def gateway(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessGateway]:
    config = {"nats": {"url": nats_server.url}, "functions": FUNCTIONS}
    async with module_gateway(tmp_path_factory.mktemp("ids-gw"), config) as gw:
        yield gw


@pytest.fixture
async def api(gateway: InProcessGateway, http: aiohttp.ClientSession) -> Api:
    return Api(http, gateway.url)


async def test_id_of_a_finished_task_on_another_function_is_409(api: Api, unique: Callable[[str], str]) -> None:
    task_id = unique("idf")
    await api.submit("echo", {"n": 1}, X_Task_Id=task_id)
    first = await api.wait_status(task_id, "Succeeded")
    status, body, _ = await api.invoke("other", {"n": 2}, headers={"X-Task-Id": task_id})
    assert status == 409, body
    assert body["error"]["code"] == "DuplicateTask"
    assert body["task"] == {"task_id": task_id, "function": "echo", "status": "Succeeded"}
    assert await api.task(task_id) == first


async def test_id_of_a_running_task_on_another_function_is_409(api: Api, unique: Callable[[str], str]) -> None:
    task_id = unique("idr")
    await api.submit("sleepy", {"seconds": 1}, X_Task_Id=task_id)
    await api.wait_status(task_id, "Running")
    status, body, _ = await api.invoke("echo", {"n": 2}, headers={"X-Task-Id": task_id})
    assert status == 409, body
    assert body["task"] == {"task_id": task_id, "function": "sleepy", "status": "Running"}
    record = await api.wait_status(task_id, "Succeeded")
    assert record["function"] == "sleepy" and record["result"] == {"slept": 1}


async def test_id_of_a_delayed_task_on_another_function_is_409(api: Api, unique: Callable[[str], str]) -> None:
    task_id = unique("idd")
    await api.submit("echo", {"first": True}, X_Task_Id=task_id, X_Delay="1")
    status, body, _ = await api.invoke("other", {"second": True}, headers={"X-Task-Id": task_id})
    assert status == 409, body
    assert body["task"] == {"task_id": task_id, "function": "echo", "status": "Enqueued"}
    record = await api.wait_status(task_id, "Succeeded")
    assert record["function"] == "echo" and record["result"]["echo"] == {"first": True}


async def test_retries_do_not_trip_the_dedup(api: Api, unique: Callable[[str], str]) -> None:
    task_id = unique("idretry")
    await api.submit("flaky", {"succeed_on": 3}, X_Task_Id=task_id)
    record = await api.wait_status(task_id, "Succeeded", "Failed")
    assert record["status"] == "Succeeded" and record["attempts"] == 3


@pytest.mark.parametrize(
    "header", [("X-Task-Id", "t1"), ("X-Delay", "5"), ("X-Priority", "high"), ("X-Concurrency-Key", "k")]
)
async def test_async_only_header_on_sync_is_400(api: Api, header: tuple[str, str]) -> None:
    status, body, _ = await api.invoke("echo", {}, mode="sync", headers=dict([header]))
    assert status == 400, body
    assert header[0] in body["error"]["message"]
