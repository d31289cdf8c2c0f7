"""Property test of the task state machine: hypothesis drives the pipeline's own decision
functions (gateway.lifecycle) through any interleaving of deliveries, duplicate deliveries,
outcomes, crashes, stop requests and expiry, with the store's compare-and-set modelled
exactly. No sequence may produce an illegal transition, a second terminal status, or a
second terminal hook (a destination delivered twice); and every failed attempt leaves one
entry in the record's `errors`, oldest first, the last one the record's `error`."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.errors import TaskNotStoppable
from gateway.tasks import lifecycle
from gateway.tasks.invocation import Invocation
from gateway.tasks.records import Record, new_record, status_of
from gateway.tasks.status import TERMINAL, TaskStatus, can_transition

MAX_RETRIES = 2
MAX_EVENT_AGE = 100.0
MAX_DEPTH = 3
OUTCOMES = ["succeeded", "function_error", "timeout", "transient", "stopped"]
FAILURES = {"function_error": "FunctionError", "timeout": "Timeout", "transient": "TransientError"}
# Statuses whose `error` was set by a failed attempt (and not by a claim: Expired before a
# run, a chain too deep).
RUN_FAILURE_CONDITIONS = {"RetriesExhausted", "FunctionError", "Timeout"}


@dataclass
class Message:
    attempt: int = 0  # executions already made
    transient: int = 0
    depth: int = 1


@dataclass
class Run:
    record: Record
    seq: int
    message: Message


@dataclass
class Store:
    """FNGATE_STATE for one task: the record and its subject sequence (0: none yet)."""

    record: Record | None = None
    seq: int = 0
    writes: list[Record] = field(default_factory=list)

    def put(self, record: Record, expected: int) -> int | None:
        if expected != self.seq:
            return None  # the compare-and-set lost
        self.record, self.seq = record, self.seq + 1
        self.writes.append(record)
        return self.seq


class TaskLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.inv = Invocation("t-prop", "fn", b"{}", submitted_at=self.now, scheduled_at=self.now)
        self.store = Store()
        self.queue: list[Message] = []
        self.running: list[Run] = []
        self.terminal_hooks = 0

    @initialize(depth=st.integers(min_value=1, max_value=MAX_DEPTH + 1))
    def submit(self, depth: int) -> None:
        self.queue.append(Message(depth=depth))

    def base(self) -> Record:
        return self.store.record if self.store.record is not None else new_record(self.inv)

    @precondition(lambda self: self.queue)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        message = self.queue.pop(data.draw(st.integers(0, len(self.queue) - 1)))
        decision = lifecycle.claim(
            self.base(),
            now=self.now,
            attempt=message.attempt + 1,
            scheduled_at=self.inv.scheduled_at,
            max_event_age=MAX_EVENT_AGE,
            depth=message.depth,
            max_depth=MAX_DEPTH,
        )
        if decision.record is None:
            return  # terminal already: the worker only acks
        seq = self.store.put(decision.record, self.store.seq)
        assert seq is not None
        if decision.run:
            self.running.append(Run(decision.record, seq, message))
        else:
            self.terminal_hooks += 1

    @precondition(lambda self: self.queue)
    @rule()
    def redeliver_duplicate(self) -> None:
        """At-least-once: the same message delivered again (a lost ack)."""
        self.queue.append(Message(**vars(self.queue[0])))

    @precondition(lambda self: self.running)
    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        index = data.draw(st.integers(0, len(self.running) - 1))
        run = self.running[index]
        stopping = self.store.record is not None and status_of(self.store.record) is TaskStatus.STOPPING
        if outcome == "stopped" and not stopping:
            outcome = "succeeded"  # only a stop request cancels a run
        self.running.pop(index)
        settlement = lifecycle.settle(
            run.record,
            now=self.now,
            outcome=outcome,
            attempt=run.message.attempt + 1,
            transient_count=run.message.transient,
            scheduled_at=self.inv.scheduled_at,
            max_retries=MAX_RETRIES,
            retry_delay=1.0,
            max_event_age=MAX_EVENT_AGE,
            result={"ok": True},
            message="boom",
        )
        record: Record | None = settlement.record
        if outcome in FAILURES:
            assert settlement.record["errors"][:-1] == run.record.get("errors", [])[: lifecycle.MAX_ERRORS - 1] or (
                len(run.record.get("errors", [])) >= lifecycle.MAX_ERRORS
            )
            last = settlement.record["errors"][-1]
            assert last["attempt"] == run.message.attempt + 1 and last["type"] == FAILURES[outcome]
        else:
            assert settlement.record.get("errors", []) == run.record.get("errors", [])
        seq = run.seq
        while record is not None:
            if self.store.put(record, seq) is not None:
                break
            assert self.store.record is not None
            record, seq = lifecycle.rebase(record, self.store.record, self.now), self.store.seq
        if record is None:
            return
        if status_of(record).terminal:
            self.terminal_hooks += 1
        elif settlement.retry_at is not None:
            if settlement.transient:
                self.queue.append(Message(run.message.attempt, run.message.transient + 1, run.message.depth))
            else:
                self.queue.append(Message(run.message.attempt + 1, run.message.transient, run.message.depth))

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """The worker dies mid-run: JetStream redelivers its message after ack_wait."""
        run = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        self.queue.append(run.message)

    @rule()
    def stop(self) -> None:
        base, expected = self.base(), self.store.seq
        try:
            record = lifecycle.stop(base, self.now)
        except TaskNotStoppable:
            assert status_of(base).terminal
            return
        if record is not base:
            assert self.store.put(record, expected) is not None

    @rule(seconds=st.sampled_from([0.5, 10.0, MAX_EVENT_AGE]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def timeline_is_legal(self) -> None:
        for record in self.store.writes:
            statuses = [TaskStatus(t["status"]) for t in record["timeline"]]
            assert statuses[0] is TaskStatus.ENQUEUED
            for before, after in itertools.pairwise(statuses):
                assert can_transition(before, after), statuses
            ends = [s for s in statuses if s in TERMINAL]
            assert len(ends) <= 1 and (not ends or statuses[-1] is ends[0]), statuses
            assert record["status"] == statuses[-1].value

    @invariant()
    def errors_follow_attempts(self) -> None:
        for record in self.store.writes:
            errors = record.get("errors", [])
            assert len(errors) <= [t["status"] for t in record["timeline"]].count("Running")
            attempts = [e["attempt"] for e in errors]
            assert attempts == sorted(attempts) and all(1 <= a <= record["attempts"] for a in attempts)
            for entry in errors:
                assert set(entry) == {"attempt", "at", "type", "message"}
            status = status_of(record)
            from_run = status is TaskStatus.RETRYING or (
                status is TaskStatus.FAILED and record.get("condition") in RUN_FAILURE_CONDITIONS
            )
            from_run = from_run or (
                status is TaskStatus.EXPIRED
                and (error := record["error"]) is not None
                and error["type"] == "TransientError"
            )
            if from_run:
                assert errors and {k: errors[-1][k] for k in ("type", "message")} == record["error"]

    @invariant()
    def terminal_is_final(self) -> None:
        terminal_seen: Any = None
        for record in self.store.writes:
            status = status_of(record)
            assert terminal_seen is None, f"written after terminal {terminal_seen}: {status}"
            if status.terminal:
                terminal_seen = status
        assert self.terminal_hooks <= 1


TaskLifecycle.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_task_lifecycle = TaskLifecycle.TestCase


def test_a_late_copy_of_an_earlier_attempt_is_not_run_again() -> None:
    """Found by the machine above: attempt 1's copy (a lost ack) arriving after attempt 2 ran
    moved the record's attempts back to 1 and ran the function once more."""
    inv = Invocation("t-late", "fn", b"{}", submitted_at=1000.0, scheduled_at=1000.0)
    record = new_record(inv)
    for attempt in (1, 2):
        claimed = lifecycle.claim(
            record, now=1001.0, attempt=attempt, scheduled_at=1000.0, max_event_age=60.0, depth=1, max_depth=5
        )
        assert claimed.run and claimed.record is not None and claimed.record["attempts"] == attempt
        record = lifecycle.settle(
            claimed.record,
            now=1002.0,
            outcome="function_error",
            attempt=attempt,
            transient_count=0,
            scheduled_at=1000.0,
            max_retries=5,
            retry_delay=1.0,
            max_event_age=60.0,
            message="boom",
        ).record
    late = lifecycle.claim(record, now=1003.0, attempt=1, scheduled_at=1000.0, max_event_age=60.0, depth=1, max_depth=5)
    assert late.record is None and not late.run
    again = lifecycle.claim(
        record, now=1003.0, attempt=3, scheduled_at=1000.0, max_event_age=60.0, depth=1, max_depth=5
    )
    assert again.run
