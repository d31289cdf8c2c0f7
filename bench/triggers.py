"""Triggers: Kafka messages → tasks/s, MQTT QoS 1 messages → tasks/s, timer jitter; and both
brokers again with `batch:` (events/s into tasks, batches of 100) and with a `filter:` that
drops 90% (events/s read).

The trigger's function parks its one slot, so the figure is event → durable task (what a
trigger does), not the execution of the tasks."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from datetime import datetime
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.services import Mosquitto, Tansu

from .harness import BODY, Figure, Settings, Stack, function, percentile
from .live_idle import cpu_seconds

SINK = "ingest"
BATCH = 100
KEEP_ONE_IN = 10  # the filter keeps one message in ten
FILTER = {"data": {"kind": ["keep"]}}


def run(run_stack: Stack, settings: Settings) -> list[Figure]:
    nats = run_stack.nats()
    return [
        _kafka(run_stack, nats.url, settings.tasks),
        _mqtt(run_stack, nats.url, settings.tasks),
        *_shaped(run_stack, nats.url, settings),
        *_timer(run_stack, nats.url, settings.ticks),
    ]


def shapes(run_stack: Stack, settings: Settings) -> list[Figure]:
    """Only the `batch:` and `filter:` runs (`python -m bench --only trigger_shapes`)."""
    return _shaped(run_stack, run_stack.nats().url, settings)


def _shaped(run_stack: Stack, nats_url: str, settings: Settings) -> list[Figure]:
    # Batches and filters are faster than a task per message: more messages for a stable figure.
    kafka = mqtt = settings.tasks * 5
    return [
        _kafka_shaped(run_stack, nats_url, kafka, "batch"),
        _kafka_shaped(run_stack, nats_url, kafka, "filter"),
        _mqtt_shaped(run_stack, nats_url, mqtt, "batch"),
        _mqtt_shaped(run_stack, nats_url, mqtt, "filter"),
        _mqtt_shaped(run_stack, nats_url, mqtt, "batch", qos=0),
        _mqtt_shaped(run_stack, nats_url, mqtt, "filter", qos=0),
    ]


def _payloads(n: int) -> list[bytes]:
    """200-byte JSON messages, one in KEEP_ONE_IN of kind "keep"."""
    head = BODY[: -len('"}')]
    return [(head[:-12] + f'","kind":"{"keep" if i % KEEP_ONE_IN == 0 else "skip"}"}}').encode() for i in range(n)]


async def _trigger_count(http: aiohttp.ClientSession, base: str, trigger: str) -> int:
    async with http.get(f"{base}/v1/triggers") as response:
        body: dict[str, Any] = await response.json()
    return int(next(t for t in body["triggers"] if t["name"] == trigger)["events_received"])


async def _read_rate(base: str, trigger: str, n: int, pid: int, timeout: float = 600) -> tuple[float, int, float]:
    """Events/s the trigger read (filter or not), from its first event to the n-th; and the
    gateway's CPU seconds at the first look."""
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + timeout
        while True:  # from before the gateway answers: a trigger may read a backlog before it is ready
            with contextlib.suppress(aiohttp.ClientError, StopIteration):
                if await _trigger_count(http, base, trigger):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no event read by {trigger} after {timeout}s")
            await asyncio.sleep(0.01)
        # The rate counts what was read after the first look, not before.
        first, cpu, seen = time.perf_counter(), cpu_seconds(pid), await _trigger_count(http, base, trigger)
        if seen >= n:  # nothing left to time: a figure from it would be noise
            raise RuntimeError(f"all {n} events read by {trigger} before the first look: use more messages")
        while (count := await _trigger_count(http, base, trigger)) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} of {n} events read by {trigger} after {timeout}s")
            await asyncio.sleep(0.02)
        return (n - seen) / (time.perf_counter() - first), seen, cpu


def _shaping(kind: str) -> dict[str, Any]:
    return {"batch": {"size": BATCH, "window": "1s"}} if kind == "batch" else {"filter": FILTER}


