"""What the task history holds and answers, independent of the database behind it."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from gateway.tasks.invocation import parse_iso
from gateway.tasks.status import TaskStatus

from ..errors import BadRequest

WINDOW = 60  # seconds of the "last minute" counts
SERIES = 3600  # seconds the per-second counters are kept for the overview's charts (series.py)
QUEUED = frozenset({TaskStatus.ENQUEUED, TaskStatus.RETRYING, TaskStatus.DEQUEUED})
RUNNING = frozenset({TaskStatus.RUNNING, TaskStatus.STOPPING})
FAILED = frozenset({TaskStatus.FAILED, TaskStatus.EXPIRED, TaskStatus.INVALID})
Order = Literal["asc", "desc"]


def to_ms(ts: float) -> int:
    """Epoch milliseconds exactly as a record's ISO stamp holds them (`iso()` rounds to the
    microsecond, then keeps the millisecond), so a row made from a submission and one made
    from a task record agree."""
    seconds = math.floor(ts)
    micros = round((ts - seconds) * 1_000_000)
    return seconds * 1000 + micros // 1000


def iso_ms(value: str) -> int:
    """`to_ms(parse_iso(value))`. The feed reads two or three stamps from every task record;
    those `iso()` writes (`2026-11-22T16:20:01.120Z`) take the cached second and the
    digits, anything else the general parse (ValueError when it is no stamp)."""
    if len(value) == 24 and value[19] == "." and value[23] == "Z" and value[20:23].isdigit():
        return _second_ms(value[:19]) + int(value[20:23])
    return to_ms(parse_iso(value))


@functools.lru_cache(maxsize=256)
def _second_ms(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        raise ValueError(f"not a second of an ISO stamp: {text!r}")
    return int(moment.replace(tzinfo=UTC).timestamp()) * 1000


@dataclass(slots=True)
class Fact:
    """What one stream message says about a task. From FNGATE_TASKS (`state_seq` 0, no
    status): that it exists, Enqueued. From FNGATE_STATE: its status as of `state_seq`."""

    task_id: str
    function: str
    submitted_ms: int
    source_type: str
    source_name: str
    chain_id: str
    status: TaskStatus = TaskStatus.ENQUEUED
    state_seq: int = 0
    condition: str | None = None
    finished_ms: int | None = None
    # The task record (JSON) of a state; a submission's row holds its headers (plan.record_of).
    record: str | None = None
    headers: dict[str, str] | None = None  # a submission's headers, to make its record from
    started_ms: int | None = None  # the record's started_at (its first attempt), for the run-time histogram


@dataclass(frozen=True, slots=True)
class Cursor:
    """The position after the last task of a page: (submitted ms, task id), stable however
    many tasks arrive meanwhile. Written `<ms>-<task id>`."""

    submitted_ms: int
    task_id: str

    def __str__(self) -> str:
        return f"{self.submitted_ms}-{self.task_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        ms, sep, task_id = text.partition("-")
        if not sep or not ms.isdigit() or not task_id:
            raise BadRequest("cursor must be a next_cursor of an earlier page")
        return cls(int(ms), task_id)


@dataclass(frozen=True, slots=True)
class TaskQuery:
    function: str | None = None
    statuses: tuple[TaskStatus, ...] = ()
    since_ms: int | None = None
    until_ms: int | None = None
    source_type: str | None = None
    source_name: str | None = None
    condition: str | None = None
    chain: str | None = None
    prefix: str | None = None
    order: Order = "desc"
    limit: int = 50
    cursor: Cursor | None = None
    ids_only: bool = False  # rows without their record (bulk operations need only the ids)


@dataclass(frozen=True, slots=True)
class Listed:
    task_id: str
    function: str
    submitted_ms: int
    record: str  # JSON, as of the index (it may trail the stream by the lag)


@dataclass
class Counts:
    """One function's counts: tasks in the history by status, and what happened in the
    last minute (from per-second counters)."""

    by_status: dict[TaskStatus, int]
    last_minute: dict[str, int]

    def summary(self) -> dict[str, dict[str, int]]:
        s = self.by_status
        return {
            "last_minute": {k: self.last_minute.get(k, 0) for k in ("submitted", "completed", "failed")},
            "totals": {
                "submitted": sum(s.values()),
                "completed": s.get(TaskStatus.SUCCEEDED, 0),
                # The totals partition the tasks: expired apart from failed, so the six
                # states add up to `submitted` (Invalid, never run, counts as failed).
                "failed": s.get(TaskStatus.FAILED, 0) + s.get(TaskStatus.INVALID, 0),
                "stopped": s.get(TaskStatus.STOPPED, 0),
                "expired": s.get(TaskStatus.EXPIRED, 0),
                "queued": sum(s.get(x, 0) for x in QUEUED),
                "running": sum(s.get(x, 0) for x in RUNNING),
            },
        }

    @classmethod
    def from_rows(cls, statuses: Mapping[str, int], recent: Mapping[str, int]) -> Counts:
        by_status: dict[TaskStatus, int] = {}
        for status, n in statuses.items():
            try:
                by_status[TaskStatus(status)] = int(n)
            except ValueError:
                continue
        return cls(by_status, {k: int(v) for k, v in recent.items()})


def recent_kind(status: TaskStatus) -> str | None:
    """Which last-minute counter a change to `status` feeds, if any."""
    if status is TaskStatus.SUCCEEDED:
        return "completed"
    if status in FAILED:
        return "failed"
    return None
