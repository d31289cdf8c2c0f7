"""The OpenAPI 3.1 document of the HTTP API (served at /openapi.json).

Response schemas are generated from the models the handlers shape their answers with
(schemas.py); this module adds the paths, parameters and status codes around them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway import __version__
from gateway.history.series import MAX_MINUTES
from gateway.service import MAX_TASK_ID, TASK_ID_PATTERN
from gateway.web import schemas
from gateway.web.keys import TRIGGER_PATHS


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


ERROR = ref(schemas.Error)
TASK = ref(schemas.Task)
ACCEPTED = ref(schemas.Accepted)
# An http trigger answers 202 when it enqueued the request (async) or its filter dropped it (either kind).
TRIGGER_ACCEPTED = {"oneOf": [ACCEPTED, ref(schemas.Dropped)]}
TASK_ID_SCHEMA = {"type": "string", "pattern": TASK_ID_PATTERN, "maxLength": MAX_TASK_ID}
# The result of a sync run, as the function returned it: JSON, bytes or text.
# One server-sent event (how OpenAPI describes an event stream): `event: status`, the record as `data`.
SSE_EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "id": {"type": "string"}, "data": {"type": "string"}},
}
RESULT_CONTENT = {
    "application/json": {"schema": {}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "text/plain": {"schema": {"type": "string"}},
}


def error_responses(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "Bad request: a bad header, malformed JSON, an invalid task id or query parameter",
        401: "Missing or invalid bearer token",
        403: "The token lacks the scope this route needs",
        404: "Unknown function or task",
        408: "The body did not arrive within api.body_read_timeout",
        409: "Conflict: duplicate task id, or the task already ended",
        413: "Body over api.max_request_body",
        429: "Concurrency limit reached (sync)",
        502: "The function failed (sync)",
        503: "NATS unreachable: nothing was enqueued",
        504: "The function timed out (sync)",
    }
    return {
        str(code): {"description": reasons[code], "content": {"application/json": {"schema": ERROR}}} for code in codes
    }


def path_param(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = schema or {"type": "string"}
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def header(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description, "schema": schema}


def query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


TASK_ID_PARAM = path_param("id", "task id", TASK_ID_SCHEMA)
FN_PARAM = path_param("fn", "function name")


def component_schemas() -> dict[str, Any]:
    """The components, generated from the response models (gateway/schemas.py)."""
    _, document = models_json_schema(
        [(model, "serialization") for model in schemas.RESPONSE_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    generated: dict[str, Any] = document["$defs"]
    return generated


def lineage_headers() -> list[dict[str, Any]]:
    """The request headers that carry a chain and a trace in from outside."""
    return [
        header("traceparent", "W3C trace context, kept on the task (docs/tracing.md)", {"type": "string"}),
        header("tracestate", "W3C vendor trace state, kept with traceparent", {"type": "string"}),
        header(
            "Fngate-Chain-Id",
            "the invocation chain this call continues (loop detection); set on fngate's own deliveries",
            {"type": "string"},
        ),
        header("Fngate-Chain-Depth", "the depth of the call that made this one", {"type": "string"}),
    ]


def base_paths() -> dict[str, Any]:
    from gateway.bulk.openapi import bulk_paths

    return {**core_paths(), **bulk_paths()}


def core_paths() -> dict[str, Any]:
    return {
        "/v1/functions/{fn}/invocations": {
            "post": {
                "summary": "Invoke a function (sync: its result; async: 202 and a task id)",
                "operationId": "invoke",
                "parameters": [
                    FN_PARAM,
                    header(
                        "X-Invocation-Type", "sync (default) or async", {"type": "string", "enum": ["sync", "async"]}
                    ),
                    header("X-Task-Id", "async: caller-chosen task id", TASK_ID_SCHEMA),
                    header(
                        "X-Delay",
                        "async: seconds before the task may run",
                        {"type": "number", "minimum": 0, "maximum": 86400},
                    ),
                    *lineage_headers(),
                    header(
                        "X-Priority",
                        "async: high, normal (default) or low; orders a flow-controlled function's waiting tasks",
                        {"type": "string", "enum": ["high", "normal", "low"]},
                    ),
                    header(
                        "X-Concurrency-Key",
                        "async: tasks of one key run at most key_concurrency at once",
                        {"type": "string", "pattern": "^[A-Za-z0-9._:@/-]{1,128}$"},
                    ),
                ],
                "requestBody": {
                    "description": "the payload: any bytes; a body sent as application/json must parse",
                    "required": False,
                    "content": {
                        "application/json": {"schema": {}},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "responses": {
                    "200": {"description": "sync: the function's result", "content": RESULT_CONTENT},
                    "202": json_body(ACCEPTED, "async: durably enqueued"),
                    **error_responses(400, 401, 403, 404, 408, 409, 413, 429, 502, 503, 504),
                },
            }
        },
        "/v1/functions": {
            "get": {
                "summary": "Configured functions with live counts",
                "operationId": "listFunctions",
                "responses": {
                    "200": json_body(ref(schemas.FunctionList), "functions"),
                    **error_responses(401, 403),
                },
            }
        },
        "/v1/functions/{fn}": {
            "get": {
                "summary": "One function: config summary and live counts",
                "operationId": "getFunction",
                "parameters": [FN_PARAM],
                "responses": {
                    "200": json_body(ref(schemas.Function), "the function"),
                    **error_responses(401, 403, 404),
                },
            }
        },
        "/v1/functions/{fn}/stats": {
            "get": {
                "summary": "Per minute: tasks submitted, succeeded, failed, and latency percentiles (from the index)",
                "operationId": "getFunctionStats",
                "parameters": [
                    FN_PARAM,
                    query(
                        "minutes",
                        "how many minutes back, the running one included",
                        {"type": "integer", "minimum": 1, "maximum": MAX_MINUTES, "default": MAX_MINUTES},
                    ),
                ],
                "responses": {
                    "200": json_body(ref(schemas.FunctionStats), "the function's series"),
                    **error_responses(400, 401, 403, 404, 503),
                },
            }
        },
        "/v1/tasks": {
            "get": {
                "summary": "Tasks, newest first, paged",
                "operationId": "listTasks",
                "parameters": [
                    query("function", "only this function's tasks", {"type": "string"}),
                    query("status", "only tasks in this status, or a comma list of statuses", {"type": "string"}),
                    query("since", "submitted at or after (ISO 8601 or epoch seconds)", {"type": "string"}),
                    query("until", "submitted at or before (ISO 8601 or epoch seconds)", {"type": "string"}),
                    query("limit", "page size", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}),
                    query("source", "source TYPE or TYPE:NAME", {"type": "string"}),
                    query("condition", "only tasks that ended with this condition", {"type": "string"}),
                    query("chain", "only tasks of this chain id", {"type": "string"}),
                    query("prefix", "task id prefix", {"type": "string"}),
                    query("order", "by submit time", {"type": "string", "enum": ["desc", "asc"], "default": "desc"}),
                    query("cursor", "next_cursor of the previous page", {"type": "string"}),
                ],
                "responses": {
                    "200": json_body(ref(schemas.TaskPage), "a page of tasks"),
                    **error_responses(400, 401, 403),
                },
            }
        },
        "/v1/tasks/{id}": {
            "get": {
                "summary": "One task record",
                "operationId": "getTask",
                "parameters": [
                    TASK_ID_PARAM,
                    query(
                        "wait",
                        "long-poll: answer once the task is terminal or after this many seconds",
                        {"type": "number", "minimum": 0, "maximum": 60},
                    ),
                ],
                "responses": {"200": json_body(TASK, "the task"), **error_responses(400, 401, 403, 404, 429, 503)},
            }
        },
        "/v1/tasks/{id}/stop": {
            "post": {
                "summary": "Stop a queued or running task",
                "operationId": "stopTask",
                "parameters": [TASK_ID_PARAM],
                "responses": {
                    "202": json_body(TASK, "Stopped (queued) or Stopping (running)"),
                    **error_responses(400, 401, 403, 404, 409, 503),
                },
            }
        },
        "/v1/tasks/{id}/rerun": {
            "post": {
                "summary": "Submit the same payload again as a new task",
                "operationId": "rerunTask",
                "parameters": [TASK_ID_PARAM],
                "responses": {
                    "202": json_body(ACCEPTED, "the new task"),
                    **error_responses(400, 401, 403, 404, 503),
                },
            }
        },
        "/v1/tasks/{id}/logs": {
            "get": {
                "summary": "The task's function logs (Accept: text/event-stream streams them)",
                "operationId": "taskLogs",
                "parameters": [TASK_ID_PARAM],
                "responses": {
                    "200": {
                        "description": "log lines",
                        "content": {
                            "application/json": {"schema": ref(schemas.TaskLogs)},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **error_responses(400, 401, 403, 404, 429),
                },
            }
        },
        "/v1/tasks/{id}/payload": {
            "get": {
                "summary": "The task's payload as submitted, with its content type",
                "operationId": "taskPayload",
                "parameters": [TASK_ID_PARAM],
                "responses": {
                    "200": {"description": "the payload", "content": RESULT_CONTENT},
                    **error_responses(400, 401, 403, 404, 503),
                },
            }
        },
        "/v1/tasks/{id}/events": {
            "get": {
                "summary": "Server-sent events: one `status` event per status change, ending after the terminal one",
                "operationId": "taskEvents",
                "parameters": [TASK_ID_PARAM],
                "responses": {
                    "200": {
                        "description": "the event stream",
                        "content": {"text/event-stream": {"schema": SSE_EVENT}},
                    },
                    **error_responses(400, 401, 403, 404, 429, 503),
                },
            }
        },
        "/v1/triggers": {
            "get": {
                "summary": "Every trigger's state and counters",
                "operationId": "listTriggers",
                "responses": {
                    "200": json_body(ref(schemas.TriggerList), "triggers"),
                    **error_responses(401, 403),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "security": [],
                "responses": {"200": json_body({"type": "object", "required": ["openapi", "paths"]}, "OpenAPI 3.1")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **error_responses(401, 403),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "operationId": "healthz",
                "security": [],
                "responses": {"200": json_body(ref(schemas.Health), "alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: NATS reachable, streams ready",
                "operationId": "readyz",
                "security": [],
                "responses": {
                    "200": json_body(ref(schemas.Readiness), "ready"),
                    "503": json_body(ref(schemas.Readiness), "not ready"),
                },
            }
        },
        "/": {
            "get": {
                "summary": "The dashboard",
                "operationId": "dashboard",
                "security": [],
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
            }
        },
    }


def trigger_operation(path: str, method: str) -> dict[str, Any]:
    operation_id = f"trigger{path.replace('/', '_')}" + ("" if method == "post" else f"_{method}")
    operation: dict[str, Any] = {
        "summary": "A webhook route of an http trigger (authenticated by the trigger)",
        "operationId": operation_id,
        "security": [],
        "parameters": lineage_headers(),
        "responses": {
            "200": {"description": "sync trigger: the function's result", "content": RESULT_CONTENT},
            "202": json_body(TRIGGER_ACCEPTED, "async trigger: enqueued; either kind: dropped by the trigger's filter"),
            # a sync trigger answers with the function's errors, as a sync invocation does
            **error_responses(400, 401, 408, 413, 429, 502, 503, 504),
        },
    }
    if method not in ("get", "delete"):
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": {}}}}
    return operation


def handshake_operation(path: str) -> dict[str, Any]:
    """OPTIONS on an http trigger with `cloudevents: true` (HttpTrigger.handshake): the
    CloudEvents webhook validation handshake. No body either way; no auth (it runs before
    any delivery, to ask whether one is welcome)."""
    reply_header = {"schema": {"type": "string"}}
    return {
        "summary": "The CloudEvents webhook validation handshake of an http trigger (cloudevents: true)",
        "operationId": f"trigger{path.replace('/', '_')}_options",
        "security": [],
        "parameters": [
            {
                **header("WebHook-Request-Origin", "the sender asking to deliver here", {"type": "string"}),
                "required": True,
            },
            header("WebHook-Request-Rate", "deliveries per minute the sender asks for", {"type": "string"}),
        ],
        "responses": {
            "200": {
                "description": "the origin may deliver here",
                "headers": {
                    "WebHook-Allowed-Origin": {**reply_header, "required": True, "description": "the origin"},
                    "WebHook-Allowed-Rate": {**reply_header, "description": "`*`, when a rate was asked"},
                    "Allow": {**reply_header, "required": True, "description": "the route's methods"},
                },
            },
            "400": json_body(ERROR, "WebHook-Request-Origin missing"),
            "403": json_body(ERROR, "the origin is not in the trigger's allowed_origins"),
        },
    }


def openapi_document(app: web.Application) -> dict[str, Any]:
    paths = base_paths()

    trigger_paths: set[str] = app.get(TRIGGER_PATHS) or set()
    for path in sorted(trigger_paths):
        # The methods the trigger registered (`methods:` in its config), POST by default.
        methods = {route.method.lower() for r in app.router.resources() if r.canonical == path for route in r}
        paths[path] = {
            method: handshake_operation(path) if method == "options" else trigger_operation(path, method)
            for method in sorted(methods or {"post"})
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fngate",
            "version": __version__,
            "description": "Self-hosted, event-driven function gateway",
        },
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
