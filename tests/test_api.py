"""The HTTP API of the CONTRACT against one gateway process on a real nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Api, module_gateway, wait_until
from tests.services import Endpoint, InProcessGateway, NatsServer, free_port

FUNCTIONS: dict[str, Any] = {
    "echo": {"handler": "python:examples.functions:echo"},
    "shout": {"handler": "python:examples.functions:shout"},
    "fail": {"handler": "python:examples.functions:fail", "async": {"max_retries": 0}},
    "sleepy": {"handler": "python:examples.functions:sleepy", "timeout": "300ms", "concurrency": 1},
    # One slot and time to spare: a run that holds its slot for as long as the test needs.
    "single": {"handler": "python:examples.functions:sleepy", "timeout": "10s", "concurrency": 1},
    "wc": {"command": ["wc", "-c"]},
    "false": {"command": ["false"]},
}


@pytest.fixture(scope="module")
def endpoint_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def gateway(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory, endpoint_port: int
) -> AsyncIterator[InProcessGateway]:
    functions = dict(FUNCTIONS)
    functions["remote"] = {"url": f"http://127.0.0.1:{endpoint_port}/fn", "timeout": "2s"}
    functions["unreachable"] = {"url": f"http://127.0.0.1:{free_port()}/fn", "async": {"max_event_age": "2s"}}
    config = {"nats": {"url": nats_server.url}, "api": {"max_request_body": "1KiB"}, "functions": functions}
    async with module_gateway(tmp_path_factory.mktemp("api-gw"), config) as gw:
        yield gw


@pytest.fixture
async def api(gateway: InProcessGateway, http: aiohttp.ClientSession) -> Api:
    return Api(http, gateway.url)


@pytest.fixture(scope="module")
async def endpoint(endpoint_port: int) -> AsyncIterator[list[dict[str, Any]]]:
    """An HTTP function: echoes the body; answers with the status asked for in ?status=."""
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append({"headers": dict(request.headers), "body": body})
        wanted = json.loads(body).get("status", 200) if body else 200
        return web.Response(status=wanted, body=body, content_type="application/json")

    double = Endpoint({"/fn": handle}, endpoint_port)
    await double.up()
    yield seen
    await double.down()


async def test_sync_invoke_returns_result(api: Api) -> None:
    status, body, _ = await api.invoke("echo", {"a": 1}, mode="sync")
    assert status == 200
    assert body["echo"] == {"a": 1}
    status, body, _ = await api.invoke("shout", {"text": "hi"}, mode="sync")
    assert (status, body) == (200, b"HI")


async def test_sync_errors(api: Api) -> None:
    status, body, _ = await api.invoke("fail", {}, mode="sync")
    assert status == 502 and body["error"]["code"] == "FunctionError"
    status, body, _ = await api.invoke("sleepy", {"seconds": 2}, mode="sync")
    assert status == 504 and body["error"]["code"] == "Timeout"
    status, body, _ = await api.invoke("false", {}, mode="sync")
    assert status == 502


async def test_sync_concurrency_full_is_429(api: Api) -> None:
    slow = asyncio.create_task(api.invoke("single", {"seconds": 1}, mode="sync"))

    async def running() -> bool:
        _, summary = await api.get("/v1/functions/single")
        return bool(summary["counts"]["totals"]["running_sync"] == 1)

    await wait_until(running, timeout=5)
    status, body, _ = await api.invoke("single", {"seconds": 0.1}, mode="sync")
    assert status == 429 and body["error"]["code"] == "ResourceExhausted"
    assert (await slow)[0] == 200


async def test_bad_requests(api: Api) -> None:
    status, body, _ = await api.invoke("nope", {})
    assert status == 404 and body["error"]["code"] == "FunctionNotFound"
    status, body, _ = await api.invoke("echo", raw=b"x" * 1025)
    assert status == 413 and "1KiB" in body["error"]["message"]
    status, body, _ = await api.invoke("echo", raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]
    for headers in (
        {"X-Task-Id": "bad id!"},
        {"X-Delay": "soon"},
        {"X-Delay": "90000"},
        {"X-Invocation-Type": "later"},
    ):
        status, body, _ = await api.invoke("echo", {}, headers=headers)
        assert status == 400, (headers, body)
        assert set(body["error"]) == {"code", "message"}
    status, body = await api.get("/v1/tasks/does-not-exist")
    assert status == 404 and body["error"]["code"] == "TaskNotFound"
    status, body = await api.get("/v1/tasks?status=Bogus")
    assert status == 400


async def test_raw_bytes_payload_reaches_function_as_bytes(api: Api) -> None:
    status, body, _ = await api.invoke(
        "wc", raw=b"\x00\x01\x02", mode="sync", headers={"Content-Type": "application/octet-stream"}
    )
    assert status == 200 and str(body).strip() == "3"


async def test_async_submit_and_record(api: Api, unique: Callable[[str], str]) -> None:
    status, body, headers = await api.invoke("echo", {"n": 1})
    assert status == 202 and body["status"] == "Enqueued"
    assert headers["X-Task-Id"] == body["task_id"]
    record = await api.wait_status(body["task_id"], "Succeeded")
    assert record["attempts"] == 1 and record["source"] == {"type": "api", "name": ""}
    assert record["result"]["echo"] == {"n": 1}
    for key in ("submitted_at", "started_at", "finished_at"):
        assert record[key].endswith("Z")


async def test_duplicate_task_id_is_409_and_runs_once(api: Api, unique: Callable[[str], str]) -> None:
    task_id = unique("dup")
    assert await api.submit("echo", {"first": True}, X_Task_Id=task_id) == task_id
    status, body, _ = await api.invoke("echo", {"second": True}, headers={"X-Task-Id": task_id})
    assert status == 409 and body["error"]["code"] == "DuplicateTask"
    record = await api.wait_status(task_id, "Succeeded")
    assert record["result"]["echo"] == {"first": True} and record["attempts"] == 1
    status, _, _ = await api.invoke("echo", {}, headers={"X-Task-Id": task_id})
    assert status == 409


async def test_delay_runs_no_earlier(api: Api) -> None:
    task_id = await api.submit("echo", {}, X_Delay="1.5")
    await asyncio.sleep(0.5)  # a third of the delay: the time under test, not a wait for the gateway
    assert (await api.task(task_id))["status"] == "Enqueued"
    record = await api.wait_status(task_id, "Succeeded")
    from gateway.tasks.invocation import parse_iso

    assert parse_iso(record["started_at"]) - parse_iso(record["submitted_at"]) >= 1.5


async def test_function_error_fails_without_retries(api: Api) -> None:
    task_id = await api.submit("fail", {})
    record = await api.wait_status(task_id, "Failed")
    assert record["error"]["type"] == "FunctionError" and "on purpose" in record["error"]["message"]
    assert record["attempts"] == 1


async def test_http_function_gets_task_headers(
    api: Api, endpoint: list[dict[str, Any]], unique: Callable[[str], str]
) -> None:
    task_id = await api.submit("remote", {"status": 200, "k": "v"}, X_Task_Id=unique("http"))
    record = await api.wait_status(task_id, "Succeeded")
    assert record["result"] == {"status": 200, "k": "v"}
    call = next(c for c in endpoint if c["headers"].get("X-Task-Id") == task_id)
    assert call["headers"]["X-Attempt"] == "1" and call["headers"]["Content-Type"] == "application/json"
    status, _, _ = await api.invoke("remote", {"status": 500}, mode="sync")
    assert status == 502


async def test_unreachable_http_function_is_transient_until_max_event_age(api: Api) -> None:
    task_id = await api.submit("unreachable", {})
    retrying = await api.wait_status(task_id, "Retrying")
    assert retrying["error"]["type"] == "TransientError"
    record = await api.wait_status(task_id, "Expired", timeout=15)
    statuses = [t["status"] for t in record["timeline"]]
    assert statuses.count("Running") >= 2, statuses
    # Transient failures are not counted against max_retries, but every run is an attempt.
    assert record["error"]["type"] == "TransientError"


async def test_list_newest_first_with_cursor_and_filters(api: Api, unique: Callable[[str], str]) -> None:
    ids = [await api.submit("echo", {"i": i}, X_Task_Id=unique(f"l{i}-")) for i in range(5)]
    for task_id in ids:
        await api.wait_status(task_id, "Succeeded")

    async def listed() -> list[str]:
        status, body = await api.get("/v1/tasks?function=echo&limit=200")
        return [t["task_id"] for t in body["tasks"]] if status == 200 else []

    from tests.conftest import wait_until

    await wait_until(lambda: _contains(listed, ids))
    status, page1 = await api.get("/v1/tasks?function=echo&limit=3")
    assert status == 200 and len(page1["tasks"]) == 3 and page1["next_cursor"]
    assert [t["task_id"] for t in page1["tasks"]] == list(reversed(ids))[:3]
    status, page2 = await api.get(f"/v1/tasks?function=echo&limit=2&cursor={page1['next_cursor']}")
    assert [t["task_id"] for t in page2["tasks"]] == list(reversed(ids))[3:5]
    status, failed = await api.get("/v1/tasks?status=Succeeded&function=fail")
    assert failed["tasks"] == []
    status, since = await api.get(f"/v1/tasks?function=echo&since={page1['tasks'][0]['submitted_at']}")
    assert [t["task_id"] for t in since["tasks"]] == [ids[-1]]


async def _contains(listed: Callable[[], Any], ids: list[str]) -> bool:
    return set(ids) <= set(await listed())


async def test_rerun_submits_same_payload(api: Api) -> None:
    task_id = await api.submit("echo", {"again": 1})
    await api.wait_status(task_id, "Succeeded")
    status, body = await api.post(f"/v1/tasks/{task_id}/rerun")
    assert status == 202 and body["task_id"] != task_id
    record = await api.wait_status(body["task_id"], "Succeeded")
    assert record["result"]["echo"] == {"again": 1}
    assert record["rerun_of"] == task_id and record["source"] == {"type": "rerun", "name": task_id}
    assert (await api.task(task_id))["rerun_of"] is None


async def payload_of(api: Api, task_id: str) -> tuple[int, str, bytes]:
    async with api.session.get(f"{api.url}/v1/tasks/{task_id}/payload", headers=api.headers) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def test_payload_as_submitted(api: Api) -> None:
    raw = b'{"b": 2,  "a": [1, 2]}'  # bytes as sent: spacing and key order kept
    status, body, _ = await api.invoke("echo", raw=raw)
    assert status == 202
    assert await payload_of(api, body["task_id"]) == (200, "application/json", raw)
    binary = bytes(range(256))
    status, body, _ = await api.invoke("wc", raw=binary, headers={"Content-Type": "application/octet-stream"})
    assert status == 202
    assert await payload_of(api, body["task_id"]) == (200, "application/octet-stream", binary)
    await api.wait_status(body["task_id"], "Succeeded")
    status, rerun = await api.post(f"/v1/tasks/{body['task_id']}/rerun")
    assert await payload_of(api, rerun["task_id"]) == (200, "application/octet-stream", binary)
    status, _, error = await payload_of(api, "no-such-task")
    assert status == 404 and json.loads(error)["error"]["code"] == "TaskNotFound"


async def test_functions_with_live_counts(api: Api) -> None:
    task_id = await api.submit("shout", {"text": "x"})
    await api.wait_status(task_id, "Succeeded")
    status, body = await api.get("/v1/functions")
    names = [f["name"] for f in body["functions"]]
    assert status == 200 and "shout" in names

    async def counted() -> Any:
        _, one = await api.get("/v1/functions/shout")
        return one if one["counts"]["totals"]["completed"] >= 1 else None

    one = await wait_until(counted)
    assert one["counts"]["last_minute"]["submitted"] >= 1
    assert one["counts"]["totals"]["submitted"] >= 1
    status, _ = await api.get("/v1/functions/nope")
    assert status == 404


async def test_health(api: Api) -> None:
    assert (await api.get("/healthz"))[0] == 200
    status, body = await api.get("/readyz")
    assert status == 200 and body["ready"] is True


def test_tokens_not_logged(gateway: InProcessGateway) -> None:
    assert "Traceback" not in Path(gateway.log_path).read_text()


async def test_task_ids_with_dots_run_and_stop(api: Api, unique: Callable[[str], str]) -> None:
    dotted = f"{unique('a')}.b.c"
    await api.submit("echo", {"dots": True}, X_Task_Id=dotted)
    assert (await api.wait_status(dotted, "Succeeded"))["result"]["echo"] == {"dots": True}
    running = f"{unique('run')}.x"
    await api.submit("sleepy", {"seconds": 0.25}, X_Task_Id=running, X_Delay="30")
    status, body = await api.post(f"/v1/tasks/{running}/stop")
    assert status == 202 and body["status"] == "Stopped"