async def _batch_rate(
    base: str, name: str, trigger: str, n: int, pid: int, timeout: float = 600
) -> tuple[float, int, float]:
    """Events/s into tasks: from the first look at the enqueued batch tasks (the gateway's
    own counter, not the task index, which may trail) to the last of them, once all n
    events are in tasks. What was in tasks before the first look is not counted."""
    want = -(-n // BATCH)
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + timeout
        while True:  # from before the gateway answers: a trigger may read a backlog before it is ready
            with contextlib.suppress(aiohttp.ClientError):
                if await _enqueued(http, base, name):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no task enqueued by {trigger} after {timeout}s")
            await asyncio.sleep(0.01)
        first, cpu = time.perf_counter(), cpu_seconds(pid)
        seen = min(n, await _enqueued(http, base, name) * BATCH)
        if seen >= n:  # nothing left to time: a figure from it would be noise
            raise RuntimeError(f"all {n} events were in tasks of {trigger} before the first look: use more")
        while (tasks := await _enqueued(http, base, name)) < want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tasks} of {want} tasks enqueued by {trigger} after {timeout}s")
            await asyncio.sleep(0.01)
        return (n - seen) / (time.perf_counter() - first), seen, cpu


async def _enqueued(http: aiohttp.ClientSession, base: str, name: str) -> int:
    """Tasks the gateway enqueued for function `name` (fngate_tasks_submitted_total)."""
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    found = re.search(rf'^fngate_tasks_submitted_total\{{function="{re.escape(name)}"\}} ([0-9.e+]+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


async def _measure(base: str, name: str, trigger: str, n: int, kind: str, pid: int) -> tuple[float, int, float]:
    """(events/s, events before the first look, which the rate leaves out: `read_before`,
    the gateway's CPU seconds at the first look)."""
    if kind == "batch":
        return await _batch_rate(base, name, trigger, n, pid)
    return await _read_rate(base, trigger, n, pid)


def _measure_cpu(gateway: Any, name: str, n: int, kind: str) -> tuple[float, int, float]:
    """_measure(), and the gateway's CPU time per event counted after the first look, from
    then to the end: on a shared machine a steadier figure than the rate (all its threads,
    paho's included)."""
    rate, seen, before = asyncio.run(_measure(gateway.url, name, name, n, kind, gateway.proc.pid))
    return rate, seen, (cpu_seconds(gateway.proc.pid) - before) / max(1, n - seen) * 1e6


def _shaped_figure(broker: str, kind: str, measured: tuple[float, int, float], n: int) -> Figure:
    rate, seen, cpu_us = measured
    if kind == "batch":
        return Figure("triggers", f"{broker} events → tasks, batch {BATCH}", rate, "events/s", None, None,
                      "≥ 50k/s", rate >= 50_000, {"messages": n, "batch": BATCH, "read_before": seen,
                       "cpu_us_per_event": round(cpu_us, 1)})  # fmt: skip
    return Figure("triggers", f"{broker} events read, filter drops 90%", rate, "events/s",
                  extra={"messages": n, "kept": n // KEEP_ONE_IN, "read_before": seen,
                         "cpu_us_per_event": round(cpu_us, 1)})  # fmt: skip


def _kafka_shaped(run_stack: Stack, nats_url: str, n: int, kind: str) -> Figure:
    broker = run_stack.add(Tansu(run_stack.root / f"tansu-{kind}"))
    topic, name = f"bench-{kind}", f"kafka_{kind}"
    payloads = _payloads(n)

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, max_batch_size=256 * 1024)
        await producer.start()
        try:
            for i in range(0, n, 1000):
                await asyncio.gather(*[await producer.send(topic, p) for p in payloads[i : i + 1000]])
        finally:
            await producer.stop()

    asyncio.run(produce())
    trigger = {
        "name": name, "type": "kafka", "bootstrap_servers": broker.bootstrap, "topics": [topic],
        "auto_offset_reset": "earliest", "session_timeout_ms": 6000, "max_batch": 2000, **_shaping(kind),
    }  # fmt: skip
    # Not waiting for /readyz: a trigger may drain much of a backlog before it is ready
    # (MQTT delivers a session's queue before the SUBACK that makes it ready).
    gateway = run_stack.gateway(_parked(nats_url, trigger, name), wait_ready=False)
    return _shaped_figure("Kafka", kind, _measure_cpu(gateway, name, n, kind), n)


