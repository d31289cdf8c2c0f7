"""Destinations against real NATS, mosquitto and the Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import nats
from aiokafka import AIOKafkaConsumer

from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import ROOT, Mosquitto, NatsServer, Tansu
from tests.sinks.conftest import Receiver

ECHO = "python:examples.functions:echo"
NOOP = "python:examples.functions:noop"


def fn(handler: str = ECHO, **async_options: Any) -> dict[str, Any]:
    return {"handler": handler, "async": async_options}


async def destination_entry(api: Api, task_id: str, on: str, status: str, timeout: float = 20) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        record = await api.task(task_id)
        for entry in record["destinations"]:
            if entry["on"] == on and entry["status"] == status:
                found: dict[str, Any] = entry
                return found
        return None

    entry: dict[str, Any] = await wait_until(check, timeout)
    return entry


async def test_function_destination_gets_the_record(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    a, b, f, g = unique("a"), unique("b"), unique("f"), unique("g")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {
                a: fn(on_success={"type": "function", "function": b}),
                b: fn(),
                f: fn("python:examples.functions:fail", max_retries=0, on_failure={"type": "function", "function": g}),
                g: fn(),
            },
        }
    )
    api = Api(http, gw.url)
    task_id = await api.submit(a, {"hello": 1})
    await api.wait_status(task_id, "Succeeded")
    entry = await destination_entry(api, task_id, "success", "delivered")
    assert entry["type"] == "function" and entry["target"] == b and entry["attempts"] == 1
    follow = await api.wait_status(f"{task_id}.success", "Succeeded")
    assert follow["source"] == {"type": "function", "name": a}
    assert follow["chain"]["depth"] == 2
    record = follow["result"]["echo"]
    assert record["task_id"] == task_id and record["function"] == a and record["condition"] == "Succeeded"
    assert record["attempts"] == 1 and record["request_payload"] == {"hello": 1}
    assert record["response"] == {"status_code": 200, "function_error": None}
    assert record["response_payload"]["echo"] == {"hello": 1}
    assert set(record) == {
        "timestamp", "task_id", "function", "condition", "attempts", "request_payload", "response", "response_payload",
    }  # fmt: skip

    failed = await api.submit(f, {"x": 1})
    await api.wait_status(failed, "Failed")
    record = (await api.wait_status(f"{failed}.failure", "Succeeded"))["result"]["echo"]
    assert record["condition"] == "FunctionError" and "on purpose" in record["response"]["function_error"]


async def test_queue_nats_core_and_jetstream(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    core, streamed = unique("core"), unique("js")
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=f"S{streamed}", subjects=[f"out.{streamed}"])
        sub = await nc.subscribe(f"out.{core}")
        gw = gateway_factory(
            {
                "nats": {"url": nats_server.url},
                "functions": {
                    core: fn(on_success={"type": "queue", "backend": "nats", "subject": f"out.{core}"}),
                    streamed: fn(on_success={"type": "queue", "backend": "nats", "subject": f"out.{streamed}"}),
                },
            }
        )
        api = Api(http, gw.url)
        first = await api.submit(core, {"k": 1})
        msg = await sub.next_msg(timeout=20)
        assert json.loads(msg.data)["task_id"] == first
        assert msg.headers is not None and msg.headers["Fngate-Chain-Depth"] == "1"
        second = await api.submit(streamed, {"k": 2})
        await destination_entry(api, second, "success", "delivered")
        stored = await js.get_last_msg(f"S{streamed}", f"out.{streamed}")
        assert json.loads(stored.data or b"")["task_id"] == second
    finally:
        await nc.close()


async def test_queue_kafka(
    nats_server: NatsServer, kafka: Tansu, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    name, topic = unique("k"), unique("results")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {
                name: fn(
                    on_success={
                        "type": "queue",
                        "backend": "kafka",
                        "topic": topic,
                        "bootstrap_servers": kafka.bootstrap,
                    }
                )
            },
        }
    )
    api = Api(http, gw.url)
    task_id = await api.submit(name, {"k": "v"})
    await destination_entry(api, task_id, "success", "delivered", timeout=40)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert json.loads(msg.value)["task_id"] == task_id
    headers = {k: v.decode() for k, v in msg.headers}
    assert headers["Fngate-Chain-Depth"] == "1" and headers["Fngate-Task-Id"] == task_id


async def test_queue_mqtt_with_user_properties(
    nats_server: NatsServer,
    mosquitto: Mosquitto,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Any,
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    name = unique("m")
    topic = f"results/{name}"
    received: asyncio.Queue[Any] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    subscribed = asyncio.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c: Any, u: Any, m: Any) -> None:
        loop.call_soon_threadsafe(received.put_nowait, m)

    def on_subscribe(*args: Any) -> None:
        loop.call_soon_threadsafe(subscribed.set)

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        gw = gateway_factory(
            {
                "nats": {"url": nats_server.url},
                "functions": {
                    name: fn(on_success={"type": "queue", "backend": "mqtt", "url": mosquitto.url, "topic": topic})
                },
            }
        )
        task_id = await Api(http, gw.url).submit(name, {"m": 1})
        message = await asyncio.wait_for(received.get(), 20)
        assert json.loads(message.payload)["task_id"] == task_id
        properties = dict(message.properties.UserProperty)
        assert properties["Fngate-Chain-Depth"] == "1" and properties["Fngate-Task-Id"] == task_id
    finally:
        client.loop_stop()
        client.disconnect()


async def test_event_bus_http_binary_structured_and_nats(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    unique: Any,
) -> None:
    binary, structured, bus = unique("bin"), unique("str"), unique("bus")
    nc = await nats.connect(nats_server.url)
    sub = await nc.subscribe(f"events.{bus}")
    try:
        gw = gateway_factory(
            {
                "nats": {"url": nats_server.url},
                "functions": {
                    binary: fn(on_success={"type": "event_bus", "url": receiver.url}),
                    structured: fn(
                        "python:examples.functions:fail",
                        max_retries=0,
                        on_failure={"type": "event_bus", "url": receiver.url, "mode": "structured"},
                    ),
                    bus: fn(on_success={"type": "event_bus", "subject": f"events.{bus}"}),
                },
            }
        )
        api = Api(http, gw.url)
        first = await api.submit(binary, {"b": 1})
        second = await api.submit(structured, {"s": 1})
        third = await api.submit(bus, {"n": 1})
        await destination_entry(api, first, "success", "delivered")
        await destination_entry(api, second, "failure", "delivered")
        by_subject = {
            r["headers"].get("ce-subject") or json.loads(r["body"]).get("subject"): r for r in receiver.received
        }
        got = by_subject[first]
        assert got["headers"]["ce-type"] == "fngate.task.succeeded" and got["headers"]["ce-specversion"] == "1.0"
        assert got["headers"]["ce-source"] == f"fngate/functions/{binary}"
        assert json.loads(got["body"])["task_id"] == first
        event = json.loads(by_subject[second]["body"])
        assert by_subject[second]["headers"]["Content-Type"] == "application/cloudevents+json"
        assert event["type"] == "fngate.task.failed" and event["data"]["condition"] == "FunctionError"
        msg = await sub.next_msg(timeout=20)
        assert msg.headers is not None and msg.headers["ce-subject"] == third
    finally:
        await nc.close()


async def test_payload_limit_at_the_boundary(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    # noop returns nothing, so the record grows with the request payload alone: one more
    # character in the payload is one more byte in the record.
    probe, limited = unique("lim"), unique("lim")
    assert len(probe) == len(limited)
    nc = await nats.connect(nats_server.url)
    sub = await nc.subscribe(f"sized.{probe}")
    try:
        base_limit = 2000
        gw = gateway_factory(
            {
                "nats": {"url": nats_server.url},
                "functions": {
                    probe: fn(NOOP, on_success={"type": "queue", "backend": "nats", "subject": f"sized.{probe}"}),
                    limited: fn(
                        NOOP,
                        on_success={
                            "type": "queue",
                            "backend": "nats",
                            "subject": f"sized.{limited}",
                            "max_payload": base_limit,
                        },
                    ),
                },
            }
        )
        api = Api(http, gw.url)
        await api.submit(probe, {"p": ""}, X_Task_Id="size-probe-000")
        empty_size = len((await sub.next_msg(timeout=20)).data)
        fill = base_limit - empty_size
        exact = await api.submit(limited, {"p": "x" * fill}, X_Task_Id="size-exact-000")
        over = await api.submit(limited, {"p": "x" * (fill + 1)}, X_Task_Id="size-overr-000")
        await destination_entry(api, exact, "success", "delivered")
        entry = await destination_entry(api, over, "success", "failed")
        assert entry["error"].startswith("PayloadTooLarge") and entry["attempts"] == 0
        assert f"{base_limit + 1} bytes" in entry["error"]
    finally:
        await nc.close()


async def test_function_loop_stops_at_max_chain_depth(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    a, b = unique("ping"), unique("pong")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "max_chain_depth": 4,
            "functions": {
                a: fn(on_success={"type": "function", "function": b}),
                b: fn(on_success={"type": "function", "function": a}),
            },
        }
    )
    api = Api(http, gw.url)
    root = await api.submit(a, {})
    last = await api.wait_status(root + ".success" * 4, "Failed")
    assert last["condition"] == "RecursiveLoopDetected" and last["chain"]["depth"] == 5
    assert last["attempts"] == 0 and last["function"] == a
    fourth = await api.task(root + ".success" * 3)
    assert fourth["status"] == "Succeeded" and fourth["chain"]["depth"] == 4
    await asyncio.sleep(1)  # a window in which nothing may happen: what is asserted, not a wait for it
    status, _ = await api.get(f"/v1/tasks/{root + '.success' * 5}")
    assert status == 404, "a destination ran after the loop was detected"


async def test_loop_through_a_nats_subject_and_an_mqtt_topic(
    nats_server: NatsServer,
    mosquitto: Mosquitto,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Any,
) -> None:
    via_nats, via_mqtt = unique("vn"), unique("vm")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "max_chain_depth": 3,
            "functions": {
                via_nats: fn(on_success={"type": "queue", "backend": "nats", "subject": f"loop.{via_nats}"}),
                via_mqtt: fn(
                    on_success={"type": "queue", "backend": "mqtt", "url": mosquitto.url, "topic": f"loop/{via_mqtt}"}
                ),
            },
            "triggers": [
                {"name": f"t{via_nats}", "type": "nats", "subject": f"loop.{via_nats}", "function": via_nats},
                {"name": f"t{via_mqtt}", "type": "mqtt", "url": mosquitto.url, "topic": f"loop/{via_mqtt}", "qos": 1,
                 "protocol": 5, "function": via_mqtt},
            ],
        }
    )  # fmt: skip
    api = Api(http, gw.url)
    for name in (via_nats, via_mqtt):
        await api.submit(name, {"round": 0})

        async def stopped(name: str = name) -> list[dict[str, Any]] | None:
            _, body = await api.get(f"/v1/tasks?function={name}&limit=100")
            tasks = body["tasks"]
            return tasks if any(t.get("condition") == "RecursiveLoopDetected" for t in tasks) else None

        tasks = await wait_until(stopped, timeout=30)
        await asyncio.sleep(1)  # a window in which no further hop may come: what is asserted
        _, body = await api.get(f"/v1/tasks?function={name}&limit=100")
        depths = sorted(t["chain"]["depth"] for t in body["tasks"])
        assert depths == [1, 2, 3, 4], (name, depths)
        refused = [t for t in tasks if t.get("condition") == "RecursiveLoopDetected"]
        assert len(refused) == 1 and refused[0]["source"]["type"] in ("nats", "mqtt")


async def test_destination_down_is_retried_also_across_a_restart(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    unique: Any,
) -> None:
    name, rejected = unique("down"), unique("rej")
    receiver.status = 503
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {
                name: fn(on_success={"type": "event_bus", "url": receiver.url}),
                rejected: fn(on_success={"type": "event_bus", "url": receiver.url.replace("/events", "/nope")}),
            },
        }
    )
    api = Api(http, gw.url)
    task_id = await api.submit(name, {"d": 1})

    async def retried() -> dict[str, Any] | None:
        entries = (await api.task(task_id))["destinations"]
        return entries[0] if entries and entries[0]["attempts"] >= 2 else None

    entry = await wait_until(retried, timeout=20)
    assert entry["status"] == "pending" and "503" in entry["error"]
    gw.kill()
    receiver.status = 200
    gw.start()
    entry = await destination_entry(api, task_id, "success", "delivered", timeout=40)
    assert entry["attempts"] >= 3
    outcomes = [h["status"] for h in entry["history"]]
    assert outcomes[-1] == "delivered" and outcomes[:-1] == ["pending"] * (len(outcomes) - 1)
    assert "503" in entry["history"][0]["error"]
    assert sum(1 for r in receiver.received if r["status"] == 200) == 1

    other = await api.submit(rejected, {})
    entry = await destination_entry(api, other, "success", "failed")
    assert entry["attempts"] == 1 and "404" in entry["error"]


def test_check_reports_destination_errors_and_cycles(tmp_path: Path) -> None:
    def check(text: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        return subprocess.run(
            [sys.executable, "-m", "gateway", "check", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        )

    result = check(
        "functions:\n"
        "  a: {handler: 'python:examples.functions:echo', async: {on_success: {type: function, function: b}}}\n"
        "  b: {handler: 'python:examples.functions:echo', async: {on_failure: {type: function, function: a}}}\n"
    )
    assert result.returncode == 0, result.stderr
    assert "cycle a -> b -> a" in result.stderr
    result = check(
        "functions:\n"
        "  a: {handler: 'python:examples.functions:echo', async: {on_success: {type: queue, backend: nats}, "
        "on_failure: {type: event_bus, url: 'http://x', bogus: 1}}}\n"
        "  c: {handler: 'python:examples.functions:echo', async: {on_success: {type: quuee}}}\n"
    )
    assert result.returncode == 2
    assert "functions.a.async.on_success: backend nats needs a subject" in result.stderr
    assert "functions.a.async.on_failure.bogus: unknown key" in result.stderr
    assert "did you mean 'queue'" in result.stderr
