"""The HTTP API of the CONTRACT, on aiohttp."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .config import Config
from .errors import BadRequest, FngateError, Forbidden, PayloadTooLarge, Unauthorized
from .history import query_from_params
from .invocation import Source, lineage_from_headers, valid_traceparent
from .service import TaskService, check_task_id
from .store import TaskStore
from .units import format_size

log = logging.getLogger(__name__)
SERVICE = web.AppKey("service", TaskService)
STORE = web.AppKey("store", TaskStore)
CONFIG = web.AppKey("config", Config)
EXTRA_HEALTH = web.AppKey("extra_health", dict)
# Paths that triggers registered: they authenticate their callers themselves (signatures).
TRIGGER_PATHS = web.AppKey("trigger_paths", set)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The dashboard's page and files load without a token (it asks for one and sends it on
# every API call); so does the API description.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/openapi.json"})
PUBLIC_PREFIXES = ("/static/",)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def enqueued_response(task_id: str) -> web.Response:
    """The 202 of an accepted task. Written directly, not through json_response: it is on
    every submit, and task ids are [A-Za-z0-9._-] only (checked, or generated), so nothing
    needs escaping."""
    body = f'{{"task_id":"{task_id}","status":"Enqueued"}}'.encode()
    return web.Response(body=body, status=202, content_type="application/json", headers={"X-Task-Id": task_id})


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except FngateError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].api.max_request_body
        return error_response(413, "PayloadTooLarge", f"request body over the limit of {format_size(limit)}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.replace(" ", "")
        return error_response(exc.status, code, exc.text or exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "InternalError", "internal error; see the gateway log")


def required_scope(request: web.Request) -> str:
    if request.method == "POST" and request.path.startswith("/v1/functions/"):
        return "invoke"
    if request.method == "POST" and request.path.endswith("/rerun"):
        return "invoke"
    if request.method in ("GET", "HEAD"):
        return "read"
    return "admin"


def auth_middleware(config: Config) -> Any:
    tokens = [(t.token.encode(), frozenset(t.scopes), t.name) for t in config.api.tokens]

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        trigger_route = route is not None and route.canonical in request.app.get(TRIGGER_PATHS, ())
        public = request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES)
        if not tokens or public or trigger_route:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        presented = header[7:].encode() if header.startswith("Bearer ") else b""
        if not presented:
            presented = request.query.get("token", "").encode()
        scopes: frozenset[str] | None = None
        # Compare against every token in constant time, so timing tells nothing of a prefix.
        for secret, token_scopes, _name in tokens:
            if hmac.compare_digest(secret, presented):
                scopes = token_scopes
        if scopes is None:
            raise Unauthorized("missing or invalid bearer token")
        needed = required_scope(request)
        if needed not in scopes and "admin" not in scopes:
            raise Forbidden(f"token lacks the {needed!r} scope")
        return await handler(request)

    return middleware


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- handlers -------------------------------------------------------------------------


async def invoke(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    name = request.match_info["fn"]
    service.function(name)
    kind = request.headers.get("X-Invocation-Type", "sync").lower()
    if kind not in ("sync", "async"):
        raise BadRequest("X-Invocation-Type must be sync or async")
    payload = await read_body(request)
    content_type = request.headers.get("Content-Type", "application/json")
    check_json(payload, content_type)
    if kind == "sync":
        body, result_type = await service.invoke_sync(
            name, payload, content_type=content_type, traceparent=valid_traceparent(request.headers.get("traceparent"))
        )
        return web.Response(body=body, status=200, content_type=result_type.split(";")[0])
    task_id = request.headers.get("X-Task-Id")
    if task_id is not None:
        check_task_id(task_id)
    delay = parse_delay(request.headers.get("X-Delay"))
    task_id = await service.submit(
        name,
        payload,
        content_type=content_type,
        task_id=task_id,
        delay=delay,
        source=Source("api", ""),
        lineage=lineage_from_headers(request.headers),
        traceparent=valid_traceparent(request.headers.get("traceparent")),
    )
    return enqueued_response(task_id)


async def read_body(request: web.Request) -> bytes:
    limit = request.app[CONFIG].api.max_request_body
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"request body of {request.content_length} bytes is over the limit of {format_size(limit)}"
        )
    return await request.read()


MAX_JSON_DEPTH = 64


def check_json(payload: bytes, content_type: str) -> None:
    """A body sent as JSON must parse, and nest no deeper than MAX_JSON_DEPTH."""
    if not payload or content_type.split(";")[0].strip().lower() != "application/json":
        return
    try:
        document = json.loads(payload)
    except RecursionError:
        raise BadRequest(f"JSON body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise BadRequest(f"body is not valid JSON ({exc}); send another Content-Type for raw bytes") from None
    # Counting brackets is cheap and bounds the depth from above: walk only when it could be deep.
    if payload.count(b"[") + payload.count(b"{") > MAX_JSON_DEPTH and json_depth(document) > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON body nests deeper than {MAX_JSON_DEPTH} levels")


def json_depth(document: Any) -> int:
    """Nesting depth of a parsed JSON document, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node)
    return deepest


def parse_delay(value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        delay = float(value)
    except ValueError:
        raise BadRequest("X-Delay must be a number of seconds 0..86400") from None
    if not 0 <= delay <= 86400:
        raise BadRequest("X-Delay must be a number of seconds 0..86400")
    return delay


async def get_task(request: web.Request) -> web.Response:
    record = await request.app[SERVICE].get_task(request.match_info["id"])
    return web.json_response(record)


async def list_tasks(request: web.Request) -> web.Response:
    tasks, next_cursor = await request.app[SERVICE].list_tasks(query_from_params(request.query))
    return web.json_response({"tasks": tasks, "next_cursor": next_cursor})


async def stop_task(request: web.Request) -> web.Response:
    record = await request.app[SERVICE].stop_task(request.match_info["id"])
    return web.json_response(record, status=202)


async def rerun_task(request: web.Request) -> web.Response:
    task_id = await request.app[SERVICE].rerun(request.match_info["id"])
    return enqueued_response(task_id)


async def list_functions(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response({"functions": await service.function_summaries(list(service.config.functions))})


async def get_function(request: web.Request) -> web.Response:
    (summary,) = await request.app[SERVICE].function_summaries([request.match_info["fn"]])
    return web.json_response(summary)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    checks: dict[str, Any] = {"nats": store.nc.is_connected, "streams": store.ready}
    extra = request.app.get(EXTRA_HEALTH) or {}
    for name, probe in extra.items():
        checks[name] = probe()
    ready = bool(checks["nats"] and checks["streams"])
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def list_triggers(request: web.Request) -> web.Response:
    from .app import GATEWAY  # app.py imports this module, so its key is looked up late

    return web.json_response({"triggers": [trigger.health() for trigger in request.app[GATEWAY].triggers]})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/functions/{fn}/invocations", invoke)
    app.router.add_get("/v1/functions", list_functions)
    app.router.add_get("/v1/functions/{fn}", get_function)
    app.router.add_get("/v1/tasks", list_tasks)
    app.router.add_get("/v1/tasks/{id}", get_task)
    app.router.add_post("/v1/tasks/{id}/stop", stop_task)
    app.router.add_post("/v1/tasks/{id}/rerun", rerun_task)
    app.router.add_get("/v1/triggers", list_triggers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
