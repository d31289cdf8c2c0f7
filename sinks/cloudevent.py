"""CloudEvents 1.0 encoding of a delivery: the attributes, and the two content modes of the
HTTP and NATS protocol bindings.

Binary mode: every attribute is a `ce-` header, its value percent-encoded (space, `"`, `%`
and anything outside printable ASCII); the record is the body. On HTTP `datacontenttype`
is the Content-Type header; the NATS binding (1.0.3) maps it to `ce-datacontenttype` like
every other attribute, and tells the modes apart by Content-Type alone, so a binary NATS
message never carries `application/cloudevents`.
Structured mode: the JSON event format as the body, Content-Type
`application/cloudevents+json`, on both.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

from gateway.tasks.invocation import iso

from .base import Delivery, On

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
DATA_CONTENT_TYPE = "application/json"
# Printable ASCII stays as it is, but for the three characters the bindings name.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ' "%')


def attributes(delivery: Delivery) -> dict[str, str]:
    """The event's context attributes. The id is `<task id>.<on>`: the id of the task a
    function destination makes of the same record, so one event and one task share it."""
    kind = "succeeded" if delivery.on == On.SUCCESS else "failed"
    attrs = {
        "specversion": "1.0",
        "id": f"{delivery.task_id}.{delivery.on}",
        "source": f"fngate/functions/{delivery.function}",
        "type": f"fngate.task.{kind}",
        "subject": delivery.task_id,
        "time": iso(time.time()) or "",
        "datacontenttype": DATA_CONTENT_TYPE,
    }
    # The Distributed Tracing extension: the trace context travels with the event itself.
    attrs.update(delivery.trace_headers())
    return attrs


def header_value(value: str) -> str:
    """An attribute value as a header value (percent-encoded, upper-case hex, UTF-8)."""
    return quote(value, safe=_SAFE)


def binary_headers(attrs: dict[str, str], *, http: bool) -> dict[str, str]:
    headers = {f"ce-{name}": header_value(value) for name, value in attrs.items()}
    if http:
        headers.pop("ce-datacontenttype", None)
    headers["Content-Type"] = attrs["datacontenttype"]
    return headers


def structured_body(attrs: dict[str, str], data: bytes) -> bytes:
    """The JSON event format; `data` is the record's JSON, spliced in as it is."""
    head = json.dumps(attrs, separators=(",", ":"))
    return head[:-1].encode() + b',"data":' + data + b"}"


def encode(delivery: Delivery, mode: str, *, http: bool) -> tuple[dict[str, str], bytes]:
    """(headers, body) of the event in `mode` ("binary" or "structured")."""
    attrs = attributes(delivery)
    if mode == "structured":
        return {"Content-Type": STRUCTURED_CONTENT_TYPE}, structured_body(attrs, delivery.body)
    return binary_headers(attrs, http=http), delivery.body
