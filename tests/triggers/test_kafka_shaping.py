"""kafka trigger: ready only once assigned, `filter:` drops and counts, `batch:` makes one task of many."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import GatewayProcess, NatsServer, Tansu, wait_for_port
from tests.triggers.conftest import event_of, tasks_of, trigger_config, trigger_health, wait_tasks
from tests.triggers.test_kafka import kafka_trigger


async def test_ready_means_assigned_so_latest_gets_what_is_produced_right_after(
    nats_server: NatsServer,
    kafka: Tansu,
    producer: AIOKafkaProducer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("latest")
    topic = unique("topic-latest")
    await producer.send_and_wait(topic, b'{"before": true}', partition=0)  # the topic exists; latest skips this
    trigger = {**kafka_trigger(fn, kafka, topic), "auto_offset_reset": "latest"}
    gw = gateway_factory(
        trigger_config(nats_server.url, tmp_path / "data", fn, [trigger])
    )  # returns once /readyz is 200
    async with http.get(f"{gw.url}/readyz") as response:
        body = await response.json()
    await producer.send_and_wait(topic, b'{"after": true}', partition=0)
    assert body["ready"] is True
    assert body["checks"]["triggers"][fn] == {"type": "kafka", "state": "running", "ready": True}

    api = Api(http, gw.url)
    [task] = await wait_tasks(api, fn, 1, timeout=30)
    assert event_of(task)["data"] == {"after": True}
    assert f"{topic}[0]" in (await trigger_health(api, fn))["assigned"]


async def test_not_ready_while_the_broker_is_unreachable(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fn = unique("nobroker")
    trigger = {
        "name": fn,
        "type": "kafka",
        "bootstrap_servers": "127.0.0.1:9",
        "topics": ["t"],
        "session_timeout_ms": 1500,
    }
    # started without waiting for readiness: only for its port
    monkeypatch.setattr(
        GatewayProcess, "wait_ready", lambda self, timeout=30.0: wait_for_port(self.port, proc=self.proc)
    )
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, [trigger]))

    async def not_ready() -> dict[str, Any] | None:
        async with http.get(f"{gw.url}/readyz") as response:
            body: dict[str, Any] = await response.json()
            return body if response.status == 503 else None

    body = await wait_until(not_ready, timeout=10)
    assert body["checks"]["nats"] is True and body["checks"]["triggers"][fn]["ready"] is False


async def test_filter_drops_and_counts_and_unreadable_messages_do_not_block(
    nats_server: NatsServer,
    kafka: Tansu,
    producer: AIOKafkaProducer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("filtered")
    topic = unique("topic-filtered")
    for seq in range(20):
        kind = "keep" if seq % 5 == 0 else "skip"
        await producer.send(topic, json.dumps({"seq": seq, "kind": kind}).encode(), partition=0)
    await producer.send(topic, b"\xff not json", partition=0)  # matched as data_base64: dropped
    await producer.send(topic, b"[" * 5000 + b"]" * 5000, partition=0)  # too deep to read: dropped
    await producer.send(topic, b'{"seq": 99, "kind": "keep"}', partition=0)
    await producer.flush()
    trigger = {
        **kafka_trigger(fn, kafka, topic),
        "filter": {"data": {"kind": ["keep"], "seq": [{"numeric": [">=", 0]}]}},
    }
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, [trigger]))
    api = Api(http, gw.url)

    tasks = await wait_tasks(api, fn, 5, timeout=30)
    assert sorted(event_of(t)["data"]["seq"] for t in tasks) == [0, 5, 10, 15, 99]

    async def counted() -> dict[str, Any] | None:
        health = await trigger_health(api, fn)
        return health if health["events_received"] == 23 else None

    health = await wait_until(counted, timeout=10)
    assert (health["matched"], health["dropped"], health["invocations"]) == (5, 18, 5)
    async with http.get(f"{gw.url}/metrics") as response:
        text = await response.text()
    assert f'fngate_trigger_dropped_total{{trigger="{fn}",type="kafka"}} 18.0' in text
    assert f'fngate_trigger_matched_total{{trigger="{fn}",type="kafka"}} 5.0' in text
    assert len(await tasks_of(api, fn)) == 5


async def test_batch_makes_one_task_of_many_and_commits_after(
    nats_server: NatsServer,
    kafka: Tansu,
    producer: AIOKafkaProducer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("batched")
    topic = unique("topic-batched")
    for seq in range(25):
        await producer.send(topic, json.dumps({"seq": seq}).encode(), partition=0)
    await producer.flush()
    trigger = {
        **kafka_trigger(fn, kafka, topic),
        "batch": {"size": 10, "window": "500ms"},
        "filter": {"data": {"seq": [{"anything-but": [3]}]}},
    }
    config = trigger_config(nats_server.url, tmp_path / "data", fn, [trigger])
    gw = gateway_factory(config)
    api = Api(http, gw.url)

    tasks = await wait_tasks(api, fn, 3, timeout=30)
    batches = [event_of(t) for t in tasks]
    assert all(isinstance(b, list) for b in batches)
    seqs = sorted(e["data"]["seq"] for b in batches for e in b)
    assert seqs == [s for s in range(25) if s != 3]
    assert sorted(len(b) for b in batches) == [4, 10, 10]
    assert all(e["type"] == "fngate.kafka.message" and e["kafka"]["topic"] == topic for b in batches for e in b)
    health = await trigger_health(api, fn)
    assert (health["events_received"], health["matched"], health["dropped"], health["invocations"]) == (25, 24, 1, 3)

    # Committed: a restarted gateway (same group) consumes only what came after.
    gw.stop()
    await producer.send_and_wait(topic, b'{"seq": 100}', partition=0)
    gw.start()
    await wait_tasks(api, fn, 4, timeout=30)
    later = [event_of(t) for t in await tasks_of(api, fn) if event_of(t) not in batches]
    assert [[e["data"]["seq"] for e in b] for b in later] == [[100]]
