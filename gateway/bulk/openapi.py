"""The OpenAPI paths of bulk operations (merged into the document by gateway/openapi.py)."""

from __future__ import annotations

from typing import Any

from gateway.web import schemas
from gateway.web.openapi import error_responses, json_body, path_param, ref

from .request import FILTER_KEYS, MAX_LIMIT

FILTER = {
    "type": "object",
    "description": "as the query parameters of GET /v1/tasks; names a function or a status (or both)",
    "properties": {
        **{key: {"type": "string"} for key in FILTER_KEYS},
        "status": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "description": "a status, a comma list of them, or an array",
        },
    },
    "additionalProperties": False,
}
BODY = {
    "type": "object",
    "required": ["filter"],
    "properties": {
        "filter": FILTER,
        "dry_run": {"type": "boolean", "default": False},
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 10000},
    },
    "additionalProperties": False,
}


def bulk_operation(kind: str, who: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"{kind.capitalize()} every task a filter matches (a bulk operation; {who} scope)",
            "operationId": f"bulk{kind.capitalize()}",
            "requestBody": {"required": True, "content": {"application/json": {"schema": BODY}}},
            "responses": {
                "200": json_body(ref(schemas.BulkCount), "dry run: how many tasks match"),
                "202": json_body(ref(schemas.OperationAccepted), "the operation, started"),
                **error_responses(400, 401, 403, 408, 413, 503),
            },
        }
    }


def bulk_paths() -> dict[str, Any]:
    return {
        "/v1/tasks/rerun": bulk_operation("rerun", "invoke"),
        "/v1/tasks/stop": bulk_operation("stop", "admin"),
        "/v1/operations": {
            "get": {
                "summary": "Bulk operations, newest first",
                "operationId": "listOperations",
                "responses": {
                    "200": json_body(ref(schemas.OperationList), "operations"),
                    **error_responses(401, 403, 503),
                },
            }
        },
        "/v1/operations/{id}": {
            "get": {
                "summary": "One bulk operation and its progress",
                "operationId": "getOperation",
                "parameters": [path_param("id", "operation id")],
                "responses": {
                    "200": json_body(ref(schemas.Operation), "the operation"),
                    **error_responses(401, 403, 404, 503),
                },
            }
        },
    }
