"""Filling the streams of a real nats-server as many submits and task records would."""

from __future__ import annotations

import time

import nats
from nats.aio.client import Client as NATS

from gateway.jetstream.store import TaskStore
from gateway.pipeline.worker import consumer_name, work_consumer
from gateway.tasks import constants as c
from gateway.tasks.invocation import Invocation, Lineage, Source
from gateway.tasks.records import encode, new_record, stamp
from gateway.tasks.status import TaskStatus

RETENTION = 7 * 86400.0  # a gateway's streams with the default retention
CHUNK = 1000


async def fill(
    url: str, function: str, count: int, *, succeeded: int = 0, prefix: str = "t", consumed: bool = False
) -> list[str]:
    """`count` submissions of `function` (headers as the gateway writes them), the first
    `succeeded` of them also with a Succeeded task record. Returns the task ids in order.
    `consumed`: the function's work consumer has taken and acknowledged the succeeded ones,
    as in a deployment that ran them; otherwise a gateway's worker is handed each of them
    first, finds it finished and drops it (a read and a refused write per task)."""
    nc = await nats.connect(url)
    try:
        store = TaskStore(nc, retention=RETENTION)
        await store.ensure_streams()
        now = time.time()
        invs = [
            Invocation(f"{prefix}{i:07d}", function, b"{}", submitted_at=now + i * 1e-4,
                       source=Source("kafka", "orders"), lineage=Lineage(f"c{i % 7}"))
            for i in range(count)
        ]  # fmt: skip
        for i in range(0, count, CHUNK):
            outcomes = await store.submit_many(invs[i : i + CHUNK])
            assert not any(outcomes), [o for o in outcomes if o][:3]
        for i in range(0, succeeded, CHUNK):
            pending = []
            for inv in invs[i : min(i + CHUNK, succeeded)]:
                record = new_record(inv)
                for status in (TaskStatus.DEQUEUED, TaskStatus.RUNNING):
                    record = stamp(record, status)
                record = stamp(record, TaskStatus.SUCCEEDED, condition="Succeeded")
                pending.append(await store.publisher.send(f"fngate.state.{inv.task_id}", encode(record)))
            for ack in pending:
                await store.publisher.acked(ack)
        await store.publisher.close()
        if consumed and succeeded:
            await _consume(nc, function, succeeded)
        return [inv.task_id for inv in invs]
    finally:
        await nc.close()


async def _consume(nc: NATS, function: str, n: int) -> None:
    """Take and acknowledge the first `n` submissions through the function's durable work
    consumer, made as the worker makes it but with room for a chunk in flight; the worker's
    own `max_ack_pending` and `ack_wait` replace these when it starts."""
    js = nc.jetstream()
    config = work_consumer(function, concurrency=CHUNK * 10, ack_wait=30)
    await js.add_consumer(c.TASKS_STREAM, config)
    sub = await js.pull_subscribe_bind(consumer_name(function), stream=c.TASKS_STREAM)
    taken = 0
    while taken < n:
        for msg in await sub.fetch(min(CHUNK, n - taken), timeout=10):
            await msg.ack()
            taken += 1
    await nc.flush()
    await sub.unsubscribe()
