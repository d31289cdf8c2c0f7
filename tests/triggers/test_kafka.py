"""kafka trigger: message fields in the event, raw payloads, lineage, and no loss across a SIGKILL."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer, ConsumerRecord

from gateway.config.model import TriggerConfig
from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import NatsServer, Tansu
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
from triggers.base import stable_id
from triggers.kafka import KafkaTrigger


def kafka_trigger(name: str, kafka: Tansu, topic: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "kafka",
        "bootstrap_servers": kafka.bootstrap,
        "topics": [topic],
        "group_id": f"group-{name}",
        "auto_offset_reset": "earliest",
        "session_timeout_ms": 1500,
    }


async def test_messages_become_tasks_and_raw_payloads_do_not_block(
    nats_server: NatsServer,
    kafka: Tansu,
    producer: AIOKafkaProducer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("orders")
    topic = unique("topic-orders")
    await producer.send_and_wait(
        topic,
        b'{"order": 1}',
        key=b"customer-7",
        # A repeated name keeps every value, in order; the lineage reads the first.
        headers=[("trace", b"abc"), ("Fngate-Chain-Id", b"chain-9"), ("trace", b"def"), ("Fngate-Chain-Id", b"c-2")],
        partition=0,
    )
    await producer.send_and_wait(topic, b"\xff\x00 not json", key=b"\xfe", partition=0)
    await producer.send_and_wait(topic, b'{"order": 2}', partition=0)
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, [kafka_trigger(fn, kafka, topic)]))
    api = Api(http, gw.url)

    tasks = await wait_tasks(api, fn, 3)
    events = sorted((event_of(t) for t in tasks), key=lambda e: e["kafka"]["offset"])
    assert all(t["source"] == {"type": "kafka", "name": fn} for t in tasks)
    first, raw, last = events
    assert_cloud_event(first, "kafka", fn, "message")
    assert first["subject"] == topic and first["data"] == {"order": 1}
    fields = first["kafka"]
    assert (fields["topic"], fields["partition"], fields["offset"], fields["key"]) == (topic, 0, 0, "customer-7")
    assert fields["headers"] == {"trace": ["abc", "def"], "Fngate-Chain-Id": ["chain-9", "c-2"]}
    assert isinstance(fields["timestamp"], int) and fields["group_id"] == f"group-{fn}"
    assert base64.b64decode(raw["data_base64"]) == b"\xff\x00 not json" and "data" not in raw
    assert raw["datacontenttype"] == "application/octet-stream"
    assert raw["kafka"]["key"] is None and base64.b64decode(raw["kafka"]["key_base64"]) == b"\xfe"
    assert last["data"] == {"order": 2} and last["kafka"]["offset"] == 2
    chained = next(t for t in tasks if event_of(t)["kafka"]["offset"] == 0)
    assert chained["chain"] == {"id": "chain-9", "depth": 1}

    health = await trigger_health(api, fn)
    assert (health["events_received"], health["invocations"], health["errors"]) == (3, 3, 0)
    assert health["state"] == "running" and f"{topic}[0]" in health["assigned"]


async def test_gateway_killed_mid_stream_loses_no_message(
    nats_server: NatsServer,
    kafka: Tansu,
    producer: AIOKafkaProducer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("stream")
    topic = unique("topic-stream")
    per_round = 400  # both rounds fit one page of /v1/tasks (limit 1000)
    for seq in range(per_round):
        await producer.send(topic, json.dumps({"seq": seq}).encode())
    await producer.flush()
    # Small batches: many commits, so the kill lands between some of them.
    trigger = {**kafka_trigger(fn, kafka, topic), "max_batch": 5}
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, [trigger]))
    api = Api(http, gw.url)

    async def started() -> int:
        # The gateway's own count, not the task list: the index may trail by its lag.
        count = int((await trigger_health(api, fn))["invocations"])
        return count if count >= 5 else 0

    consumed = await wait_until(started, timeout=20, interval=0.02)
    gw.kill()  # mid-stream: some batches enqueued and committed, one perhaps enqueued but not committed
    for seq in range(per_round, 2 * per_round):
        await producer.send(topic, json.dumps({"seq": seq}).encode())
    await producer.flush()
    gw.start()
    assert consumed < per_round, "the first round was consumed before the kill; nothing was tested"

    await wait_tasks(api, fn, 2 * per_round, timeout=60)
    seen = Counter(event_of(t)["data"]["seq"] for t in await tasks_of(api, fn))
    assert set(seen) == set(range(2 * per_round))
    # A message enqueued but not committed before the kill is consumed again, and its task id
    # (derived from topic, partition, offset and content) makes that copy a duplicate.
    assert max(seen.values()) == 1


async def test_a_batch_is_held_while_nats_is_down_and_enqueued_once_after(
    kafka: Tansu,
    producer: AIOKafkaProducer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
    own_nats: NatsServer,
) -> None:
    fn = unique("held")
    topic = unique("topic-held")
    await producer.send_and_wait(topic, b'{"warm": true}')
    gw = gateway_factory(trigger_config(own_nats.url, tmp_path / "data", fn, [kafka_trigger(fn, kafka, topic)]))
    api = Api(http, gw.url)
    await wait_tasks(api, fn, 1, timeout=30)  # consuming: the group has its partitions
    own_nats.stop()
    for seq in range(20):
        await producer.send(topic, json.dumps({"seq": seq}).encode())
    await producer.flush()

    health = await wait_holding(api, fn)
    assert health["invocations"] == 1 and health["errors"] >= 1
    own_nats.start()

    await wait_tasks(api, fn, 21, timeout=60)
    seen = Counter(event_of(t)["data"].get("seq") for t in await tasks_of(api, fn))
    expected: Counter[int | None] = Counter(range(20))
    expected[None] = 1
    assert seen == expected
    assert (await trigger_health(api, fn))["invocations"] == 21


def test_the_templated_event_is_the_generic_one_byte_for_byte() -> None:
    # _encoded writes the envelope from a template for speed; it must stay exactly what
    # cloud_event() (the encoding every trigger shares) makes of the same message.
    context = offline_context()
    config = {"name": "t.emplate", "type": "kafka", "function": "f", "bootstrap_servers": "x:1", "topics": ["t"],
              "group_id": 'g "é"'}  # fmt: skip
    trigger = KafkaTrigger(TriggerConfig.model_validate(config), context)
    trace = ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    records = [
        ("orders", None, b'{"a":1}', (), 1764640000123, 0),
        ('tö"pic\\/', "clé".encode(), b' [1, "\\u00e9", {"b": null}] \n', (("h", "vé".encode()), trace), 5, 1),
        ("orders", b"\xff\x00", b"42", (), None, 0),
        ("orders", None, b"not json", (("h", b"\xff"),), 7, 0),
        ("orders", None, b"", (), 0, 1),
    ]
    for topic, key, value, headers, timestamp, timestamp_type in records:
        message = ConsumerRecord(topic, 3, 17, timestamp, timestamp_type, key, value, None, 0, len(value), headers)
        item = trigger._event(message)
        assert item is not None
        event, task_id, lineage = item
        decoded = dict(json.loads(event))
        generic = trigger.cloud_event(
            event_id=task_id, kind="message", subject=topic, raw=value,
            at=timestamp / 1000 if timestamp else None, extra=decoded["kafka"],
        )  # fmt: skip
        if timestamp:  # without one the time is now, which differs between the two calls
            assert event == generic
        else:
            assert json.loads(generic) | {"time": decoded["time"]} == decoded
        assert task_id == stable_id(
            "kafka-t.emplate", topic, 3, 17, timestamp,
            hashlib.sha256(b"%d:" % len(key or b"") + (key or b"") + value).hexdigest(),
        )  # fmt: skip
        assert (lineage is not None) == (trace in headers)
