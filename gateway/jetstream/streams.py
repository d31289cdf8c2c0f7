"""Every JetStream stream fngate keeps, and how it is created or brought up to date: the one
place to read what the deployment stores, for how long and with what guarantees
(docs/architecture.md, "Streams"). Every replica ensures these at start-up; it is
idempotent, and a replica of another version brings a stream to its own config."""

from __future__ import annotations

import logging

from nats.js.api import ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError

from gateway.jetstream.errors import stream_name_in_use
from gateway.tasks import constants as c

DELIVERIES_DUPLICATE_WINDOW = 120.0  # a delivery re-queued after a crash is recognised for 2 minutes
OPS_KEEP = 7 * 86400.0  # chunks of a bulk operation nobody ran are dropped after a week


def tasks_stream(retention: float, replicas: int) -> StreamConfig:
    """Every invocation: its payload as the body, its metadata in headers."""
    return StreamConfig(
        name=c.TASKS_STREAM,
        subjects=[f"{c.TASKS_SUBJECT}.>"],
        retention=RetentionPolicy.LIMITS,
        max_age=retention,
        # Task ids are unique across the deployment for as long as tasks are kept.
        duplicate_window=retention,
        storage=StorageType.FILE,
        num_replicas=replicas,
        allow_direct=True,
    )


def state_stream(retention: float, replicas: int) -> StreamConfig:
    """The latest record of each task: one message per subject, written by compare-and-set."""
    return StreamConfig(
        name=c.STATE_STREAM,
        subjects=[f"{c.STATE_SUBJECT}.>"],
        retention=RetentionPolicy.LIMITS,
        max_msgs_per_subject=1,
        max_age=retention,
        storage=StorageType.FILE,
        num_replicas=replicas,
        allow_direct=True,
        discard=DiscardPolicy.OLD,
    )


def delay_stream(replicas: int) -> StreamConfig:
    """Invocations waiting for their not-before time (X-Delay, retries): a work queue."""
    return StreamConfig(
        name=c.DELAY_STREAM,
        subjects=[f"{c.DELAY_SUBJECT}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
    )


def logs_stream(retention: float, replicas: int) -> StreamConfig:
    """Batches of each task's function log lines, kept as long as the task."""
    return StreamConfig(
        name=c.LOGS_STREAM,
        subjects=[f"{c.LOGS_SUBJECT}.>"],
        retention=RetentionPolicy.LIMITS,
        max_age=retention,
        storage=StorageType.FILE,
        num_replicas=replicas,
        allow_direct=True,
        discard=DiscardPolicy.OLD,
    )


def deliveries_stream(replicas: int) -> StreamConfig:
    """Results waiting to be handed to their destination: a work queue."""
    return StreamConfig(
        name=c.DELIVERIES_STREAM,
        subjects=[f"{c.DELIVERIES_SUBJECT}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=DELIVERIES_DUPLICATE_WINDOW,
    )


def flow_stream(replicas: int) -> StreamConfig:
    """Tasks of flow-controlled functions parked beyond the leader's memory: a work queue."""
    return StreamConfig(
        name=c.FLOW_STREAM,
        subjects=[f"{c.PARK_SUBJECT}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
    )


def flow_leaders_stream(ack_wait: float, replicas: int) -> StreamConfig:
    """Which replica leads each flow-controlled function: a crashed leader's claim ages out."""
    return StreamConfig(
        name=c.LEADERS_STREAM,
        subjects=[f"{c.LEADER_SUBJECT}.>"],
        retention=RetentionPolicy.LIMITS,
        max_msgs_per_subject=1,
        max_age=ack_wait,
        storage=StorageType.FILE,
        num_replicas=replicas,
    )


def ops_stream(replicas: int) -> StreamConfig:
    """The chunks of bulk operations still to act on: a work queue."""
    return StreamConfig(
        name=c.OPS_STREAM,
        subjects=[f"{c.OPS_SUBJECT}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=OPS_KEEP,
        num_replicas=replicas,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create a stream, or bring an existing one to this config (another replica's or an older one)."""
    try:
        await js.add_stream(config)
    except APIError as exc:
        if not stream_name_in_use(exc):
            raise
        await js.update_stream(config)


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig, log: logging.Logger) -> None:
    """Create a durable consumer, or bring it to this config. A config the server will not
    change in place (another version's) is logged: the consumer there still serves."""
    try:
        await js.add_consumer(stream, config)
    except APIError as exc:
        log.warning("consumer %s not updated: %s", config.durable_name, exc.description)
