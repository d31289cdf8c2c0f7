"""Entry point from FunctionWorker.run for a flow-controlled function."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from typing import TYPE_CHECKING

from gateway.jetstream import streams
from gateway.tasks import constants as c

from .leader import WINDOW, FlowLeader
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
        await streams.ensure_stream(store.js, streams.flow_stream(store.replicas))
        await streams.ensure_stream(store.js, streams.flow_leaders_stream(ack_wait, store.replicas))
        _ensured.add(id(store))


async def run_flow(worker: FunctionWorker) -> None:
    store = worker.store
    await ensure_flow_streams(store, worker.ack_wait)
    # Only the leader pulls; what waits in its memory is pending too, hence the window.
    config = dataclasses.replace(worker.consumer_config(), max_ack_pending=worker.config.concurrency + WINDOW)
    await streams.ensure_consumer(store.js, c.TASKS_STREAM, config, worker.log)
    try:
        # One fails, all stop (and the supervisor starts them again): never a leader left over.
        async with asyncio.TaskGroup() as group:
            group.create_task(worker._heartbeats())
            runner = FlowRunner(worker, REPLICA)
            runner.leader = FlowLeader(worker, REPLICA, runner)
            group.create_task(runner.run())
            group.create_task(runner.leader.run())
    finally:
        worker.tasks.cancel()
