"""The HTTP API of the CONTRACT, on aiohttp."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.config.model import Config, FunctionConfig
from gateway.errors import BadRequest, DuplicateTask, FngateError, Forbidden, Unauthorized
from gateway.flow.limits import check_key, check_priority
from gateway.history import query_from_params
from gateway.history.series import MAX_MINUTES
from gateway.jetstream.store import UNAVAILABLE
from gateway.observe.redact import redact_text
from gateway.service import check_task_id
from gateway.tasks.invocation import Source, valid_traceparent
from gateway.units import format_size
from gateway.web import schemas
from gateway.web.keys import CONFIG, HISTORY, SERVICE, STORE, TRIGGER_PATHS, TRIGGERS
from gateway.web.requests import (
    ClientGone,
    check_content_type,
    check_sync_headers,
    parse_delay,
    read_body,
    request_lineage,
)
from gateway.web.schemas import complete, shape
from gateway.web.scopes import ADMIN, Access, access_for
from triggers.base import readiness

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    except (ClientGone, ConnectionError, asyncio.IncompleteReadError):
        # (ConnectionError: a route that reads its body itself, as the http triggers do.)
        # Nobody is left to answer: a line, not a traceback (a closed upload is routine).
        log.info(
            "client %s went away before its request body arrived (%s %s)", request.remote, request.method, request.path
        )
        return error_response(400, "BadRequest", "the client went away before its request body arrived")
    except DuplicateTask as exc:
        body: dict[str, Any] = {"error": {"code": exc.code, "message": exc.message}}
        if exc.task:
            body["task"] = exc.task  # who holds the id: the caller's first try, or another task
        return web.json_response(body, status=exc.status)
    except FngateError as exc:
        return error_response(exc.status, exc.code, redact_text(exc.message))
    except UNAVAILABLE:
        # A read that NATS did not answer in time (an outage, a leader election): not ours.
        return error_response(503, "ServiceUnavailable", "NATS did not answer in time; retry later")
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].api.max_request_body
        return error_response(413, "PayloadTooLarge", f"request body over the limit of {format_size(limit)}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.replace(" ", "")
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # 405
        return error_response(exc.status, code, exc.text or exc.reason, headers=allow)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "InternalError", "internal error; see the gateway log")


def required_access(request: web.Request) -> Access:
    """The route's declared access (gateway/scopes.py); an undeclared route needs admin."""
    resource = request.match_info.route.resource
    if resource is None:  # no such route: a valid token first, then the 404 or 405
        return Access("read")
    return access_for(request.method, resource.canonical) or ADMIN


def auth_middleware(config: Config) -> Any:
    tokens = [(t.token.encode(), frozenset(t.scopes), t.name) for t in config.api.tokens]

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        trigger_route = route is not None and route.canonical in request.app.get(TRIGGER_PATHS, ())
        access = required_access(request)
        if not tokens or access.scope is None or trigger_route:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        # surrogateescape: a header that is not UTF-8 arrives as surrogates; it is a bad token, not a 500.
        presented = header[7:].encode("utf-8", "surrogateescape") if header.startswith("Bearer ") else b""
        if not presented and "token" in request.query:
            if not access.query_token:
                raise Unauthorized(
                    "a token in the query string is accepted only on the streaming routes "
                    "(GET /v1/tasks/{id}/logs and /events); send Authorization: Bearer <token>"
                )
            presented = request.query["token"].encode("utf-8", "surrogateescape")
        scopes: frozenset[str] | None = None
        # Compare against every token in constant time, so timing tells nothing of a prefix.
        for secret, token_scopes, _name in tokens:
            if hmac.compare_digest(secret, presented):
                scopes = token_scopes
        if scopes is None:
            raise Unauthorized("missing or invalid bearer token")
        if access.scope not in scopes and "admin" not in scopes:
            raise Forbidden(f"token lacks the {access.scope!r} scope")
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
    # Not the submit's check (the service makes it): an unknown function is a 404 before
    # its body is read or its headers judged, whatever else is wrong with the request.
    function = service.function(name)
    kind = request.headers.get("X-Invocation-Type", "sync").lower()
    if kind not in ("sync", "async"):
        raise BadRequest("X-Invocation-Type must be sync or async")
    if kind == "sync":
        check_sync_headers(request.headers)
    api_config = request.app[CONFIG].api
    payload = await read_body(request, api_config.max_request_body, api_config.body_read_timeout)
    content_type = check_content_type(request.headers.get("Content-Type", "application/json"))
    check_json(payload, content_type)
    if kind == "sync":
        body, result_type = await service.invoke_sync(
            name,
            payload,
            content_type=content_type,
            traceparent=valid_traceparent(request.headers.get("traceparent")),
            lineage=request_lineage(request.headers),
        )
        return web.Response(body=body, status=200, content_type=result_type.split(";")[0])
    # The task id and the delay's range are checked by the service, as for every submit.
    task_id = await service.submit(
        name,
        payload,
        content_type=content_type,
        task_id=request.headers.get("X-Task-Id"),
        delay=parse_delay(request.headers.get("X-Delay")),
        source=Source("api", ""),
        lineage=request_lineage(request.headers),
        traceparent=valid_traceparent(request.headers.get("traceparent")),
        **parse_flow_headers(request.headers, name, function),
    )
    return enqueued_response(task_id)


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


