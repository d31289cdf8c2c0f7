"""The function destination: the record becomes an async invocation of another function.

The invocation's task id is derived from the origin task, so a delivery that is retried
after a crash finds the task already there (DuplicateTask) instead of running it twice.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

from pydantic import Field

from gateway.errors import DuplicateTask, FngateError
from gateway.tasks.invocation import Source

from .base import Delivery, KiB, PermanentDeliveryError, SinkContext, SinkOptions, TransientDeliveryError


class FunctionOptions(SinkOptions):
    function: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")


class FunctionSink:
    Options: ClassVar[type[SinkOptions]] = FunctionOptions
    default_max_payload: ClassVar[int] = 128 * KiB

    def __init__(self, options: FunctionOptions, context: SinkContext) -> None:
        self.options = options
        self.context = context

    @property
    def target(self) -> str:
        return self.options.function

    async def deliver(self, delivery: Delivery) -> None:
        task_id = derived_task_id(delivery.task_id, delivery.on)
        try:
            await self.context.submit(
                self.options.function,
                delivery.body,
                source=Source("function", delivery.function),
                content_type="application/json",
                task_id=task_id,
                # The new task joins the trace as a child of this delivery's span.
                lineage=delivery.lineage.next_hop(delivery.trace),
            )
        except DuplicateTask:
            return  # delivered before (a redelivery after a crash)
        except FngateError as exc:
            if exc.status >= 500:
                raise TransientDeliveryError(exc.message) from None
            raise PermanentDeliveryError(exc.message) from None

    async def close(self) -> None:
        return None


def derived_task_id(task_id: str, on: str) -> str:
    candidate = f"{task_id}.{on}"
    if len(candidate) <= 128:
        return candidate
    return f"d-{hashlib.sha256(candidate.encode()).hexdigest()[:40]}.{on}"
