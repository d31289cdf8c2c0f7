"""The one small interface every destination implements, the registry of destination
types, and the result record they deliver (CONTRACT: Destinations).

A sink gets a Delivery (the serialized record plus what to put in message headers) and
either returns (delivered) or raises TransientDeliveryError (retried with backoff) or
PermanentDeliveryError (recorded, never retried).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from gateway.config.model import Config, DestinationConfig
from gateway.config.registry import Registry
from gateway.errors import FngateError
from gateway.observe.tracing import TraceContext
from gateway.tasks.invocation import Invocation, Lineage, iso
from gateway.tasks.records import Record
from gateway.tasks.status import Condition, TaskStatus
from gateway.units import parse_duration, parse_size

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from triggers.base import Submit

KiB = 1024


class TransientDeliveryError(FngateError):
    """The destination may take it later: 5xx, connection refused, broker unavailable."""

    status = 502
    code = "TransientDeliveryError"


class PermanentDeliveryError(FngateError):
    """No retry can help: 4xx, a bad destination, a record over the size limit."""

    status = 502
    code = "PermanentDeliveryError"


class On(StrEnum):
    """Which destination of a function a record goes to."""

    SUCCESS = "success"
    FAILURE = "failure"


class DeliveryStatus(StrEnum):
    """Where a destination's delivery of a task's record stands (the record's `destinations`)."""

    PENDING = "pending"  # queued, or failed for now and retried
    DELIVERED = "delivered"
    FAILED = "failed"  # for good: refused, over the size limit, or retried for too long
    SKIPPED = "skipped"  # never sent: the task was stopped as a recursive loop


@dataclass(frozen=True, slots=True)
class Delivery:
    task_id: str
    function: str
    on: On
    condition: str
    body: bytes  # the result record, JSON
    lineage: Lineage  # of the task that produced the record; a consumer advances it by one hop
    trace: TraceContext | None = None  # this delivery's span: the parent of what the destination does

    def trace_headers(self) -> dict[str, str]:
        return self.trace.headers() if self.trace is not None else {}


class SinkOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str
    max_payload: int | None = None
    retry_for: float = 1800.0

    @field_validator("max_payload", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return None if value is None else parse_size(value)

    @field_validator("retry_for", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)


@dataclass(frozen=True)
class SinkContext:
    """What a sink may use of the gateway: submitting invocations and its NATS connection."""

    submit: Submit  # durable async invocation
    nats: NATS  # the gateway's connection
    origin: str  # the function whose results this sink delivers


class Sink(Protocol):
    options: SinkOptions

    @property
    def target(self) -> str: ...

    async def deliver(self, delivery: Delivery) -> None: ...

    async def close(self) -> None: ...


class SinkType(Protocol):
    """A destination type: its class, built from its options and a SinkContext."""

    Options: type[SinkOptions]
    default_max_payload: int

    # `options`: the type's own Options model (a SinkOptions subclass, so not typed as the base).
    def __call__(self, options: Any, context: SinkContext) -> Sink: ...


# type name -> "module:Class"; imported only when a config uses it (Kafka and MQTT are extras).
REGISTRY: Registry[SinkType] = Registry(
    "destination",
    {
        "function": "sinks.function:FunctionSink",
        "queue": "sinks.queue:QueueSink",
        "event_bus": "sinks.event_bus:EventBusSink",
    },
)


def sink_class(type_name: str) -> SinkType:
    """The class of a destination type; UnknownType (a ValueError) when there is none."""
    return REGISTRY.load(type_name)


def options_for(dest: DestinationConfig) -> SinkOptions:
    cls = sink_class(dest.type)
    options: SinkOptions = cls.Options.model_validate({"type": dest.type, **(dest.model_extra or {})})
    return options


def max_payload(dest: DestinationConfig, options: SinkOptions) -> int:
    if options.max_payload is not None:
        return options.max_payload
    limit: int = sink_class(dest.type).default_max_payload
    return limit


def check_destinations(config: Config) -> tuple[list[str], list[str]]:
    """Every destination's options checked (errors with their paths), and static cycles among
    function destinations reported as warnings."""
    errors: list[str] = []
    for name, function in config.functions.items():
        for key in ("on_success", "on_failure"):
            dest = getattr(function.async_, key)
            if dest is None:
                continue
            path = f"functions.{name}.async.{key}"
            try:
                options_for(dest)
            except ValueError as exc:
                if isinstance(exc, ValidationError):
                    for error in exc.errors():
                        where = ".".join([path, *(str(p) for p in error["loc"])])
                        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
                        errors.append(f"{where}: {str(message).removeprefix('Value error, ')}")
                else:
                    errors.append(f"{path}.type: {exc}")
    return errors, cycle_warnings(config)


def cycle_warnings(config: Config) -> list[str]:
    edges: dict[str, list[tuple[str, str]]] = {}
    for name, function in config.functions.items():
        for key in ("on_success", "on_failure"):
            dest = getattr(function.async_, key)
            if dest is not None and dest.type == "function":
                target = (dest.model_extra or {}).get("function")
                if isinstance(target, str):
                    edges.setdefault(name, []).append((key, target))
    warnings: list[str] = []
    reported: set[frozenset[str]] = set()
    for start in sorted(edges):
        stack: list[tuple[str, list[str], str]] = [(start, [start], "")]
        while stack:
            node, path, first_key = stack.pop()
            for key, target in edges.get(node, []):
                if target == start:
                    cycle = frozenset(path)
                    if cycle not in reported:
                        reported.add(cycle)
                        chain = " -> ".join([*path, start])
                        warnings.append(
                            f"functions.{start}.async.{first_key or key}: destinations form a cycle {chain} "
                            f"(stopped at max_chain_depth {config.max_chain_depth} at run time)"
                        )
                elif target not in path:
                    stack.append((target, [*path, target], first_key or key))
    return warnings


def payload_value(payload: bytes) -> Any:
    """A payload as it appears in the record: its JSON, else text, else base64."""
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        pass
    try:
        return payload.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(payload).decode()}


def result_record(record: Record, inv: Invocation) -> dict[str, Any]:
    """The record a destination receives (CONTRACT: Destinations)."""
    succeeded = record["status"] == TaskStatus.SUCCEEDED
    error = record.get("error")
    return {
        "timestamp": iso(time.time()),
        "task_id": record["task_id"],
        "function": record["function"],
        "condition": record.get("condition")
        or (Condition.SUCCEEDED if succeeded else error["type"] if error else Condition.FUNCTION_ERROR),
        "attempts": record.get("attempts", 0),
        "request_payload": payload_value(inv.payload),
        "response": {
            "status_code": 200 if succeeded else 500,
            "function_error": None if succeeded or not error else error["message"],
        },
        "response_payload": record.get("result") if succeeded else None,
    }


def encode_record(result: dict[str, Any]) -> bytes:
    return json.dumps(result, separators=(",", ":"), default=str).encode()
