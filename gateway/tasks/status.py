"""Task statuses and the transitions the pipeline may make between them; how an attempt
ended (Outcome) and why a task ended as it did (Condition)."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    ENQUEUED = "Enqueued"
    DEQUEUED = "Dequeued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    RETRYING = "Retrying"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    EXPIRED = "Expired"
    INVALID = "Invalid"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def queued(self) -> bool:
        return self in (TaskStatus.ENQUEUED, TaskStatus.RETRYING)


TERMINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.STOPPED, TaskStatus.EXPIRED, TaskStatus.INVALID}
)

S = TaskStatus
ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.ENQUEUED: frozenset({S.DEQUEUED, S.STOPPED, S.EXPIRED, S.INVALID, S.FAILED}),
    S.DEQUEUED: frozenset({S.RUNNING}),
    # Running -> Dequeued: a crashed worker's task handed to another worker.
    # Running -> Expired: transient failures went on past max_event_age.
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.RETRYING, S.STOPPING, S.DEQUEUED, S.EXPIRED}),
    # Retrying -> Succeeded/Failed: a concurrent run of the same task (a redelivery) ended
    # after this one had scheduled its retry; the retry then finds the task ended.
    S.RETRYING: frozenset({S.DEQUEUED, S.STOPPED, S.EXPIRED, S.INVALID, S.FAILED, S.SUCCEEDED}),
    # A run that finished before the stop reached it keeps its outcome.
    S.STOPPING: frozenset({S.STOPPED, S.SUCCEEDED, S.FAILED, S.EXPIRED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.STOPPED: frozenset(),
    S.EXPIRED: frozenset(),
    S.INVALID: frozenset(),
}


def can_transition(current: TaskStatus, new: TaskStatus) -> bool:
    return new in ALLOWED[current]


class Outcome(StrEnum):
    """How one attempt ended: the worker's verdict, which lifecycle.settle turns into a record."""

    SUCCEEDED = "succeeded"
    STOPPED = "stopped"
    TRANSIENT = "transient"
    TIMEOUT = "timeout"
    FUNCTION_ERROR = "function_error"


class Condition(StrEnum):
    """Why a task ended as it did: the record's `condition` (CONTRACT), and a result record's."""

    SUCCEEDED = "Succeeded"
    EXPIRED = "Expired"
    RECURSIVE_LOOP = "RecursiveLoopDetected"
    INVALID_INVOCATION = "InvalidInvocation"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    FUNCTION_ERROR = "FunctionError"
    TIMEOUT = "Timeout"
