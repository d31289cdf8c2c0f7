"""Task records: the JSON document of the CONTRACT, built and updated in one place.

No `from __future__ import annotations` here: TypedDict reads `NotRequired` at run time."""

import json
import time
from typing import Any, Literal, NotRequired, TypedDict

from gateway.errors import FngateError
from gateway.tasks.invocation import Invocation, iso
from gateway.tasks.status import TaskStatus, can_transition


class SourceEntry(TypedDict):
    type: str  # api, http, timer, file, kafka, mqtt, nats, function, rerun
    name: str


class ChainEntry(TypedDict):
    id: str
    depth: int


class TraceEntry(TypedDict):
    traceparent: str
    tracestate: NotRequired[str]


class TimelineEntry(TypedDict):
    status: str
    at: str


class ErrorEntry(TypedDict):
    type: str
    message: str


class AttemptError(TypedDict):
    attempt: int
    at: str | None
    type: str
    message: str


DeliveryStatus = Literal["pending", "delivered", "failed", "skipped"]


class DeliveryAttempt(TypedDict):
    attempt: int
    status: DeliveryStatus
    error: NotRequired[str | None]
    at: NotRequired[str | None]


class DestinationEntry(TypedDict):
    on: Literal["success", "failure"]
    type: str
    target: str
    status: DeliveryStatus
    attempts: int
    error: NotRequired[str | None]
    last_attempt_at: NotRequired[str | None]
    history: NotRequired[list[DeliveryAttempt]]


class Record(TypedDict):
    """A task record (CONTRACT: Task record): what the store keeps, the index reads and the
    API answers. web/schemas.py documents it; tests/test_records.py keeps the two alike."""

    task_id: str
    function: str
    status: str  # a TaskStatus value
    attempts: int
    submitted_at: str | None
    scheduled_at: str | None
    started_at: str | None
    finished_at: str | None
    source: SourceEntry
    chain: ChainEntry | None
    trace: TraceEntry | None
    timeline: list[TimelineEntry]
    result: Any
    error: ErrorEntry | None
    errors: list[AttemptError]
    destinations: list[DestinationEntry]
    condition: NotRequired[str | None]
    rerun_of: NotRequired[str]


MAX_INLINE_RESULT = 256 * 1024
RERUN_SOURCE = "rerun"  # source {type: rerun, name: <original task id>} of a task made by a rerun


def new_record(inv: Invocation) -> Record:
    record: Record = {
        "task_id": inv.task_id,
        "function": inv.function,
        "status": TaskStatus.ENQUEUED.value,
        "attempts": inv.attempt,
        "submitted_at": iso(inv.submitted_at),
        "scheduled_at": iso(inv.scheduled_at or inv.submitted_at),
        "started_at": None,
        "finished_at": None,
        "source": {"type": inv.source.type, "name": inv.source.name},
        "chain": {"id": inv.lineage.chain_id, "depth": inv.lineage.depth},
        "trace": trace_entry(inv.traceparent, inv.tracestate),
        "timeline": [{"status": TaskStatus.ENQUEUED.value, "at": iso(inv.submitted_at)}],
        "result": None,
        "error": None,
        "errors": [],  # one entry per failed attempt, oldest first (lifecycle.failed_attempt)
        "destinations": [],
    }
    if inv.source.type == RERUN_SOURCE:
        record["rerun_of"] = inv.source.name
    return record


def trace_entry(traceparent: str | None, tracestate: str | None) -> TraceEntry | None:
    """The record's `trace`: the W3C context the task came with."""
    if not traceparent:
        return None
    entry: TraceEntry = {"traceparent": traceparent}
    if tracestate:
        entry["tracestate"] = tracestate
    return entry


class IllegalTransition(FngateError, RuntimeError):
    """A bug: the pipeline tried a status change the state machine does not allow."""

    code = "IllegalTransition"


def stamp(record: Record, status: TaskStatus, at: float | None = None, **fields: Any) -> Record:
    """A copy of the record moved to `status`, with the change stamped in its timeline."""
    current = TaskStatus(record["status"])
    if not can_transition(current, status):
        raise IllegalTransition(f"task {record.get('task_id')}: {current.value} -> {status.value}")
    moment = iso(at if at is not None else time.time())
    updated = record.copy()
    updated.update(fields)  # type: ignore[typeddict-item]  # the callers name record fields
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