def _mqtt_shaped(run_stack: Stack, nats_url: str, n: int, kind: str, qos: int = 1) -> Figure:
    # The backlog is queued by the broker for the trigger's persistent session before the
    # gateway starts, as the Kafka runs have theirs in the topic: the bench's own publisher
    # (paho, QoS 1, one PUBACK per message through its network thread) reaches ~7k/s on its
    # own, which would otherwise be the figure. The in-flight windows are sized to a batch
    # flow: two batches of 100 filling and being enqueued never wait for the broker. At
    # QoS 0 the session subscribes at QoS 0 (the broker then queues at QoS 0 what was
    # published at 1, as queue_qos0_messages allows), and nothing is acknowledged.
    conf = ["max_queued_messages 0", f"max_inflight_messages {MQTT_SHAPED_WINDOW}", "queue_qos0_messages true"]
    broker = run_stack.add(Mosquitto(run_stack.root / f"mosquitto-{kind}-{qos}", extra=conf))
    name = f"mqtt_{kind}_qos{qos}"
    client_id = f"fngate-bench-{name}"
    _mqtt_session(broker.port, client_id, "devices/+/telemetry", qos)
    _mqtt_publish(broker.port, _payloads(n))
    trigger = {
        "name": name, "type": "mqtt", "url": broker.url, "topic": "devices/+/telemetry", "qos": qos,
        "client_id": client_id, "clean_session": False, "max_inflight": MQTT_SHAPED_WINDOW, **_shaping(kind),
    }  # fmt: skip
    # Not waiting for /readyz: a trigger may drain much of a backlog before it is ready
    # (MQTT delivers a session's queue before the SUBACK that makes it ready).
    gateway = run_stack.gateway(_parked(nats_url, trigger, name), wait_ready=False)
    figure = _shaped_figure(f"MQTT QoS {qos}", kind, _measure_cpu(gateway, name, n, kind), n)
    figure.extra["in_flight_window"] = MQTT_SHAPED_WINDOW
    return figure


MQTT_SHAPED_WINDOW = 1000
PUBLISH_AHEAD = 20_000


def _mqtt_session(port: int, client_id: str, topic: str, qos: int = 1) -> None:
    """Open a persistent session subscribed to `topic`, and leave: the broker keeps what is
    published to it until `client_id` comes back."""
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_subscribe = lambda *_: subscribed.set()
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=properties)
    client.loop_start()
    try:
        client.subscribe(topic, qos=qos)
        if not subscribed.wait(30):
            raise TimeoutError(f"no SUBACK for {topic} after 30s")
    finally:
        client.disconnect()
        client.loop_stop()


def _mqtt_publish(port: int, payloads: list[bytes]) -> None:
    """Publish every payload at QoS 1 (to topics devices/d0..d99/telemetry); returns once the
    broker acknowledged them all."""
    acked = threading.Semaphore(0)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *_: acked.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    waiting = 0
    try:
        for i, payload in enumerate(payloads):
            # At most PUBLISH_AHEAD unacknowledged: paho queues the rest under message ids
            # of 16 bits, which would wrap and collide past 65,535.
            while waiting >= PUBLISH_AHEAD:
                if not acked.acquire(timeout=60):
                    raise TimeoutError("the broker stopped acknowledging the bench's messages")
                waiting -= 1
            client.publish(f"devices/d{i % 100}/telemetry", payload, qos=1)
            waiting += 1
        for _ in range(waiting):
            if not acked.acquire(timeout=60):
                raise TimeoutError("the broker stopped acknowledging the bench's messages")
    finally:
        client.disconnect()
        client.loop_stop()


def _parked(nats_url: str, trigger: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "nats": {"url": nats_url},
        "functions": {name: function("park", concurrency=1, timeout="2h")},
        "triggers": [{"function": name, **trigger}],
    }


async def _submitted(http: aiohttp.ClientSession, base: str, name: str) -> int:
    async with http.get(f"{base}/v1/functions/{name}") as response:
        body: dict[str, Any] = await response.json()
    return int(body["counts"]["totals"]["submitted"])


async def _rate(base: str, name: str, n: int, timeout: float = 300) -> float:
    """Tasks/s from the first task of `name` to the n-th (polled every 20 ms)."""
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + timeout
        while await _submitted(http, base, name) == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no task of {name} after {timeout}s")
            await asyncio.sleep(0.02)
        first = time.perf_counter()
        while (count := await _submitted(http, base, name)) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} of {n} tasks of {name} after {timeout}s")
            await asyncio.sleep(0.02)
        return (n - 1) / (time.perf_counter() - first)


