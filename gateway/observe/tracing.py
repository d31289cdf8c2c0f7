"""W3C trace context through fngate, and the spans it reports (CONTRACT: Tracing).

A task keeps the `traceparent` / `tracestate` it came with (API header, a trigger's message
headers, the delivery that made it). Each attempt is a child span of that context, and the
function sees the attempt's span as its parent (`context.trace`, the headers of a `url:`
call, TRACEPARENT for a command). Each delivery of the result is a child span of the last
attempt, and its context is what the destination receives (message headers, or the trace
of the task a `function` destination makes).

Span ids are derived from the task id and the attempt (or delivery) number, not drawn at
random: whichever replica runs an attempt, or sends a delivery, names the same span, and a
delivery knows its parent without the attempt's id being stored anywhere.

Exporting is optional (`tracing.otlp_endpoint`, the `otel` extra): the ids travel either
way. A task that came without a trace gets one of its own, derived from its task id, only
while exporting (else there is nothing to join it to).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.config.model import TracingConfig
    from gateway.tasks.invocation import Invocation

log = logging.getLogger(__name__)
H_TRACEPARENT = "traceparent"
H_TRACESTATE = "tracestate"
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_TRACESTATE = re.compile(r"^[\x20-\x7e]{1,512}$")  # printable ASCII, of a sane length


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A position in a trace: the trace id and the span that is the parent of what comes next
    (None: a trace of fngate's own, whose first spans have no parent)."""

    trace_id: str  # 32 lower-case hex digits
    span_id: str | None  # 16 lower-case hex digits
    flags: str = "01"
    tracestate: str | None = None

    @property
    def traceparent(self) -> str | None:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}" if self.span_id else None

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & 1)

    def child(self, span_id: str) -> TraceContext:
        return replace(self, span_id=span_id)

    def headers(self) -> dict[str, str]:
        """traceparent and tracestate, for whatever carries this context on."""
        headers: dict[str, str] = {}
        if self.span_id:
            headers[H_TRACEPARENT] = f"00-{self.trace_id}-{self.span_id}-{self.flags}"
            if self.tracestate:
                headers[H_TRACESTATE] = self.tracestate
        return headers


def parse(traceparent: str | None, tracestate: str | None = None) -> TraceContext | None:
    """The context of a W3C traceparent (and tracestate), or None when it is absent or
    malformed (then ignored, as the W3C spec says a receiver does)."""
    if not traceparent:
        return None
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    state = tracestate.strip() if tracestate else None
    return TraceContext(trace_id, span_id, flags, state if state and _TRACESTATE.match(state) else None)


def from_headers(headers: Mapping[str, str]) -> TraceContext | None:
    """The trace context an HTTP request or a NATS, Kafka or MQTT message carries, its header
    names matched regardless of case. aiohttp's headers are case-insensitive already; plain
    dicts (NATS headers, MQTT user properties) are looked up by the lower-case names the W3C
    spec and the OpenTelemetry propagators use, and scanned only when those miss (a sender
    may write `TraceParent`). On every trigger event: the scan skips, by length alone, every
    name that cannot be one of the two."""
    traceparent = headers.get(H_TRACEPARENT)
    tracestate = headers.get(H_TRACESTATE)
    if isinstance(headers, dict) and (traceparent is None or tracestate is None):
        for name, value in headers.items():
            if len(name) not in _TRACE_NAME_LENGTHS:
                continue
            lowered = name.lower()
            if traceparent is None and lowered == H_TRACEPARENT:
                traceparent = value
            elif tracestate is None and lowered == H_TRACESTATE:
                tracestate = value
    if not traceparent:
        return None
    return parse(traceparent, tracestate)


_TRACE_NAME_LENGTHS = frozenset({len(H_TRACEPARENT), len(H_TRACESTATE)})


def derived_id(digits: int, *parts: object) -> str:
    """A non-zero id of `digits` hex digits that depends only on `parts`."""
    value = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:digits]
    return value if value.strip("0") else "1".rjust(digits, "0")


def task_trace(task_id: str, traceparent: str | None, tracestate: str | None) -> TraceContext | None:
    """The context a task's spans hang under: the one it came with; else, while exporting,
    a trace of its own (its id derived from the task id)."""
    incoming = parse(traceparent, tracestate)
    if incoming is not None or _exporter is None:
        return incoming
    return TraceContext(derived_id(32, "trace", task_id), None)


