"""An invocation as it travels through JetStream: metadata in headers, the payload as the body."""

from __future__ import annotations

import functools
import itertools
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, overload
from urllib.parse import quote, unquote

from gateway.observe import tracing
from gateway.observe.tracing import TraceContext
from gateway.tasks import constants as c

META_VERSION = "1"
# A task id is a token of NATS subjects (fngate.state.{task_id}, …): dots may only separate
# non-empty parts. The pattern is also the OpenAPI document's.
TASK_ID_PATTERN = r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$"
TASK_ID = re.compile(TASK_ID_PATTERN)
# Unique per process (64 random bits, drawn once) plus a counter: ids never collide across
# replicas, and no system call is spent per task on randomness.
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count()


def new_chain_id() -> str:
    return f"c-{_ID_PREFIX}{next(_id_counter):x}"


def new_task_id() -> str:
    # Time-prefixed so ids sort roughly by submission time.
    return f"t-{int(time.time() * 1000):x}-{_ID_PREFIX}{next(_id_counter):x}"


@overload
def iso(ts: float) -> str: ...
@overload
def iso(ts: None) -> None: ...
@overload
def iso(ts: float | None) -> str | None: ...
def iso(ts: float | None) -> str | None:
    """`2026-11-22T16:20:01.120Z`. On every event and record: the formatted second is cached,
    as thousands of stamps a second share it (datetime formatting was a few % of a trigger's
    time per event)."""
    if ts is None:
        return None
    seconds = math.floor(ts)
    micros = round((ts - seconds) * 1_000_000)  # rounded to the microsecond, as datetime does
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    return f"{_second(seconds)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


@functools.lru_cache(maxsize=1024)
def _quoted(text: str) -> str:
    """Percent-encoded for the invocation header; the few source names repeat endlessly."""
    return quote(text, safe="")


def parse_iso(value: str) -> float:
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class Source:
    type: str = "api"
    name: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "name": self.name}


@dataclass(frozen=True, slots=True)
class Lineage:
    """The chain an invocation belongs to; depth grows by one with every hop."""

    chain_id: str = field(default_factory=lambda: new_chain_id())
    depth: int = 1
    # The trace context an outside message carried in (or a delivery hands on); the task
    # keeps it as its traceparent/tracestate.
    trace: TraceContext | None = None

    def next_hop(self, trace: TraceContext | None = None) -> Lineage:
        return Lineage(self.chain_id, self.depth + 1, trace)


