"""Workers: every gateway process runs one per function, plus the delay scheduler.

The mapping from outcomes to JetStream lives here and only here:
  done (any terminal status)   -> ack
  retry / delay                -> the invocation is parked on FNGATE_DELAY, then ack
  long-running                 -> in_progress() heartbeats, so the message is not redelivered
  crash                        -> no ack: JetStream redelivers after ack_wait
Per-function concurrency across all replicas is the consumer's max_ack_pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from gateway.config.model import FunctionConfig
from gateway.errors import FngateError, FunctionError, FunctionTimeout, TransientError
from gateway.jetstream import streams
from gateway.jetstream.puller import Puller
from gateway.jetstream.replicas import BEAT, ReplicaRegistry
from gateway.jetstream.store import UNAVAILABLE, UNREAD, StoredRecord, TaskStore
from gateway.observe import metrics, tracing
from gateway.observe.redact import redact_text
from gateway.pipeline.runtimes import Context, Runtime, run_with_timeout, task_logger
from gateway.pipeline.tasklogs import TaskLogs
from gateway.supervise import Background, cancel_requested, supervised
from gateway.tasks import attemptlog, lifecycle
from gateway.tasks import constants as c
from gateway.tasks.invocation import TASK_ID, Invocation
from gateway.tasks.records import Record, new_record, result_value, stamp, status_of
from gateway.tasks.status import Condition, Outcome, TaskStatus

log = logging.getLogger(__name__)
TerminalHook = Callable[[Record, Invocation], Awaitable[None]]


def consumer_name(function: str) -> str:
    return f"{c.FUNCTION_CONSUMER_PREFIX}{function}"


def work_consumer(function: str, concurrency: int, ack_wait: float) -> ConsumerConfig:
    """The durable consumer a function's workers pull its tasks through."""
    return ConsumerConfig(
        durable_name=consumer_name(function),
        # `>`, not `*`: task ids may contain dots (function names may not).
        filter_subject=f"{c.TASKS_SUBJECT}.{function}.>",
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_ack_pending=concurrency,
        max_deliver=-1,
        max_waiting=512,
    )


class StopRequested(FngateError):
    """An attempt cancelled by a stop request (an outcome, not a failure)."""

    code = "StopRequested"


def outcome_kind(error: BaseException | None) -> Outcome:
    if error is None:
        return Outcome.SUCCEEDED
    if isinstance(error, StopRequested):
        return Outcome.STOPPED
    if isinstance(error, TransientError):
        return Outcome.TRANSIENT
    if isinstance(error, FunctionTimeout):
        return Outcome.TIMEOUT
    return Outcome.FUNCTION_ERROR


def error_message(error: BaseException | None) -> str:
    """The attempt's error for the task record (and its trace span): free text that may quote
    a URL with its credentials (a function's own exception, a driver's message), redacted as
    every answer and log line is."""
    if error is None or isinstance(error, StopRequested):
        return ""
    return redact_text(str(error) if isinstance(error, FunctionError | TransientError) else repr(error))


