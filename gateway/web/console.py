"""What the gateway serves besides the task API: /metrics, /openapi.json, function logs
(JSON and Server-Sent Events) and the dashboard's static files."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.observe import metrics
from gateway.service import check_task_id
from gateway.tasks.status import TaskStatus
from gateway.web.keys import CONFIG, LIMITER, SERVICE, TASK_LOGS
from gateway.web.live import task_events
from gateway.web.openapi import openapi_document
from gateway.web.sse import KEEPALIVE, StreamLimiter, gone

STATIC = Path(__file__).parent / "static"


async def prometheus(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    counts = await service.history.counts(list(service.config.functions))
    for name, function_counts in counts.items():
        metrics.TASKS_QUEUED.labels(name).set(function_counts.summary()["totals"]["queued"])
    body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app))


async def task_logs(request: web.Request) -> web.StreamResponse:
    task_id = request.match_info["id"]
    service = request.app[SERVICE]
    await service.get_task(task_id)  # 404 for an unknown task
    logs = request.app[TASK_LOGS]
    if "text/event-stream" not in request.headers.get("Accept", ""):
        lines, _, truncated = await logs.read(task_id)
        return web.json_response({"task_id": task_id, "lines": lines, "truncated": truncated})

    with request.app[LIMITER].slot(request):  # bounded per client; 429 over it
        return await _stream_logs(request, task_id)


async def _stream_logs(request: web.Request, task_id: str) -> web.StreamResponse:
    service = request.app[SERVICE]
    logs = request.app[TASK_LOGS]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)

    async def finished() -> bool:
        record = await service.get_task(task_id)
        return TaskStatus(record["status"]).terminal

    try:
        async for line in logs.follow(check_task_id(task_id), finished, lambda: gone(request)):
            await response.write(KEEPALIVE if line is None else f"event: line\ndata: {json.dumps(line)}\n\n".encode())
    except ConnectionError:  # the client went away between two checks
        return response
    if gone(request):
        return response
    record = await service.get_task(task_id)
    await response.write(f"event: end\ndata: {json.dumps({'status': record['status']})}\n\n".encode())
    await response.write_eof()
    return response


async def task_payload(request: web.Request) -> web.Response:
    """The payload as submitted, with its content type (within the task stream's retention)."""
    inv = await request.app[SERVICE].payload_of(check_task_id(request.match_info["id"]))
    return web.Response(body=inv.payload, headers={"Content-Type": inv.content_type, "X-Task-Id": inv.task_id})


async def dashboard(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


def add_console_routes(app: web.Application) -> None:
    app[LIMITER] = StreamLimiter(app[CONFIG].api.streams_per_client)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/tasks/{id}/logs", task_logs)
    app.router.add_get("/v1/tasks/{id}/payload", task_payload)
    app.router.add_get("/v1/tasks/{id}/events", task_events)
    app.router.add_get("/", dashboard)
    app.router.add_static("/static/", STATIC, name="static")
