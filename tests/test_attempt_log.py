"""The gateway's log: one line per failed attempt (with its retry), timeout, expiry and
stop, naming task, function, attempt and reason, never the payload; the failed attempt's
traceback goes to the task's own log."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import NatsServer

SECRET = "payload-secret-4711"


async def test_log_lines_per_attempt_and_traceback_in_task_log(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    fail, slow, narrow = unique("logfail"), unique("logslow"), unique("lognarrow")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "logging": {"format": "json"},
            "functions": {
                fail: {
                    "handler": "python:examples.functions:fail",
                    "async": {"max_retries": 1, "retry_delay": "100ms"},
                },
                slow: {"handler": "python:examples.functions:sleepy", "timeout": "200ms", "async": {"max_retries": 0}},
                narrow: {
                    "handler": "python:examples.functions:sleepy",
                    "concurrency": 1,
                    "timeout": "60s",
                    "async": {"max_event_age": "1s"},
                },
            },
        }
    )
    api = Api(http, gw.url)
    failed = await api.submit(fail, {"secret": SECRET})
    timed_out = await api.submit(slow, {"seconds": 5, "secret": SECRET})
    # The blocker holds the only slot past the second task's max_event_age.
    await api.submit(narrow, {"seconds": 1.5, "secret": SECRET})
    expired = await api.submit(narrow, {"seconds": 0, "secret": SECRET})
    await api.wait_status(failed, "Failed")
    await api.wait_status(timed_out, "Failed")
    await api.wait_status(expired, "Expired")
    blocker = await api.submit(narrow, {"seconds": 30, "secret": SECRET})
    await api.wait_status(blocker, "Running")
    await api.post(f"/v1/tasks/{blocker}/stop")
    await api.wait_status(blocker, "Stopped")

    def lines() -> list[dict[str, Any]]:
        entries = [json.loads(x) for x in gw.log().splitlines() if x.startswith("{")]
        return [e for e in entries if e.get("logger") == "fngate.tasks"]

    async def about(task_id: str, count: int) -> list[dict[str, Any]] | None:
        found = [e for e in lines() if e.get("task_id") == task_id]
        return found if len(found) >= count else None

    first, second = await wait_until(lambda: about(failed, 2))
    assert first["level"] == "warning" and first["function"] == fail
    assert (
        "attempt 1 failed (FunctionError: RuntimeError: failing on purpose (attempt 1)); retrying in"
        in first["message"]
    )
    assert "attempt 2 failed" in second["message"] and "task failed (RetriesExhausted)" in second["message"]
    (timeout,) = await wait_until(lambda: about(timed_out, 1))
    assert "attempt 1 timed out (Timeout: function did not return within 0.2s); task failed" in timeout["message"]
    (expiry,) = await wait_until(lambda: about(expired, 1))
    assert expiry["level"] == "warning" and "expired before attempt 1" in expiry["message"]
    stops = await wait_until(lambda: about(blocker, 2))
    assert [e["level"] for e in stops] == ["info", "info"]
    assert "stop requested" in stops[0]["message"] and "stopped during attempt 1" in stops[1]["message"]
    assert SECRET not in gw.log()

    async def traceback_logged() -> list[str] | None:
        _, body = await api.get(f"/v1/tasks/{failed}/logs")
        messages = [line["message"] for line in body["lines"] if line["level"] == "error"]
        return messages if len(messages) == 2 else None

    first_attempt, _ = await wait_until(traceback_logged)
    assert first_attempt.startswith("attempt 1 failed: Traceback (most recent call last):")
    assert "examples/functions.py" in first_attempt and "RuntimeError: failing on purpose (attempt 1)" in first_attempt
    _, body = await api.get(f"/v1/tasks/{timed_out}/logs")
    assert [line["message"] for line in body["lines"]] == [
        "attempt 1 failed: FunctionTimeout: function did not return within 0.2s"
    ]
