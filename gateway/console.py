"""What the gateway serves besides the task API: /metrics, /openapi.json, function logs
(JSON and Server-Sent Events) and the dashboard's static files."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import metrics
from .api import SERVICE
from .openapi import openapi_document
from .service import check_task_id
from .status import TaskStatus
from .tasklogs import TaskLogs

TASK_LOGS = web.AppKey("task_logs", TaskLogs)
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

    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)

    async def finished() -> bool:
        record = await service.get_task(task_id)
        return TaskStatus(record["status"]).terminal

    async for line in logs.follow(check_task_id(task_id), finished):
        await response.write(f"event: line\ndata: {json.dumps(line)}\n\n".encode())
    record = await service.get_task(task_id)
    await response.write(f"event: end\ndata: {json.dumps({'status': record['status']})}\n\n".encode())
    await response.write_eof()
    return response


async def dashboard(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


def add_console_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/tasks/{id}/logs", task_logs)
    app.router.add_get("/", dashboard)
    app.router.add_static("/static/", STATIC, name="static")
