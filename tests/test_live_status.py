"""gateway.web.live on a real nats-server, with the stored record in the test's hands: what a
watcher is shown when writes are published, stored late, or never stored (a lost
compare-and-set), and how much a slow watcher holds."""

from __future__ import annotations

import json
from typing import Any, cast

import nats

from gateway.errors import TaskNotFound
from gateway.tasks import constants as c
from gateway.tasks.records import Record
from gateway.web.live import QUEUE_LIMIT, LiveStatus, Watcher
from tests.services import NatsServer


def record(task_id: str, *statuses: str, at: str = "2026-12-01T00:00:00.000Z") -> Record:
    # Only what the live status reads: its id, status and timeline.
    partial = {"task_id": task_id, "status": statuses[-1], "timeline": [{"status": s, "at": at} for s in statuses]}
    return cast(Record, partial)


async def drain(watcher: Watcher, quiet: float = 1.5) -> list[str]:
    """Statuses shown until nothing came for `quiet` seconds (a bound, not a synchronisation)."""
    shown = []
    while (r := await watcher.next(quiet)) is not None:
        shown.append(r["status"])
    return shown


async def test_only_stored_writes_are_shown_in_order(nats_server: NatsServer, unique: Any) -> None:
    task_id = unique("ls")
    stored: dict[str, Any] = {"record": record(task_id, "Enqueued"), "stale_reads": 0, "before": None}

    async def read(wanted: str) -> Record:
        if wanted != task_id:
            raise TaskNotFound(wanted)
        if stored["stale_reads"]:  # the stream has not stored the latest write yet
            stored["stale_reads"] -= 1
            return cast(Record, stored["before"]).copy()
        return cast(Record, stored["record"]).copy()

    nc = await nats.connect(nats_server.url)
    try:
        live = LiveStatus(nc, read)
        subject = f"{c.STATE_SUBJECT}.{task_id}"
        async with live.watch(task_id) as watcher:
            first = await watcher.next(1)
            assert first is not None and first["status"] == "Enqueued"  # the current record first
            # A write published but never stored (it lost its compare-and-set): not shown.
            lost = record(task_id, "Enqueued", "Stopped")
            await nc.publish(subject, json.dumps(lost).encode())
            assert await drain(watcher) == []
            # Two stored writes, the read seeing only the second: both shown, in order.
            running = record(task_id, "Enqueued", "Dequeued", "Running")
            done = record(task_id, "Enqueued", "Dequeued", "Running", "Succeeded")
            stored["record"] = done
            await nc.publish(subject, json.dumps(running).encode())
            await nc.publish(subject, json.dumps(done).encode())
            assert await drain(watcher) == ["Running", "Succeeded"]
        assert live.watched == {} and live.count == 0

        # A write published before the stream has it: shown once a later read finds it.
        other = unique("ls")
        stored["record"] = record(other, "Enqueued")
        task_id = other
        async with live.watch(other) as watcher:
            await watcher.next(1)
            late = record(other, "Enqueued", "Dequeued", "Running")
            stored.update(before=stored["record"], record=late, stale_reads=2)
            await nc.publish(f"{c.STATE_SUBJECT}.{other}", json.dumps(late).encode())
            assert await drain(watcher) == ["Running"]
            assert stored["stale_reads"] == 0
    finally:
        await nc.close()


def test_a_slow_watcher_holds_a_bounded_queue_ending_with_the_newest() -> None:
    watcher = Watcher()
    statuses = ["Enqueued"] + ["Running"] * 200 + ["Succeeded"]
    for n in range(1, len(statuses) + 1):
        watcher.push(cast(Record, {"status": statuses[n - 1], "timeline": [{}] * n}))
    assert len(watcher.records) == QUEUE_LIMIT
    assert watcher.records[-1]["status"] == "Succeeded"
    watcher.push(cast(Record, {"status": "Running", "timeline": [{}] * 5}))  # older than what it has: ignored
    assert len(watcher.records) == QUEUE_LIMIT and watcher.records[-1]["status"] == "Succeeded"
