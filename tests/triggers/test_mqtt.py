"""mqtt trigger: MQTT 5 and 3.1.1, user properties as lineage, raw payloads, shared subscriptions."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config.model import TriggerConfig
from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import Mosquitto, NatsServer
from tests.triggers.conftest import (
    assert_cloud_event,
    event_of,
    offline_context,
    tasks_of,
    trigger_config,
    trigger_health,
    wait_holding,
    wait_tasks,
)
from triggers.mqtt import READ_CHUNK, Incoming, MqttTrigger, _Client

Message = tuple[str, bytes, dict[str, str] | list[tuple[str, str]]]


def publish_all(broker: Mosquitto, messages: Sequence[Message]) -> None:
    """Publish with QoS 1 over MQTT 5 and wait for every PUBACK (runs in a thread)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for topic, payload, user_properties in messages:
            properties = None
            if user_properties:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                pairs = user_properties.items() if isinstance(user_properties, dict) else user_properties
                properties.UserProperty = list(pairs)
            client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def publish(broker: Mosquitto, messages: Sequence[Message]) -> None:
    await asyncio.to_thread(publish_all, broker, messages)


async def wait_subscribed(api: Api, *names: str) -> None:
    async def subscribed() -> bool:
        states = [(await trigger_health(api, name))["state"] for name in names]
        return all(state == "running" for state in states)

    await wait_until(subscribed, timeout=15)


def mqtt_trigger(name: str, broker: Mosquitto, topic: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "type": "mqtt", "url": broker.url, "topic": topic, "qos": 1, **options}


async def test_messages_become_tasks_over_mqtt5_and_311(
    nats_server: NatsServer,
    mosquitto: Mosquitto,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("sensors")
    base = unique("devices")
    triggers = [
        mqtt_trigger(f"{fn}-v5", mosquitto, f"{base}/+/telemetry", protocol=5),
        mqtt_trigger(f"{fn}-v3", mosquitto, f"{base}/legacy/#", protocol="3.1.1", qos=2),
    ]
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, triggers))
    api = Api(http, gw.url)
    await wait_subscribed(api, f"{fn}-v5", f"{fn}-v3")

    await publish(
        mosquitto,
        [
            (f"{base}/d1/telemetry", b'{"t": 21.5}', {"Fngate-Chain-Id": "chain-m", "Fngate-Chain-Depth": "2"}),
            (f"{base}/d2/telemetry", b"\x00\x01 binary", {}),
            (f"{base}/d3/telemetry", b'{"t": 19}', {"site": "north"}),
            # A name sent more than once keeps every value, in order; the lineage reads the first.
            (
                f"{base}/d4/telemetry",
                b'{"t": 7}',
                [("tag", "a"), ("Fngate-Chain-Id", "c-first"), ("tag", "b"), ("Fngate-Chain-Id", "c-second")],
            ),
            (f"{base}/legacy/a/b", b'{"old": true}', {}),
        ],
    )
    tasks = await wait_tasks(api, fn, 5)
    by_topic = {event_of(t)["subject"]: t for t in tasks}
    first = by_topic[f"{base}/d1/telemetry"]
    assert first["source"] == {"type": "mqtt", "name": f"{fn}-v5"}
    assert first["chain"] == {"id": "chain-m", "depth": 3}
    event = event_of(first)
    assert_cloud_event(event, "mqtt", f"{fn}-v5", "message")
    assert event["data"] == {"t": 21.5}
    assert event["mqtt"]["topic"] == f"{base}/d1/telemetry" and event["mqtt"]["qos"] == 1
    assert event["mqtt"]["user_properties"] == {"Fngate-Chain-Id": "chain-m", "Fngate-Chain-Depth": "2"}
    raw = event_of(by_topic[f"{base}/d2/telemetry"])
    assert base64.b64decode(raw["data_base64"]) == b"\x00\x01 binary"
    assert event_of(by_topic[f"{base}/d3/telemetry"])["mqtt"]["user_properties"] == {"site": "north"}
    repeated = by_topic[f"{base}/d4/telemetry"]
    assert event_of(repeated)["mqtt"]["user_properties"] == {
        "tag": ["a", "b"],
        "Fngate-Chain-Id": ["c-first", "c-second"],
    }
    assert repeated["chain"]["id"] == "c-first"
    legacy = by_topic[f"{base}/legacy/a/b"]
    assert legacy["source"] == {"type": "mqtt", "name": f"{fn}-v3"}
    assert event_of(legacy)["data"] == {"old": True} and event_of(legacy)["mqtt"]["user_properties"] == {}
    health = await trigger_health(api, f"{fn}-v5")
    assert (health["events_received"], health["invocations"], health["errors"]) == (4, 4, 0)
    assert health["connected"] is True


