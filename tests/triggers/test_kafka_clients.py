"""kafka trigger fed by an independent client (confluent-kafka, librdkafka): keys, headers,
a filter and a batch arrive as that client wrote them, and its trace context goes on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from confluent_kafka import Producer

from tests.conftest import Api, GatewayFactory
from tests.services import NatsServer, Tansu
from tests.triggers.conftest import ECHO, event_of, wait_tasks

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


Message = tuple[bytes, bytes, list[tuple[str, str | bytes | None]]]


def produce(bootstrap: str, topic: str, messages: list[Message]) -> None:
    """Send (key, value, headers) messages with librdkafka and wait for every delivery."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False, "linger.ms": 5})
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for key, value, headers in messages:
        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
    remaining = producer.flush(30)
    assert remaining == 0 and not failures, (remaining, failures)


async def test_confluent_kafka_messages_keep_key_headers_and_trace(
    nats_server: NatsServer,
    kafka: Tansu,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
) -> None:
    single, batched = unique("ck"), unique("ckb")
    topic = unique("topic-ck")
    common = {
        "type": "kafka",
        "bootstrap_servers": kafka.bootstrap,
        "topics": [topic],
        "auto_offset_reset": "earliest",
        "session_timeout_ms": 1500,
    }
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {single: {"handler": ECHO}, batched: {"handler": ECHO}},
            "triggers": [
                # Only orders pass: the filter sees the event the function would receive.
                {**common, "name": single, "function": single, "group_id": f"g-{single}",
                 "filter": {"data": {"kind": ["order"]}}},
                {**common, "name": batched, "function": batched, "group_id": f"g-{batched}",
                 "batch": {"size": 4, "window": "2s"}},
            ],
        }
    )  # fmt: skip
    api = Api(http, gw.url)
    messages: list[Message] = [
        (f"customer-{n}".encode(), json.dumps({"kind": "order" if n % 2 else "ping", "n": n}).encode(),
         [("traceparent", TRACEPARENT.encode()), ("region", b"eu")])
        for n in range(4)
    ]  # fmt: skip
    await asyncio.to_thread(produce, kafka.bootstrap, topic, messages)

    tasks = await wait_tasks(api, single, 2, timeout=60)
    events = sorted((event_of(t) for t in tasks), key=lambda e: e["data"]["n"])
    assert [e["data"]["n"] for e in events] == [1, 3]
    assert [e["kafka"]["key"] for e in events] == ["customer-1", "customer-3"]
    assert all(e["kafka"]["headers"]["region"] == "eu" for e in events)
    for task in tasks:
        record = await api.task(task["task_id"])
        assert record["trace"]["traceparent"].split("-")[1] == TRACE_ID

    (batch,) = await wait_tasks(api, batched, 1, timeout=60)
    array = event_of(batch)
    assert isinstance(array, list) and sorted(e["data"]["n"] for e in array) == [0, 1, 2, 3]
    _, body = await api.get("/v1/triggers")
    health = {t["name"]: t for t in body["triggers"]}
    assert (health[single]["matched"], health[single]["dropped"]) == (2, 2)
