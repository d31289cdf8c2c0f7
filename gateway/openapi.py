"""The OpenAPI 3 document of the HTTP API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import __version__
from .service import MAX_TASK_ID, TASK_ID_PATTERN
from .status import TaskStatus

ERROR = {"$ref": "#/components/schemas/Error"}
TASK = {"$ref": "#/components/schemas/Task"}
TASK_ID_SCHEMA = {"type": "string", "pattern": TASK_ID_PATTERN, "maxLength": MAX_TASK_ID}


def error_responses(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "Bad request: a bad header, malformed JSON, an invalid task id or query parameter",
        401: "Missing or invalid bearer token",
        403: "The token lacks the scope this route needs",
        404: "Unknown function or task",
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

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["task_id", "status"],
        "properties": {"task_id": {"type": "string"}, "status": {"type": "string", "enum": ["Enqueued"]}},
    },
    "TimelineEntry": {
        "type": "object",
        "properties": {"status": {"type": "string"}, "at": {"type": "string", "format": "date-time"}},
    },
    "Destination": {
        "type": "object",
        "properties": {
            "on": {"type": "string", "enum": ["success", "failure"]},
            "type": {"type": "string"},
            "target": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "delivered", "failed", "skipped"]},
            "attempts": {"type": "integer"},
            "error": {"type": "string", "nullable": True},
            "last_attempt_at": {"type": "string", "nullable": True},
        },
    },
    "Task": {
        "type": "object",
        "required": ["task_id", "function", "status", "timeline"],
        "properties": {
            "task_id": {"type": "string"},
            "function": {"type": "string"},
            "status": {"type": "string", "enum": [s.value for s in TaskStatus]},
            "attempts": {"type": "integer"},
            "submitted_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": "string", "format": "date-time", "nullable": True},
            "finished_at": {"type": "string", "format": "date-time", "nullable": True},
            "source": {"type": "object", "properties": {"type": {"type": "string"}, "name": {"type": "string"}}},
            "timeline": {"type": "array", "items": {"$ref": "#/components/schemas/TimelineEntry"}},
            "result": {"nullable": True},
            "error": {"type": "object", "nullable": True},
            "condition": {"type": "string"},
            "chain": {"type": "object"},
            "trace": {"type": "object", "nullable": True},
            "destinations": {"type": "array", "items": {"$ref": "#/components/schemas/Destination"}},
        },
    },
    "TaskPage": {
        "type": "object",
        "properties": {
            "tasks": {"type": "array", "items": TASK},
            "next_cursor": {"type": "string", "nullable": True},
        },
    },
    "Function": {"type": "object", "properties": {"name": {"type": "string"}, "counts": {"type": "object"}}},
    "LogLine": {
        "type": "object",
        "properties": {
            "at": {"type": "string"},
            "level": {"type": "string"},
            "message": {"type": "string"},
            "attempt": {"type": "integer", "nullable": True},
        },
    },
}


def base_paths() -> dict[str, Any]:
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
                    header("traceparent", "W3C trace context, carried through the task", {"type": "string"}),
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
                    "200": {
                        "description": "sync: the function's result",
                        "content": {
                            "application/json": {"schema": {}},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                    "202": json_body({"$ref": "#/components/schemas/Accepted"}, "async: durably enqueued"),
                    **error_responses(400, 401, 403, 404, 409, 413, 429, 502, 503, 504),
                },
            }
        },
        "/v1/functions": {
            "get": {
                "summary": "Configured functions with live counts",
                "operationId": "listFunctions",
                "responses": {
                    "200": json_body(
                        {
                            "type": "object",
                            "properties": {
                                "functions": {"type": "array", "items": {"$ref": "#/components/schemas/Function"}}
                            },
                        },
                        "functions",
                    ),
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
                    "200": json_body({"$ref": "#/components/schemas/Function"}, "the function"),
                    **error_responses(401, 403, 404),
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
                    "200": json_body({"$ref": "#/components/schemas/TaskPage"}, "a page of tasks"),
                    **error_responses(400, 401, 403),
                },
            }
        },
        "/v1/tasks/{id}": {
            "get": {
                "summary": "One task record",
                "operationId": "getTask",
                "parameters": [TASK_ID_PARAM],
                "responses": {"200": json_body(TASK, "the task"), **error_responses(400, 401, 403, 404)},
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
                    "202": json_body({"$ref": "#/components/schemas/Accepted"}, "the new task"),
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
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "task_id": {"type": "string"},
                                        "lines": {"type": "array", "items": {"$ref": "#/components/schemas/LogLine"}},
                                        "truncated": {"type": "boolean"},
                                    },
                                }
                            },
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **error_responses(400, 401, 403, 404),
                },
            }
        },
        "/v1/triggers": {
            "get": {
                "summary": "Every trigger's state and counters",
                "operationId": "listTriggers",
                "responses": {
                    "200": json_body(
                        {"type": "object", "properties": {"triggers": {"type": "array", "items": {"type": "object"}}}},
                        "triggers",
                    ),
                    **error_responses(401, 403),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "security": [],
                "responses": {"200": json_body({"type": "object"}, "OpenAPI 3")},
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
                "responses": {"200": json_body({"type": "object"}, "alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: NATS reachable, streams ready",
                "operationId": "readyz",
                "security": [],
                "responses": {
                    "200": json_body({"type": "object"}, "ready"),
                    "503": json_body({"type": "object"}, "not ready"),
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
        "responses": {
            "200": {"description": "sync trigger: the function's result"},
            "202": json_body({"$ref": "#/components/schemas/Accepted"}, "async trigger: enqueued"),
            # a sync trigger answers with the function's errors, as a sync invocation does
            **error_responses(400, 401, 413, 429, 502, 503, 504),
        },
    }
    if method not in ("get", "delete"):
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": {}}}}
    return operation


def openapi_document(app: web.Application) -> dict[str, Any]:
    paths = base_paths()
    from .api import TRIGGER_PATHS

    trigger_paths: set[str] = app.get(TRIGGER_PATHS) or set()
    for path in sorted(trigger_paths):
        # The methods the trigger registered (`methods:` in its config), POST by default.
        methods = {route.method.lower() for r in app.router.resources() if r.canonical == path for route in r}
        paths[path] = {method: trigger_operation(path, method) for method in sorted(methods or {"post"})}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "fngate",
            "version": __version__,
            "description": "Self-hosted, event-driven function gateway",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
