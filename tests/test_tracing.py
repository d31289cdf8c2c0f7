"""Trace context end to end, and span export over OTLP/HTTP to a receiver that decodes the
protobuf it gets (opentelemetry-proto)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import ROOT, Endpoint, NatsServer, free_port

TRACED = "python:tests.functions:traced"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
TRACESTATE = "vendor=abc,other=1"


def parts(traceparent: str) -> tuple[str, str]:
    """(trace id, span id) of a traceparent, checked for shape."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and flags == "01" and len(trace_id) == 32 and len(span_id) == 16
    return trace_id, span_id


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP traces endpoint: decodes every ExportTraceServiceRequest it is sent."""

    port: int
    spans: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {
                        a.key: a.value.string_value or a.value.int_value for a in span.attributes
                    }  # fmt: skip
                    self.spans.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "attributes": attributes,
                            "error": span.status.code == span.status.STATUS_CODE_ERROR,
                            "service": resource.get("service.name"),
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                        }
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def find(self, name: str, task_id: str) -> dict[str, Any] | None:
        return next((s for s in self.spans if s["name"] == name and s["attributes"]["fngate.task_id"] == task_id), None)


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    receiver = OtlpReceiver(free_port())
    double = Endpoint({"/v1/traces": receiver.handle}, receiver.port)
    await double.up()
    yield receiver
    await double.down()


async def test_one_trace_through_tasks_destinations_and_triggers(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    otlp: OtlpReceiver,
    unique: Any,
) -> None:
    first, second, third, hooked = unique("tra"), unique("trb"), unique("trc"), unique("trh")
    subject = f"traced.{third}"
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "tracing": {"otlp_endpoint": otlp.url, "service_name": "fngate-test"},
            "functions": {
                first: {"handler": TRACED, "async": {"on_success": {"type": "function", "function": second}}},
                second: {"handler": TRACED, "async": {"on_success": {"type": "queue", "backend": "nats",
                                                                      "subject": subject}}},
                third: {"handler": TRACED},
                hooked: {"handler": TRACED},
            },
            "triggers": [
                {"name": third, "type": "nats", "subject": subject, "function": third},
                {"name": hooked, "type": "http", "path": f"/hooks/{hooked}", "function": hooked},
            ],
        }
    )  # fmt: skip
    api = Api(http, gw.url)
    task_a = await api.submit(first, {}, traceparent=TRACEPARENT, tracestate=TRACESTATE)
    record_a = await api.wait_status(task_a, "Succeeded")
    assert record_a["trace"] == {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    run_a = parts(record_a["result"]["traceparent"])
    assert run_a[0] == TRACE_ID and run_a[1] != CALLER_SPAN
    assert record_a["result"]["tracestate"] == TRACESTATE

    # The function destination's task: the same trace, a child of the delivery's span.
    record_b = await api.wait_status(f"{task_a}.success", "Succeeded")
    into_b = parts(record_b["trace"]["traceparent"])
    assert into_b[0] == TRACE_ID and into_b[1] not in (CALLER_SPAN, run_a[1])
    assert record_b["trace"]["tracestate"] == TRACESTATE
    run_b = parts(record_b["result"]["traceparent"])

    # The nats trigger reading the queue destination's subject: the same trace again.
    async def third_task() -> dict[str, Any] | None:
        _, body = await api.get(f"/v1/tasks?function={third}")
        done = [t for t in body["tasks"] if t["status"] == "Succeeded"]
        return done[0] if done else None

    record_c = await wait_until(third_task)
    into_c = parts(record_c["trace"]["traceparent"])
    assert into_c[0] == TRACE_ID and into_c[1] not in (run_b[1], into_b[1])
    assert record_c["source"]["type"] == "nats"

    # An http trigger keeps what the sender's request carried.
    other = f"00-{'ab' * 16}-{'cd' * 8}-01"
    async with http.post(f"{gw.url}/hooks/{hooked}", json={}, headers={"traceparent": other}) as resp:
        assert resp.status == 202
        hooked_id = (await resp.json())["task_id"]
    assert (await api.wait_status(hooked_id, "Succeeded"))["trace"] == {"traceparent": other, "tracestate": None}

    # A sync invocation runs in the caller's trace too, and reports its run.
    status, result, _ = await api.invoke(third, {}, mode="sync", headers={"traceparent": TRACEPARENT})
    assert status == 200 and parts(result["traceparent"])[0] == TRACE_ID

    # A task that came without a trace is exported in a trace of its own.
    plain = await api.submit(third, {})
    record_plain = await api.wait_status(plain, "Succeeded")
    assert record_plain["trace"] is None and record_plain["result"]["traceparent"] is not None

    async def exported() -> list[dict[str, Any] | None] | None:
        wanted = [
            otlp.find(f"run {first}", task_a),
            otlp.find("deliver success function", task_a),
            otlp.find(f"run {second}", f"{task_a}.success"),
            otlp.find("deliver success queue", f"{task_a}.success"),
            otlp.find(f"run {third}", record_c["task_id"]),
            otlp.find(f"run {third}", plain),
            otlp.find(f"run {third}", result["task_id"]),
        ]
        return wanted if all(wanted) else None

    attempt_a, deliver_a, attempt_b, deliver_b, attempt_c, attempt_plain, sync_run = await wait_until(
        exported, timeout=30
    )
    assert sync_run["parent_span_id"] == CALLER_SPAN and sync_run["attributes"]["fngate.source.type"] == "api"
    chain = [attempt_a, deliver_a, attempt_b, deliver_b, attempt_c]
    assert all(s["trace_id"] == TRACE_ID and s["service"] == "fngate-test" for s in chain)
    # Each span is the parent of the next, from the caller's span on.
    assert attempt_a["parent_span_id"] == CALLER_SPAN and attempt_a["span_id"] == run_a[1]
    assert deliver_a["parent_span_id"] == attempt_a["span_id"] and deliver_a["span_id"] == into_b[1]
    assert attempt_b["parent_span_id"] == deliver_a["span_id"] and attempt_b["span_id"] == run_b[1]
    assert deliver_b["parent_span_id"] == attempt_b["span_id"] and deliver_b["span_id"] == into_c[1]
    assert attempt_c["parent_span_id"] == deliver_b["span_id"]
    assert attempt_a["attributes"]["fngate.attempt"] == 1 and attempt_a["attributes"]["fngate.outcome"] == "succeeded"
    assert deliver_b["attributes"]["fngate.destination.target"] == f"nats:{subject}"
    assert not any(s["error"] for s in chain) and all(s["end"] >= s["start"] > 0 for s in chain)
    assert (
        attempt_plain["parent_span_id"] == ""
        and attempt_plain["trace_id"] == parts(record_plain["result"]["traceparent"])[0]
    )


async def test_failed_attempts_are_error_spans(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    otlp: OtlpReceiver,
    unique: Any,
) -> None:
    name = unique("trf")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "tracing": {"otlp_endpoint": f"{otlp.url}/v1/traces"},
            "functions": {
                name: {"handler": "python:examples.functions:fail", "async": {"max_retries": 1, "retry_delay": "100ms"}}
            },
        }
    )
    api = Api(http, gw.url)
    task_id = await api.submit(name, {}, traceparent=TRACEPARENT)
    await api.wait_status(task_id, "Failed")

    async def both() -> list[dict[str, Any]] | None:
        runs = [s for s in otlp.spans if s["attributes"].get("fngate.task_id") == task_id]
        return runs if len(runs) == 2 else None

    runs = sorted(await wait_until(both, timeout=30), key=lambda s: s["attributes"]["fngate.attempt"])
    assert [s["attributes"]["fngate.attempt"] for s in runs] == [1, 2]
    assert all(s["error"] and s["parent_span_id"] == CALLER_SPAN for s in runs)
    assert runs[0]["span_id"] != runs[1]["span_id"] and runs[0]["service"] == "fngate"


def test_check_validates_the_tracing_section(tmp_path: Path) -> None:
    def check(section: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "c.yaml"
        path.write_text(f"tracing: {section}\nfunctions:\n  a: {{handler: 'python:examples.functions:echo'}}\n")
        return subprocess.run(
            [sys.executable, "-m", "gateway", "check", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        )

    assert check("{otlp_endpoint: 'http://127.0.0.1:4318'}").returncode == 0
    bad = check("{otlp_endpoint: 'grpc://collector:4317', sample: 1}")
    assert bad.returncode == 2
    assert "tracing.otlp_endpoint: must be http(s)://host:port" in bad.stderr
    assert "tracing.sample: unknown key" in bad.stderr


def test_trace_context_is_parsed_as_the_w3c_spec_says() -> None:
    from gateway.observe.tracing import derived_id, from_headers, parse

    context = parse(TRACEPARENT.upper(), " vendor=abc ")
    assert context is not None and context.traceparent == TRACEPARENT and context.tracestate == "vendor=abc"
    assert parse(f"ff-{TRACE_ID}-{CALLER_SPAN}-01") is None  # version ff is invalid
    assert parse(f"00-{'0' * 32}-{CALLER_SPAN}-01") is None and parse(f"00-{TRACE_ID}-{'0' * 16}-01") is None
    assert parse("00-abc-def-01") is None and parse(None) is None
    assert parse(TRACEPARENT, "caf\u00e9=1") == parse(TRACEPARENT)  # a malformed tracestate is dropped alone
    unsampled = parse(f"00-{TRACE_ID}-{CALLER_SPAN}-00")
    assert unsampled is not None and not unsampled.sampled
    # Plain dicts (NATS headers, MQTT user properties) are looked up regardless of case.
    assert from_headers({"Traceparent": TRACEPARENT}) == parse(TRACEPARENT)
    assert from_headers({"TRACEPARENT": TRACEPARENT, "TraceState": "v=1"}) == parse(TRACEPARENT, "v=1")
    assert from_headers({"x-traceparent": TRACEPARENT}) is None
    assert (
        derived_id(16, "attempt", "t-1", 1, 0)
        == derived_id(16, "attempt", "t-1", 1, 0)
        != derived_id(16, "attempt", "t-1", 2, 0)
    )


async def test_a_command_gets_the_trace_in_its_environment(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    name = unique("trcmd")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {name: {"command": ["sh", "-c", 'printf "%s %s" "$TRACEPARENT" "$TRACESTATE"']}},
        }
    )
    api = Api(http, gw.url)
    task_id = await api.submit(name, {}, traceparent=TRACEPARENT, tracestate=TRACESTATE)
    traceparent, tracestate = (await api.wait_status(task_id, "Succeeded"))["result"].split(" ")
    assert parts(traceparent)[0] == TRACE_ID and parts(traceparent)[1] != CALLER_SPAN
    assert tracestate == TRACESTATE
