"""Metrics, function logs (JSON and SSE), the OpenAPI document and trace context."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Api, module_gateway, wait_until
from tests.services import Endpoint, InProcessGateway, NatsServer, free_port

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def traced_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def traced_endpoint(traced_port: int) -> AsyncIterator[list[dict[str, str]]]:
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"ok": True})

    double = Endpoint({"/fn": handle}, traced_port)
    await double.up()
    yield seen
    await double.down()


@pytest.fixture(scope="module")
async def gateway(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory, traced_port: int
) -> AsyncIterator[InProcessGateway]:
    config = {
        "nats": {"url": nats_server.url},
        "logging": {"format": "json"},
        "functions": {
            "obs_echo": {"handler": "python:examples.functions:echo"},
            "obs_fail": {
                "handler": "python:examples.functions:fail",
                "async": {"max_retries": 1, "retry_delay": "100ms"},
            },
            "obs_chatty": {"handler": "python:examples.functions:chatty", "timeout": "30s"},
            "obs_shout": {"handler": "python:examples.functions:shout"},
            "obs_traced": {"url": f"http://127.0.0.1:{traced_port}/fn"},
        },
    }
    async with module_gateway(tmp_path_factory.mktemp("obs-gw"), config) as gw:
        yield gw


@pytest.fixture
def api(gateway: InProcessGateway, http: aiohttp.ClientSession) -> Api:
    return Api(http, gateway.url)


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def test_metrics_change_as_tasks_run(gateway: InProcessGateway, api: Api, http: aiohttp.ClientSession) -> None:
    before = await scrape(http, gateway.url)
    done = await api.submit("obs_echo", {})
    failed = await api.submit("obs_fail", {})
    await api.wait_status(done, "Succeeded")
    await api.wait_status(failed, "Failed")
    after = await scrape(http, gateway.url)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta('fngate_tasks_submitted_total{function="obs_echo"}') == 1
    assert delta('fngate_tasks_finished_total{function="obs_echo",status="Succeeded"}') == 1
    assert delta('fngate_tasks_finished_total{function="obs_fail",status="Failed"}') == 1
    assert delta('fngate_task_attempts_total{function="obs_fail"}') == 2
    assert delta('fngate_execution_seconds_count{function="obs_fail",outcome="function_error"}') == 2
    assert delta('fngate_attempts_per_task_count{function="obs_fail"}') == 1
    assert after['fngate_tasks_running{function="obs_echo"}'] == 0
    assert 'fngate_tasks_queued{function="obs_echo"}' in after


async def test_function_logs_and_structured_log_lines(gateway: InProcessGateway, api: Api) -> None:
    task_id = await api.submit("obs_shout", {"text": "hey"})
    await api.wait_status(task_id, "Succeeded")

    async def logged() -> Any:
        status, body = await api.get(f"/v1/tasks/{task_id}/logs")
        return body if status == 200 and body["lines"] else None

    body = await wait_until(logged)
    assert body["truncated"] is False
    assert body["lines"][0]["message"] == "shouting {'text': 'hey'}" and body["lines"][0]["attempt"] == 1
    json_lines = [json.loads(x) for x in gateway.log().splitlines() if x.startswith("{")]
    mine = [x for x in json_lines if x.get("task_id") == task_id]
    assert mine and all(x["function"] == "obs_shout" for x in mine)
    status, _ = await api.get("/v1/tasks/nope-nope/logs")
    assert status == 404


async def test_logs_stream_while_the_task_runs(
    gateway: InProcessGateway, api: Api, http: aiohttp.ClientSession
) -> None:
    task_id = await api.submit("obs_chatty", {"lines": 5, "interval": 0.3})
    await api.wait_status(task_id, "Running")
    events: list[tuple[str, Any]] = []
    async with http.get(f"{gateway.url}/v1/tasks/{task_id}/logs", headers={"Accept": "text/event-stream"}) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        event = None
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event or "", json.loads(line[6:])))
                if event == "line" and len(events) == 1:
                    # the first line arrived while the task still ran
                    assert (await api.task(task_id))["status"] == "Running"
    lines = [data["message"] for kind, data in events if kind == "line"]
    assert lines == [f"line {i} of 5" for i in range(1, 6)]
    assert events[-1] == ("end", {"status": "Succeeded"})


async def test_log_size_is_bounded(api: Api) -> None:
    task_id = await api.submit("obs_chatty", {"lines": 1500})
    await api.wait_status(task_id, "Succeeded")

    async def logged() -> Any:
        _, body = await api.get(f"/v1/tasks/{task_id}/logs")
        return body if body["truncated"] else None

    body = await wait_until(logged)
    lines = body["lines"]
    assert lines[-1]["message"] == "[log truncated]"
    kept = [line["message"] for line in lines[:-1]]
    assert kept == [f"line {i} of 1500" for i in range(1, len(kept) + 1)]
    # Bounded by 1000 lines and by 64 KiB (each line counted with 64 bytes of overhead).
    assert 500 < len(kept) <= 1000 and sum(len(m) + 64 for m in kept) <= 64 * 1024


async def test_openapi_describes_every_route(gateway: InProcessGateway, api: Api) -> None:
    status, document = await api.get("/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    paths = document["paths"]
    for path, method in [
        ("/v1/functions/{fn}/invocations", "post"), ("/v1/functions", "get"), ("/v1/functions/{fn}", "get"),
        ("/v1/tasks", "get"), ("/v1/tasks/{id}", "get"), ("/v1/tasks/{id}/stop", "post"),
        ("/v1/tasks/{id}/rerun", "post"), ("/v1/tasks/{id}/logs", "get"), ("/v1/triggers", "get"),
        ("/metrics", "get"), ("/healthz", "get"), ("/readyz", "get"), ("/", "get"), ("/openapi.json", "get"),
    ]:  # fmt: skip
        assert method in paths[path], path
    refs = re.findall(r'"#/components/schemas/(\w+)"', json.dumps(document))
    assert set(refs) <= set(document["components"]["schemas"])


async def test_traceparent_reaches_http_function_and_record(api: Api, traced_endpoint: list[dict[str, str]]) -> None:
    task_id = await api.submit("obs_traced", {}, traceparent=TRACEPARENT, tracestate="vendor=1,other=2")
    record = await api.wait_status(task_id, "Succeeded")
    assert record["trace"] == {"traceparent": TRACEPARENT, "tracestate": "vendor=1,other=2"}
    call = next(h for h in traced_endpoint if h.get("X-Task-Id") == task_id)
    # The same trace; the parent is the attempt's own span, a child of the caller's.
    version, trace_id, span_id, flags = call["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACEPARENT.split("-")[1], "01")
    assert span_id != TRACEPARENT.split("-")[2] and call["tracestate"] == "vendor=1,other=2"
    ignored = await api.submit("obs_echo", {}, traceparent="not-a-trace")
    assert (await api.wait_status(ignored, "Succeeded"))["trace"] is None


async def test_dashboard_is_served(gateway: InProcessGateway, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gateway.url}/") as resp:
        assert resp.status == 200 and "fngate" in await resp.text()
    for module in ("app", "api", "dom", "overview", "tasks", "task", "triggers", "invoke"):
        async with http.get(f"{gateway.url}/static/js/{module}.js") as resp:
            # Module scripts load only when served with a JavaScript type.
            assert resp.status == 200 and "javascript" in resp.headers["Content-Type"], module
            text = await resp.text()
            assert "export " in text or "import " in text, module
