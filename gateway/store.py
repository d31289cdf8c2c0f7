"""JetStream as the pipeline and the store of tasks.

- FNGATE_TASKS (limits retention, max_age = retention): one message per invocation on
  `fngate.tasks.{fn}.{id}`. Submitting with `Nats-Expected-Last-Subject-Sequence: 0` makes
  the durable enqueue and the dedup by task id a single acked write.
- FNGATE_STATE (one message per subject): the latest task record on `fngate.state.{id}`.
  Writes are compare-and-set on the subject's last sequence, so a stop request and a worker
  never overwrite each other's status.
- FNGATE_DELAY (work queue): invocations waiting for a not-before time (X-Delay, retry
  backoff); a scheduler moves them back to FNGATE_TASKS when due.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RawStreamMsg, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from . import constants as c
from .errors import DuplicateTask, PayloadTooLarge, ServiceUnavailable
from .invocation import Invocation
from .publisher import AckPublisher, PendingAck
from .records import Record, decode, encode
from .units import format_size

log = logging.getLogger(__name__)
UNAVAILABLE = (NatsTimeout, NoRespondersError, ConnectionClosedError, OutboundBufferLimitError, asyncio.TimeoutError)


MESSAGE_OVERHEAD = 4096  # room for the invocation's headers within the server's max_payload


class StateConflict(Exception):
    """The task record changed since it was read: re-read and decide again."""


def submit_error(inv: Invocation, exc: Exception) -> Exception:
    """What a failed submit means to the caller: a duplicate, NATS unavailable, or as it is."""
    if isinstance(exc, APIError):
        if exc.err_code == c.ERR_WRONG_LAST_SEQUENCE:
            return DuplicateTask(f"task {inv.task_id!r} already exists")
        return ServiceUnavailable(f"JetStream refused the task: {exc.description}")
    if isinstance(exc, NoRespondersError):
        return ServiceUnavailable(
            "JetStream has no stream leader for this task right now (a NATS node may be restarting); retry later"
        )
    if isinstance(exc, UNAVAILABLE):
        return ServiceUnavailable("NATS did not acknowledge the task in time; retry later")
    return exc


@dataclass(frozen=True, slots=True)
class StoredRecord:
    record: Record
    seq: int


class TaskStore:
    def __init__(self, nc: NATS, *, retention: float, replicas: int = 1, timeout: float = 5.0) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=timeout)
        self.retention = retention
        self.replicas = replicas
        self.timeout = timeout
        self.ready = False
        self.publisher = AckPublisher(nc, timeout)

    async def ensure_streams(self) -> None:
        """Create or update the streams; idempotent, safe for every replica at start-up."""
        await self.publisher.start()
        streams = [
            StreamConfig(
                name=c.TASKS_STREAM,
                subjects=[f"{c.TASKS_SUBJECT}.>"],
                retention=RetentionPolicy.LIMITS,
                max_age=self.retention,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                allow_direct=True,
            ),
            StreamConfig(
                name=c.STATE_STREAM,
                subjects=[f"{c.STATE_SUBJECT}.>"],
                retention=RetentionPolicy.LIMITS,
                max_msgs_per_subject=1,
                max_age=self.retention,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                allow_direct=True,
                discard=DiscardPolicy.OLD,
            ),
            StreamConfig(
                name=c.DELAY_STREAM,
                subjects=[f"{c.DELAY_SUBJECT}.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
            ),
        ]
        for config in streams:
            await self.ensure_stream(config)
        self.ready = True

    async def ensure_stream(self, config: StreamConfig) -> None:
        """Create a stream, or bring an existing one to this config (another replica's or an older one)."""
        try:
            await self.js.add_stream(config)
        except APIError as exc:
            if exc.err_code != c.ERR_STREAM_NAME_IN_USE:
                raise
            await self.js.update_stream(config)

    def check_connected(self) -> None:
        if not self.nc.is_connected:
            raise ServiceUnavailable("NATS is unreachable; nothing was enqueued, retry later")

    async def submit(self, inv: Invocation) -> int:
        """Durably enqueue a new task; DuplicateTask when the id is already known."""
        self.check_connected()
        try:
            return await self.publisher.publish(inv.subject, inv.payload, self._submit_headers(inv))
        except Exception as exc:
            raise submit_error(inv, exc) from None

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
        return outcomes

    def _submit_headers(self, inv: Invocation) -> dict[str, str]:
        limit = self.nc.max_payload
        if len(inv.payload) > limit - MESSAGE_OVERHEAD:
            raise PayloadTooLarge(
                f"payload of {len(inv.payload)} bytes is over what the NATS server accepts "
                f"({format_size(limit - MESSAGE_OVERHEAD)}; raise max_payload on the server)"
            )
        headers = inv.headers()
        headers[c.H_EXPECTED_LAST_SUBJECT_SEQ] = "0"  # the enqueue and the dedup by id in one write
        return headers

    async def requeue(self, inv: Invocation) -> None:
        """Put an invocation back in its function's queue (after a delay, or a retry)."""
        await self.publisher.publish(inv.subject, inv.payload, inv.headers())

    async def defer(self, inv: Invocation) -> None:
        """Park an invocation until its not_before time."""
        await self.publisher.publish(inv.delay_subject, inv.payload, inv.headers())

    async def get_submission(self, function: str, task_id: str) -> Invocation | None:
        msg = await self._last_message(c.TASKS_STREAM, f"{c.TASKS_SUBJECT}.{function}.{task_id}")
        return None if msg is None else Invocation.from_message(msg.headers, msg.data)

    async def get_state(self, task_id: str) -> StoredRecord | None:
        msg = await self._last_message(c.STATE_STREAM, f"{c.STATE_SUBJECT}.{task_id}")
        if msg is None or not msg.data:
            return None
        return StoredRecord(decode(msg.data), msg.seq or 0)

    async def _last_message(self, stream: str, subject: str) -> RawStreamMsg | None:
        """The subject's last message by direct get (any replica answers); None when there is none."""
        try:
            return await self.js.get_last_msg(stream, subject, direct=True)
        except NotFoundError:
            return None
        except APIError as exc:
            if exc.code == 404:
                return None
            raise

    async def put_state(self, record: Record, expected_seq: int | None) -> int:
        """Write a task record; with expected_seq, only if nobody wrote it since (CAS)."""
        headers = None
        if expected_seq is not None:
            headers = {c.H_EXPECTED_LAST_SUBJECT_SEQ: str(expected_seq)}
        try:
            return await self.publisher.publish(f"{c.STATE_SUBJECT}.{record['task_id']}", encode(record), headers)
        except APIError as exc:
            if exc.err_code == c.ERR_WRONG_LAST_SEQUENCE:
                raise StateConflict(record["task_id"]) from None
            raise

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
