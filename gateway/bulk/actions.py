"""What an operation does to one chunk of matched tasks; each may run more than once (a
chunk is redelivered when its replica died), so each is idempotent:

- rerun: the new task's id is derived from (operation id, original task id), so a second
  submit of it is refused by JetStream's dedup by message id (409) and counts as done;
- stop: a task already Stopped (or ended otherwise) has nothing left to stop: done.

An outage (NATS away) raises, so the chunk is redelivered rather than counted as failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence

from gateway.observe import metrics
from gateway.tasks.invocation import Invocation, Source
from gateway.tasks.records import RERUN_SOURCE

from ..errors import DuplicateTask, FngateError, ServiceUnavailable, TaskNotStoppable
from ..service import TaskService

log = logging.getLogger(__name__)
STOP_CONCURRENCY = 64
Outcome = tuple[int, int]  # (done, failed)
Task = tuple[str, str]  # (function, task id)


def rerun_id(op_id: str, task_id: str) -> str:
    """The id of the rerun of `task_id` by operation `op_id`: the same on every delivery."""
    return f"{op_id}-{hashlib.sha256(task_id.encode()).hexdigest()[:20]}"


def again(inv: Invocation, op_id: str, now: float) -> Invocation:
    """The rerun of `inv`: its payload and options, as a new task naming the one it repeats.
    Made here, not through the service, so a replica that lacks the function reruns its
    tasks too (a replica that has it runs them, as for any submit)."""
    return Invocation(
        task_id=rerun_id(op_id, inv.task_id),
        function=inv.function,
        payload=inv.payload,
        content_type=inv.content_type,
        submitted_at=now,
        scheduled_at=now,
        not_before=0.0,
        source=Source(RERUN_SOURCE, inv.task_id),
        priority=inv.priority,
        concurrency_key=inv.concurrency_key,
    )


async def rerun_chunk(service: TaskService, op_id: str, tasks: Sequence[Task]) -> Outcome:
    # The chunk's payloads in one pipelined read (no per-task request), then one batch of
    # publishes with their acks awaited together.
    store = service.store
    found = await store.get_submissions(tasks)
    failed = 0
    now = time.time()
    invs: list[Invocation] = []
    for inv in found:
        if inv is None:  # its payload passed retention
            failed += 1
        else:
            invs.append(again(inv, op_id, now))
    done = 0
    enqueued: dict[str, int] = {}
    for inv, outcome in zip(invs, await store.submit_many(invs), strict=True):
        if outcome is None:
            done += 1
            enqueued[inv.function] = enqueued.get(inv.function, 0) + 1
        elif isinstance(outcome, DuplicateTask):  # an earlier delivery of this chunk enqueued it
            done += 1
        elif isinstance(outcome, ServiceUnavailable):
            raise outcome
        else:
            log.info("operation %s: cannot rerun task %s: %s", op_id, inv.source.name, outcome)
            failed += 1
    for function, n in enqueued.items():
        metrics.TASKS_SUBMITTED.labels(function).inc(n)
    return done, failed


async def stop_chunk(service: TaskService, op_id: str, tasks: Sequence[Task]) -> Outcome:
    slots = asyncio.Semaphore(STOP_CONCURRENCY)

    async def stop(task_id: str) -> bool:
        async with slots:
            try:
                await service.stop_task(task_id)
            except TaskNotStoppable:  # ended meanwhile, or stopped by an earlier delivery
                return True
            except ServiceUnavailable:
                raise
            except FngateError as exc:
                log.info("operation %s: cannot stop task %s: %s", op_id, task_id, exc)
                return False
            return True

    results = await asyncio.gather(*(stop(task_id) for _, task_id in tasks))
    done = sum(results)
    return done, len(results) - done
