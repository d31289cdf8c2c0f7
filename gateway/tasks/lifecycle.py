"""The task state machine's decisions, as pure functions of a record and an event.

The worker and the stop request only do I/O around these: read the record, ask what to
write, write it with compare-and-set, and on a conflict re-read and ask again. Keeping the
decisions here lets a property test drive every interleaving without a broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import TaskNotStoppable
from gateway.tasks.invocation import iso
from gateway.tasks.records import AttemptError, Record, stamp, status_of
from gateway.tasks.status import Condition, Outcome, TaskStatus

MAX_TRANSIENT_BACKOFF = 300.0
# A task retried on transient failures until max_event_age may fail hundreds of times: the
# record keeps the first failures and the latest ones, so it stays small.
MAX_ERRORS = 50
MAX_ERROR_MESSAGE = 2048


def failed_attempt(record: Record, *, attempt: int, at: float, error: Mapping[str, str]) -> list[AttemptError]:
    """The record's `errors` with one more entry for a failed attempt, oldest first."""
    entry: AttemptError = {
        "attempt": attempt,
        "at": iso(at),
        "type": error["type"],
        "message": error["message"][:MAX_ERROR_MESSAGE],
    }
    errors = [*(record.get("errors") or []), entry]
    if len(errors) > MAX_ERRORS:
        keep = MAX_ERRORS // 2
        errors = errors[:keep] + errors[-(MAX_ERRORS - keep) :]
    return errors


@dataclass(frozen=True, slots=True)
class Claim:
    """What a worker does with a dequeued task: write `record`; run it only if `run`."""

    record: Record | None
    run: bool = False

    @property
    def terminal(self) -> bool:
        return self.record is not None and status_of(self.record).terminal


def claim(
    base: Record, *, now: float, attempt: int, scheduled_at: float, max_event_age: float, depth: int, max_depth: int
) -> Claim:
    status = status_of(base)
    if status.terminal:
        return Claim(None)  # already done: the ack was lost, or a stop won the race
    if status is TaskStatus.STOPPING:
        return Claim(stamp(base, TaskStatus.STOPPED, now))
    if attempt < (base.get("attempts") or 0):
        # A late copy of an earlier attempt (its ack was lost) after a later attempt began:
        # that attempt has settled and its retry is under way. Running it again would move
        # the record's attempts backwards and run the function once more.
        return Claim(None)
    if now - scheduled_at > max_event_age:
        error = {"type": "Expired", "message": "max_event_age passed before the task could run"}
        return Claim(stamp(base, TaskStatus.EXPIRED, now, error=error, condition=Condition.EXPIRED))
    if depth > max_depth:
        error = {"type": "RecursiveLoopDetected", "message": f"chain depth {depth} exceeds max_chain_depth {max_depth}"}
        return Claim(stamp(base, TaskStatus.FAILED, now, error=error, condition=Condition.RECURSIVE_LOOP))
    running = stamp(stamp(base, TaskStatus.DEQUEUED, now), TaskStatus.RUNNING, now)
    running["attempts"] = attempt
    return Claim(running, run=True)


@dataclass(frozen=True, slots=True)
class Settlement:
    """The record to write after an attempt, and when to try again (None: no retry)."""

    record: Record
    retry_at: float | None = None
    transient: bool = False

    @property
    def terminal(self) -> bool:
        return status_of(self.record).terminal


def settle(
    running: Record,
    *,
    now: float,
    outcome: Outcome | str,
    attempt: int,
    transient_count: int,
    scheduled_at: float,
    max_retries: int,
    retry_delay: float,
    max_event_age: float,
    result: Any = None,
    message: str = "",
) -> Settlement:
    """`outcome` is an Outcome (or its value, as a property test draws it)."""
    outcome = Outcome(outcome)
    if outcome is Outcome.SUCCEEDED:
        return Settlement(
            stamp(running, TaskStatus.SUCCEEDED, now, result=result, error=None, condition=Condition.SUCCEEDED)
        )
    if outcome is Outcome.STOPPED:
        # Only a stop request cancels a run, and it wrote Stopping first: the write will
        # lose its compare-and-set to that record and be rebased onto it.
        return Settlement(stamp(stamp(running, TaskStatus.STOPPING, now), TaskStatus.STOPPED, now))
    if outcome is Outcome.TRANSIENT:
        info = {"type": "TransientError", "message": message}
        errors = failed_attempt(running, attempt=attempt, at=now, error=info)
        backoff = min(0.5 * 2**transient_count, MAX_TRANSIENT_BACKOFF)
        if now + backoff - scheduled_at > max_event_age:
            return Settlement(
                stamp(running, TaskStatus.EXPIRED, now, error=info, errors=errors, condition=Condition.EXPIRED)
            )
        return Settlement(
            stamp(running, TaskStatus.RETRYING, now, error=info, errors=errors), now + backoff, transient=True
        )
    kind = Condition.TIMEOUT if outcome is Outcome.TIMEOUT else Condition.FUNCTION_ERROR
    info = {"type": kind, "message": message}
    errors = failed_attempt(running, attempt=attempt, at=now, error=info)
    if attempt <= max_retries:
        backoff = retry_delay * 2 ** (attempt - 1)
        if now + backoff - scheduled_at > max_event_age:
            # The retry would be dequeued past max_event_age, and so end Expired then: end it
            # now, so the record never waits (unwritten) longer than the retention covers.
            return Settlement(
                stamp(running, TaskStatus.EXPIRED, now, error=info, condition=Condition.EXPIRED, errors=errors)
            )
        return Settlement(stamp(running, TaskStatus.RETRYING, now, error=info, errors=errors), now + backoff)
    condition = Condition.RETRIES_EXHAUSTED if max_retries > 0 else kind
    return Settlement(stamp(running, TaskStatus.FAILED, now, error=info, errors=errors, condition=condition))


def rebase(ours: Record, latest: Record, now: float) -> Record | None:
    """Our post-run write lost a compare-and-set to `latest`: what to write now.

    `latest` was written by a stop request (Stopping), or by a concurrent run of the same
    task (at-least-once: a redelivery while the first run still went on). None when there
    is nothing left to write: the task already ended, or its retry is already scheduled.
    A retry that a stop overtook ends Stopped; a finished run keeps its outcome.
    """
    latest_status = status_of(latest)
    if latest_status.terminal:
        return None
    our_status = status_of(ours)
    if latest_status is TaskStatus.STOPPING and our_status is TaskStatus.RETRYING:
        return stamp(latest, TaskStatus.STOPPED, now)
    if latest_status is TaskStatus.RETRYING and our_status is TaskStatus.RETRYING:
        return None  # a concurrent run (a redelivery) already failed and scheduled the retry
    fields = {k: v for k, v in ours.items() if k not in ("timeline", "status", "finished_at", "started_at")}
    return stamp(latest, our_status, now, **fields)


def stop(base: Record, now: float) -> Record:
    """The record a stop request writes: Stopped when queued, Stopping when running."""
    status = status_of(base)
    if status.terminal:
        raise TaskNotStoppable(f"task {base['task_id']!r} already ended {status.value}")
    if status is TaskStatus.STOPPING:
        return base
    return stamp(base, TaskStatus.STOPPING if status is TaskStatus.RUNNING else TaskStatus.STOPPED, now)
