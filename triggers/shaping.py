"""What a trigger does to its events before they become tasks: `filter:` and `batch:`.

The option models live here (the trigger types that take them inherit them), and so do
the helpers that turn a run of events into batch tasks. Matching itself is triggers.pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.config.model import Duration
from gateway.tasks.invocation import BatchItem, Lineage

from .base import TriggerContext, TriggerOptions, stable_id
from .pattern import EventPattern, PatternError, compile_pattern

# A batch task's payload stays below this, whatever `size` says, and below what the NATS
# server takes in a task (its max_payload, 1 MiB by default, less the headers' room) when
# that is less: a refused batch could only be dropped (batch_max_bytes).
BATCH_MAX_BYTES = 768 * 1024


class FilterOptions(TriggerOptions):
    """`filter:` an EventBridge event pattern matched against the event the function receives."""

    filter: dict[str, Any] | None = None

    @field_validator("filter")
    @classmethod
    def _valid_pattern(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                compile_pattern(value)
            except PatternError as exc:
                raise ValueError(f"not an event pattern: {exc}") from None
        return value

    def event_pattern(self) -> EventPattern | None:
        return compile_pattern(self.filter) if self.filter is not None else None


class BatchOptions(BaseModel):
    """Up to `size` events, or what arrived within `window`, make one task."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    size: int = Field(ge=1, le=10_000)
    window: Duration = Field(default=1.0, ge=0.0, le=300.0)


class BatchedOptions(FilterOptions):
    batch: BatchOptions | None = None


def batch_max_bytes(context: TriggerContext) -> int:
    """The size a batch task's payload must stay under: BATCH_MAX_BYTES, or less on a NATS
    server with a smaller max_payload (asked each time: a reconnect may reach another one)."""
    server_limit = context.max_task_payload()
    return min(BATCH_MAX_BYTES, server_limit) if server_limit > 0 else BATCH_MAX_BYTES


def chunks(items: Sequence[BatchItem], size: int, max_bytes: int = BATCH_MAX_BYTES) -> list[list[BatchItem]]:
    """`items` in runs of at most `size` events and (but for a lone large event) max_bytes."""
    runs: list[list[BatchItem]] = []
    current: list[BatchItem] = []
    used = 2
    for item in items:
        grows = len(item[0]) + 1
        if current and (len(current) >= size or used + grows > max_bytes):
            runs.append(current)
            current, used = [], 2
        current.append(item)
        used += grows
    if current:
        runs.append(current)
    return runs


def batch_task(prefix: str, events: Sequence[BatchItem]) -> BatchItem:
    """One task for a run of events: a JSON array of them (the CloudEvents JSON batch format).

    Its id derives from its events' ids, so the same run seen again (a Kafka batch consumed
    a second time) is the same task; its lineage is the deepest any event carried, so a
    loop is still caught however events are grouped.
    """
    payload = b"[" + b",".join(event for event, _, _ in events) + b"]"
    task_id = stable_id(prefix, len(events), *(task_id for _, task_id, _ in events))
    lineages = [lineage for _, _, lineage in events if lineage is not None]
    deepest: Lineage | None = max(lineages, key=lambda lineage: lineage.depth) if lineages else None
    return payload, task_id, deepest
