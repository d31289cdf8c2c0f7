"""A due retry runs when it is due, within ~100 ms, also after an idle spell; timeouts back
off as function errors do, 1, 2, 4 s from a 1 s retry_delay (issue 11 item 6: the first
retry after idle was 2-5 s late, and timeouts backed off 3, 3, 4 s)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.tasks.invocation import parse_iso
from tests.conftest import Api, GatewayFactory
from tests.services import GatewayProcess, NatsServer

# How late a retry may be: the requirement is ~100 ms; the slack is for a loaded machine
# (measured: 3-7 ms late). A retry held by a lingering pull request was 1-5 s late.
LATE = 0.15
IDLE_SPELLS = (5.2, 6.9, 8.6)


def retry_gaps(record: dict[str, Any]) -> list[float]:
    """Seconds from each Retrying in the record's timeline to the Dequeued that follows it."""
    timeline = record["timeline"]
    gaps = []
    for i, step in enumerate(timeline):
        if step["status"] == "Retrying":
            j = next(n for n in range(i + 1, len(timeline)) if timeline[n]["status"] == "Dequeued")
            gaps.append(parse_iso(timeline[j]["at"]) - parse_iso(timeline[i]["at"]))
    return gaps


async def test_retries_after_idle_are_on_time_and_timeouts_back_off_1_2_4_s(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any, tmp_path: Path
) -> None:
    flaky, slow = unique("flaky"), unique("slow")
    functions = {
        flaky: {"handler": "python:examples.functions:flaky", "async": {"max_retries": 2, "retry_delay": "500ms"}},
        slow: {
            "handler": "python:examples.functions:sleepy",
            "timeout": "200ms",
            "async": {"max_retries": 3, "retry_delay": "1s"},
        },
    }
    # One gateway per idle spell, each on a nats-server of its own so that nothing else wakes
    # its delay scheduler: the three spells run side by side instead of one after the other.
    servers = [NatsServer(tmp_path / f"nats{i}") for i in range(len(IDLE_SPELLS))]
    gateways: list[GatewayProcess] = []
    try:
        for server in servers:
            server.start()
        ready: list[float] = []  # when each one was ready: its idle spell starts there
        for server in servers:
            gateways.append(gateway_factory({"nats": {"url": server.url}, "functions": functions}))
            ready.append(time.monotonic())

        async def after_idle(index: int, idle: float) -> tuple[list[float], list[float]]:
            api = Api(http, gateways[index].url)
            # The condition under test, not a synchronisation: the delay scheduler idle for
            # longer than one of its pull requests lasts (5 s), ending at different points of
            # its cycle (a late retry came from a message held until its request ended).
            await asyncio.sleep(max(0.0, ready[index] + idle - time.monotonic()))
            failing, timing_out = await asyncio.gather(
                api.submit(flaky, {"succeed_on": 2}), api.submit(slow, {"seconds": 30})
            )
            record = await api.wait_status(failing, "Succeeded", "Failed")
            assert record["status"] == "Succeeded", record
            timed_out = await api.wait_status(timing_out, "Failed", timeout=30)
            assert timed_out["condition"] == "RetriesExhausted" and timed_out["attempts"] == 4, timed_out
            assert [e["type"] for e in timed_out["errors"]] == ["Timeout"] * 4, timed_out["errors"]
            return retry_gaps(record), retry_gaps(timed_out)

        gaps = await asyncio.gather(*(after_idle(i, idle) for i, idle in enumerate(IDLE_SPELLS)))
    finally:
        for gateway in gateways:
            gateway.kill()
        for server in servers:
            server.stop()
    for retry, timeouts in gaps:
        assert len(retry) == 1 and 0.5 - 0.05 <= retry[0] <= 0.5 + LATE, gaps
        assert len(timeouts) == 3, gaps
        for due, measured in zip((1.0, 2.0, 4.0), timeouts, strict=True):
            assert due - 0.05 <= measured <= due + LATE, gaps
