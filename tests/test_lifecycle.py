"""Every status of the task lifecycle, reached for real."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.conftest import Api, GatewayFactory
from tests.services import NatsServer


def statuses(record: dict[str, Any]) -> list[str]:
    return [t["status"] for t in record["timeline"]]


async def test_retrying_then_succeeded_and_retries_exhausted(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {
                "flaky": {
                    "handler": "python:examples.functions:flaky",
                    "async": {"max_retries": 3, "retry_delay": "100ms"},
                },
                "fail": {
                    "handler": "python:examples.functions:fail",
                    "async": {"max_retries": 2, "retry_delay": "100ms"},
                },
            },
        }
    )
    api = Api(http, gw.url)
    flaky = await api.submit("flaky", {"succeed_on": 3})
    failing = await api.submit("fail", {})
    record = await api.wait_status(flaky, "Succeeded")
    assert record["attempts"] == 3 and record["result"] == {"attempt": 3}
    assert statuses(record) == ["Enqueued"] + ["Dequeued", "Running", "Retrying"] * 2 + [
        "Dequeued",
        "Running",
        "Succeeded",
    ]
    assert [(e["attempt"], e["type"]) for e in record["errors"]] == [(1, "FunctionError"), (2, "FunctionError")]
    assert "attempt 1 fails" in record["errors"][0]["message"] and record["errors"][0]["at"].endswith("Z")
    record = await api.wait_status(failing, "Failed")
    assert record["attempts"] == 3 and record["condition"] == "RetriesExhausted"
    assert statuses(record).count("Retrying") == 2
    # One entry per failed attempt, oldest first; the last one is also the record's error.
    assert [e["attempt"] for e in record["errors"]] == [1, 2, 3]
    assert ["(attempt 1)" in record["errors"][0]["message"], "(attempt 3)" in record["error"]["message"]] == [True] * 2
    assert {k: record["errors"][-1][k] for k in ("type", "message")} == record["error"]


async def test_expired_when_queued_past_max_event_age(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {
                "narrow": {
                    "handler": "python:examples.functions:sleepy",
                    "concurrency": 1,
                    "async": {"max_event_age": "1s"},
                }
            },
        }
    )
    api = Api(http, gw.url)
    blocker = await api.submit("narrow", {"seconds": 1.5})
    waiting = await api.submit("narrow", {"seconds": 0})
    record = await api.wait_status(waiting, "Expired")
    assert statuses(record) == ["Enqueued", "Expired"] and record["error"]["type"] == "Expired"
    assert (await api.wait_status(blocker, "Succeeded"))["attempts"] == 1


async def test_stop_queued_and_running(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {
                "sleepy": {"handler": "python:examples.functions:sleepy", "timeout": "60s"},
                "blocking": {"handler": "python:examples.functions:blocking_sleep", "timeout": "60s"},
                "cmd": {"command": ["sleep", "30"], "timeout": "60s"},
            },
        }
    )
    api = Api(http, gw.url)
    delayed = await api.submit("sleepy", {"seconds": 0}, X_Delay="30")
    status, body = await api.post(f"/v1/tasks/{delayed}/stop")
    assert status == 202 and body["status"] == "Stopped"
    assert statuses(await api.task(delayed)) == ["Enqueued", "Stopped"]

    running = await api.submit("sleepy", {"seconds": 30})
    command = await api.submit("cmd", {})
    for task_id in (running, command):
        await api.wait_status(task_id, "Running")
        status, body = await api.post(f"/v1/tasks/{task_id}/stop")
        assert status == 202 and body["status"] == "Stopping"
        record = await api.wait_status(task_id, "Stopped", timeout=10)
        assert statuses(record)[-2:] == ["Stopping", "Stopped"]
    status, body = await api.post(f"/v1/tasks/{running}/stop")
    assert status == 409 and body["error"]["code"] == "TaskNotStoppable"


async def test_stop_from_another_replica(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    name = unique("stopx")
    config = {
        "nats": {"url": nats_server.url},
        "functions": {name: {"handler": "python:examples.functions:sleepy", "timeout": "60s"}},
    }
    runner = gateway_factory(config)
    other = gateway_factory({"nats": {"url": nats_server.url}, "functions": {}})
    task_id = await Api(http, runner.url).submit(name, {"seconds": 30})
    await Api(http, runner.url).wait_status(task_id, "Running")
    # `other` does not even configure the function: the stop still reaches the runner.
    status, body = await Api(http, other.url).post(f"/v1/tasks/{task_id}/stop")
    assert status == 202, body
    assert (await Api(http, runner.url).wait_status(task_id, "Stopped", timeout=10))["status"] == "Stopped"


async def test_invalid_when_function_left_the_config(
    own_nats: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    gone = unique("gone")
    config: dict[str, Any] = {
        "nats": {"url": own_nats.url},
        "functions": {gone: {"handler": "python:examples.functions:echo"}},
    }
    # A shorter replica grace, which the test waits out (on its own nats-server: tests/test_replicas.py).
    short_beat = {"FNGATE_REPLICA_BEAT": "2"}
    first = gateway_factory(config, env=short_beat)
    api = Api(http, first.url)
    task_id = await api.submit(gone, {}, X_Delay="2")
    first.stop()
    del config["functions"][gone]
    config["functions"]["other"] = {"handler": "python:examples.functions:echo"}
    second = gateway_factory(config, env=short_beat)
    api = Api(http, second.url)
    record = await api.wait_status(task_id, "Invalid", timeout=45)  # after the replica grace (gateway/replicas.py)
    assert record["error"]["type"] == "Invalid"
    await asyncio.sleep(0)
