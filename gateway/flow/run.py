"""Entry point from FunctionWorker.run for a flow-controlled function."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from typing import TYPE_CHECKING

from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError

from gateway.tasks import constants as c

from .leader import WINDOW, FlowLeader
from .names import FLOW_STREAM, LEADER_SUBJECT, LEADERS_STREAM, PARK_SUBJECT
from .runner import FlowRunner

if TYPE_CHECKING:
    from gateway.jetstream.store import TaskStore
    from gateway.pipeline.worker import FunctionWorker

REPLICA = f"replica-{secrets.token_hex(4)}"  # this process, in the leader claim
_ensured: set[int] = set()
_ensuring = asyncio.Lock()


async def ensure_flow_streams(store: TaskStore, ack_wait: float) -> None:
    async with _ensuring:
        if id(store) in _ensured:
            return
        await store.ensure_stream(
            StreamConfig(
                name=FLOW_STREAM,
                subjects=[f"{PARK_SUBJECT}.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                num_replicas=store.replicas,
            )
        )
        await store.ensure_stream(
            StreamConfig(
                name=LEADERS_STREAM,
                subjects=[f"{LEADER_SUBJECT}.>"],
                retention=RetentionPolicy.LIMITS,
                max_msgs_per_subject=1,
                max_age=ack_wait,  # a crashed leader's claim ages out
                storage=StorageType.FILE,
                num_replicas=store.replicas,
            )
        )
        _ensured.add(id(store))


async def run_flow(worker: FunctionWorker) -> None:
    store = worker.store
    await ensure_flow_streams(store, worker.ack_wait)
    # Only the leader pulls; what waits in its memory is pending too, hence the window.
    config = dataclasses.replace(worker.consumer_config(), max_ack_pending=worker.config.concurrency + WINDOW)
    try:
        await store.js.add_consumer(c.TASKS_STREAM, config)
    except APIError as exc:
        worker.log.warning("consumer %s not updated: %s", config.durable_name, exc.description)
    try:
        # One fails, all stop (and the supervisor starts them again): never a leader left over.
        async with asyncio.TaskGroup() as group:
            group.create_task(worker._heartbeats())
            runner = FlowRunner(worker, REPLICA)
            runner.leader = FlowLeader(worker, REPLICA, runner)
            group.create_task(runner.run())
            group.create_task(runner.leader.run())
    finally:
        for task in list(worker._tasks):
            task.cancel()
