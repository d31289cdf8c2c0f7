"""CloudEvents as the CloudEvents Python SDK reads them: the event_bus destination in both
content modes over HTTP and NATS (the NATS protocol binding 1.0.3), and event ids that are
task ids."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import nats
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_binary, from_http, from_structured
from cloudevents.core.formats.json import JSONFormat

from sinks.cloudevent import header_value
from tests.conftest import Api, GatewayFactory
from tests.services import NatsServer
from tests.sinks.conftest import Receiver
from tests.sinks.test_destinations import destination_entry, fn


def from_nats(headers: dict[str, str], body: bytes) -> BaseCloudEvent:
    """A NATS message as the NATS binding reads it: structured when Content-Type is
    application/cloudevents (case-insensitive), else binary with every attribute in a `ce-`
    header. The header mapping is the HTTP binding's (the `ce-` prefix, percent-encoded
    values), so the SDK's decoders for it apply."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    message = HTTPMessage(headers=headers, body=body)
    if content_type.lower().startswith("application/cloudevents"):
        return from_structured(message, JSONFormat())
    assert "ce-datacontenttype" in headers, "the NATS binding maps datacontenttype to a ce- header too"
    return from_binary(message, JSONFormat())


def test_header_values_are_percent_encoded_as_the_bindings_say() -> None:
    # The bindings' own example, and the three printable characters they name.
    assert header_value("Euro \u20ac \U0001f600") == "Euro%20%E2%82%AC%20%F0%9F%98%80"
    assert header_value('a"b%c') == "a%22b%25c"
    assert header_value("fngate/functions/a-b_c.1:2") == "fngate/functions/a-b_c.1:2"


async def test_event_bus_modes_decoded_by_the_sdk(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    unique: Any,
) -> None:
    names = {mode: unique(mode) for mode in ("hb", "hs", "nb", "ns")}
    nc = await nats.connect(nats_server.url)
    subs = {mode: await nc.subscribe(f"ce.{names[mode]}") for mode in ("nb", "ns")}
    try:
        gw = gateway_factory(
            {
                "nats": {"url": nats_server.url},
                "functions": {
                    names["hb"]: fn(on_success={"type": "event_bus", "url": receiver.url}),
                    names["hs"]: fn(on_success={"type": "event_bus", "url": receiver.url, "mode": "structured"}),
                    names["nb"]: fn(on_success={"type": "event_bus", "subject": f"ce.{names['nb']}"}),
                    names["ns"]: fn(
                        on_success={"type": "event_bus", "subject": f"ce.{names['ns']}", "mode": "structured"}
                    ),
                },
            }
        )
        api = Api(http, gw.url)
        tasks = {mode: await api.submit(name, {"mode": mode}) for mode, name in names.items()}
        for task_id in tasks.values():
            await destination_entry(api, task_id, "success", "delivered")

        events: dict[str, tuple[BaseCloudEvent, dict[str, str]]] = {}
        for got in receiver.received:
            event = from_http(HTTPMessage(headers=got["headers"], body=got["body"]), JSONFormat())
            events["hb" if event.get_subject() == tasks["hb"] else "hs"] = (event, got["headers"])
        for mode, sub in subs.items():
            msg = await sub.next_msg(timeout=20)
            headers = dict(msg.headers or {})
            events[mode] = (from_nats(headers, msg.data), headers)

        for mode, (event, headers) in events.items():
            task_id = tasks[mode]
            assert event.get_specversion() == "1.0"
            assert event.get_id() == f"{task_id}.success"
            assert event.get_type() == "fngate.task.succeeded"
            assert event.get_source() == f"fngate/functions/{names[mode]}"
            assert event.get_subject() == task_id
            assert event.get_datacontenttype() == "application/json"
            assert event.get_time() is not None
            data = event.get_data()
            assert isinstance(data, dict) and data["task_id"] == task_id and data["condition"] == "Succeeded"
            assert data["request_payload"] == {"mode": mode}
            assert headers["Fngate-Chain-Depth"] == "1"
            structured = mode.endswith("s")
            assert headers["Content-Type"] == ("application/cloudevents+json" if structured else "application/json")
            assert structured == (not any(k.startswith("ce-") for k in headers)), headers
        # HTTP binary maps datacontenttype to Content-Type, NATS binary to ce-datacontenttype.
        assert "ce-datacontenttype" not in events["hb"][1] and "ce-datacontenttype" in events["nb"][1]
    finally:
        await nc.close()


async def test_sync_http_route_runs_under_the_event_id(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    name = unique("sync")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {name: {"handler": "python:tests.functions:identified"}},
            "triggers": [
                {"name": name, "type": "http", "path": f"/hooks/{name}", "invocation": "sync", "function": name},
                {"name": f"{name}-a", "type": "http", "path": f"/hooks/{name}-a", "function": name},
            ],
        }
    )
    async with http.post(f"{gw.url}/hooks/{name}", json={"k": 1}) as resp:
        assert resp.status == 200
        result = json.loads(await resp.read())
    assert result["echo"]["id"] == result["task_id"]
    async with http.post(f"{gw.url}/hooks/{name}-a", json={"k": 2}) as resp:
        assert resp.status == 202
        task_id = (await resp.json())["task_id"]
    record = await Api(http, gw.url).wait_status(task_id, "Succeeded")
    assert record["result"]["echo"]["id"] == task_id == record["result"]["task_id"]
