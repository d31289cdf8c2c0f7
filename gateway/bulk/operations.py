"""Bulk operations: the matching task ids are read from the index once, at creation, and
published in chunks to the work-queue stream FNGATE_OPS (`fngate.ops.{op}.{n}`); every
replica pulls chunks from one durable consumer, so each chunk goes to one replica at a
time, and a chunk whose replica died is redelivered after ACK_WAIT. Nothing is held in
memory only: an operation goes on after any gateway restart."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import replace
from typing import Any

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from gateway.jetstream import streams
from gateway.supervise import cancel_requested
from gateway.tasks import constants as c

from ..errors import ServiceUnavailable
from ..history import TaskQuery
from ..service import TaskService
from .actions import Task, rerun_chunk, stop_chunk
from .records import OperationRecords, new_record, public
from .request import BulkRequest

log = logging.getLogger(__name__)
STREAM = c.OPS_STREAM
SUBJECT = c.OPS_SUBJECT
DURABLE = "fngate-bulk"
CHUNK = 500  # task ids per message
ACK_WAIT = 15.0  # seconds before a chunk whose replica went silent is redelivered
PULLERS = 8  # chunks in flight per replica: under a loaded CPU each round trip waits its turn, so more overlap
PUBLISHING = 64  # chunks whose ack is awaited at once, at creation
PAGE = 5000  # task ids per index read at creation


class BulkOperations:
    def __init__(self, service: TaskService, js: JetStreamContext, replicas: int = 1) -> None:
        self.service = service
        self.js = js
        self.replicas = replicas
        self.records = OperationRecords(js, replicas)

    async def open(self) -> None:
        await self.records.open()
        await streams.ensure_stream(self.js, streams.ops_stream(self.replicas))
        consumer = ConsumerConfig(
            durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT, max_deliver=-1
        )
        await streams.ensure_consumer(self.js, STREAM, consumer, log)

    # --- creation ------------------------------------------------------------------------

    async def matching(self, query: TaskQuery, limit: int) -> list[Task]:
        """The (function, id) of up to `limit` matching tasks, oldest first, page by page."""
        tasks: list[Task] = []
        cursor = None
        while len(tasks) < limit:
            page_query = replace(query, limit=min(PAGE, limit - len(tasks)), cursor=cursor, ids_only=True)
            page, cursor = await self.service.history.list(page_query)
            tasks.extend((t.function, t.task_id) for t in page)
            if cursor is None:
                break
        return tasks

    async def count(self, request: BulkRequest) -> int:
        return len(await self.matching(request.query, request.limit))

    async def create(self, kind: str, request: BulkRequest) -> dict[str, Any]:
        started = time.monotonic()
        tasks = await self.matching(request.query, request.limit)
        read = time.monotonic() - started
        op_id = f"op-{secrets.token_hex(8)}"
        chunks = [tasks[i : i + CHUNK] for i in range(0, len(tasks), CHUNK)]
        record = new_record(op_id, kind, request.filter, len(tasks), len(chunks))
        # The record first: a chunk is never pulled for an operation that has none.
        await self.records.create(record)
        slots = asyncio.Semaphore(PUBLISHING)

        async def publish(n: int, chunk: list[Task]) -> None:
            async with slots:
                await self.js.publish(
                    f"{SUBJECT}.{op_id}.{n}",
                    json.dumps({"op": op_id, "kind": kind, "n": n, "tasks": chunk}).encode(),
                    headers={"Nats-Msg-Id": f"{op_id}.{n}"},
                    stream=STREAM,
                )

        try:
            # Many acks awaited at once: one at a time, the replicas' pullers (which start on
            # the first chunk) slowed the rest down to seconds for 100k tasks.
            await asyncio.gather(*(publish(n, chunk) for n, chunk in enumerate(chunks)))
        except Exception as exc:
            raise ServiceUnavailable(f"operation {op_id} could not be queued whole ({exc}); retry") from None
        log.info(
            "operation %s: %s of %d tasks in %d chunks (%s); ids read in %.2fs, queued in %.2fs",
            op_id, kind, len(tasks), len(chunks), request.filter, read, time.monotonic() - started - read,
        )  # fmt: skip
        return public(record)

    # --- the replicas' side ----------------------------------------------------------------

    async def run(self) -> None:
        sub = await self.js.pull_subscribe_bind(DURABLE, STREAM)
        await asyncio.gather(*(self._pull(sub) for _ in range(PULLERS)))

    async def _pull(self, sub: Any) -> None:
        while not cancel_requested():
            try:
                msgs = await sub.fetch(1, timeout=5)
            except NatsTimeout:
                continue
            for msg in msgs:
                await self._chunk(msg)

    async def _chunk(self, msg: Msg) -> None:
        chunk = json.loads(msg.data)
        op_id, n = chunk["op"], chunk["n"]
        tasks = [(fn, task_id) for fn, task_id in chunk["tasks"]]
        try:
            act = rerun_chunk if chunk["kind"] == "rerun" else stop_chunk
            done, failed = await act(self.service, op_id, tasks)
            await self.records.count_chunk(op_id, n, done, failed)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("operation %s: chunk %d failed (%s); it will be redelivered", op_id, n, reason)
            await msg.nak(delay=1.0)
            return
        await msg.ack_sync()
