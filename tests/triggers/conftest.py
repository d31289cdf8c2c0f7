"""Helpers shared by the trigger tests: a gateway config with an echo function, and task lookups."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import Api, wait_until
from tests.services import Tansu
from triggers.base import TriggerContext

ECHO = "python:examples.functions:echo"


@pytest.fixture
async def producer(kafka: Tansu) -> AsyncIterator[AIOKafkaProducer]:
    """A Kafka producer on the session's broker, for the kafka trigger tests."""
    client = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await client.start()
    yield client
    await client.stop()


def trigger_config(
    nats_url: str, data_dir: Path, function: str, triggers: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A gateway on `nats_url` whose `function` echoes its event back as its result."""
    return {
        "nats": {"url": nats_url, "data_dir": str(data_dir)},
        "functions": {function: {"handler": ECHO}},
        "triggers": [{"function": function, **t} for t in triggers],
        **extra,
    }


async def tasks_of(api: Api, function: str) -> list[dict[str, Any]]:
    status, body = await api.get(f"/v1/tasks?function={function}&limit=1000")
    assert status == 200, body
    tasks: list[dict[str, Any]] = body["tasks"]
    return tasks


async def wait_tasks(
    api: Api, function: str, count: int, *, status: str = "Succeeded", timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Wait until at least `count` tasks of `function` reached `status`; returns those."""

    async def reached() -> list[dict[str, Any]] | None:
        done = [t for t in await tasks_of(api, function) if t["status"] == status]
        return done if len(done) >= count else None

    result: list[dict[str, Any]] = await wait_until(reached, timeout)
    return result


def event_of(task: dict[str, Any]) -> Any:
    """The event the echo function received (an object, or the array of a batch)."""
    return task["result"]["echo"]


async def trigger_health(api: Api, name: str) -> dict[str, Any]:
    status, body = await api.get("/v1/triggers")
    assert status == 200, body
    matches = [t for t in body["triggers"] if t["name"] == name]
    assert matches, body
    health: dict[str, Any] = matches[0]
    return health


def assert_cloud_event(event: dict[str, Any], type_: str, name: str, kind: str) -> None:
    assert event["specversion"] == "1.0"
    assert event["source"] == f"/fngate/triggers/{type_}/{name}"
    assert event["type"] == f"fngate.{type_}.{kind}"
    assert event["trigger"] == {"type": type_, "name": name}
    assert event["id"] and event["time"].endswith("Z") and "subject" in event


async def wait_holding(api: Api, name: str, timeout: float = 15.0) -> dict[str, Any]:
    """Wait until trigger `name` reports that it holds events back (NATS unreachable)."""

    async def holding() -> dict[str, Any] | None:
        health = await trigger_health(api, name)
        return health if health["state"] == "holding" else None

    found: dict[str, Any] = await wait_until(holding, timeout=timeout)
    return found


def offline_context() -> TriggerContext:
    """A trigger's context for tests that only build events: submitting fails the test."""

    async def unused(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("not submitted")

    return TriggerContext(
        submit=unused, submit_many=unused, invoke_sync=unused, add_route=lambda *_: None, read_body=unused,
        data_dir="/tmp", max_request_body=1 << 20, max_chain_depth=10,
    )  # fmt: skip
