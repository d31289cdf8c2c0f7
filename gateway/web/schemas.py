"""The shapes of the API's responses, as pydantic models: the handlers pass what they answer
through them (`shape`), and the OpenAPI document's schemas are generated from them
(openapi.py), so the two cannot drift apart.

A task record is forbidden keys the model does not name: a field added to the record but
not here fails the document test (tests/test_openapi.py) rather than going undocumented.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.tasks.status import TaskStatus

log = logging.getLogger(__name__)
_warned: set[str] = set()


class _Strict(BaseModel):
    # Every field is in every response (null where it has no value), so the document marks
    # them all required.
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_serialization_defaults_required=True)


# --- errors and acknowledgements ---------------------------------------------------------


class ErrorDetail(_Strict):
    code: str = Field(examples=["FunctionNotFound"])
    message: str


class TaskRef(_Strict):
    task_id: str
    function: str
    status: TaskStatus


class Error(_Strict):
    """Every error: `{"error": {"code", "message"}}`; a 409 DuplicateTask also names the task."""

    # Rendered by the error middleware (api.error_response), where `task` is there only
    # when there is one.
    model_config = ConfigDict(json_schema_serialization_defaults_required=False)
    error: ErrorDetail
    task: TaskRef | None = None


class Accepted(_Strict):
    """An async invocation or a rerun, durably enqueued."""

    task_id: str
    status: Literal["Enqueued"]


class Dropped(_Strict):
    """An http trigger's request that its `filter:` did not match: acknowledged, no task."""

    task_id: None = Field(description="no task was made")
    status: Literal["Dropped"]
    reason: Literal["filter"]


# --- the task record ----------------------------------------------------------------------


class TimelineEntry(_Strict):
    status: TaskStatus
    at: str = Field(json_schema_extra={"format": "date-time"})


class Source(_Strict):
    type: str = Field(examples=["api", "http", "timer", "file", "kafka", "mqtt", "nats", "function", "rerun"])
    name: str


class Chain(_Strict):
    """The invocation chain (lineage): loop detection counts its depth."""

    id: str
    depth: int = Field(ge=1)


class Trace(_Strict):
    """The W3C trace context the task came with (docs/tracing.md)."""

    traceparent: str
    tracestate: str | None = None


class TaskError(_Strict):
    type: str
    message: str


class AttemptError(_Strict):
    attempt: int
    at: str | None = None
    type: str
    message: str


class DeliveryAttempt(_Strict):
    attempt: int
    status: Literal["pending", "delivered", "failed", "skipped"]
    error: str | None = None
    at: str | None = None


class DestinationEntry(_Strict):
    on: Literal["success", "failure"]
    type: str
    target: str
    status: Literal["pending", "delivered", "failed", "skipped"]
    attempts: int
    error: str | None = None
    last_attempt_at: str | None = None
    history: list[DeliveryAttempt] = Field(default=[], description="each attempt's outcome, the last 20")


class Task(_Strict):
    """A task record (CONTRACT: Task record)."""

    task_id: str
    function: str
    status: TaskStatus
    attempts: int
    submitted_at: str | None = Field(json_schema_extra={"format": "date-time"})
    scheduled_at: str | None = Field(
        default=None, description="when it was asked to run (X-Delay); max_event_age counts from here"
    )
    started_at: str | None = None
    finished_at: str | None = None
    source: Source
    chain: Chain | None = None
    trace: Trace | None = None
    timeline: list[TimelineEntry]
    result: Any = None
    error: TaskError | None = None
    condition: str | None = Field(
        default=None,
        examples=["Succeeded", "FunctionError", "Timeout", "RetriesExhausted", "Expired", "RecursiveLoopDetected"],
    )
    destinations: list[DestinationEntry] = []
    errors: list[AttemptError] | None = Field(default=None, description="one entry per failed attempt, oldest first")
    rerun_of: str | None = None


class TaskPage(_Strict):
    tasks: list[Task]
    next_cursor: str | None


# --- functions ------------------------------------------------------------------------------


class LastMinute(_Strict):
    submitted: int
    completed: int
    failed: int


class Totals(_Strict):
    submitted: int
    completed: int
    failed: int
    stopped: int
    expired: int = Field(description="apart from failed: the six states add up to submitted")
    queued: int
    running: int
    running_sync: int = 0


class Counts(_Strict):
    last_minute: LastMinute
    totals: Totals


class Latency(_Strict):
    """Percentiles (milliseconds) of the tasks that ended Succeeded or Failed, from a
    histogram: each within 19 % of the exact one; null when no task ended."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None


class StatsPoint(_Strict):
    at: str = Field(description="the minute's start")
    submitted: int
    succeeded: int
    failed: int = Field(description="ended Failed, Expired or Invalid")
    end_to_end_ms: Latency = Field(description="finished - submitted, of the tasks that ended in this minute")
    run_ms: Latency = Field(description="finished - first started (every attempt and the backoff between them)")


class StatsTotals(_Strict):
    submitted: int
    succeeded: int
    failed: int


class StatsLatency(_Strict):
    end_to_end: Latency
    run: Latency


class FunctionStats(_Strict):
    """A function's charts from the task index: one point per minute, oldest first, the last
    one the minute now running."""

    function: str
    step_seconds: int
    since: str
    minutes: list[StatsPoint]
    totals: StatsTotals = Field(description="sums over the points")
    latency_ms: StatsLatency = Field(description="percentiles over the whole window")


class AsyncSummary(_Strict):
    max_retries: int
    max_event_age: float
    retention: float
    on_success: str | None = Field(description="the destination's type")
    on_failure: str | None


class FlowWaiting(_Strict):
    concurrency: int
    key: int
    rate: int


class FlowSummary(_Strict):
    """Flow control of a function (gateway/flow): its limits and what its leader holds back."""

    key_concurrency: int | None
    rate_limit: str | None = Field(examples=["100/s"])
    priorities: bool
    leader: str | None = Field(description="the replica admitting this function's tasks")
    running: int
    waiting: FlowWaiting = Field(description="tasks held back, by the limit that holds them")
    parked: int = Field(description="waiting tasks parked on FNGATE_FLOW")
    as_of_seconds_ago: float | None = Field(description="age of these figures (the leader sends them once a second)")


class Function(_Strict):
    """A function's config summary (no secrets) and live counts."""

    name: str
    runtime: Literal["python", "url", "command"]
    handler: str | None = None
    url: str | None = Field(default=None, description="without credentials or query")
    command: list[str] | None = Field(default=None, description="the program only, not its arguments")
    timeout: float
    concurrency: int
    flow: FlowSummary | None = Field(default=None, description="null unless key_concurrency, rate_limit or priorities")
    async_: AsyncSummary = Field(alias="async")
    counts: Counts

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class FunctionList(_Strict):
    functions: list[Function]


