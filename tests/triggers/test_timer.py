"""timer trigger: once per tick across replicas, and catching up a missed tick after downtime."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from gateway.tasks.invocation import parse_iso
from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import NatsServer
from tests.triggers.conftest import assert_cloud_event, event_of, tasks_of, trigger_config, trigger_health, wait_tasks


def tick_id(name: str, second: int) -> str:
    return f"tick-{name}-{datetime.fromtimestamp(second, UTC):%Y%m%dT%H%M%S}-000Z"


async def test_two_replicas_make_one_task_per_tick(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("tick")
    trigger = {"name": fn, "type": "timer", "every": "1s", "payload": {"report": "daily"}}
    replicas = [
        gateway_factory(trigger_config(nats_server.url, tmp_path / f"data{i}", fn, [trigger])) for i in range(2)
    ]
    both_running = int(time.time()) + 1
    api = Api(http, replicas[0].url)
    await wait_tasks(api, fn, 1, timeout=10)
    window = range(both_running, both_running + 4)

    async def window_fired() -> bool:
        return time.time() > window[-1] + 1 and len(await tasks_of(api, fn)) >= len(window)

    await wait_until(window_fired, timeout=20)
    healths = [await trigger_health(Api(http, gw.url), fn) for gw in replicas]
    invoked = sum(h["invocations"] for h in healths)

    async def listed() -> set[str] | None:  # a list may trail the stream by the index's lag
        found = {t["task_id"] for t in await tasks_of(api, fn)}
        return found if len(found) >= invoked else None

    ids: set[str] = await wait_until(listed, timeout=10)
    # Every scheduled second made exactly one task, named after the tick: the ids are
    # consecutive whole seconds. A replica ticking on its own clock offset would have added
    # ids between them.
    assert {tick_id(fn, s) for s in window} <= ids
    seconds = sorted(int(parse_iso(i.removeprefix(f"tick-{fn}-").replace("-000Z", "Z"))) for i in ids)
    assert seconds == list(range(seconds[0], seconds[-1] + 1)), ids
    # Both replicas fired every tick; the submits refused as duplicates are not invocations.
    assert all(h["events_received"] >= len(window) for h in healths), healths
    assert sum(h["invocations"] for h in healths) <= len(ids)

    task = await api.wait_status(tick_id(fn, window[0]), "Succeeded")
    assert task["source"] == {"type": "timer", "name": fn}
    event = event_of(task)
    assert_cloud_event(event, "timer", fn, "tick")
    assert event["data"] == {"report": "daily"} and event["id"] == tick_id(fn, window[0])
    assert event["timer"]["scheduled_at"] == event["time"] == event["subject"]
    assert event["timer"]["missed"] is False


async def test_run_once_fires_a_tick_missed_while_down_and_skip_does_not(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("missed")
    # Far enough ahead for a gateway to start and stop before it: that took 6 s once in CI.
    at = time.time() + 12
    when = datetime.fromtimestamp(at, UTC).isoformat()
    triggers = [
        {"name": f"{fn}-once", "type": "timer", "at": when, "misfire": "run_once"},
        {"name": f"{fn}-skip", "type": "timer", "at": when},
    ]
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, triggers))
    gw.stop()
    assert time.time() < at, "the gateway took too long to start for this test"

    async def passed() -> bool:
        return time.time() > at + 0.5

    await wait_until(passed, timeout=20)
    gw.start()
    api = Api(http, gw.url)
    [task] = await wait_tasks(api, fn, 1)
    assert task["source"] == {"type": "timer", "name": f"{fn}-once"}
    event = event_of(task)
    assert event["timer"]["missed"] is True
    assert event["id"] == task["task_id"] and task["task_id"].startswith(f"tick-{fn}-once-")
    assert (await trigger_health(api, f"{fn}-skip"))["events_received"] == 0
    assert len(await tasks_of(api, fn)) == 1
