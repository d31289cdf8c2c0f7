"""What the API, the CLI, triggers and sinks do with tasks: submit, run now, read, stop, rerun."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from gateway.config.model import MAX_DELAY, Config, FunctionConfig
from gateway.jetstream.store import StoredRecord, TaskStore
from gateway.observe import metrics, tracing
from gateway.pipeline.runtimes import Context, Runtime, redact_url, run_with_timeout, task_logger
from gateway.tasks import attemptlog, lifecycle
from gateway.tasks.constants import STOP_SUBJECT
from gateway.tasks.invocation import TASK_ID, BatchItem, Invocation, Lineage, Source, new_task_id
from gateway.tasks.invocation import TASK_ID_PATTERN as TASK_ID_PATTERN  # re-exported (openapi)
from gateway.tasks.records import RERUN_SOURCE, Record, new_record, status_of
from gateway.tasks.status import Outcome, TaskStatus

from .errors import (
    BadRequest,
    FngateError,
    FunctionNotFound,
    ResourceExhausted,
    TaskNotFound,
)
from .flow import stats as flow_stats
from .history import TaskHistory, TaskQuery

log = logging.getLogger(__name__)
MAX_TASK_ID = 128
API_SOURCE = Source("api", "")


def check_task_id(task_id: str) -> str:
    if len(task_id) > MAX_TASK_ID or not TASK_ID.fullmatch(task_id):
        raise BadRequest("task id must be 1..128 of [A-Za-z0-9._-], with no empty dot-separated part")
    return task_id


class TaskService:
    def __init__(self, config: Config, store: TaskStore, history: TaskHistory, runtimes: dict[str, Runtime]) -> None:
        self.config = config
        self.store = store
        self.history = history
        self.runtimes = runtimes
        self._sync_slots = {name: asyncio.Semaphore(f.concurrency) for name, f in config.functions.items()}
        self.sync_running: dict[str, int] = {name: 0 for name in config.functions}
        # Each function's child of the submitted counter: labels() takes a lock and builds a
        # key on every call, and one call is on every submit.
        self._submitted_counters: dict[str, Any] = {}

    def function(self, name: str) -> FunctionConfig:
        function = self.config.functions.get(name)
        if function is None:
            raise FunctionNotFound(f"function {name!r} is not configured")
        return function

    async def submit(
        self,
        function: str,
        payload: bytes,
        *,
        source: Source = API_SOURCE,
        content_type: str = "application/json",
        task_id: str | None = None,
        delay: float = 0.0,
        lineage: Lineage | None = None,
        traceparent: str | None = None,
        priority: str = "normal",
        concurrency_key: str = "",
    ) -> str:
        """Durably enqueue an async invocation; returns only after JetStream acknowledged it."""
        inv = self.invocation(
            function,
            self.function(function),
            payload,
            source=source,
            content_type=content_type,
            task_id=task_id,
            delay=delay,
            lineage=lineage,
            traceparent=traceparent,
            priority=priority,
            concurrency_key=concurrency_key,
        )
        await self.store.submit(inv)
        self._count_submitted(function, 1)
        return inv.task_id

    async def submit_many(
        self,
        function: str,
        items: Sequence[BatchItem],
        *,
        source: Source,
        priority: str = "normal",
        keys: Sequence[str] | None = None,
    ) -> list[Exception | None]:
        """Enqueue a trigger's batch of JSON events (each with its task id and lineage, and
        its concurrency key in `keys`); one outcome per item, in order: None when enqueued,
        else why not (as `submit` raises)."""
        config = self.function(function)
        outcomes: list[Exception | None] = [None] * len(items)
        batch: list[tuple[int, Invocation]] = []
        for i, (payload, task_id, lineage) in enumerate(items):
            try:
                inv = self.invocation(
                    function,
                    config,
                    payload,
                    source=source,
                    task_id=task_id,
                    lineage=lineage,
                    priority=priority,
                    concurrency_key=keys[i] if keys is not None else "",
                )
                batch.append((i, inv))
            except FngateError as exc:
                outcomes[i] = exc
        stored = await self.store.submit_many([inv for _, inv in batch])
        for (i, _), outcome in zip(batch, stored, strict=True):
            outcomes[i] = outcome
        enqueued = sum(1 for outcome in stored if outcome is None)
        if enqueued:
            self._count_submitted(function, enqueued)
        return outcomes

    def _count_submitted(self, function: str, n: int) -> None:
        counter = self._submitted_counters.get(function)
        if counter is None:
            counter = self._submitted_counters[function] = metrics.TASKS_SUBMITTED.labels(function)
        counter.inc(n)

    def invocation(
        self,
        function: str,
        config: FunctionConfig,
        payload: bytes,
        *,
        source: Source,
        content_type: str = "application/json",
        task_id: str | None = None,
        delay: float = 0.0,
        lineage: Lineage | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
        priority: str = "normal",
        concurrency_key: str = "",
    ) -> Invocation:
        """A new invocation of `function` (its `config` as `function()` found it), its inputs
        checked (BadRequest): the one place a submitted task id and delay are checked."""
        if task_id is not None:
            check_task_id(task_id)
        if not 0 <= delay <= MAX_DELAY:
            raise BadRequest(f"X-Delay must be a number of seconds 0..{MAX_DELAY:g}")
        if delay and delay > config.max_delay:  # (max_delay is worked out on each read)
            raise BadRequest(
                f"X-Delay of {delay:g}s is over the {config.max_delay:g}s that function {function!r} allows "
                "(async.retention - async.max_event_age - timeout - 60s): the task would outlive its retention"
            )
        now = time.time()
        if lineage is not None and lineage.trace is not None:  # the trace context of a trigger's message
            traceparent = traceparent or lineage.trace.traceparent
            tracestate = tracestate or lineage.trace.tracestate
        return Invocation(
            task_id=task_id or new_task_id(),
            function=function,
            payload=payload,
            content_type=content_type,
            submitted_at=now,
            scheduled_at=now + delay,
            not_before=now + delay if delay else 0.0,
            source=source,
            lineage=lineage or Lineage(),
            traceparent=traceparent,
            tracestate=tracestate,
            priority=priority,
            concurrency_key=concurrency_key,
        )

    async def invoke_sync(
        self,
        function: str,
        payload: bytes,
        *,
        source: Source = API_SOURCE,
        content_type: str = "application/json",
        traceparent: str | None = None,
        task_id: str | None = None,
        lineage: Lineage | None = None,
    ) -> tuple[bytes, str]:
        """Run a function now in this process; 429 when its concurrency is used up here.
        `task_id`: the id the run goes by (a trigger's event id), else a new one; the trace
        context is `traceparent`, else the one `lineage` carries."""
        config = self.function(function)
        slots = self._sync_slots[function]
        if slots.locked():
            raise ResourceExhausted(f"function {function!r} is at its concurrency limit ({config.concurrency})")
        async with slots:
            self.sync_running[function] += 1
            try:
                loop = asyncio.get_running_loop()
                inv = self.invocation(
                    function,
                    config,
                    payload,
                    source=source,
                    content_type=content_type,
                    task_id=task_id,
                    lineage=lineage,
                    traceparent=traceparent,
                )
                trace = tracing.task_trace(inv.task_id, inv.traceparent, inv.tracestate)
                context = Context(
                    task_id=inv.task_id,
                    function=function,
                    attempt=1,
                    deadline=loop.time() + config.timeout,
                    source=source.as_dict(),
                    logger=task_logger(function, inv.task_id),
                    trace=tracing.attempt_trace(inv.task_id, 1, trace),
                )
                started = time.time()
                try:
                    result = await run_with_timeout(self.runtimes[function], inv, context, config.timeout)
                except FngateError as exc:
                    metrics.SYNC_INVOCATIONS.labels(function, exc.code).inc()
                    tracing.emit_attempt(inv, 1, trace, context.trace, started, exc.code, exc.message)
                    raise
                metrics.SYNC_INVOCATIONS.labels(function, "Succeeded").inc()
                tracing.emit_attempt(inv, 1, trace, context.trace, started, Outcome.SUCCEEDED, None)
            finally:
                self.sync_running[function] -= 1
        return encode_result(result)

    async def get_task(self, task_id: str) -> Record:
        check_task_id(task_id)
        stored = await self.store.get_state(task_id)
        if stored is not None:
            return stored.record
        inv = await self._find_submission(task_id)
        if inv is None:
            raise TaskNotFound(f"task {task_id!r} not found")
        return new_record(inv)

    async def _find_submission(self, task_id: str) -> Invocation | None:
        try:
            known = await self.history.function_of(task_id)
        except Exception as exc:  # the index unreachable: the stream is asked across functions
            log.warning("task index: cannot look up task %s: %s", task_id, exc)
            known = None
        if known:
            inv = await self.store.get_submission(known, task_id)
            if inv is not None:
                return inv
        # Not in the index yet (it trails the stream by its lag), or of a function this
        # replica does not run: one last-by-subject lookup over every function's subject.
        return await self.store.get_submission("*", task_id)

    async def payload_of(self, task_id: str) -> Invocation:
        inv = await self._find_submission(task_id)
        if inv is None:
            raise TaskNotFound(f"task {task_id!r} not found (or its payload passed retention)")
        return inv

    async def list_tasks(self, query: TaskQuery) -> tuple[list[Record], str | None]:
        """A page of the index, records as the index holds them (they may trail the streams
        by its lag; `get_task` reads the stream); the cursor of the next page, or None."""
        listed, cursor = await self.history.list(query)
        return [json.loads(t.record) for t in listed], (str(cursor) if cursor else None)

    async def stop_task(self, task_id: str) -> Record:
        """Queued: Stopped at once. Running: Stopping, and the replica running it cancels it."""
        check_task_id(task_id)
        base: Record | None = None

        async def decide(stored: StoredRecord | None) -> Record | None:
            nonlocal base
            if stored is None:
                inv = await self._find_submission(task_id)
                if inv is None:
                    raise TaskNotFound(f"task {task_id!r} not found")
                base = new_record(inv)
            else:
                base = stored.record
            record = lifecycle.stop(base, time.time())
            return None if record is base else record

        written = await self.store.update_state(task_id, decide)
        if written is None:  # already Stopping: nudge the replica running it again
            assert base is not None
            await self._signal_stop(task_id)
            return base
        record = written.record
        attemptlog.stop_requested(record)
        if status_of(record) is TaskStatus.STOPPING:
            await self._signal_stop(task_id)
        return record

    async def _signal_stop(self, task_id: str) -> None:
        await self.store.nc.publish(f"{STOP_SUBJECT}.{task_id}", b"")

    async def rerun(self, task_id: str) -> str:
        inv = await self.payload_of(check_task_id(task_id))
        # The new task names the one it repeats (its record's `rerun_of`, see new_record).
        return await self.submit(
            inv.function,
            inv.payload,
            source=Source(RERUN_SOURCE, inv.task_id),
            content_type=inv.content_type,
            priority=inv.priority,
            concurrency_key=inv.concurrency_key,
        )

    async def function_summaries(self, names: list[str]) -> list[dict[str, Any]]:
        """Config summaries with live counts, the counts of all of them in one index read."""
        for name in names:
            self.function(name)
        counts = await self.history.counts(names)
        return [self.function_summary(name, counts[name].summary()) for name in names]

    def function_summary(self, name: str, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
        config = self.function(name)
        runtime: dict[str, Any]
        if config.handler:
            runtime = {"handler": config.handler}
        elif config.url:
            runtime = {"url": redact_url(config.url)}
        else:
            runtime = {"command": (config.command or [])[:1]}
        counts["totals"]["running_sync"] = self.sync_running.get(name, 0)
        async_config = config.async_
        return {
            "name": name,
            "runtime": config.runtime,
            **runtime,
            "timeout": config.timeout,
            "concurrency": config.concurrency,
            "flow": flow_stats.summary(name, config),
            "async": {
                "max_retries": async_config.max_retries,
                "max_event_age": async_config.max_event_age,
                "retention": async_config.retention,
                "on_success": async_config.on_success.type if async_config.on_success else None,
                "on_failure": async_config.on_failure.type if async_config.on_failure else None,
            },
            "counts": counts,
        }


def encode_result(result: Any) -> tuple[bytes, str]:
    if isinstance(result, (bytes, bytearray)):
        raw = bytes(result)
        try:
            json.loads(raw)
        except ValueError:
            return raw, "application/octet-stream"
        return raw, "application/json"
    if isinstance(result, str):
        return result.encode(), "text/plain; charset=utf-8"
    return json.dumps(result, default=str).encode(), "application/json"
