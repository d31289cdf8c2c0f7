"""The body of `POST /v1/tasks/rerun` and `/v1/tasks/stop`, checked, as a TaskQuery."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest
from ..history import TaskQuery, query_from_params

FILTER_KEYS = ("function", "status", "since", "until", "source", "condition", "chain", "prefix")
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class BulkRequest:
    filter: dict[str, str]  # as given (status as a comma list), kept in the operation record
    query: TaskQuery
    dry_run: bool
    limit: int


def parse_request(body: bytes) -> BulkRequest:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise BadRequest('body must be JSON: {"filter": {...}, "dry_run": false, "limit": 10000}') from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    unknown = set(data) - {"filter", "dry_run", "limit"}
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    raw = data.get("filter")
    if not isinstance(raw, dict):
        raise BadRequest("filter must be an object")
    filt = {}
    for key, value in raw.items():
        if key not in FILTER_KEYS:
            raise BadRequest(f"filter.{key} is not a filter (one of {', '.join(FILTER_KEYS)})")
        filt[key] = filter_value(key, value)
    filt = {k: v for k, v in filt.items() if v}
    if not filt.get("function") and not filt.get("status"):
        raise BadRequest("the filter must name a function or a status")
    dry_run = data.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequest("dry_run must be true or false")
    limit = data.get("limit", DEFAULT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer 1..{MAX_LIMIT}")
    # Oldest first: a redrive replays in the order the tasks came.
    query = query_from_params({**filt, "order": "asc", "limit": "1000"})
    return BulkRequest(filt, query, dry_run, limit)


def filter_value(key: str, value: Any) -> str:
    if key == "status" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key in ("since", "until"):
        return str(value)
    if not isinstance(value, str):
        raise BadRequest(f"filter.{key} must be a string")
    return value