async def test_shared_group_splits_messages_between_two_replicas(
    nats_server: NatsServer,
    mosquitto: Mosquitto,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("shared")
    topic = unique("fleet") + "/events"
    trigger = mqtt_trigger(fn, mosquitto, topic, shared_group="fngate")
    replicas = [
        gateway_factory(trigger_config(nats_server.url, tmp_path / f"data{i}", fn, [trigger])) for i in range(2)
    ]
    apis = [Api(http, gw.url) for gw in replicas]
    for api in apis:
        await wait_subscribed(api, fn)

    count = 40
    await publish(mosquitto, [(topic, json.dumps({"n": n}).encode(), {}) for n in range(count)])
    await wait_tasks(apis[0], fn, count)
    seen = Counter(event_of(t)["data"]["n"] for t in await tasks_of(apis[0], fn))
    assert seen == Counter(range(count))  # every message once: not to both replicas, none lost
    shares = [(await trigger_health(api, fn))["invocations"] for api in apis]
    assert sum(shares) == count and min(shares) > 0, shares


async def test_messages_are_held_while_nats_is_down_and_enqueued_after(
    mosquitto: Mosquitto,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
    own_nats: NatsServer,
) -> None:
    fn = unique("held")
    topic = unique("held") + "/in"
    gw = gateway_factory(trigger_config(own_nats.url, tmp_path / "data", fn, [mqtt_trigger(fn, mosquitto, topic)]))
    api = Api(http, gw.url)
    await wait_subscribed(api, fn)
    own_nats.stop()
    await publish(mosquitto, [(topic, json.dumps({"n": n}).encode(), {}) for n in range(3)])

    health = await wait_holding(api, fn)
    assert health["invocations"] == 0 and health["errors"] >= 1
    own_nats.start()

    async def all_enqueued() -> bool:
        health = await trigger_health(api, fn)
        return bool(health["invocations"] == 3 and health["state"] == "running")

    await wait_until(all_enqueued, timeout=30)
    assert (await trigger_health(api, fn))["events_received"] == 3


def test_packets_cut_from_chunked_reads_arrive_whole_and_in_order(tmp_path: Path) -> None:
    # The trigger's client reads the socket in chunks and cuts packets from them: payloads
    # from empty to several chunks long must come out whole and in order, published live and
    # as a backlog the broker writes back to back on a new connection (whose socket must not
    # see a byte buffered from the old one).
    broker = Mosquitto(tmp_path / "mosquitto", extra=["max_queued_messages 0", "max_inflight_messages 1000"])
    broker.start()
    received: list[tuple[str, bytes]] = []
    arrived = threading.Condition()
    subscribed = threading.Event()
    sizes = [0, 1, 127, 128, 16_383, 16_384, READ_CHUNK - 1, READ_CHUNK + 7, 3 * READ_CHUNK, 200, 200, 200]
    payloads = [bytes([i % 251]) * size for i, size in enumerate(sizes * 40)]

    def on_message(_client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        with arrived:
            received.append((message.topic, bytes(message.payload)))
            arrived.notify_all()

    def wait_for(count: int) -> None:
        with arrived:
            assert arrived.wait_for(lambda: len(received) >= count, timeout=60), f"{len(received)} of {count}"

    def connect() -> _Client:
        client = _Client(CallbackAPIVersion.VERSION2, client_id="chunked", protocol=paho.MQTTv5)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = on_message
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 600
        client.connect("127.0.0.1", broker.port, clean_start=False, properties=properties)
        client.loop_start()
        return client

    clients = [connect()]
    try:
        clients[0].subscribe("chunked/#", qos=1)
        assert subscribed.wait(10)
        publish_all(broker, [(f"chunked/live/{i}", p, {}) for i, p in enumerate(payloads)])
        wait_for(len(payloads))
        clients[0].disconnect()
        clients[0].loop_stop()
        publish_all(broker, [(f"chunked/backlog/{i}", p, {}) for i, p in enumerate(payloads)])
        clients.append(connect())  # the session's queue, sent as fast as the broker can
        wait_for(2 * len(payloads))
        expected = [(f"chunked/{when}/{i}", p) for when in ("live", "backlog") for i, p in enumerate(payloads)]
        assert received == expected
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        broker.stop()


def test_the_templated_event_is_the_generic_one_byte_for_byte() -> None:
    # _encoded writes the envelope from a template for speed; it must stay exactly what
    # cloud_event() (the encoding every trigger shares) makes of the same message.
    context = offline_context()
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    messages = [
        Incoming("d/1/t", b'{"a":1}', 1, False, 1, 1),
        Incoming(
            'd/ü"\\/',
            b' [1, "\\u00e9", {"b": null}] \n',
            2,
            True,
            2,
            1,
            properties={"k": "vé", **trace},
            property_fields={"k": ["vé", "v2"], **trace},
            content_type="text/x é",
        ),
        Incoming("d/1/t", b"42", 0, False, 3, 1, {}, {}, None),
        Incoming("d/1/t", b"not json", 1, False, 4, 1),
        Incoming("d/1/t", b"", 1, False, 5, 1),
    ]
    for shared_group in (None, 'g"é'):
        config = {"name": "t.emplate", "type": "mqtt", "function": "f", "url": "mqtt://x:1", "topic": "d/#",
                  "shared_group": shared_group}  # fmt: skip
        trigger = MqttTrigger(TriggerConfig.model_validate(config), context)
        for incoming in messages:
            item = trigger._event(incoming)
            assert item is not None
            event, task_id, lineage = item
            decoded = dict(json.loads(event))
            generic = trigger.cloud_event(
                event_id=task_id, kind="message", subject=incoming.topic, raw=incoming.payload, extra=decoded["mqtt"]
            )
            # the time is now, which may differ by a microsecond between the two calls
            assert json.loads(generic)["time"][:19] == decoded["time"][:19]
            assert generic.replace(json.loads(generic)["time"].encode(), decoded["time"].encode()) == event
            assert decoded["mqtt"]["shared_group"] == shared_group
            assert (lineage is not None) == ("traceparent" in incoming.properties)


def _publish_packet(topic: str, mid: int, properties: bytes, payload: bytes) -> bytearray:
    """A QoS 1 MQTT 5 PUBLISH, after its fixed header: topic, message id, properties, payload."""
    name = topic.encode()
    return bytearray(len(name).to_bytes(2, "big") + name + mid.to_bytes(2, "big") + properties + payload)


def _user_property(key: str, value: str) -> bytes:
    def utf8(text: str) -> bytes:
        raw = text.encode()
        return len(raw).to_bytes(2, "big") + raw

    return b"\x26" + utf8(key) + utf8(value)


def test_publish_packets_are_decoded_and_unreadable_properties_never_stop_the_loop() -> None:
    client = _Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True)
    got: list[tuple[str, bytes, int, bool, int, Any]] = []
    client.on_publish_packet = lambda *message: got.append(message)

    def receive(command: int, packet: bytearray) -> None:
        client._in_packet = {**client._in_packet, "command": command, "packet": packet}  # type: ignore[typeddict-item]
        assert client._handle_publish() == paho.MQTT_ERR_SUCCESS

    receive(0x32, _publish_packet("a/b", 7, b"\x00", b'{"t": 1}'))  # QoS 1, no properties
    pairs = _user_property("k", "v1") + _user_property("k", "v2")
    receive(0x33, _publish_packet("a/c", 8, bytes([len(pairs)]) + pairs, b"x"))  # QoS 1, retained
    bad = _user_property("k", "v\ufeff")  # a string paho refuses to read
    receive(0x32, _publish_packet("a/d", 9, bytes([len(bad)]) + bad, b"after"))
    assert [(t, p, q, r, m) for t, p, q, r, m, _ in got] == [
        ("a/b", b'{"t": 1}', 1, False, 7),
        ("a/c", b"x", 1, True, 8),
        ("a/d", b"after", 1, False, 9),  # delivered, its payload found past the properties
    ]
    assert got[0][5] is None and got[2][5] is None
    assert got[1][5].UserProperty == [("k", "v1"), ("k", "v2")]