# --- triggers, health -------------------------------------------------------------------------


class Trigger(_Open):
    """A trigger's state and counters; each type adds its own fields."""

    name: str
    type: str
    function: str
    state: str = Field(examples=["created", "running", "holding", "stopped"])
    ready: bool = Field(description="receiving events: subscribed, partitions assigned, watch armed, routes up")
    events_received: int
    invocations: int
    errors: int
    last_error: str | None
    matched: int = Field(description="events that passed the trigger's filter (every event without one)")
    dropped: int = Field(description="events the filter dropped (acknowledged, no task)")


class TriggerList(_Strict):
    triggers: list[Trigger]


class Health(_Strict):
    status: Literal["ok"]


class TriggerReadiness(_Strict):
    type: str
    state: str
    ready: bool


class ReadyChecks(_Open):
    nats: bool
    streams: bool
    store_writable: bool = Field(description="false while JetStream refuses to store task records (store full)")
    triggers: dict[str, TriggerReadiness] = Field(description="every trigger by name: ready once it receives events")


class Readiness(_Strict):
    ready: bool
    checks: ReadyChecks


class LogLine(_Strict):
    at: str
    level: str
    message: str
    attempt: int | None = None


class TaskLogs(_Strict):
    task_id: str
    lines: list[LogLine]
    truncated: bool


# --- bulk operations -------------------------------------------------------------------------


class BulkCount(_Strict):
    """A dry run: how many tasks the filter matches (up to `limit`)."""

    matched: int


class OperationAccepted(_Strict):
    operation_id: str
    matched: int


class Operation(_Strict):
    operation_id: str
    kind: Literal["rerun", "stop"]
    filter: dict[str, str]
    status: Literal["Running", "Succeeded", "Failed"]
    matched: int
    done: int = Field(description="tasks acted on (rerun enqueued, or stopped / already ended)")
    failed: int = Field(description="tasks that could not be acted on (payload gone, function removed)")
    started_at: str
    finished_at: str | None


class OperationList(_Strict):
    operations: list[Operation]


RESPONSE_MODELS: list[type[BaseModel]] = [
    Error, Accepted, Dropped, Task, TaskPage, Function, FunctionList, FunctionStats, TriggerList, Health, Readiness,
    TaskLogs, BulkCount, OperationAccepted, Operation, OperationList,
]  # fmt: skip


def shape(model: type[BaseModel], data: Any) -> Any:
    """`data` as `model` documents it: checked, and every field present. Data the model does
    not describe is answered as it is (and logged once per model): a read never fails for
    a schema, and the document test catches the drift."""
    try:
        return model.model_validate(data).model_dump(mode="json", by_alias=True)
    except ValidationError as exc:
        if model.__name__ not in _warned:
            _warned.add(model.__name__)
            log.error("response does not match the %s schema (answered as it is): %s", model.__name__, exc)
        return data


def complete(model: type[BaseModel], data: Any) -> Any:
    """`data` with every field `model` documents present, defaults filled in, as `shape`
    answers a conforming document, but without checking it: for the task records a listing
    returns, which the gateway wrote itself (checking 50 of them was most of a page's time,
    1,000 of them ~30 ms). tests/test_openapi.py holds the two to the same answer."""
    if not isinstance(data, dict):
        return data
    for key, nested, default in _fields(model):
        if key not in data:
            if default is not _REQUIRED:
                data[key] = default() if callable(default) else default
            continue
        if nested is not None:
            value = data[key]
            for item in value if isinstance(value, list) else (value,):
                complete(nested, item)
    return data


_REQUIRED = object()
_field_cache: dict[type[BaseModel], list[tuple[str, type[BaseModel] | None, Any]]] = {}


def _fields(model: type[BaseModel]) -> list[tuple[str, type[BaseModel] | None, Any]]:
    """(key, the model a value holds if any, its default: a value, a factory, or _REQUIRED)."""
    known = _field_cache.get(model)
    if known is None:
        known = []
        for name, info in model.model_fields.items():
            if info.is_required():
                default: Any = _REQUIRED
            elif info.default_factory is not None:
                default = info.default_factory
            else:
                value = info.default
                # A mutable default is copied per document (a list answered twice would be shared).
                default = (lambda v=value: list(v)) if isinstance(value, list) else value
            known.append((info.alias or name, _model_in(info.annotation), default))
        _field_cache[model] = known
    return known


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model inside `X`, `X | None`, `list[X]` or `list[X] | None`."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
