"""The Kafka broker and the MQTT broker restarted under load lose nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tests.conftest import TERMINAL, Api, GatewayFactory, wait_until
from tests.services import NatsServer, Tansu
from tests.triggers.conftest import event_of, trigger_config, trigger_health


async def all_tasks(api: Api, function: str) -> list[dict[str, Any]]:
    """Every task of `function`, through all pages."""
    tasks: list[dict[str, Any]] = []
    cursor = ""
    while True:
        status, body = await api.get(f"/v1/tasks?function={function}&limit=1000{cursor}")
        assert status == 200, body
        tasks.extend(body["tasks"])
        if not body["next_cursor"]:
            return tasks
        cursor = f"&cursor={body['next_cursor']}"


@dataclass
class KafkaLoad:
    """A producer sending {"seq": n} one at a time; n moves on only once the broker acked it."""

    topic: str
    acked: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (broker life, offset)
    attempts: int = 0
    failures: int = 0
    life: int = 0  # bumped by the test when it restarts the broker
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, producer: AIOKafkaProducer) -> None:
        seq = 0
        while not self.stop.is_set():
            self.attempts += 1
            try:
                meta = await producer.send_and_wait(self.topic, json.dumps({"seq": seq}).encode(), partition=0)
            except KafkaError:
                self.failures += 1  # the broker is away: the same message again, until it is acked
                await asyncio.sleep(0.1)
                continue
            self.acked[seq] = (self.life, meta.offset)
            seq += 1
            await asyncio.sleep(0.004)


async def test_kafka_broker_killed_and_restarted_under_load_loses_nothing(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """The broker is SIGKILLed while a producer sends and the trigger consumes, then restarted.

    The test broker (Tansu) keeps topics and group offsets in memory only: a kill takes with it
    whatever it had acked but not yet delivered, and the restarted broker starts every topic
    again at offset 0. So the promise is checked the way such a broker allows: of the messages
    from before the kill, the trigger's tasks are an unbroken prefix (nothing delivered to the
    trigger went missing, and none in the middle) covering at least everything the trigger had
    counted as invoked before the kill; after the restart, every acked message is a task.
    """
    broker = Tansu(tmp_path / "tansu")
    broker.start()
    fn = unique("kbounce")
    topic = unique("topic-bounce")
    trigger = {
        "name": fn,
        "type": "kafka",
        "bootstrap_servers": broker.bootstrap,
        "topics": [topic],
        "group_id": f"group-{fn}",
        "auto_offset_reset": "earliest",
        "session_timeout_ms": 1500,
    }
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=2000, retry_backoff_ms=100)
    await producer.start()
    load = KafkaLoad(topic)
    sender: asyncio.Task[None] | None = None
    try:
        gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, [trigger]))
        api = Api(http, gw.url)
        sender = asyncio.create_task(load.run(producer))

        async def consuming() -> int:
            invocations: int = (await trigger_health(api, fn))["invocations"]
            return invocations if invocations >= 150 else 0

        invoked_before_kill = await wait_until(consuming, timeout=20)
        broker.kill()
        killed_at = time.monotonic()
        await asyncio.sleep(2.0)  # the outage; the producer keeps retrying through it
        load.life = 1
        broker.start()

        async def resumed() -> bool:
            health = await trigger_health(api, fn)
            after = sum(1 for life, _ in load.acked.values() if life == 1)
            return health["state"] == "running" and f"{topic}[0]" in health["assigned"] and after >= 150

        await wait_until(resumed, timeout=25)
        recovered = time.monotonic() - killed_at
        load.stop.set()
        await sender
        before = sorted(seq for seq, (life, _) in load.acked.items() if life == 0)
        after = sorted(seq for seq, (life, _) in load.acked.items() if life == 1)
        tasks: list[dict[str, Any]] = []

        async def settled() -> bool:
            nonlocal tasks
            tasks = await all_tasks(api, fn)
            seen = {event_of(t)["data"]["seq"] for t in tasks if t["status"] == "Succeeded"}
            return set(after) <= seen and len(tasks) == sum(1 for t in tasks if t["status"] in TERMINAL)

        try:
            await wait_until(settled, timeout=60, interval=0.5)
        except AssertionError:
            # Say which: tasks the list shows unfinished (and what a read by id, from the
            # stream, says of them), or acked messages that made no task at all.
            seen = {event_of(t)["data"]["seq"] for t in tasks}
            unfinished = [(t["task_id"], t["status"]) for t in tasks if t["status"] not in TERMINAL][:5]
            by_id = [(await api.get(f"/v1/tasks/{task_id}"))[1].get("status") for task_id, _ in unfinished]
            missing = sorted(set(after) - seen)[:10]
            raise AssertionError(f"unfinished {unfinished} (by id: {by_id}); acked after, no task: {missing}") from None
        assert {t["status"] for t in tasks} == {"Succeeded"}
        per_seq = Counter(event_of(t)["data"]["seq"] for t in tasks)
        seen_before = sorted(seq for seq in per_seq if seq in set(before))
        # An unbroken prefix of what was acked before the kill, at least as long as what the
        # trigger had invoked: the rest is the broker's undelivered tail, lost with its memory.
        assert seen_before == before[: len(seen_before)]
        assert len(seen_before) >= invoked_before_kill
        lost_by_broker = len(before) - len(seen_before)
        duplicates = sum(n - 1 for n in per_seq.values())
        print(
            f"kafka restart: {len(before)} acked before the kill ({invoked_before_kill} invoked by then, "
            f"{lost_by_broker} acked but undelivered lost with the broker's memory), {len(after)} after; "
            f"{len(tasks)} tasks, {duplicates} duplicate executions; resumed {recovered:.1f}s after the kill; "
            f"producer retries {load.failures}"
        )
        # A batch consumed but not committed before the kill is consumed again: its copies are
        # deduplicated by task id, except across the restart, where offsets start again at 0.
        assert duplicates <= 500
    finally:
        load.stop.set()
        if sender is not None:
            await sender
        await producer.stop()
        broker.stop()
