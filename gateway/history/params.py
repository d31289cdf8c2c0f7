"""The filters of `GET /v1/tasks` (and of bulk operations), from query parameters to a TaskQuery."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.tasks.invocation import parse_iso
from gateway.tasks.status import TaskStatus

from ..errors import BadRequest
from .model import Cursor, TaskQuery, to_ms

MAX_LIMIT = 1000


def parse_time(value: str | None, name: str) -> int | None:
    """ISO 8601 or epoch seconds, as epoch milliseconds."""
    if not value:
        return None
    try:
        return to_ms(float(value))
    except ValueError:
        pass
    try:
        return to_ms(parse_iso(value))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time or epoch seconds") from None


def parse_statuses(value: str | None) -> tuple[TaskStatus, ...]:
    if not value:
        return ()
    statuses = []
    for part in value.split(","):
        try:
            statuses.append(TaskStatus(part.strip()))
        except ValueError:
            allowed = ", ".join(s.value for s in TaskStatus)
            raise BadRequest(f"status must be one of {allowed} (or a comma list of them)") from None
    return tuple(statuses)


def query_from_params(q: Mapping[str, str], *, default_limit: int = 50) -> TaskQuery:
    try:
        limit = int(q.get("limit") or default_limit)
    except ValueError:
        raise BadRequest("limit must be an integer 1..1000") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest("limit must be 1..1000")
    order = q.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise BadRequest("order must be asc or desc")
    source_type = source_name = None
    if q.get("source"):
        source_type, sep, name = q["source"].partition(":")
        source_name = name if sep else None
    return TaskQuery(
        function=q.get("function") or None,
        statuses=parse_statuses(q.get("status")),
        since_ms=parse_time(q.get("since"), "since"),
        until_ms=parse_time(q.get("until"), "until"),
        source_type=source_type or None,
        source_name=source_name,
        condition=q.get("condition") or None,
        chain=q.get("chain") or None,
        prefix=q.get("prefix") or None,
        order="asc" if order == "asc" else "desc",
        limit=limit,
        cursor=Cursor.parse(q["cursor"]) if q.get("cursor") else None,
    )
