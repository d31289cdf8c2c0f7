"""The gateway's log lines about tasks: one per failed attempt (with its retry), timeout,
expiry and stop, naming task, function, attempt and reason; never the payload. A failed
attempt's exception and traceback go to the task's own log (GET /v1/tasks/{id}/logs), not
to the gateway's, where they would drown everything else."""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from gateway.errors import FunctionError, FunctionTimeout, TransientError
from gateway.tasks.records import Record
from gateway.tasks.status import Outcome, TaskStatus

log = logging.getLogger("fngate.tasks")
MAX_REASON = 300  # a reason is the error's message, which may quote a function's answer
MAX_DETAIL = 3900


def reason(record: Record) -> str:
    error = record.get("error")
    text = f"{error['type']}: {error['message']}" if error else "?: "
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def _extra(record: Record, attempt: int) -> dict[str, Any]:
    return {"task_id": record["task_id"], "function": record["function"], "attempt": attempt}


def settled(record: Record, attempt: int, outcome: Outcome, retry_at: float | None) -> None:
    """After an attempt's record was written: a line unless it succeeded."""
    status = TaskStatus(record["status"])
    task, function = record["task_id"], record["function"]
    extra = _extra(record, attempt)
    if status is TaskStatus.STOPPED:
        log.info("task %s of %s stopped during attempt %d", task, function, attempt, extra=extra)
    elif status is TaskStatus.RETRYING and retry_at is not None:
        what = "timed out" if outcome is Outcome.TIMEOUT else "failed"
        log.warning(
            "task %s of %s: attempt %d %s (%s); retrying in %.1fs",
            task, function, attempt, what, reason(record), max(0.0, retry_at - time.time()), extra=extra,
        )  # fmt: skip
    elif status is TaskStatus.FAILED:
        what = "timed out" if outcome is Outcome.TIMEOUT else "failed"
        log.warning(
            "task %s of %s: attempt %d %s (%s); task failed (%s)",
            task, function, attempt, what, reason(record), record.get("condition"), extra=extra,
        )  # fmt: skip
    elif status is TaskStatus.EXPIRED:
        log.warning(
            "task %s of %s expired after attempt %d (%s): max_event_age passed", task, function, attempt,
            reason(record), extra=extra,
        )  # fmt: skip


def ended_unrun(record: Record, attempt: int) -> None:
    """A dequeued task that ended without running: expired, stopped, or a chain too deep."""
    status = TaskStatus(record["status"])
    task, function = record["task_id"], record["function"]
    extra = _extra(record, attempt)
    if status is TaskStatus.EXPIRED:
        log.warning("task %s of %s expired before attempt %d: %s", task, function, attempt, reason(record), extra=extra)
    elif status is TaskStatus.STOPPED:
        log.info("task %s of %s stopped before attempt %d", task, function, attempt, extra=extra)
    elif status is TaskStatus.FAILED:
        log.warning("task %s of %s not run (%s)", task, function, reason(record), extra=extra)


def stop_requested(record: Record) -> None:
    status = TaskStatus(record["status"])
    attempt = int(record.get("attempts") or 0)
    extra = _extra(record, attempt)
    if status is TaskStatus.STOPPED:
        log.info("task %s of %s stopped before it ran", record["task_id"], record["function"], extra=extra)
    else:
        log.info(
            "stop requested for task %s of %s (attempt %d)", record["task_id"], record["function"], attempt, extra=extra
        )


def failure_detail(error: BaseException) -> str | None:
    """What the task's log gets about a failed attempt: the function's exception with its
    traceback (Python handlers), else the error's message."""
    if isinstance(error, FunctionTimeout | TransientError):
        return f"{type(error).__name__}: {error}"
    cause = error.__cause__ if isinstance(error, FunctionError) and error.__cause__ is not None else error
    if isinstance(cause, FunctionError):
        return f"FunctionError: {cause}"
    text = "".join(traceback.format_exception(cause)).rstrip()
    # A task's log line holds 4 KiB: of a long traceback keep the end, where the error is.
    return text if len(text) <= MAX_DETAIL else "…" + text[-(MAX_DETAIL - 1) :]


def to_task_log(task_logs: Any, task_id: str, function: str, attempt: int, error: BaseException) -> None:
    """Append a failed attempt's detail to the task's log, as a line of its function's log."""
    detail = failure_detail(error)
    if detail is None or task_logs is None:
        return
    record = logging.makeLogRecord(
        {
            "name": f"fngate.function.{function}",
            "levelno": logging.ERROR,
            "levelname": "ERROR",
            "msg": "attempt %d failed: %s",
            "args": (attempt, detail),
            "task_id": task_id,
            "attempt": attempt,
        }
    )
    task_logs.emit(record)