class FunctionWorker:
    """Pulls one function's invocations and runs them, at most `concurrency` at once overall."""

    def __init__(
        self,
        name: str,
        config: FunctionConfig,
        runtime: Runtime,
        store: TaskStore,
        *,
        ack_wait: float,
        max_chain_depth: int,
        on_terminal: TerminalHook,
    ) -> None:
        self.name = name
        self.config = config
        self.runtime = runtime
        self.store = store
        self.ack_wait = ack_wait
        self.max_chain_depth = max_chain_depth
        self._on_terminal = on_terminal
        self.task_logs: TaskLogs | None = None  # when the gateway keeps function logs
        self.running: dict[str, asyncio.Task[Any]] = {}
        # What the heartbeat loop keeps claimed: task id -> (its message, when last renewed).
        self._claims: dict[str, tuple[Msg, float]] = {}
        self._slots = asyncio.Semaphore(config.concurrency)
        self.tasks = Background()  # one per message being handled
        self.log = logging.getLogger(f"fngate.function.{name}")

    def consumer_config(self) -> ConsumerConfig:
        return work_consumer(self.name, self.config.concurrency, self.ack_wait)

    async def run(self) -> None:
        if self.config.flow_controlled:
            from gateway.flow.run import run_flow  # key limits, priorities, rate: the flow leader pulls

            await run_flow(self)
            return
        js = self.store.js
        config = self.consumer_config()
        await streams.ensure_consumer(js, c.TASKS_STREAM, config, self.log)
        puller = Puller(self.store.nc, c.TASKS_STREAM, consumer_name(self.name), self._dispatch)
        await puller.start()
        heartbeats = asyncio.create_task(supervised(f"heartbeats of {self.name}", self._heartbeats))
        try:
            while not cancel_requested():
                # Ask for as many as there are free slots here; max_ack_pending keeps the
                # sum over all replicas within the function's concurrency.
                await self._slots.acquire()
                free = 1
                while free < 256 and not self._slots.locked():
                    await self._slots.acquire()
                    free += 1
                for _ in range(await puller.pull(free)):
                    self._slots.release()
        finally:
            heartbeats.cancel()
            await puller.close()
            self.tasks.cancel()

    def _dispatch(self, msg: Msg, counted: bool) -> None:
        self.tasks.start(self._handle(msg, holds_slot=counted))

    async def on_terminal(self, record: Record, inv: Invocation) -> None:
        metrics.TASKS_FINISHED.labels(self.name, record["status"]).inc()
        metrics.ATTEMPTS_PER_TASK.labels(self.name).observe(record.get("attempts", 0))
        await self._on_terminal(record, inv)

    async def _handle(self, msg: Msg, *, holds_slot: bool = True) -> None:
        try:
            await self.process(msg)
        except asyncio.CancelledError:
            raise
        except UNAVAILABLE as exc:
            # NATS or a stream leader is away for a moment (a node restart, an election):
            # expected in a cluster, so one line rather than a traceback.
            self.log.warning("task handling paused, JetStream unavailable (%s); it will be redelivered", exc)
        except Exception:
            # Leave the message unacked: JetStream hands it out again after ack_wait.
            self.log.exception("task handling failed; it will be redelivered")
        finally:
            if holds_slot:
                self._slots.release()

    async def process(self, msg: Msg) -> None:
        try:
            inv = Invocation.from_message(msg.headers, msg.data)
        except (KeyError, ValueError, IndexError) as exc:
            # Not ours to run (foreign or corrupt): redelivering it forever helps no one. If
            # it names a task, that task ends Failed rather than staying Enqueued for ever.
            self.log.error("dropping an unreadable message on %s: %s", msg.subject, exc)
            await self._fail_unreadable(msg, str(exc))
            await msg.term()
            return
        now = time.time()
        if inv.not_before > now + 0.01:
            await self.store.defer(inv)
            await msg.ack()
            return
        claimed = await self._claim(inv, msg)
        if claimed is None:
            await msg.ack()
            return
        record, seq = claimed
        await self._execute(inv, msg, record, seq)

    async def _fail_unreadable(self, msg: Msg, reason: str) -> None:
        try:
            task_id, function, submitted_at = Invocation.identity(msg.headers or {})
        except (KeyError, ValueError, IndexError):
            return
        if function != self.name or not TASK_ID.fullmatch(task_id):
            return
        base = new_record(Invocation(task_id, function, b"", submitted_at=submitted_at))
        error = {"type": "InvalidInvocation", "message": f"unreadable invocation: {reason}"[:500]}
        failed = stamp(base, TaskStatus.FAILED, error=error, condition=Condition.INVALID_INVOCATION)

        async def decide(stored: StoredRecord | None) -> Record | None:
            return failed if stored is None else None  # a record exists: leave it as it is

        await self.store.update_state(task_id, decide, known=None)

    async def _claim(self, inv: Invocation, msg: Msg) -> tuple[Record, int] | None:
        """Move the task to Running, unless it is already finished, stopped, expired or looping."""
        decision = lifecycle.Claim(None)

        async def decide(stored: StoredRecord | None) -> Record | None:
            nonlocal decision
            decision = lifecycle.claim(
                stored.record if stored else new_record(inv),
                now=time.time(),
                attempt=inv.attempt + 1,
                scheduled_at=inv.scheduled_at,
                max_event_age=self.config.async_.max_event_age,
                depth=inv.lineage.depth,
                max_depth=self.max_chain_depth,
            )
            return decision.record

        # A first delivery of a fresh task has no record yet: skip the read and let the
        # compare-and-set against "no record" tell us if a stop request got there first.
        first_try = inv.attempt == 0 and inv.transient == 0 and msg.metadata.num_delivered == 1
        written = await self.store.update_state(inv.task_id, decide, known=None if first_try else UNREAD)
        if written is None:
            return None
        if decision.run:
            return written.record, written.seq
        attemptlog.ended_unrun(written.record, inv.attempt + 1)
        await self.on_terminal(written.record, inv)
        return None

    async def _execute(self, inv: Invocation, msg: Msg, record: Record, seq: int) -> None:
        attempt = inv.attempt + 1
        loop = asyncio.get_running_loop()
        trace = tracing.task_trace(inv.task_id, inv.traceparent, inv.tracestate)
        context = Context(
            task_id=inv.task_id,
            function=self.name,
            attempt=attempt,
            deadline=loop.time() + self.config.timeout,
            source=inv.source.as_dict(),
            logger=task_logger(self.name, inv.task_id, attempt),
            chain={"id": inv.lineage.chain_id, "depth": inv.lineage.depth},
            trace=tracing.attempt_trace(inv.task_id, attempt, trace, inv.transient),
        )
        started_at = time.time()
        run = asyncio.create_task(run_with_timeout(self.runtime, inv, context, self.config.timeout))
        self.running[inv.task_id] = run
        metrics.TASK_ATTEMPTS.labels(self.name).inc()
        metrics.TASKS_RUNNING.labels(self.name).inc()
        started = time.monotonic()
        self._claims[inv.task_id] = (msg, started)
        outcome: Any = None
        error: BaseException | None = None
        try:
            outcome = await run
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The gateway is shutting down: abandon the run and leave the message
                # unacked, so another worker (or this one after restart) runs it again.
                self._claims.pop(inv.task_id, None)
                run.cancel()
                raise
            error = StopRequested()
        except Exception as exc:
            error = exc
        finally:
            self.running.pop(inv.task_id, None)
            metrics.TASKS_RUNNING.labels(self.name).dec()
            metrics.EXECUTION_SECONDS.labels(self.name, outcome_kind(error)).observe(time.monotonic() - started)
            if self.task_logs is not None:
                if error is not None and not isinstance(error, StopRequested):
                    attemptlog.to_task_log(self.task_logs, inv.task_id, self.name, attempt, error)
                self.task_logs.finish(inv.task_id)
        tracing.emit_attempt(inv, attempt, trace, context.trace, started_at, outcome_kind(error), error_message(error))
        try:
            # The claim stays alive until the outcome is stored: a write JetStream refuses is
            # retried (see _write), and the task must not be handed to another worker meanwhile.
            await asyncio.shield(self._settle(inv, msg, record, seq, attempt, outcome, error))
        finally:
            self._claims.pop(inv.task_id, None)

    async def _settle(
        self,
        inv: Invocation,
        msg: Msg,
        record: Record,
        seq: int,
        attempt: int,
        outcome: Any,
        error: BaseException | None,
    ) -> None:
        async_config = self.config.async_
        kind = outcome_kind(error)
        settlement = lifecycle.settle(
            record,
            now=time.time(),
            outcome=kind,
            attempt=attempt,
            transient_count=inv.transient,
            scheduled_at=inv.scheduled_at,
            max_retries=async_config.max_retries,
            retry_delay=async_config.retry_delay,
            max_event_age=async_config.max_event_age,
            result=result_value(outcome) if error is None else None,
            message=error_message(error),
        )
        written = await self._write(inv, settlement.record, seq)
        if written is not None:
            attemptlog.settled(written, attempt, kind, settlement.retry_at)
        if written is not None and status_of(written).terminal:
            await self.on_terminal(written, inv)
        elif written is not None and settlement.retry_at is not None:
            if settlement.transient:
                retry = inv.but(transient=inv.transient + 1, not_before=settlement.retry_at)
            else:
                retry = inv.but(attempt=attempt, not_before=settlement.retry_at)
            await self.store.defer(retry)
        await msg.ack()

    async def _write(self, inv: Invocation, record: Record, seq: int) -> Record | None:
        """Write after running; a stop request may have moved the record to Stopping meanwhile.

        A write that JetStream refuses (its store full, a limit reached) is retried, with
        backoff, until it is stored: giving up would leave the task Running for ever."""
        claimed = StoredRecord(record, seq)  # what our claim wrote, as far as we know
        ours = record
        refusals = 0

        async def decide(stored: StoredRecord | None) -> Record | None:
            nonlocal ours
            if stored is not None and stored is not claimed:  # somebody wrote since our claim
                rebased = lifecycle.rebase(ours, stored.record, time.time())
                if rebased is None:
                    return None
                ours = rebased
            return ours

        def refused(exc: APIError, count: int) -> None:
            nonlocal refusals
            refusals = count + 1
            if count % 20 == 0:
                self.log.error(
                    "task %s: JetStream refused to store its outcome (%s); retrying until it is stored",
                    inv.task_id,
                    exc.description or exc.err_code,
                )

        written = await self.store.update_state(inv.task_id, decide, known=claimed, on_refused=refused)
        if written is not None and refusals:
            self.log.warning("task %s: outcome stored after %d refused writes", inv.task_id, refusals)
        return written.record if written is not None else None

    async def _heartbeats(self) -> None:
        """Keep the claims of running tasks alive, and notice stop requests we missed.

        One loop for all of this worker's running tasks rather than a task per execution:
        most executions end before their first beat is due, and then cost nothing here.
        The loop wakes every half interval and renews what was last renewed (or started)
        at least half an interval ago, so no claim goes longer than one interval unrenewed
        (ack_wait is at least twice that).
        """
        interval = max(0.5, self.ack_wait / 3)
        while True:
            await asyncio.sleep(interval / 2)
            due = time.monotonic() - interval / 2
            beats = [self._beat(task_id, msg) for task_id, (msg, renewed) in self._claims.items() if renewed <= due]
            if beats:
                await asyncio.gather(*beats)

    async def _beat(self, task_id: str, msg: Msg) -> None:
        if task_id in self._claims:
            self._claims[task_id] = (msg, time.monotonic())
        with contextlib.suppress(Exception):
            await msg.in_progress()
            stored = await self.store.get_state(task_id)
            if stored and status_of(stored.record) is TaskStatus.STOPPING:
                self.stop_task(task_id)

    def stop_task(self, task_id: str) -> bool:
        task = self.running.get(task_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True


class InvalidWorker:
    """Drains the queue of a function that left the config: its tasks end Invalid, but only
    while no live replica serves the function (see gateway/replicas.py); meanwhile the
    replicas that have it run its tasks."""

    def __init__(self, name: str, store: TaskStore, on_terminal: TerminalHook, registry: ReplicaRegistry) -> None:
        self.name = name
        self.store = store
        self._on_terminal = on_terminal
        self.registry = registry
        self.task_logs: TaskLogs | None = None  # when the gateway keeps function logs

    async def gone(self) -> bool:
        if not self.registry.settled():
            return False
        try:
            return not await self.registry.served_elsewhere(self.name)
        except Exception as exc:  # cannot tell (NATS away): the safe answer is "not gone"
            log.warning("cannot read which replicas serve %r (%s); not invalidating its tasks", self.name, exc)
            return False

    async def run(self) -> None:
        sub = await self.store.js.pull_subscribe_bind(durable=consumer_name(self.name), stream=c.TASKS_STREAM)
        state = "waiting"  # waiting (not settled yet), served (elsewhere), gone
        while not cancel_requested():
            now = "gone" if await self.gone() else "served" if self.registry.settled() else "waiting"
            if now != state:
                state = now
                if state == "served":
                    log.info("function %r is served by another replica: its tasks are left to it", self.name)
                elif state == "gone":
                    log.warning(
                        "function %r is configured on no live replica: its queued tasks become Invalid", self.name
                    )
            if state != "gone":
                await asyncio.sleep(BEAT)
                continue
            try:
                msgs = await sub.fetch(64, timeout=5)
            except (TimeoutError, NatsTimeout):
                continue
            if not await self.gone():  # a replica that has it came up meanwhile: hand them back
                for msg in msgs:
                    await msg.nak()
                continue
            for msg in msgs:
                inv = Invocation.from_message(msg.headers, msg.data)
                await self._invalidate(inv)
                await msg.ack()

    async def _invalidate(self, inv: Invocation) -> None:
        async def decide(stored: StoredRecord | None) -> Record | None:
            base = stored.record if stored else new_record(inv)
            if status_of(base).terminal:
                return None
            error = {"type": "Invalid", "message": f"function {inv.function!r} is no longer configured"}
            return stamp(base, TaskStatus.INVALID, error=error)

        await self.store.update_state(inv.task_id, decide)


class DelayScheduler:
    """Moves parked invocations back to their function's queue when their time has come.

    Each parked message is handled the moment it arrives (the Puller's own pull requests):
    the client library's `fetch(n)` kept a message that arrived on its lingering request
    until the batch filled or its 5 s timeout ran out, so a due retry waited 2-5 s.
    A message not due yet goes back with `nak(delay)`, and the server hands it out again
    when it is.
    """

    def __init__(self, store: TaskStore) -> None:
        self.store = store
        self.tasks = Background()  # one per message being handled

    async def run(self) -> None:
        js = self.store.js
        config = ConsumerConfig(
            durable_name=c.DELAY_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            # Short: a pull answered to a replica that just died is handed out again quickly.
            ack_wait=5,
            max_ack_pending=200_000,
            max_deliver=-1,
        )
        await streams.ensure_consumer(js, c.DELAY_STREAM, config, log)
        puller = Puller(self.store.nc, c.DELAY_STREAM, c.DELAY_CONSUMER, self._dispatch)
        await puller.start()
        try:
            while not cancel_requested():
                await puller.pull(256)
        finally:
            await puller.close()
            self.tasks.cancel()

    def _dispatch(self, msg: Msg, counted: bool) -> None:
        self.tasks.start(self._move(msg))

    async def _move(self, msg: Msg) -> None:
        try:
            inv = Invocation.from_message(msg.headers, msg.data)
            wait = inv.not_before - time.time()
            if wait > 0.005:
                await msg.nak(delay=wait)
                return
            await self.store.requeue(inv)
            await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Left unacked: handed out again after ack_wait.
            log.warning("delayed task not moved yet (%s); it will be tried again", exc)


__all__ = ["DelayScheduler", "FunctionWorker", "InvalidWorker", "supervised"]