@dataclass(frozen=True, slots=True)
class Invocation:
    task_id: str
    function: str
    payload: bytes
    content_type: str = "application/json"
    submitted_at: float = field(default_factory=time.time)
    scheduled_at: float = 0.0  # when it was asked to run; max_event_age counts from here
    not_before: float = 0.0
    attempt: int = 0  # executions already made (function errors and crashes)
    transient: int = 0  # transient failures so far: sets the next backoff, not counted as attempts
    source: Source = Source()
    lineage: Lineage = field(default_factory=Lineage)
    traceparent: str | None = None  # W3C trace context the task came with (tracing.py)
    tracestate: str | None = None
    priority: str = "normal"  # high | normal | low: order among a flow-controlled function's waiting tasks
    concurrency_key: str = ""  # tasks of one key run at most key_concurrency at once

    @property
    def subject(self) -> str:
        return f"{c.TASKS_SUBJECT}.{self.function}.{self.task_id}"

    @property
    def delay_subject(self) -> str:
        return f"{c.DELAY_SUBJECT}.{self.function}.{self.task_id}"

    def headers(self) -> dict[str, str]:
        # One compact header rather than one per field: every consumer of the task stream
        # parses the headers of every message, and that cost grows with their count.
        meta = "|".join(
            (
                META_VERSION,
                self.task_id,
                self.function,
                repr(self.submitted_at),
                repr(self.scheduled_at or self.submitted_at),
                repr(self.not_before),
                str(self.attempt),
                str(self.transient),
                _quoted(self.source.type),
                _quoted(self.source.name),
                self.lineage.chain_id,
                str(self.lineage.depth),
            )
        )
        if self.priority != "normal" or self.concurrency_key:
            # Flow control's two fields, only when set: the common task's header keeps its
            # twelve, and a header of their own would cost every consumer a parse per task.
            meta = f"{meta}|{self.priority}|{self.concurrency_key}"
        headers = {c.H_INVOCATION: meta, c.H_CONTENT_TYPE: self.content_type}
        if self.traceparent:
            headers[c.H_TRACEPARENT] = self.traceparent
            if self.tracestate:
                headers[c.H_TRACESTATE] = self.tracestate
        return headers

    @classmethod
    def from_message(cls, headers: dict[str, str] | None, data: bytes | None) -> Invocation:
        h = headers or {}
        fields = h[c.H_INVOCATION].split("|")
        if fields[0] != META_VERSION or len(fields) not in (12, 14):
            raise ValueError(f"unknown invocation header {h[c.H_INVOCATION][:80]!r}")
        submitted = float(fields[3])
        return cls(
            task_id=fields[1],
            function=fields[2],
            payload=data or b"",
            content_type=h.get(c.H_CONTENT_TYPE, "application/octet-stream"),
            submitted_at=submitted,
            scheduled_at=float(fields[4]),
            not_before=float(fields[5]),
            attempt=int(fields[6]),
            transient=int(fields[7]),
            source=Source(unquote(fields[8]), unquote(fields[9])),
            lineage=Lineage(fields[10] or "unknown", int(fields[11])),
            traceparent=h.get(c.H_TRACEPARENT),
            tracestate=h.get(c.H_TRACESTATE),
            priority=fields[12] if len(fields) == 14 else "normal",
            concurrency_key=fields[13] if len(fields) == 14 else "",
        )

    @staticmethod
    def identity(headers: dict[str, str]) -> tuple[str, str, float]:
        """(task id, function, submitted at) from the headers alone, without the payload."""
        fields = headers[c.H_INVOCATION].split("|", 4)
        return fields[1], fields[2], float(fields[3])

    @staticmethod
    def flow(headers: dict[str, str]) -> tuple[str, float, float, str, str]:
        """(task id, scheduled at, not before, priority, concurrency key) from the headers
        alone: what the flow leader needs of every task it admits, without building it."""
        fields = headers[c.H_INVOCATION].split("|")
        if fields[0] != META_VERSION or len(fields) not in (12, 14):
            raise ValueError(f"unknown invocation header {headers[c.H_INVOCATION][:80]!r}")
        if len(fields) == 14:
            return fields[1], float(fields[4]), float(fields[5]), fields[12], fields[13]
        return fields[1], float(fields[4]), float(fields[5]), "normal", ""

    def but(self, **changes: Any) -> Invocation:
        return replace(self, **changes)


# One event of a trigger's batch: (JSON payload, task id, lineage it carried or None).
BatchItem = tuple[bytes, str, Lineage | None]


# A chain id travels inside the invocation header, whose fields `|` separates: only these
# characters may enter it (what fngate generates, and what callers reasonably pass on).
CHAIN_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_CHAIN_DEPTH_VALUE = 100_000


def lineage_from_headers(headers: Mapping[str, str]) -> Lineage | None:
    """The lineage an outside message carries (HTTP/NATS/Kafka headers, MQTT 5 user
    properties), advanced by one hop, with the trace context it carries; None when it
    carries neither. A trigger cannot refuse a message for a bad header, so a malformed chain
    id starts a new chain (the depth, which loop detection needs, is kept) and a malformed
    depth counts as 0."""
    trace = tracing.from_headers(headers)
    chain_id = headers.get(c.H_CHAIN_ID)
    if not chain_id:
        return Lineage(trace=trace) if trace else None
    depth_text = str(headers.get(c.H_CHAIN_DEPTH, "0")).strip()
    depth = int(depth_text) if depth_text.isascii() and depth_text.isdigit() and len(depth_text) <= 6 else 0
    if not CHAIN_ID.fullmatch(chain_id):
        chain_id = new_chain_id()
    return Lineage(chain_id, min(depth, MAX_CHAIN_DEPTH_VALUE) + 1, trace)


def lineage_headers(lineage: Lineage) -> dict[str, str]:
    """Headers that carry a lineage out of fngate, for destinations to attach."""
    return {c.H_CHAIN_ID: lineage.chain_id, c.H_CHAIN_DEPTH: str(lineage.depth)}


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def valid_traceparent(value: str | None) -> str | None:
    """A W3C traceparent header as given, or None when absent or malformed (then ignored)."""
    if not value:
        return None
    value = value.strip().lower()
    if not _TRACEPARENT.match(value) or value.startswith("ff") or value[3:35] == "0" * 32 or value[36:52] == "0" * 16:
        return None
    return value