def parse_flow_headers(headers: Any, name: str, function: FunctionConfig) -> dict[str, str]:
    """X-Priority and X-Concurrency-Key of an async invocation, checked (see gateway/flow).
    A priority other than normal on a function that does not order its waiting tasks is
    refused rather than ignored: only a flow-controlled function's leader sees the whole
    backlog, and making every function flow-controlled would bound each one by one core."""
    given = {}
    for header, check, arg in (
        ("X-Priority", check_priority, "priority"),
        ("X-Concurrency-Key", check_key, "concurrency_key"),
    ):
        value = headers.get(header)
        if value is None:
            continue
        try:
            given[arg] = check(value)
        except ValueError as exc:
            raise BadRequest(f"{header}: {exc}") from None
    if given.get("priority", "normal") != "normal" and not function.flow_controlled:
        raise BadRequest(
            f"X-Priority: function {name!r} does not order its tasks by priority; give it "
            f"functions.{name}.priorities: true (or a key_concurrency or rate_limit)"
        )
    return given


async def get_task(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    if "wait" in request.query:  # long-poll until terminal (gateway/live.py)
        from gateway.web.live import wait_for_task

        task_id = check_task_id(request.match_info["id"])
        return web.json_response(shape(schemas.Task, await wait_for_task(request, task_id, service.get_task)))
    record = await service.get_task(request.match_info["id"])
    return web.json_response(shape(schemas.Task, record))


async def list_tasks(request: web.Request) -> web.Response:
    tasks, next_cursor = await request.app[SERVICE].list_tasks(query_from_params(request.query))
    # Records the gateway wrote itself: completed to the schema, not checked one by one.
    return web.json_response(complete(schemas.TaskPage, {"tasks": tasks, "next_cursor": next_cursor}))


async def stop_task(request: web.Request) -> web.Response:
    record = await request.app[SERVICE].stop_task(request.match_info["id"])
    return web.json_response(shape(schemas.Task, record), status=202)


async def rerun_task(request: web.Request) -> web.Response:
    task_id = await request.app[SERVICE].rerun(request.match_info["id"])
    return enqueued_response(task_id)


async def list_functions(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    functions = {"functions": await service.function_summaries(list(service.config.functions))}
    return web.json_response(shape(schemas.FunctionList, functions))


async def get_function(request: web.Request) -> web.Response:
    (summary,) = await request.app[SERVICE].function_summaries([request.match_info["fn"]])
    return web.json_response(shape(schemas.Function, summary))


async def get_function_stats(request: web.Request) -> web.Response:
    """Per minute over the last hour: tasks submitted, succeeded, failed; latency percentiles."""
    service = request.app[SERVICE]
    name = request.match_info["fn"]
    service.function(name)  # 404 for a function not configured
    raw = request.query.get("minutes") or str(MAX_MINUTES)
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_MINUTES:
        raise BadRequest(f"minutes must be an integer 1..{MAX_MINUTES}")
    return web.json_response(shape(schemas.FunctionStats, await service.history.stats(name, int(raw))))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response(shape(schemas.Health, {"status": "ok"}))


async def readyz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    checks: dict[str, Any] = {"nats": store.nc.is_connected, "streams": store.ready}
    # False while JetStream refuses to store task records (a full store): tasks cannot finish.
    checks["store_writable"] = store.write_refused is None
    checks["index"] = request.app[HISTORY].check()  # reported; a lagging index does not gate readiness
    # Every trigger receiving: subscribed, assigned, watching.
    triggers_ready, checks["triggers"] = readiness(request.app[TRIGGERS])
    ready = bool(checks["nats"] and checks["streams"] and checks["store_writable"] and triggers_ready)
    return web.json_response(shape(schemas.Readiness, {"ready": ready, "checks": checks}), status=200 if ready else 503)


async def list_triggers(request: web.Request) -> web.Response:
    triggers = shape(schemas.TriggerList, {"triggers": [trigger.health() for trigger in request.app[TRIGGERS]]})
    # A trigger's last error may quote a broker URL as its library wrote it, credentials too.
    return web.Response(text=redact_text(json.dumps(triggers)), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/functions/{fn}/invocations", invoke)
    app.router.add_get("/v1/functions", list_functions)
    app.router.add_get("/v1/functions/{fn}", get_function)
    app.router.add_get("/v1/functions/{fn}/stats", get_function_stats)
    app.router.add_get("/v1/tasks", list_tasks)
    app.router.add_get("/v1/tasks/{id}", get_task)
    app.router.add_post("/v1/tasks/{id}/stop", stop_task)
    app.router.add_post("/v1/tasks/{id}/rerun", rerun_task)
    app.router.add_get("/v1/triggers", list_triggers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
