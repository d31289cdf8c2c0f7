"""The streams' age limit never drops an unfinished task (issue 11 item 9): retention must
cover a task's longest life, X-Delay is capped to what it leaves, and a retry that would
run past max_event_age ends Expired at once instead of waiting out of sight."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.config.model import parse_config
from gateway.errors import ConfigError
from gateway.tasks import lifecycle
from gateway.tasks.invocation import Invocation
from gateway.tasks.records import new_record, stamp
from gateway.tasks.status import TaskStatus
from tests.conftest import Api, GatewayFactory
from tests.services import NatsServer


def config_with(async_: dict[str, str], timeout: str = "30s") -> dict[str, object]:
    return {"functions": {"f": {"handler": "python:a:b", "timeout": timeout, "async": async_}}}


def test_retention_shorter_than_a_task_life_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config_with({"retention": "1m"}))  # max_event_age 6h by default
    assert any(e.startswith("functions.f") and "async.retention" in e for e in info.value.errors), info.value.errors
    with pytest.raises(ConfigError):
        parse_config(config_with({"retention": "10m", "max_event_age": "9m"}, timeout="30s"))
    config = parse_config(config_with({"retention": "10m", "max_event_age": "8m"}, timeout="30s"))
    assert config.functions["f"].max_delay == 600 - 480 - 30 - 60


def test_a_retry_due_past_max_event_age_expires_now() -> None:
    inv = Invocation("t-1", "f", b"", submitted_at=1000.0, scheduled_at=1000.0)
    running = stamp(stamp(new_record(inv), TaskStatus.DEQUEUED, 1000.0), TaskStatus.RUNNING, 1000.0)
    settled = lifecycle.settle(
        running,
        now=1050.0,
        outcome="function_error",
        attempt=1,
        transient_count=0,
        scheduled_at=1000.0,
        max_retries=3,
        retry_delay=3600.0,
        max_event_age=600.0,
        message="boom",
    )
    assert settled.record["status"] == "Expired" and settled.retry_at is None
    assert settled.record["error"] == {"type": "FunctionError", "message": "boom"}


async def test_x_delay_beyond_what_retention_allows_is_400(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    function = {
        "handler": "python:examples.functions:echo",
        "timeout": "5s",
        "async": {"retention": "2m", "max_event_age": "30s"},
    }
    gw = gateway_factory({"nats": {"url": nats_server.url}, "functions": {"short": function}})
    api = Api(http, gw.url)
    status, body, _ = await api.invoke("short", {}, headers={"X-Delay": "60"})
    assert status == 400 and "25s" in body["error"]["message"], body
    status, body, _ = await api.invoke("short", {}, headers={"X-Delay": "1"})
    assert status == 202, body
