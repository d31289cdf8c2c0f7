"""JetStream as the pipeline and the store of tasks.

- FNGATE_TASKS (limits retention, max_age = duplicate_window = retention): one message per
  invocation on `fngate.tasks.{fn}.{id}`. A submit carries `Nats-Msg-Id: {id}`, so the
  server refuses a task id that any function's task holds within retention: the durable
  enqueue and the deployment-wide dedup by task id are a single acked write. (Requeues
  carry no message id: a retry is the same task, not a new one.)
- FNGATE_STATE (one message per subject): the latest task record on `fngate.state.{id}`.
  Writes are compare-and-set on the subject's last sequence, so a stop request and a worker
  never overwrite each other's status.
- FNGATE_DELAY (work queue): invocations waiting for a not-before time (X-Delay, retry
  backoff); a scheduler moves them back to FNGATE_TASKS when due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import APIError

from gateway.errors import DuplicateTask, FngateError, PayloadTooLarge, ServiceUnavailable
from gateway.jetstream import streams
from gateway.jetstream.errors import not_found, store_full, wrong_last_sequence
from gateway.jetstream.publisher import AckPublisher, DuplicateMessage, PendingAck
from gateway.observe import metrics
from gateway.tasks import constants as c
from gateway.tasks.invocation import Invocation
from gateway.tasks.records import Record, decode, encode
from gateway.units import format_size

log = logging.getLogger(__name__)
UNAVAILABLE = (NatsTimeout, NoRespondersError, ConnectionClosedError, OutboundBufferLimitError, asyncio.TimeoutError)


MESSAGE_OVERHEAD = 4096  # room for the invocation's headers within the server's max_payload


class StateConflict(FngateError):
    """The task record changed since it was read: re-read and decide again."""

    status = 409
    code = "StateConflict"


# A submit that failed this way may still have been stored (the message can reach the server
# after the wait for its ack gave up): the caller learns which by submitting again with the
# same X-Task-Id, which answers 409 if the first try landed.
RETRY_SAME_ID = "the task may or may not have been enqueued: retry with the same X-Task-Id (409 means it was)"


def submit_error(inv: Invocation, exc: Exception) -> Exception:
    """What a failed submit means to the caller: a duplicate, NATS unavailable, or as it is."""
    if isinstance(exc, DuplicateMessage):
        return DuplicateTask(f"task id {inv.task_id!r} is already taken")
    if isinstance(exc, APIError):
        if wrong_last_sequence(exc):
            return DuplicateTask(f"task id {inv.task_id!r} is already taken")
        return ServiceUnavailable(f"JetStream refused the task ({exc.description}); nothing was enqueued, retry later")
    if isinstance(exc, NoRespondersError):
        return ServiceUnavailable(
            f"JetStream has no stream leader for this task right now (a NATS node may be restarting); {RETRY_SAME_ID}"
        )
    if isinstance(exc, UNAVAILABLE):
        return ServiceUnavailable(f"NATS did not acknowledge the task in time; {RETRY_SAME_ID}")
    return exc


@dataclass(frozen=True, slots=True)
class StoredRecord:
    record: Record
    seq: int


# What to write given the task's current record (None: it has none yet); None writes nothing.
Decide = Callable[[StoredRecord | None], Awaitable[Record | None]]
# Told of each write JetStream refused (its store full, a limit) and how many so far.
Refused = Callable[[APIError, int], None]


class _Unread:
    """The default of update_state's `known`: nothing is known, read the record first."""


UNREAD = _Unread()


