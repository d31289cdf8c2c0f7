"""The OpenAPI document against the gateway: valid OpenAPI 3.1, every route the app serves
documented, and every documented operation's real responses (happy and error paths)
matching the document's schema for their status and content type."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from gateway.app import create_app
from gateway.config.model import parse_config
from tests.conftest import Api, module_gateway, wait_until
from tests.services import InProcessGateway, NatsServer, free_port
from tests.sinks.conftest import Receiver

TOKEN = "openapi-admin-token-0123456789"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
# method, documented path, status, content type, response headers, body
Seen = list[tuple[str, str, int, str, dict[str, str], bytes]]
ORIGIN = "events.example.com"


def config(receiver_url: str) -> dict[str, Any]:
    return {
        "api": {"tokens": [{"name": "t", "token": TOKEN, "scopes": ["admin"]}]},
        "functions": {
            "echo": {
                "handler": "python:examples.functions:echo",
                "async": {"on_success": {"type": "event_bus", "url": receiver_url}},
            },
            "fail": {"handler": "python:examples.functions:fail", "async": {"max_retries": 0}},
            "chatty": {"handler": "python:examples.functions:chatty"},
            "shell": {"command": ["cat"]},
        },
        "triggers": [
            {"name": "hook-sync", "type": "http", "path": "/hooks/sync", "invocation": "sync", "function": "echo"},
            {"name": "hook-async", "type": "http", "path": "/hooks/async", "function": "echo",
             "methods": ["POST", "PUT"], "auth": {"type": "bearer", "token": "hook-token-123"}},
            {"name": "hook-filtered", "type": "http", "path": "/hooks/filtered", "function": "echo",
             "filter": {"data": {"kind": ["keep"]}}},
            {"name": "hook-ce", "type": "http", "path": "/hooks/ce", "function": "echo",
             "cloudevents": True, "allowed_origins": [ORIGIN]},
        ],
    }  # fmt: skip


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """Where the echo function's results go (so records carry a destination's history)."""
    r = Receiver(free_port())
    await r.up()
    yield r
    await r.down()


@pytest.fixture
async def gateway(nats_server: NatsServer, tmp_path: Any, receiver: Receiver) -> AsyncIterator[InProcessGateway]:
    async with module_gateway(tmp_path / "gw", {"nats": {"url": nats_server.url}, **config(receiver.url)}) as gw:
        yield gw


def test_every_served_route_is_documented() -> None:
    app = create_app(parse_config(config("http://127.0.0.1:9/events")))
    served = {
        (route.method.lower(), resource.canonical)
        for resource in app.router.resources()
        for route in resource
        if route.method != "HEAD" and not resource.canonical.startswith("/static")
    }
    from gateway.web.openapi import openapi_document

    document = openapi_document(app)
    validate(document)
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served == documented


def response_schema(
    document: dict[str, Any],
    method: str,
    path: str,
    status: int,
    content_type: str,
    headers: dict[str, str],
    body: bytes,
) -> Any:
    """The documented schema of this response's body (None: documented as having none), once
    the headers the document promises were found in it."""
    responses = document["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path}: status {status} is not documented"
    documented = responses[str(status)]
    for name, spec in documented.get("headers", {}).items():
        value = headers.get(name.lower())
        if value is None:
            assert not spec.get("required"), f"{method.upper()} {path} {status}: header {name} missing"
        else:
            OAS31Validator(spec["schema"]).validate(value)
    if "content" not in documented:
        assert body == b"", f"{method.upper()} {path} {status}: documented without a body, answered {body[:80]!r}"
        return None
    content = documented["content"]
    media = content_type.split(";")[0].strip()
    assert media in content, f"{method.upper()} {path} {status}: {media} is not documented ({list(content)})"
    return content[media].get("schema", {})


async def test_every_response_matches_the_document(
    gateway: InProcessGateway, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    seen: Seen = []

    async def call(method: str, path: str, url_path: str | None = None, **kwargs: Any) -> tuple[int, Any]:
        headers = {**auth, **kwargs.pop("headers", {})}
        async with http.request(method, f"{gateway.url}{url_path or path}", headers=headers, **kwargs) as resp:
            body = await resp.read()
            reply_headers = {key.lower(): value for key, value in resp.headers.items()}
            seen.append((method.lower(), path, resp.status, resp.headers.get("Content-Type", ""), reply_headers, body))
            try:
                return resp.status, json.loads(body)
            except ValueError:
                return resp.status, body

    invoke = "/v1/functions/{fn}/invocations"
    url = "/v1/functions/{}/invocations"
    sync, async_ = {"X-Invocation-Type": "sync"}, {"X-Invocation-Type": "async"}
    # invocations: sync result (JSON and text), async 202, errors
    await call("POST", invoke, url.format("echo"), json={"a": 1}, headers=sync)
    await call("POST", invoke, url.format("shell"), data=b"plain", headers={**sync, "Content-Type": "text/plain"})
    _, accepted = await call(
        "POST", invoke, url.format("echo"), json={"a": 2}, headers={**async_, "traceparent": TRACEPARENT}
    )
    done = accepted["task_id"]
    _, failed = await call("POST", invoke, url.format("fail"), json={}, headers=async_)
    _, later = await call("POST", invoke, url.format("echo"), json={}, headers={**async_, "X-Delay": "3600"})
    _, logged = await call("POST", invoke, url.format("chatty"), json={"lines": 2}, headers=async_)
    await call("POST", invoke, url.format("echo"), json={}, headers={**async_, "X-Task-Id": done})  # 409
    await call("POST", invoke, url.format("fail"), json={}, headers=sync)  # 502
    await call("POST", invoke, url.format("nope"), json={}, headers=sync)  # 404
    await call("POST", invoke, url.format("echo"), data=b"{", headers={**sync, "Content-Type": "application/json"})
    await call(
        "POST", invoke, url.format("echo"), json={}, headers={"X-Invocation-Type": "async", "Authorization": "x"}
    )
    api = Api(http, gateway.url, TOKEN)
    await api.wait_status(done, "Succeeded")
    await api.wait_status(failed["task_id"], "Failed")
    await api.wait_status(logged["task_id"], "Succeeded")

    async def delivered() -> bool:
        entries = (await api.task(done))["destinations"]
        return bool(entries and entries[0]["status"] == "delivered")

    await wait_until(delivered)
    # tasks
    for task_id in (done, failed["task_id"], later["task_id"], "no-such-task", "bad..id"):
        await call("GET", "/v1/tasks/{id}", f"/v1/tasks/{task_id}")
    await call("GET", "/v1/tasks", params={"limit": "5"})
    await call("GET", "/v1/tasks", params={"function": "echo", "status": "Succeeded"})
    await call("GET", "/v1/tasks", params={"limit": "0"})
    await call("GET", "/v1/tasks/{id}/logs", f"/v1/tasks/{logged['task_id']}/logs")
    await call("GET", "/v1/tasks/{id}/logs", "/v1/tasks/no-such-task/logs")
    await call("GET", "/v1/tasks/{id}", f"/v1/tasks/{done}", params={"wait": "1"})
    await call("GET", "/v1/tasks/{id}/payload", f"/v1/tasks/{done}/payload")
    await call("GET", "/v1/tasks/{id}/payload", "/v1/tasks/no-such-task/payload")
    await call("GET", "/v1/tasks/{id}/events", f"/v1/tasks/{done}/events", headers={"Accept": "text/event-stream"})
    await call("POST", "/v1/tasks/{id}/stop", f"/v1/tasks/{later['task_id']}/stop")
    await call("POST", "/v1/tasks/{id}/stop", f"/v1/tasks/{done}/stop")  # 409: already ended
    await call("POST", "/v1/tasks/{id}/rerun", f"/v1/tasks/{done}/rerun")
    await call("POST", "/v1/tasks/{id}/rerun", "/v1/tasks/no-such-task/rerun")
    # bulk operations: a dry run, an operation, its record and the list, errors
    bulk = {"filter": {"function": "echo", "status": "Stopped"}}
    await call("POST", "/v1/tasks/rerun", json={**bulk, "dry_run": True})
    _, operation = await call("POST", "/v1/tasks/rerun", json=bulk)
    await call("POST", "/v1/tasks/stop", json={"filter": {"function": "echo", "status": "Enqueued"}, "dry_run": True})
    await call("POST", "/v1/tasks/stop", json={"filter": {"function": "echo", "status": "Enqueued"}})
    await call("POST", "/v1/tasks/stop", json={"filter": {}})  # 400
    await call("GET", "/v1/operations/{id}", f"/v1/operations/{operation['operation_id']}")
    await call("GET", "/v1/operations/{id}", "/v1/operations/op-nope")
    await call("GET", "/v1/operations")
    # functions, triggers, the rest
    await call("GET", "/v1/functions")
    for fn in ("echo", "shell", "nope"):
        await call("GET", "/v1/functions/{fn}", f"/v1/functions/{fn}")
        await call("GET", "/v1/functions/{fn}/stats", f"/v1/functions/{fn}/stats")
    await call("GET", "/v1/functions/{fn}/stats", "/v1/functions/echo/stats", params={"minutes": "99"})  # 400
    await call("GET", "/v1/triggers")
    await call("GET", "/v1/triggers", headers={"Authorization": "Bearer wrong-token-000"})
    for path in ("/healthz", "/readyz", "/openapi.json", "/metrics", "/"):
        await call("GET", path)
    # webhook routes
    await call("POST", "/hooks/sync", json={"h": 1})
    for method in ("POST", "PUT"):
        await call(method, "/hooks/async", json={"h": 2}, headers={"Authorization": "Bearer hook-token-123"})
    await call("POST", "/hooks/async", json={}, headers={"Authorization": "Bearer wrong"})
    # a filter: one request matched and enqueued, one dropped, both 202
    _, kept = await call("POST", "/hooks/filtered", json={"kind": "keep"})
    _, dropped = await call("POST", "/hooks/filtered", json={"kind": "other"})
    assert kept["status"] == "Enqueued" and dropped == {"task_id": None, "status": "Dropped", "reason": "filter"}
    # the CloudEvents handshake: an allowed origin (with a rate), a refused one, none
    handshake = {"WebHook-Request-Origin": ORIGIN, "WebHook-Request-Rate": "60"}
    status, _ = await call("OPTIONS", "/hooks/ce", headers=handshake)
    assert status == 200 and seen[-1][4]["webhook-allowed-origin"] == ORIGIN
    assert (await call("OPTIONS", "/hooks/ce", headers={"WebHook-Request-Origin": "evil.example.org"}))[0] == 403
    assert (await call("OPTIONS", "/hooks/ce"))[0] == 400
    await call("POST", "/hooks/ce", json={"ce": 1})

    status, document = await api.get("/openapi.json")
    assert status == 200
    validate(document)
    for method, path, status, content_type, headers, body in seen:
        schema = response_schema(document, method, path, status, content_type, headers, body)
        if schema is not None and content_type.startswith("application/json"):
            OAS31Validator({**schema, "components": document["components"]}).validate(json.loads(body))

    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert documented == {(method, path) for method, path, *_ in seen}, "a documented operation was not called"
    statuses = {(m, p, s) for m, p, s, *_ in seen}
    assert {("post", invoke, s) for s in (200, 202, 400, 401, 404, 409, 502)} <= statuses
    # What the models made of the records: every documented key is there.
    record = await api.task(done)
    assert record["scheduled_at"] and record["trace"] == {"traceparent": TRACEPARENT, "tracestate": None}
    assert record["destinations"][0]["history"][0]["status"] == "delivered" and record["errors"] == []