def _kafka(run_stack: Stack, nats_url: str, n: int) -> Figure:
    broker = run_stack.add(Tansu(run_stack.root / "tansu"))
    topic, name = "bench-orders", "kafka_orders"

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, max_batch_size=256 * 1024)
        await producer.start()
        try:
            payload = BODY.encode()
            for i in range(0, n, 1000):
                batch = [await producer.send(topic, payload) for _ in range(min(1000, n - i))]
                await asyncio.gather(*batch)
        finally:
            await producer.stop()

    # The backlog is in the topic before the gateway starts: the figure is the trigger's pace.
    asyncio.run(produce())
    trigger = {
        "name": "orders", "type": "kafka", "bootstrap_servers": broker.bootstrap, "topics": [topic],
        "auto_offset_reset": "earliest", "session_timeout_ms": 6000,
    }  # fmt: skip
    gateway = run_stack.gateway(_parked(nats_url, trigger, name))
    rate = asyncio.run(_rate(gateway.url, name, n))
    return Figure("triggers", "Kafka messages → tasks", rate, "tasks/s", None, None, "≥ 10k/s", rate >= 10_000,
                  {"messages": n})  # fmt: skip


MQTT_WINDOW = 256


def _mqtt(run_stack: Stack, nats_url: str, n: int) -> Figure:
    # mosquitto queues at most 1,000 QoS 1 messages per subscriber beyond its in-flight window
    # and drops the rest; a burst of `n` published at once needs room. Its in-flight window
    # (20 by default) bounds the rate at window / enqueue latency: both sized for a gateway
    # as docs/triggers.md advises, and the trigger's own window to match.
    conf = ["max_queued_messages 0", f"max_inflight_messages {MQTT_WINDOW}"]
    broker = run_stack.add(Mosquitto(run_stack.root / "mosquitto", extra=conf))
    name = "mqtt_telemetry"
    trigger = {
        "name": "telemetry", "type": "mqtt", "url": broker.url, "topic": "devices/+/telemetry", "qos": 1,
        "max_inflight": MQTT_WINDOW,
    }  # fmt: skip
    gateway = run_stack.gateway(_parked(nats_url, trigger, name))
    _wait_connected(gateway.url, "telemetry")

    acked = threading.Semaphore(0)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *_: acked.release()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:

        def publish() -> None:
            payload = BODY.encode()
            for i in range(n):
                client.publish(f"devices/d{i % 100}/telemetry", payload, qos=1)
            for _ in range(n):
                acked.acquire(timeout=60)

        publisher = threading.Thread(target=publish)
        publisher.start()
        rate = asyncio.run(_rate(gateway.url, name, n))
        publisher.join()
    finally:
        client.loop_stop()
        client.disconnect()
    return Figure("triggers", "MQTT QoS 1 messages → tasks", rate, "tasks/s", None, None, "≥ 5k/s", rate >= 5_000,
                  {"messages": n, "in_flight_window": MQTT_WINDOW})  # fmt: skip


def _wait_connected(base: str, trigger: str, timeout: float = 30) -> None:
    async def wait() -> None:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                async with http.get(f"{base}/v1/triggers") as response:
                    body = await response.json()
                if any(t["name"] == trigger and t.get("connected") for t in body["triggers"]):
                    return
                await asyncio.sleep(0.1)
            raise TimeoutError(f"trigger {trigger} not connected after {timeout}s: {body}")

    asyncio.run(wait())


def _timer(run_stack: Stack, nats_url: str, ticks: int) -> list[Figure]:
    name, every = "tick", 0.2
    config = {
        "nats": {"url": nats_url},
        "functions": {name: function("started", concurrency=4)},
        "triggers": [{"name": "bench-tick", "type": "timer", "every": f"{every}s", "function": name}],
    }
    gateway = run_stack.gateway(config)
    # Ticks in the first second are warm-up (first import of the function, first thread of
    # the pool), as every other scenario warms up before it measures.
    warm_until = time.time() + 1.0
    time.sleep(ticks * every + 2)

    async def collect() -> list[float]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gateway.url}/v1/tasks?function={name}&status=Succeeded&limit=1000") as response:
                body = await response.json()
        scheduled = [(t, datetime.fromisoformat(t["result"]["scheduled_at"]).timestamp()) for t in body["tasks"]]
        return [(t["result"]["started_at"] - at) * 1000 for t, at in scheduled if at >= warm_until]

    jitter = asyncio.run(collect())
    if len(jitter) < ticks * 0.8:
        raise RuntimeError(f"only {len(jitter)} ticks ran, {ticks} expected")
    extra = {"ticks": len(jitter), "every_s": every, "max_ms": round(max(jitter), 2)}
    return [
        Figure("triggers", "timer jitter p50", percentile(jitter, 50), "ms", extra=extra),
        Figure("triggers", "timer jitter p99", percentile(jitter, 99), "ms", None, None, "< 50 ms",
               percentile(jitter, 99) < 50, extra),
    ]  # fmt: skip
