"""mqtt trigger: ready once subscribed, `filter:`, `batch:` (acks after the enqueue), `retained:`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import Mosquitto, NatsServer
from tests.triggers.conftest import event_of, tasks_of, trigger_config, trigger_health, wait_holding, wait_tasks
from tests.triggers.test_mqtt import publish


def retain(broker: Mosquitto, topic: str, payload: bytes) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def mqtt_trigger(name: str, broker: Mosquitto, topic: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "mqtt", "url": broker.url, "topic": topic, "qos": 1, **extra}


async def test_filter_and_batch_make_array_tasks_of_the_matching_messages(
    nats_server: NatsServer,
    mosquitto: Mosquitto,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("mqttbatch")
    base = unique("sensors")
    trigger = mqtt_trigger(
        fn,
        mosquitto,
        f"{base}/+",
        batch={"size": 5, "window": "300ms"},
        filter={"subject": [{"suffix": "/hot"}], "data": {"t": [{"numeric": [">", 30]}]}},
    )
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, [trigger]))
    api = Api(http, gw.url)
    assert (await trigger_health(api, fn))["ready"] is True  # /readyz was 200: subscribed

    messages: list[tuple[str, bytes, dict[str, str]]] = []
    for i in range(24):
        topic = f"{base}/hot" if i % 2 == 0 else f"{base}/cold"
        messages.append((topic, json.dumps({"i": i, "t": 40 if i % 4 == 0 else 20}).encode(), {}))
    messages.append((f"{base}/hot", b"\x00 raw", {}))
    messages.append((f"{base}/hot", b"[" * 5000 + b"]" * 5000, {}))  # too deep to read: dropped, never stuck
    await publish(mosquitto, messages)

    async def all_counted() -> dict[str, Any] | None:
        health = await trigger_health(api, fn)
        return health if health["events_received"] == 26 else None

    health = await wait_until(all_counted, timeout=20)
    assert (health["matched"], health["dropped"]) == (6, 20)
    tasks = await wait_tasks(api, fn, health["invocations"], timeout=20)
    batches = [event_of(t) for t in tasks]
    assert all(isinstance(b, list) and 1 <= len(b) <= 5 for b in batches)
    assert sorted(e["data"]["i"] for b in batches for e in b) == [0, 4, 8, 12, 16, 20]
    assert len(batches) == health["invocations"] < 6  # grouped: fewer tasks than events


async def test_retained_messages_are_skipped_by_default_and_live_ones_are_not(
    nats_server: NatsServer,
    mosquitto: Mosquitto,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    skip, process = unique("skipret"), unique("procret")
    topic = unique("state")
    await asyncio.to_thread(retain, mosquitto, topic, b'{"state": "old"}')
    config = trigger_config(nats_server.url, tmp_path / "data", skip, [mqtt_trigger(skip, mosquitto, topic)])
    config["functions"][process] = dict(config["functions"][skip])
    config["triggers"].append({"function": process, **mqtt_trigger(process, mosquitto, topic, retained="process")})
    gw = gateway_factory(config)
    api = Api(http, gw.url)

    [replayed] = await wait_tasks(api, process, 1)
    assert event_of(replayed)["data"] == {"state": "old"} and event_of(replayed)["mqtt"]["retain"] is True

    async def skipped() -> dict[str, Any] | None:
        health = await trigger_health(api, skip)
        return health if health["retained_skipped"] == 1 else None

    await wait_until(skipped, timeout=10)
    # A retained publish to the established subscription arrives with the flag cleared: an event.
    await asyncio.to_thread(retain, mosquitto, topic, b'{"state": "new"}')
    [live] = await wait_tasks(api, skip, 1)
    assert event_of(live)["data"] == {"state": "new"} and event_of(live)["mqtt"]["retain"] is False
    await wait_tasks(api, process, 2)

    # A restart replays the retained message again: still skipped, no second task.
    gw.stop()
    gw.start()
    await wait_until(skipped, timeout=10)
    await wait_tasks(api, process, 3)
    assert len(await tasks_of(api, skip)) == 1
    await asyncio.to_thread(retain, mosquitto, topic, b"")  # clear the retained message


async def test_a_batch_is_held_while_nats_is_down_and_enqueued_once_after(
    own_nats: NatsServer,
    mosquitto: Mosquitto,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("mqttheld")
    topic = unique("held")
    trigger = mqtt_trigger(fn, mosquitto, topic, batch={"size": 4, "window": "200ms"})
    gw = gateway_factory(trigger_config(own_nats.url, tmp_path / "data", fn, [trigger]))
    api = Api(http, gw.url)
    own_nats.stop()
    await publish(mosquitto, [(topic, json.dumps({"i": i}).encode(), {}) for i in range(10)])
    await wait_holding(api, fn)
    own_nats.start()

    async def all_in() -> list[dict[str, Any]] | None:
        tasks = [t for t in await tasks_of(api, fn) if t["status"] == "Succeeded"]
        events = [e for t in tasks for e in event_of(t)]
        return tasks if len(events) >= 10 else None

    tasks = await wait_until(all_in, timeout=60)
    assert sorted(e["data"]["i"] for t in tasks for e in event_of(t)) == list(range(10))  # each once
    assert all(len(event_of(t)) <= 4 for t in tasks)
