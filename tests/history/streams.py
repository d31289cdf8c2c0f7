"""Filling the streams of a real nats-server as many submits and task records would."""

from __future__ import annotations

import time

import nats

from gateway.jetstream.store import TaskStore
from gateway.tasks.invocation import Invocation, Lineage, Source
from gateway.tasks.records import encode, new_record, stamp
from gateway.tasks.status import TaskStatus

RETENTION = 7 * 86400.0  # a gateway's streams with the default retention
CHUNK = 1000


async def fill(url: str, function: str, count: int, *, succeeded: int = 0, prefix: str = "t") -> list[str]:
    """`count` submissions of `function` (headers as the gateway writes them), the first
    `succeeded` of them also with a Succeeded task record. Returns the task ids in order."""
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
        return [inv.task_id for inv in invs]
    finally:
        await nc.close()