def attempt_trace(task_id: str, attempt: int, parent: TraceContext | None, transient: int = 0) -> TraceContext | None:
    """The context of one execution of a task: attempt `attempt` (1-based) after `transient`
    transient failures (which repeat an attempt without counting it). Its function sees it
    as its parent."""
    return parent.child(derived_id(16, "attempt", task_id, attempt, transient)) if parent else None


def result_headers(inv: Invocation, attempts: int, expired: bool = False) -> dict[str, str]:
    """The headers that name the span a task's result came from, for its deliveries: the
    execution that just ended; the task's own context when none did (expired unrun)."""
    task = task_trace(inv.task_id, inv.traceparent, inv.tracestate)
    if task is None:
        return {}
    last = task if expired or attempts < 1 else attempt_trace(inv.task_id, attempts, task, inv.transient)
    return last.headers() if last else {}


def delivery_trace(task_id: str, on: str, attempt: int, parent: TraceContext | None) -> TraceContext | None:
    """The context of a delivery attempt: what the destination receives."""
    if parent is None and _exporter is not None:
        parent = TraceContext(derived_id(32, "trace", task_id), None)
    return parent.child(derived_id(16, "delivery", task_id, on, attempt)) if parent else None


# --- export -----------------------------------------------------------------------------


class Exporter(Protocol):
    def span(
        self,
        name: str,
        context: TraceContext,
        parent: TraceContext | None,
        *,
        kind: str,
        start: float,
        end: float,
        attributes: dict[str, Any],
        error: str | None,
    ) -> None: ...

    def shutdown(self) -> None: ...


_exporter: Exporter | None = None


def configure(config: TracingConfig) -> None:
    """Start exporting, when the config names an OTLP endpoint."""
    global _exporter
    if config.otlp_endpoint and _exporter is None:
        from gateway.observe.otel import OtlpExporter

        _exporter = OtlpExporter(config)
        log.info("exporting spans over OTLP/HTTP to %s", config.otlp_endpoint)


def shutdown() -> None:
    """Send what is buffered and stop exporting."""
    global _exporter
    exporter, _exporter = _exporter, None
    if exporter is not None:
        exporter.shutdown()


def exporting() -> bool:
    return _exporter is not None


def emit(
    name: str,
    context: TraceContext | None,
    parent: TraceContext | None,
    *,
    kind: str,
    start: float,
    attributes: dict[str, Any],
    error: str | None = None,
) -> None:
    """Report a span that ran from `start` until now (wall clock); nothing when not exporting
    or when the trace is not sampled. Never raises: tracing must not fail a task."""
    if _exporter is None or context is None or not context.sampled:
        return
    try:
        _exporter.span(
            name, context, parent, kind=kind, start=start, end=time.time(), attributes=attributes, error=error
        )
    except Exception:
        log.exception("span %s not exported", name)


def emit_attempt(
    inv: Invocation,
    attempt: int,
    parent: TraceContext | None,
    context: TraceContext | None,
    start: float,
    outcome: str,
    error: str | None,
) -> None:
    """The span of one execution of a task (async attempt or sync run)."""
    emit(
        f"run {inv.function}",
        context,
        parent,
        kind="consumer",
        start=start,
        attributes={
            "fngate.task_id": inv.task_id,
            "fngate.function": inv.function,
            "fngate.attempt": attempt,
            "fngate.source.type": inv.source.type,
            "fngate.source.name": inv.source.name,
            "fngate.chain.id": inv.lineage.chain_id,
            "fngate.chain.depth": inv.lineage.depth,
            "fngate.outcome": str(outcome),  # an Outcome, or a sync run's error code
        },
        error=None if outcome == "succeeded" else (error or str(outcome)),
    )


def emit_delivery(
    delivery: Any,
    type_name: str,
    target: str,
    attempt: int,
    parent: TraceContext | None,
    start: float,
    error: BaseException | None,
) -> None:
    """The span of one attempt to send a result record to a destination."""
    outcome = "delivered" if error is None else type(error).__name__
    emit(
        f"deliver {delivery.on} {type_name}",
        delivery.trace,
        parent,
        kind="producer",
        start=start,
        attributes={
            "fngate.task_id": delivery.task_id,
            "fngate.function": delivery.function,
            "fngate.destination.on": delivery.on,
            "fngate.destination.type": type_name,
            "fngate.destination.target": target,
            "fngate.delivery.attempt": attempt,
            "fngate.outcome": str(outcome),  # an Outcome, or a sync run's error code
        },
        error=None if error is None else f"{outcome}: {error}",
    )
