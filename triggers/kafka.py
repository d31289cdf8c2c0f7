"""The kafka trigger: a consumer group member whose messages become invocations.

Offsets are committed by hand, and only for messages already durably enqueued: a crash
between the two means the message is consumed again, never lost. The redelivered message
gets the same task id (derived from trigger, topic, partition, offset, timestamp and a hash
of key and value), so JetStream refuses the second copy and it stays one task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError
from aiokafka.helpers import create_ssl_context
from pydantic import Field, field_validator, model_validator

from gateway.config.model import TriggerConfig
from gateway.supervise import supervised
from gateway.tasks.invocation import BatchItem, iso, lineage_from_headers

from .base import (
    COMPACT_JSON,
    RETRY_MAX,
    SPECVERSION,
    BaseTrigger,
    HeaderValue,
    TriggerContext,
    TriggerState,
    header_fields,
    json_string,
    parse_json,
    parse_options,
    text_or_base64,
)
from .shaping import BatchedOptions, batch_max_bytes, batch_task, chunks

log = logging.getLogger(__name__)
COMMIT_TIMEOUT_MIN = 5.0  # seconds; the bound on an offset commit is the larger of this and the session timeout


class KafkaOptions(BatchedOptions):
    bootstrap_servers: str | list[str]
    topics: list[str] | None = Field(default=None, min_length=1)
    pattern: str | None = None
    group_id: str | None = None  # default fngate-<trigger name>
    client_id: str | None = None
    auto_offset_reset: Literal["earliest", "latest"] = "latest"
    session_timeout_ms: int = Field(default=10_000, ge=1000, le=300_000)
    heartbeat_interval_ms: int | None = Field(default=None, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    max_batch: int = Field(default=500, ge=1, le=10_000)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = Field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KafkaOptions:
        if (self.topics is None) == (self.pattern is None):
            raise ValueError("exactly one of topics, pattern must be set")
        if self.security_protocol.startswith("SASL"):
            if not (self.sasl_mechanism and self.sasl_plain_username and self.sasl_plain_password):
                raise ValueError(f"{self.security_protocol} needs sasl_mechanism, sasl_plain_username and password")
        if self.heartbeat_interval_ms is not None and self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        return self


class KafkaTrigger(BaseTrigger):
    """Consumes `topics` (or `pattern`) in group `group_id`; one invocation per message."""

    type = "kafka"
    Options = KafkaOptions

    def __init__(self, config: TriggerConfig, context: TriggerContext) -> None:
        super().__init__(config, context)
        self.options = parse_options(KafkaOptions, config, self.path)
        self.group_id = self.options.group_id or f"fngate-{self.name}"
        self.pattern = self.options.event_pattern()
        self.assigned: set[TopicPartition] = set()
        # Ready once the group assigned this member its partitions (none is an answer too: more
        # members than partitions) and the position of each is resolved: a message produced
        # after that is consumed, whatever auto_offset_reset says.
        self._joined: set[TopicPartition] | None = None
        self._positioned = False
        self._task: asyncio.Task[None] | None = None
        # What every event of this trigger shares, encoded once (see _encoded).
        self._id_prefix = f"kafka-{self.name}-"
        self._group = json_string(self.group_id)
        self._topics: dict[str, str] = {}  # topic name -> JSON string

    async def start(self) -> None:
        # The broker may be down at start-up: connecting happens in the background, with retries.
        self.state = TriggerState.CONNECTING
        run = supervised(f"kafka trigger {self.name}", self._run, stopping=self._stopping)
        self._task = asyncio.get_running_loop().create_task(run, name=f"kafka {self.name}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 15)
        self.state = TriggerState.STOPPED

    def ready(self) -> bool:
        return self.state is TriggerState.RUNNING and self._positioned

    def health(self) -> dict[str, Any]:
        return {
            **super().health(),
            "group_id": self.group_id,
            "subscription": self.options.topics or self.options.pattern,
            "assigned": sorted(f"{tp.topic}[{tp.partition}]" for tp in self.assigned),
        }

    def _consumer(self) -> AIOKafkaConsumer:
        o = self.options
        ssl_context = None
        if o.security_protocol in ("SSL", "SASL_SSL"):
            ssl_context = create_ssl_context(cafile=o.ssl_cafile, certfile=o.ssl_certfile, keyfile=o.ssl_keyfile)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=o.bootstrap_servers,
            group_id=self.group_id,
            client_id=o.client_id or f"fngate-{self.name}",
            enable_auto_commit=False,
            auto_offset_reset=o.auto_offset_reset,
            session_timeout_ms=o.session_timeout_ms,
            heartbeat_interval_ms=o.heartbeat_interval_ms or max(100, o.session_timeout_ms // 3),
            max_poll_interval_ms=o.max_poll_interval_ms,
            security_protocol=o.security_protocol,
            sasl_mechanism=o.sasl_mechanism or "PLAIN",
            sasl_plain_username=o.sasl_plain_username,
            sasl_plain_password=o.sasl_plain_password,
            ssl_context=ssl_context,
        )
        if o.topics is not None:
            consumer.subscribe(topics=o.topics)
        else:
            consumer.subscribe(pattern=o.pattern)
        return consumer

    async def _run(self) -> None:
        """Connect, consume, and on any broker trouble start over with backoff, until stopped."""
        delay = 0.5
        while not self._stopping.is_set():
            consumer = self._consumer()
            try:
                await consumer.start()
                self.state = TriggerState.RUNNING
                delay = 0.5
                await self._consume(consumer)
            except (KafkaError, OSError) as exc:
                self.count_error(f"{type(exc).__name__}: {exc}")
                log.warning("kafka trigger %s: %s; reconnecting in %.1fs", self.name, exc, delay)
            except Exception as exc:  # a bug must not leave the partitions unconsumed for good
                self.count_error(f"{type(exc).__name__}: {exc}")
                log.exception("kafka trigger %s: consumer failed; starting over in %.1fs", self.name, delay)
            finally:
                self.assigned = set()
                self._joined, self._positioned = None, False
                with contextlib.suppress(Exception):
                    await consumer.stop()
            if not self._stopping.is_set():
                self.state = TriggerState.CONNECTING
                await self.wait_stopping(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        batch = self.options.batch
        pending: list[BatchItem] = []  # events that passed the filter, not yet submitted
        offsets: dict[TopicPartition, int] = {}  # next offset per partition, once submitted
        since = 0.0  # when the first pending event arrived
        while not self._stopping.is_set():
            wait = 0.5
            if batch is not None and pending:
                wait = min(wait, max(0.001, since + batch.window - time.monotonic()))
            records = await consumer.getmany(timeout_ms=int(wait * 1000), max_records=self.options.max_batch)
            self._track_assignment(consumer)
            for tp, messages in records.items():
                items = self._as_events(messages)
                if items and not pending:
                    since = time.monotonic()
                pending.extend(items)
                offsets[tp] = messages[-1].offset + 1
            if not offsets:
                continue
            if batch is not None and pending and len(pending) < batch.size:
                if time.monotonic() - since < batch.window:
                    continue  # the batch is neither full nor due: its offsets wait with it
            if batch is not None:
                pending = [
                    batch_task(f"kafka-{self.name}-batch", run)
                    for run in chunks(pending, batch.size, batch_max_bytes(self.context))
                ]
            # Submitted as one batch (one JetStream write each, all sent before any ack is
            # awaited); while NATS is down they are held here, and nothing further is fetched
            # or committed. Dropped events are committed with the rest: a filter that matches
            # nothing moves the partition on, it never stalls it.
            if pending:
                await self.submit_batch(pending)
            if self._stopping.is_set():
                return  # some may be unfinished: leave them uncommitted, to be consumed again
            await self._commit(consumer, offsets)
            pending, offsets = [], {}

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        # aiokafka retries a commit for as long as the broker answers with a retriable error,
        # which a restarted broker may do for good (tansu, which keeps topics in memory,
        # answers UnknownTopicOrPartition to a member from before its restart): bounded
        # here, and then the consumer starts over (in _run) from the committed offsets. The
        # batch is consumed again and its task ids make the copies duplicates, not tasks.
        timeout = max(COMMIT_TIMEOUT_MIN, self.options.session_timeout_ms / 1000)
        try:
            await asyncio.wait_for(consumer.commit(offsets), timeout)
        except CommitFailedError as exc:
            # The group rebalanced meanwhile: the new owner consumes these again, and their
            # task ids make the copies duplicates rather than second tasks.
            log.warning("kafka trigger %s: commit failed after a rebalance: %s", self.name, exc)
        except TimeoutError:
            raise KafkaTimeoutError(f"offset commit not done after {timeout:.1f}s") from None

    def _track_assignment(self, consumer: AIOKafkaConsumer) -> None:
        """After each poll: ready once the group assigned this member its partitions (none is
        an answer too) and the position of every one is resolved; not ready while it rejoins."""
        joined = _assignment(consumer)
        if joined != self._joined:
            self._joined, self._positioned = joined, False
        if joined is None or self._positioned:
            if joined is None:
                self.assigned = set()
            return
        positions = {tp: _known_position(consumer, tp) for tp in joined}
        if any(at is None for at in positions.values()):
            return  # the fetcher is still resolving some: looked at again after the next poll
        self.assigned = set(joined)
        self._positioned = True
        log.info(
            "kafka trigger %s: assigned %s",
            self.name,
            ", ".join(sorted(f"{tp.topic}[{tp.partition}] at {at}" for tp, at in positions.items())) or "no partitions",
        )

    def _as_events(self, messages: list[ConsumerRecord[bytes, bytes]]) -> list[BatchItem]:
        """A poll's messages of one partition as events, counted in bulk; those the filter
        drops left out."""
        self.count_event(len(messages))
        items = [item for message in messages if (item := self._event(message)) is not None]
        self.count_filtered(len(items), len(messages) - len(items))
        return items

    def _event(self, message: ConsumerRecord[bytes, bytes]) -> BatchItem | None:
        """The message as a CloudEvent with its stable task id, and the lineage it carries;
        None when the filter drops it. Not counted (see _as_events)."""
        value = message.value or b""
        key = message.key
        first: dict[str, str] = {}
        headers: dict[str, HeaderValue] = {}
        if message.headers:
            first, headers = header_fields([(name, raw.decode(errors="replace")) for name, raw in message.headers])
        content = hashlib.sha256(b"%d:" % len(key or b"") + (key or b"") + value).hexdigest()
        # stable_id(prefix, topic, partition, offset, timestamp, content), written out: the
        # same id as ever (a message consumed again after an upgrade is still a duplicate).
        parts = f"{message.topic}\x1f{message.partition}\x1f{message.offset}\x1f{message.timestamp}\x1f{content}"
        task_id = self._id_prefix + hashlib.sha256(parts.encode()).hexdigest()[:32]
        key_field = text_or_base64(key)
        at = message.timestamp / 1000 if message.timestamp else None
        lineage = lineage_from_headers(first) if first else None
        if self.pattern is None and (parsed := parse_json(value) if value else None) is not None:
            return self._encoded(message, task_id, at, key_field, headers, parsed[0]), task_id, lineage
        # A filter to match, or a payload that is not JSON: the event as a dict first.
        extra = {
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "timestamp": message.timestamp,
            "timestamp_type": "log_append" if message.timestamp_type == 1 else "create",
            "key": key_field.get("text"),
            **({"key_base64": key_field["base64"]} if "base64" in key_field else {}),
            "headers": headers,
            "group_id": self.group_id,
        }
        event, parsed = self._envelope(task_id, "message", message.topic, value, None, at, extra)
        if not self.passes(event, parsed):
            return None
        if parsed is None:
            encoded = self.cloud_event(
                event_id=task_id, kind="message", subject=message.topic, raw=value, at=at, extra=extra
            )
            return encoded, task_id, lineage
        return self._encoded(message, task_id, at, key_field, headers, parsed[0]), task_id, lineage

    def _encoded(
        self,
        message: ConsumerRecord[bytes, bytes],
        task_id: str,
        at: float | None,
        key_field: dict[str, str | None],
        headers: dict[str, HeaderValue],
        data: str,
    ) -> bytes:
        """cloud_event() of a message whose payload is the JSON text `data`, byte for byte,
        written from a template: encoding the envelope's dict was a third of an event's cost.
        tests/triggers/test_kafka.py checks it against cloud_event()."""
        topic = self._topics.get(message.topic)
        if topic is None:
            topic = self._topics[message.topic] = json_string(message.topic)
        key = key_field.get("text")
        key_json = "null" if key is None else json_string(key)
        if "base64" in key_field:
            key_json += f',"key_base64":"{key_field["base64"]}"'
        timestamp = "null" if message.timestamp is None else str(message.timestamp)
        kind = "log_append" if message.timestamp_type == 1 else "create"
        return (
            f'{{"specversion":"{SPECVERSION}","id":{json_string(task_id)},"source":{self.event_source_json},'
            f'"type":"fngate.kafka.message","time":"{iso(at if at is not None else time.time())}",'
            f'"subject":{topic},"datacontenttype":"application/json","trigger":{self.trigger_ref_json},'
            f'"kafka":{{"topic":{topic},"partition":{message.partition},"offset":{message.offset},'
            f'"timestamp":{timestamp},"timestamp_type":"{kind}","key":{key_json},'
            f'"headers":{COMPACT_JSON.encode(headers) if headers else "{}"},"group_id":{self._group}}},'
            f'"data":{data.strip()}}}'
        ).encode()


# Readiness reads two things aiokafka keeps but does not publish: whether the group has
# answered (an empty assignment is an answer, assignment() cannot tell it from "not yet")
# and whether a partition's position is resolved (position() resolves by waiting). Only
# read, never awaited: a rebalance listener, or awaiting position() in the poll loop, left
# the fetcher stalled for good in some runs after a broker restart
# (tests/triggers/test_broker_restart.py). If the internals move, readiness falls back to
# "assigned", which is no worse than before.


def _assignment(consumer: AIOKafkaConsumer) -> set[TopicPartition] | None:
    """What the group assigned this member; None until it has answered."""
    try:
        subscription = consumer._subscription.subscription
        if subscription is None or subscription.assignment is None:
            return None
        return set(subscription.assignment.tps)
    except Exception:  # an aiokafka whose internals differ
        return set(consumer.assignment()) or None


def _known_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The partition's position if the consumer resolved it, without waiting for it."""
    try:
        assignment = consumer._subscription.subscription.assignment
        state = assignment.state_value(tp)
        return int(state.position) if state.has_valid_position else None
    except Exception:  # an aiokafka whose internals differ, or a partition just revoked
        return -1
