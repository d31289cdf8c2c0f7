"""Task records: the JSON document of the CONTRACT, built and updated in one place."""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.errors import FngateError
from gateway.observe.tracing import record_of
from gateway.tasks.invocation import Invocation, iso
from gateway.tasks.status import TaskStatus, can_transition

Record = dict[str, Any]
MAX_INLINE_RESULT = 256 * 1024
RERUN_SOURCE = "rerun"  # source {type: rerun, name: <original task id>} of a task made by a rerun


def new_record(inv: Invocation) -> Record:
    record = {
        "task_id": inv.task_id,
        "function": inv.function,
        "status": TaskStatus.ENQUEUED.value,
        "attempts": inv.attempt,
        "submitted_at": iso(inv.submitted_at),
        "scheduled_at": iso(inv.scheduled_at or inv.submitted_at),
        "started_at": None,
        "finished_at": None,
        "source": inv.source.as_dict(),
        "chain": {"id": inv.lineage.chain_id, "depth": inv.lineage.depth},
        "trace": record_of(inv.traceparent, inv.tracestate),
        "timeline": [{"status": TaskStatus.ENQUEUED.value, "at": iso(inv.submitted_at)}],
        "result": None,
        "error": None,
        "errors": [],  # one entry per failed attempt, oldest first (lifecycle.failed_attempt)
        "destinations": [],
    }
    if inv.source.type == RERUN_SOURCE:
        record["rerun_of"] = inv.source.name
    return record


class IllegalTransition(FngateError, RuntimeError):
    """A bug: the pipeline tried a status change the state machine does not allow."""

    code = "IllegalTransition"


def stamp(record: Record, status: TaskStatus, at: float | None = None, **fields: Any) -> Record:
    """A copy of the record moved to `status`, with the change stamped in its timeline."""
    current = TaskStatus(record["status"])
    if not can_transition(current, status):
        raise IllegalTransition(f"task {record.get('task_id')}: {current.value} -> {status.value}")
    moment = iso(at if at is not None else time.time())
    updated = dict(record)
    updated.update(fields)
    updated["status"] = status.value
    updated["timeline"] = [*record.get("timeline", []), {"status": status.value, "at": moment}]
    if status is TaskStatus.RUNNING and not record.get("started_at"):
        updated["started_at"] = moment
    if status.terminal:
        updated["finished_at"] = moment
    return updated


def status_of(record: Record) -> TaskStatus:
    return TaskStatus(record["status"])


def encode(record: Record) -> bytes:
    return json.dumps(record, separators=(",", ":"), default=str).encode()


def decode(data: bytes) -> Record:
    result: Record = json.loads(data)
    return result


def result_value(value: Any) -> Any:
    """What a function returned, in a JSON-storable form (bytes as text or base64)."""
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            import base64

            return {"base64": base64.b64encode(raw).decode()}
        return _maybe_json(text)
    return value


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
