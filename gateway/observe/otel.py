"""Span export over OTLP/HTTP with the OpenTelemetry SDK (the `otel` extra).

fngate names its spans itself (tracing.py derives their ids from task ids), so the SDK's
id generator is handed the ids of the span about to start; everything else (sampling by
the parent's flags, batching, the OTLP protobuf encoding, retries) is the SDK's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from gateway import __version__
from gateway.observe.tracing import TraceContext

if TYPE_CHECKING:
    from gateway.config.model import TracingConfig

KINDS = {"internal": SpanKind.INTERNAL, "consumer": SpanKind.CONSUMER, "producer": SpanKind.PRODUCER}
# Spans leave in batches at most this far apart: soon enough to follow a task live.
EXPORT_DELAY_MS = 1000


class _GivenIds(IdGenerator):
    """Hands out the ids set for the next span; random ones when none are set."""

    def __init__(self) -> None:
        self.trace_id: int | None = None
        self.span_id: int | None = None
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        value, self.span_id = self.span_id, None
        return value if value is not None else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        value, self.trace_id = self.trace_id, None
        return value if value is not None else self._random.generate_trace_id()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base endpoint (as OTEL_EXPORTER_OTLP_ENDPOINT
    is read), or the endpoint itself when it already names the path."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


class OtlpExporter:
    def __init__(self, config: TracingConfig) -> None:
        assert config.otlp_endpoint is not None
        self._ids = _GivenIds()
        resource = Resource.create({"service.name": config.service_name, "service.version": __version__})
        self._provider = TracerProvider(resource=resource, id_generator=self._ids)
        exporter = OTLPSpanExporter(endpoint=traces_url(config.otlp_endpoint), headers=dict(config.headers))
        self._provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=EXPORT_DELAY_MS))
        self._tracer = self._provider.get_tracer("fngate", __version__)

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
    ) -> None:
        assert context.span_id is not None
        parent_context = None
        if parent is not None and parent.span_id:
            state = TraceState.from_header([parent.tracestate]) if parent.tracestate else None
            remote = SpanContext(
                trace_id=int(parent.trace_id, 16),
                span_id=int(parent.span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(int(parent.flags, 16)),
                trace_state=state,
            )
            parent_context = trace.set_span_in_context(NonRecordingSpan(remote))
        else:
            self._ids.trace_id = int(context.trace_id, 16)  # a root: the trace is ours to name
        self._ids.span_id = int(context.span_id, 16)
        span = self._tracer.start_span(
            name, context=parent_context, kind=KINDS[kind], attributes=attributes, start_time=int(start * 1e9)
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error[:500]))
        span.end(end_time=int(end * 1e9))

    def shutdown(self) -> None:
        self._provider.shutdown()