class TaskStore:
    def __init__(self, nc: NATS, *, retention: float, replicas: int = 1, timeout: float = 5.0) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=timeout)
        self.retention = retention
        self.replicas = replicas
        self.timeout = timeout
        self.ready = False
        self.publisher = AckPublisher(nc, timeout)
        # Why JetStream last refused to store a task record (a full store, a limit), until a
        # write succeeds again: a /readyz check, a metric and a log line.
        self.write_refused: str | None = None

    async def ensure_streams(self) -> None:
        """Create or update the streams; idempotent, safe for every replica at start-up."""
        await self.publisher.start()
        for config in (
            streams.tasks_stream(self.retention, self.replicas),
            streams.state_stream(self.retention, self.replicas),
            streams.delay_stream(self.replicas),
        ):
            await streams.ensure_stream(self.js, config)
        self.ready = True

    def check_connected(self) -> None:
        if not self.nc.is_connected:
            raise ServiceUnavailable("NATS is unreachable; nothing was enqueued, retry later (with the same X-Task-Id)")

    async def submit(self, inv: Invocation) -> int:
        """Durably enqueue a new task; DuplicateTask when the id is already known."""
        self.check_connected()
        try:
            seq = await self.publisher.publish(inv.subject, inv.payload, self._submit_headers(inv))
        except Exception as exc:
            if isinstance(exc, APIError) and store_full(exc):
                self._refused(exc)
            error = submit_error(inv, exc)
            if isinstance(error, DuplicateTask):
                error.task = await self.holder(inv, exc.seq if isinstance(exc, DuplicateMessage) else None)
            raise error from None
        if self.write_refused is not None:
            self._stored()
        await self._priority_enqueued(inv)
        return seq

    async def _priority_enqueued(self, inv: Invocation) -> None:
        """Tell the function's flow leader that a high or low task is in its queue: it reads
        the whole backlog then, so priority orders all of it (gateway/flow/leader.py). Core
        NATS, only for such tasks; a lost one is made up for by a new leader reading all."""
        if inv.priority != "normal":
            with contextlib.suppress(Exception):
                await self.nc.publish(f"{c.PRIORITY_SUBJECT}.{inv.function}", b"")

    def _refused(self, exc: APIError) -> None:
        self.write_refused = exc.description or f"error {exc.err_code}"
        metrics.STORE_WRITABLE.set(0)

    def _stored(self) -> None:
        self.write_refused = None
        metrics.STORE_WRITABLE.set(1)

    async def holder(self, inv: Invocation, seq: int | None) -> dict[str, Any]:
        """{task_id, function, status} of the task that holds `inv`'s id: its submission is
        message `seq` of the task stream (its subject names the function), its status is in
        its record. Best effort: a read that fails leaves what is known."""
        holder: dict[str, Any] = {"task_id": inv.task_id, "function": inv.function if seq is None else None}
        with contextlib.suppress(Exception):
            if seq is not None:
                msg = await self.js.get_msg(c.TASKS_STREAM, seq=seq, direct=True)
                holder["function"] = (msg.subject or "").split(".")[2]
            stored = await self.get_state(inv.task_id)
            holder["status"] = stored.record["status"] if stored else "Enqueued"
        holder.setdefault("status", None)
        return holder

    async def submit_many(self, invs: Sequence[Invocation]) -> list[Exception | None]:
        """Enqueue a batch: every message is sent before any ack is awaited, which spares a
        coroutine chain and a task per message (a trigger's batch of events). One outcome per
        invocation, in order: None when enqueued, else the exception `submit` would raise."""
        self.check_connected()
        outcomes: list[Exception | None] = [None] * len(invs)
        sent: list[tuple[int, PendingAck]] = []
        for i, inv in enumerate(invs):
            try:
                sent.append((i, await self.publisher.send(inv.subject, inv.payload, self._submit_headers(inv))))
            except Exception as exc:
                outcomes[i] = submit_error(inv, exc)
        for i, pending in sent:
            try:
                await self.publisher.acked(pending)
            except Exception as exc:
                outcomes[i] = submit_error(invs[i], exc)
        for inv in {inv.function: inv for inv in invs if inv.priority != "normal"}.values():
            await self._priority_enqueued(inv)
        return outcomes

    def max_task_payload(self) -> int:
        """The largest payload a task may have: what the NATS server takes in one message
        (its max_payload, from the connection), less the room for the invocation's headers."""
        return self.nc.max_payload - MESSAGE_OVERHEAD

    def _submit_headers(self, inv: Invocation) -> dict[str, str]:
        limit = self.max_task_payload()
        if len(inv.payload) > limit:
            raise PayloadTooLarge(
                f"payload of {len(inv.payload)} bytes is over what the NATS server accepts "
                f"({format_size(limit)}; raise max_payload on the server)"
            )
        headers = inv.headers()
        # The enqueue and the dedup by id in one write: the message id across every function
        # (within the duplicate window), the subject sequence within this one as a backstop.
        headers[c.H_MSG_ID] = inv.task_id
        headers[c.H_EXPECTED_LAST_SUBJECT_SEQ] = "0"
        return headers

    async def requeue(self, inv: Invocation) -> None:
        """Put an invocation back in its function's queue (after a delay, or a retry)."""
        await self.publisher.publish(inv.subject, inv.payload, inv.headers())
        await self._priority_enqueued(inv)

    async def defer(self, inv: Invocation) -> None:
        """Park an invocation until its not_before time."""
        await self.publisher.publish(inv.delay_subject, inv.payload, inv.headers())

    async def get_submission(self, function: str, task_id: str) -> Invocation | None:
        """The task's latest message on the task stream; `function` may be `*` (any function)."""
        msg = await self._last_message(c.TASKS_STREAM, f"{c.TASKS_SUBJECT}.{function}.{task_id}")
        if msg is None:
            return None
        try:
            return Invocation.from_message(msg.headers, msg.data)
        except (KeyError, ValueError, IndexError) as exc:
            # One unreadable message must not break a get or a listing: it is skipped.
            log.warning("unreadable task message %s (seq %s): %s", msg.subject, msg.seq, exc)
            return None

    async def get_submissions(self, tasks: Sequence[tuple[str, str]], timeout: float = 10.0) -> list[Invocation | None]:
        """The submissions of many (function, task id) at once, in order (None: none stored,
        or unreadable). Every direct get is sent before any answer is awaited, on one inbox
        subscription: request() per task paid a future, a random token and a parse of the
        stamp each, which was most of a bulk rerun's time. An outage raises ServiceUnavailable."""
        self.check_connected()
        found: list[Invocation | None] = [None] * len(tasks)
        if not tasks:
            return found
        inbox = self.nc.new_inbox()
        left = len(tasks)
        complete: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        trouble: list[str] = []

        async def answer(msg: Msg) -> None:
            nonlocal left
            i = int(msg.subject.rpartition(".")[2])
            headers = msg.headers or {}
            status = headers.get("Status")
            if status and not msg.data:
                if status != "404":  # 404: no such message; anything else (503: no responders) is an outage
                    trouble.append(f"{status} {headers.get('Description', '')}".strip())
            else:
                try:
                    found[i] = Invocation.from_message(headers, msg.data)
                except (KeyError, ValueError, IndexError) as exc:
                    log.warning("unreadable task message %s: %s", headers.get("Nats-Subject"), exc)
            left -= 1
            if left == 0 and not complete.done():
                complete.set_result(None)

        sub = await self.nc.subscribe(f"{inbox}.*", cb=answer, pending_msgs_limit=len(tasks) + 1)
        try:
            prefix = f"$JS.API.DIRECT.GET.{c.TASKS_STREAM}.{c.TASKS_SUBJECT}"
            for i, (function, task_id) in enumerate(tasks):
                await self.nc.publish(f"{prefix}.{function}.{task_id}", b"", reply=f"{inbox}.{i}")
            await asyncio.wait_for(complete, timeout)
        except UNAVAILABLE as exc:
            raise ServiceUnavailable(f"task messages cannot be read right now ({type(exc).__name__}); retry") from None
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if trouble:
            raise ServiceUnavailable(f"task messages cannot be read right now ({trouble[0]}); retry")
        return found

    async def get_state(self, task_id: str) -> StoredRecord | None:
        msg = await self._last_message(c.STATE_STREAM, f"{c.STATE_SUBJECT}.{task_id}")
        if msg is None or not msg.data:
            return None
        try:
            return StoredRecord(decode(msg.data), msg.seq or 0)
        except ValueError as exc:
            log.warning("unreadable task record %s (seq %s): %s", msg.subject, msg.seq, exc)
            return None

    async def _last_message(self, stream: str, subject: str) -> RawStreamMsg | None:
        """The subject's last message by direct get (any replica answers); None when there is none."""
        try:
            return await self.js.get_last_msg(stream, subject, direct=True)
        except APIError as exc:
            if not_found(exc):
                return None
            raise

    async def put_state(self, record: Record, expected_seq: int | None) -> int:
        """Write a task record; with expected_seq, only if nobody wrote it since (CAS)."""
        headers = None
        if expected_seq is not None:
            headers = {c.H_EXPECTED_LAST_SUBJECT_SEQ: str(expected_seq)}
        try:
            seq = await self.publisher.publish(f"{c.STATE_SUBJECT}.{record['task_id']}", encode(record), headers)
        except APIError as exc:
            if wrong_last_sequence(exc):
                raise StateConflict(record["task_id"]) from None
            self._refused(exc)
            metrics.STATE_WRITES_REFUSED.inc()
            raise
        if self.write_refused is not None:
            self._stored()
        return seq

    async def update_state(
        self,
        task_id: str,
        decide: Decide,
        *,
        known: StoredRecord | _Unread | None = UNREAD,
        on_refused: Refused | None = None,
    ) -> StoredRecord | None:
        """Compare-and-set of a task record: `decide` says what to write given the current
        record, which is written only if nobody wrote it since; after a conflict the record
        is read again and `decide` asked again. The record written and its sequence, or None
        when `decide` chose to write nothing.

        `known`: the state the caller already holds (None: no record yet), tried without a
        read first. `on_refused`: a write JetStream refuses is retried with backoff until it
        is stored, each refusal told to it (without it, the APIError is raised).
        """
        stored = None if isinstance(known, _Unread) else known
        unread = isinstance(known, _Unread)
        refused = 0
        while True:
            if unread:
                stored = await self.get_state(task_id)
            unread = True
            record = await decide(stored)
            if record is None:
                return None
            while True:
                try:
                    seq = await self.put_state(record, stored.seq if stored else 0)
                    return StoredRecord(record, seq)
                except StateConflict:
                    break
                except APIError as exc:
                    if on_refused is None:
                        raise
                    on_refused(exc, refused)
                    refused += 1
                    await asyncio.sleep(min(0.25 * 2 ** min(refused, 5), 5.0))

    async def function_consumers(self) -> list[str]:
        """Function names that have a durable consumer on the task stream."""
        infos = await self.js.consumers_info(c.TASKS_STREAM)
        return [
            info.name[len(c.FUNCTION_CONSUMER_PREFIX) :]
            for info in infos
            if info.name and info.name.startswith(c.FUNCTION_CONSUMER_PREFIX)
        ]


async def connect(
    servers: list[str], name: str = "fngate", on_reconnect: Callable[[], Awaitable[None]] | None = None
) -> NATS:
    """Connect, and keep reconnecting forever: a gateway recovers from a NATS outage by itself."""

    async def on_error(exc: Exception) -> None:
        log.warning("NATS connection error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("NATS disconnected; submits answer 503 until it is back")

    async def reconnected() -> None:
        log.info("NATS reconnected")
        if on_reconnect is not None:
            await on_reconnect()

    return await nats.connect(
        servers=servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=reconnected,
    )
