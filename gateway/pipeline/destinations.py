"""Durable delivery of result records to destinations (sinks/).

When a task ends, the terminal hook turns its record into a delivery message on
FNGATE_DELIVERIES — before the task's own message is acknowledged, so a crash loses
nothing — and notes a `pending` entry in the task's `destinations`. A consumer shared by
every replica sends each delivery through its sink: delivered, or a transient failure
retried with exponential backoff from 500 ms for up to `retry_for` (default 30 min), or a
permanent failure recorded and not retried. Every attempt's outcome lands on the task
record. A record over the destination's `max_payload` is not sent (PayloadTooLarge), and
nothing is sent for a task stopped as a recursive loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig

from gateway.config.model import Config
from gateway.jetstream import streams
from gateway.jetstream.store import StoredRecord, TaskStore
from gateway.observe import metrics, tracing
from gateway.supervise import cancel_requested
from gateway.tasks import constants as c
from gateway.tasks.invocation import Invocation, Lineage, iso
from gateway.tasks.records import DestinationEntry, Record
from gateway.tasks.status import Condition, TaskStatus
from sinks.base import (
    Delivery,
    DeliveryStatus,
    On,
    PermanentDeliveryError,
    Sink,
    SinkContext,
    TransientDeliveryError,
    encode_record,
    max_payload,
    options_for,
    result_record,
    sink_class,
)
from triggers.base import Submit

log = logging.getLogger(__name__)
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 60.0
SEND_TIMEOUT = 30.0
MAX_HISTORY = 20
H_ON = "Fngate-On"
H_TASK = "Fngate-Task-Id"
H_FUNCTION = "Fngate-Function"
H_QUEUED_AT = "Fngate-Queued-At"


class Destination:
    def __init__(self, function: str, on: On, type_name: str, sink: Sink, limit: int) -> None:
        self.function = function
        self.on = on
        self.type = type_name
        self.sink = sink
        self.limit = limit

    def entry(self, status: DeliveryStatus, attempts: int = 0, error: str | None = None) -> dict[str, Any]:
        return {
            "on": self.on,
            "type": self.type,
            "target": self.sink.target,
            "status": status,
            "attempts": attempts,
            "error": error,
            "last_attempt_at": iso(time.time()) if attempts else None,
        }


class Dispatcher:
    def __init__(self, config: Config, store: TaskStore, submit: Submit, replicas: int = 1) -> None:
        self.store = store
        self.replicas = replicas
        self.destinations: dict[tuple[str, str], Destination] = {}
        self._slots = asyncio.Semaphore(64)
        for name, function in config.functions.items():
            for on, dest in ((On.SUCCESS, function.async_.on_success), (On.FAILURE, function.async_.on_failure)):
                if dest is None:
                    continue
                options = options_for(dest)
                context = SinkContext(submit=submit, nats=store.nc, origin=name)
                sink = sink_class(dest.type)(options, context)
                self.destinations[(name, on)] = Destination(name, on, dest.type, sink, max_payload(dest, options))

    async def ensure_stream(self) -> None:
        await streams.ensure_stream(self.store.js, streams.deliveries_stream(self.replicas))

    async def on_terminal(self, record: Record, inv: Invocation) -> None:
        """Queue the delivery of a finished task's record (called before its message is acked)."""
        status = TaskStatus(record["status"])
        if record.get("condition") == Condition.RECURSIVE_LOOP:
            metrics.LOOPS_DETECTED.labels(inv.function).inc()
        on = On.SUCCESS if status is TaskStatus.SUCCEEDED else On.FAILURE
        if status not in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.EXPIRED):
            return
        destination = self.destinations.get((inv.function, on))
        if destination is None:
            return
        if record.get("condition") == Condition.RECURSIVE_LOOP:
            skipped = destination.entry(DeliveryStatus.SKIPPED, error=Condition.RECURSIVE_LOOP)
            await self.update_entry(inv.task_id, skipped)
            return
        body = encode_record(result_record(record, inv))
        if len(body) > destination.limit:
            metrics.DESTINATION_DELIVERIES.labels(inv.function, destination.type, "too_large").inc()
            error = f"PayloadTooLarge: record of {len(body)} bytes is over max_payload {destination.limit}"
            await self.update_entry(inv.task_id, destination.entry(DeliveryStatus.FAILED, error=error))
            return
        # The producing task's own lineage: whoever consumes the record advances it by a hop
        # (the function destination, a trigger reading the subject, the HTTP API).
        lineage = inv.lineage
        headers = {
            H_TASK: inv.task_id,
            H_FUNCTION: inv.function,
            H_ON: on,
            H_QUEUED_AT: repr(time.time()),
            c.H_CHAIN_ID: lineage.chain_id,
            c.H_CHAIN_DEPTH: str(lineage.depth),
            "Fngate-Condition": str(record.get("condition") or status.value),
            # The span that produced the record (the last attempt): the deliveries' parent.
            **tracing.result_headers(inv, int(record.get("attempts") or 0), status is TaskStatus.EXPIRED),
            c.H_MSG_ID: f"{inv.task_id}.{on}",
        }
        await self.store.js.publish(
            f"{c.DELIVERIES_SUBJECT}.{inv.function}.{on}.{inv.task_id}", body, headers=headers, timeout=10
        )
        await self.update_entry(inv.task_id, destination.entry(DeliveryStatus.PENDING))

    async def update_entry(self, task_id: str, entry: dict[str, Any]) -> None:
        """Put this destination's entry on the task record (compare-and-set, re-read on conflict)."""

        async def decide(stored: StoredRecord | None) -> Record | None:
            if stored is None:
                return None
            record = stored.record.copy()
            entries = record.get("destinations") or []
            previous = next((e for e in entries if e.get("on") == entry["on"]), None)
            done_before = (previous["attempts"] or 0) if previous else 0
            if not entry["attempts"] and done_before:
                return None  # queued again (a redelivered task's hook): the entry already tells more
            update = entry
            if update["attempts"]:
                # The server's delivery count can start again (a delivery re-published after a
                # crash); the attempts recorded on the task never go backwards.
                update = {**update, "attempts": max(update["attempts"], done_before + 1)}
            history = list(previous.get("history") or []) if previous else []
            if update["attempts"]:
                # Every attempt's outcome stays visible (the last MAX_HISTORY of them).
                history.append({"attempt": update["attempts"], "status": update["status"], "error": update["error"],
                                "at": update["last_attempt_at"]})  # fmt: skip
            others = [e for e in entries if e.get("on") != update["on"]]
            record["destinations"] = [*others, cast(DestinationEntry, {**update, "history": history[-MAX_HISTORY:]})]
            return record

        await self.store.update_state(task_id, decide)

    async def run(self) -> None:
        js = self.store.js
        config = ConsumerConfig(
            durable_name=c.DELIVERIES_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=SEND_TIMEOUT * 2,
            max_ack_pending=100_000,
            max_deliver=-1,
        )
        await streams.ensure_consumer(js, c.DELIVERIES_STREAM, config, log)
        sub = await js.pull_subscribe_bind(durable=c.DELIVERIES_CONSUMER, stream=c.DELIVERIES_STREAM)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not cancel_requested():
                try:
                    msgs = await sub.fetch(64, timeout=5)
                except (TimeoutError, NatsTimeout):
                    continue
                for msg in msgs:
                    await self._slots.acquire()
                    task = asyncio.create_task(self._deliver_guarded(msg))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            for task in list(tasks):
                task.cancel()

    async def _deliver_guarded(self, msg: Msg) -> None:
        try:
            await self.deliver(msg)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery on %s failed unexpectedly; it will be redelivered", msg.subject)
        finally:
            self._slots.release()

    async def deliver(self, msg: Msg) -> None:
        headers = msg.headers or {}
        task_id, function, on = headers.get(H_TASK, ""), headers.get(H_FUNCTION, ""), headers.get(H_ON, "")
        destination = self.destinations.get((function, on))
        if destination is None:
            log.warning("no %s destination configured for %s any more; dropping delivery of %s", on, function, task_id)
            await msg.term()
            return
        attempt = msg.metadata.num_delivered
        parent = tracing.from_headers(headers)
        delivery = Delivery(
            task_id=task_id,
            function=function,
            on=On(on),
            condition=headers.get("Fngate-Condition", ""),
            body=msg.data,
            lineage=Lineage(headers.get(c.H_CHAIN_ID, "unknown"), int(headers.get(c.H_CHAIN_DEPTH, "1"))),
            trace=tracing.delivery_trace(task_id, on, attempt, parent),
        )
        outcome = "delivered"
        try:
            await self._send(destination, delivery, attempt, parent)
        except (TimeoutError, TransientDeliveryError) as exc:
            message = str(exc) or "timed out"
            backoff = min(FIRST_BACKOFF * 2 ** (attempt - 1), MAX_BACKOFF)
            queued_at = float(headers.get(H_QUEUED_AT, time.time()))
            if time.time() + backoff - queued_at <= destination.sink.options.retry_for:
                metrics.DESTINATION_DELIVERIES.labels(function, destination.type, "retried").inc()
                await self.update_entry(task_id, destination.entry(DeliveryStatus.PENDING, attempt, message))
                await msg.nak(delay=backoff)
                return
            outcome = "failed"
            await self.update_entry(task_id, destination.entry(DeliveryStatus.FAILED, attempt, f"gave up: {message}"))
        except PermanentDeliveryError as exc:
            outcome = "failed"
            await self.update_entry(task_id, destination.entry(DeliveryStatus.FAILED, attempt, str(exc)))
        else:
            await self.update_entry(task_id, destination.entry(DeliveryStatus.DELIVERED, attempt))
        metrics.DESTINATION_DELIVERIES.labels(function, destination.type, outcome).inc()
        await msg.ack()

    async def _send(
        self, destination: Destination, delivery: Delivery, attempt: int, parent: tracing.TraceContext | None
    ) -> None:
        """One delivery attempt, reported as a span."""
        started = time.time()
        error: BaseException | None = None
        try:
            await asyncio.wait_for(destination.sink.deliver(delivery), SEND_TIMEOUT)
        except BaseException as exc:
            error = exc
            raise
        finally:
            tracing.emit_delivery(delivery, destination.type, destination.sink.target, attempt, parent, started, error)

    async def close(self) -> None:
        for destination in self.destinations.values():
            with contextlib.suppress(Exception):
                await destination.sink.close()
