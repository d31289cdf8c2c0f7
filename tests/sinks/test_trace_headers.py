"""Trace context reaches every destination: HTTP and NATS event_bus, NATS, Kafka and MQTT
queues (headers, MQTT 5 user properties), as the delivery's own span in the caller's trace."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import nats
from aiokafka import AIOKafkaConsumer

from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import Mosquitto, NatsServer, Tansu
from tests.sinks.conftest import Receiver
from tests.test_tracing import CALLER_SPAN, TRACE_ID, TRACED, TRACEPARENT, TRACESTATE, parts


async def test_trace_headers_reach_every_destination(
    nats_server: NatsServer,
    mosquitto: Mosquitto,
    kafka: Tansu,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    unique: Any,
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    names = {kind: unique(kind) for kind in ("http", "nats", "bus", "kafka", "mqtt")}
    topic, mqtt_topic = unique("traced"), f"traced/{names['mqtt']}"
    received: asyncio.Queue[Any] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    subscribed = asyncio.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        loop.call_soon_threadsafe(received.put_nowait, message)

    def on_subscribe(*args: Any) -> None:
        loop.call_soon_threadsafe(subscribed.set)

    def on_connect(client: Any, *args: Any) -> None:
        client.subscribe(mqtt_topic, qos=1)

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_connect = on_connect
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    nc = await nats.connect(nats_server.url)
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        nats_sub = await nc.subscribe(f"out.{names['nats']}")
        bus_sub = await nc.subscribe(f"bus.{names['bus']}")
        destinations = {
            "http": {"type": "event_bus", "url": receiver.url},
            "nats": {"type": "queue", "backend": "nats", "subject": f"out.{names['nats']}"},
            "bus": {"type": "event_bus", "subject": f"bus.{names['bus']}"},
            "kafka": {"type": "queue", "backend": "kafka", "topic": topic, "bootstrap_servers": kafka.bootstrap},
            "mqtt": {"type": "queue", "backend": "mqtt", "url": mosquitto.url, "topic": mqtt_topic},
        }
        gw = gateway_factory(
            {
                "nats": {"url": nats_server.url},
                "functions": {
                    names[kind]: {"handler": TRACED, "async": {"on_success": dest}}
                    for kind, dest in destinations.items()
                },
            }
        )
        api = Api(http, gw.url)
        tasks = {
            kind: await api.submit(name, {}, traceparent=TRACEPARENT, tracestate=TRACESTATE)
            for kind, name in names.items()
        }
        got: dict[str, dict[str, str]] = {}

        async def posted() -> bool:
            return bool(receiver.received)

        await wait_until(posted, timeout=30)
        got["http"] = receiver.received[0]["headers"]
        got["nats"] = dict((await nats_sub.next_msg(timeout=30)).headers or {})
        got["bus"] = dict((await bus_sub.next_msg(timeout=30)).headers or {})
        got["mqtt"] = dict((await asyncio.wait_for(received.get(), 30)).properties.UserProperty)
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        try:
            message = await asyncio.wait_for(consumer.getone(), 30)
        finally:
            await consumer.stop()
        got["kafka"] = {k: v.decode() for k, v in message.headers}
        for kind, headers in got.items():
            record = await api.task(tasks[kind])
            run = parts(record["result"]["traceparent"])
            trace_id, span_id = parts(headers["traceparent"])
            # The delivery's own span: in the caller's trace, neither the caller's span nor the run's.
            assert trace_id == TRACE_ID and span_id not in (CALLER_SPAN, run[1]), kind
            assert headers["tracestate"] == TRACESTATE, kind
        # CloudEvents carry it as the Distributed Tracing extension too.
        assert got["bus"]["ce-traceparent"] == got["bus"]["traceparent"]
        assert got["http"]["ce-tracestate"] == "vendor=abc,other=1"
    finally:
        await nc.close()
        client.loop_stop()
        client.disconnect()


async def test_triggers_on_kafka_and_mqtt_continue_the_trace(
    nats_server: NatsServer,
    mosquitto: Mosquitto,
    kafka: Tansu,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Any,
) -> None:
    to_kafka, from_kafka, to_mqtt, from_mqtt = unique("tk"), unique("fk"), unique("tm"), unique("fm")
    topic, mqtt_topic = unique("tt"), f"tt/{to_mqtt}"
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {
                to_kafka: {"handler": TRACED, "async": {"on_success": {
                    "type": "queue", "backend": "kafka", "topic": topic, "bootstrap_servers": kafka.bootstrap}}},
                to_mqtt: {"handler": TRACED, "async": {"on_success": {
                    "type": "queue", "backend": "mqtt", "url": mosquitto.url, "topic": mqtt_topic}}},
                from_kafka: {"handler": TRACED},
                from_mqtt: {"handler": TRACED},
            },
            "triggers": [
                {"name": from_kafka, "type": "kafka", "bootstrap_servers": kafka.bootstrap, "topics": [topic],
                 "group_id": f"g-{from_kafka}", "auto_offset_reset": "earliest", "session_timeout_ms": 1500,
                 "function": from_kafka},
                {"name": from_mqtt, "type": "mqtt", "url": mosquitto.url, "topic": mqtt_topic, "qos": 1,
                 "protocol": 5, "function": from_mqtt},
            ],
        }
    )  # fmt: skip
    api = Api(http, gw.url)

    async def triggers_running() -> bool:
        _, body = await api.get("/v1/triggers")
        return all(t["state"] == "running" for t in body["triggers"])

    await wait_until(triggers_running, timeout=30)
    for name in (to_kafka, to_mqtt):
        await api.submit(name, {}, traceparent=TRACEPARENT, tracestate=TRACESTATE)
    for name in (from_kafka, from_mqtt):

        async def made(name: str = name) -> dict[str, Any] | None:
            _, body = await api.get(f"/v1/tasks?function={name}")
            return body["tasks"][0] if body["tasks"] else None

        record = await wait_until(made, timeout=40)
        trace_id, span_id = parts(record["trace"]["traceparent"])
        assert trace_id == TRACE_ID and span_id != CALLER_SPAN, name
        assert record["trace"]["tracestate"] == TRACESTATE, name
