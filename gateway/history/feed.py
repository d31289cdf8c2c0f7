"""The one feed of the history: durable JetStream pull consumers, shared by every replica.

Each database has its own pair of durable consumers, named after the database's id (one on
FNGATE_TASKS, headers only: the submission's header holds all a row needs; one on
FNGATE_STATE: the task records). Replicas sharing a database pull from the same consumers,
so JetStream hands every message to one of them; a new or deleted database gets new
consumers and is fed from the start of the streams (the backfill).

A batch is parsed, applied in one transaction, and only then acknowledged, each message
explicitly. AckAll on the last message would be cheaper but is wrong with several pullers:
it also acknowledges messages delivered to another replica that has not committed them yet,
and those would be lost if that replica died. A crash before the commit leaves the batch
unacknowledged (JetStream redelivers it after ack_wait); a crash after the commit and
before the acks redelivers a batch that the plan then finds already applied.

The feed runs on its own NATS connection, so a slow database or a backfill can never get
the connection that serves submits cut off as a slow consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from gateway.jetstream import streams
from gateway.jetstream.raw import is_status, raw_handlers
from gateway.observe import metrics
from gateway.tasks import constants as c
from gateway.tasks.status import TaskStatus

from .backend import Backend, OldestMs
from .headers import header
from .model import Fact, iso_ms, to_ms
from .plan import merge

log = logging.getLogger(__name__)
BATCH = 2000  # messages per pull request and per transaction
EXPIRES = 2.0  # seconds a pull request waits on the server when there is nothing new
# A trickle of live messages is gathered this long into one batch: every commit rewrites the
# hot pages of each index, so a batch of 20 ms cost the feeder ~30% more CPU per task than
# one of 100-250 ms (docs/benchmarks.md), and the lag stays well under a second.
LINGER = 0.1
ACK_WAIT = 30.0  # a batch not committed by then is handed to another replica
INACTIVE = 3 * 86400.0  # consumers of a database nobody feeds any more are dropped by the server
# The tasks feed starts waiting when the state feed holds more than this many batches (a
# backfill's backlog): a burst's batches are applied side by side, or the tasks feed's lag
# (its Enqueued tasks missing from lists) would grow with every burst. It was 10; a burst
# that a feeder trails by two seconds already holds 24k records (12k/s on 2 cores), while a
# backfill's backlog is the history, hundreds of thousands.
YIELD_BATCHES = 50
# A feeder of a slot past the first (feeder.py) joins while a consumer holds more than
# HELP_ABOVE messages (a backfill, a burst one feeder cannot keep up with), and leaves once it
# is down to CAUGHT_UP: its share of a trickle would only make everyone's batches smaller.
HELP_ABOVE = 10 * BATCH
CAUGHT_UP = BATCH
REFRESH_EVERY = 600.0  # seconds between two refreshes of the statistics by one feed (`_refresh_due`)
PROGRESS_EVERY = 5.0  # seconds between backfill progress lines
COMMIT_GRACE = 5.0  # seconds a stopping feed waits for the batch it is committing
V1_ACK_TOKENS = 9  # an ack subject without domain and account hash (older servers)


def ack_position(reply: str) -> tuple[int, int, int]:
    """(stream sequence, messages pending, stored at in ns) from a delivery's reply subject:
    cheaper than the client's full `msg.metadata`, on every message."""
    tokens = reply.split(".")
    if len(tokens) == V1_ACK_TOKENS:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[8]), int(tokens[7])
    return int(tokens[Msg.Ack.StreamSeq]), int(tokens[Msg.Ack.NumPending]), int(tokens[Msg.Ack.Timestamp])


Headers = bytes | dict[str, str] | None  # a raw header block (headers.py), or nats-py's parse of it
Delivery = tuple[str, str, bytes, Headers]  # (subject, reply subject, payload, headers) of one message
# Told of every committed batch: (stream, messages, seconds from the newest one's store to its commit).
OnCommit = Callable[[str, int, float | None], None]


def count_commit(stream: str, messages: int, delay: float | None) -> None:
    """A committed batch in this process's metrics."""
    metrics.INDEX_APPLIED.labels(stream).inc(messages)
    if delay is not None:
        metrics.INDEX_APPLY_DELAY.labels(stream).observe(delay)


def _sequence(version: tuple[int, bytes, Headers]) -> int:
    return version[0]


def task_fact(data: bytes, hdr: Headers, _seq: int) -> Fact | None:
    """A submission (headers only): the task exists, Enqueued. Requeues of the same task
    (retries, delays) carry the same fields and change nothing."""
    meta = header(hdr, c.H_INVOCATION)
    if not meta:
        return None
    f = meta.split("|")
    if len(f) not in (12, 14) or f[0] != "1":
        return None
    try:
        submitted = to_ms(float(f[3]))
        # What its first record reads when the row is listed (plan.listed_record): a header
        # it could not be made of is unreadable here, not a listing that fails later.
        float(f[4]), int(f[6]), int(f[11])
    except ValueError:
        return None
    # What the task's first record is made of, should this submission make its row.
    made_of = {c.H_INVOCATION: meta}
    for name in (c.H_TRACEPARENT, c.H_TRACESTATE):
        value = header(hdr, name)
        if value is not None:
            made_of[name] = value
    return Fact(f[1], f[2], submitted, unquote(f[8]), unquote(f[9]), f[10] or "unknown", headers=made_of)


def state_fact(data: bytes, _hdr: Headers, seq: int) -> Fact | None:
    """A task record as of stream sequence `seq`."""
    try:
        text = data.decode()
        record = json.loads(text)
        status = TaskStatus(record["status"])
        source = record.get("source") or {}
        finished = record.get("finished_at")
        return Fact(
            record["task_id"],
            record["function"],
            iso_ms(record["submitted_at"]),
            str(source.get("type", "")),
            str(source.get("name", "")),
            str((record.get("chain") or {}).get("id") or "unknown"),
            status,
            seq,
            record.get("condition"),
            iso_ms(finished) if finished else None,
            text,
            started_ms=iso_ms(started) if (started := record.get("started_at")) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return None


@dataclass
class Parsed:
    """A batch read from its messages, ready to apply."""

    facts: dict[str, Fact]
    replies: list[str]
    pending: int  # messages the consumer held after the batch's last one
    newest_ns: int


@dataclass
class Lag:
    messages: int = 0
    seconds: float = 0.0
    checked: bool = False  # at least one look at the consumer succeeded


@dataclass
class StreamFeed:
    """One stream's durable pull consumer, applied batch by batch."""

    nc: NATS
    backend: Backend
    stream: str
    subject: str
    consumer: str
    headers_only: bool
    parse: Callable[[bytes, Headers, int], Fact | None]
    oldest_ms: OldestMs
    batch: int = BATCH
    ack_wait: float = ACK_WAIT
    lag: Lag = field(default_factory=Lag)
    applied: int = 0
    on_commit: OnCommit = count_commit
    # The feed this one waits for while it has a backlog (the tasks feed waits for the state
    # feed): in a backfill a task's record then makes its row, and its submission finds the
    # row there, one insert per task instead of an insert and an update.
    yield_to: StreamFeed | None = None
    # Which of a task's messages in one batch makes its fact: on the state stream the newest
    # record (the older ones are superseded and never parsed: a task's Running and Succeeded
    # mostly arrive together); on the task stream the first submission (a requeue's header
    # counts its attempts, the first record must not).
    newest_wins: bool = True
    backlog: int = 0  # messages the consumer held after the last batch this replica took
    backlog_at: float = 0.0
    # A backlog this large (a backfill, a long outage) changes the table faster than its
    # statistics follow (sql.AnalyzeSchedule refreshes them as the table doubles, autovacuum
    # later still): once it is applied they are refreshed. With a backfill's stale figures
    # (its oldest tasks Succeeded, all of them applied first) PostgreSQL read the listing
    # order's index filtered by status through 500k newer rows: 170 ms at 1M tasks, not 2.
    refresh_after: int = HELP_ABOVE
    _backlogged: bool = False
    _refreshed_at: float = float("-inf")
    _yielding: bool = False
    _buffer: list[Delivery] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _credit: int = 0  # messages the open pull request may still bring
    _deadline: float = 0.0
    _sub: Subscription | None = None
    _inbox: str = ""

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.consumer,
            filter_subject=self.subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=self.batch * 4,
            max_deliver=-1,
            max_waiting=64,
            headers_only=self.headers_only or None,
            inactive_threshold=INACTIVE,
        )

    async def ensure_consumer(self) -> None:
        await streams.ensure_consumer(self.nc.jetstream(), self.stream, self.consumer_config(), log)

    async def run(self, helping: bool = False) -> None:
        """Apply the stream until stopped; `helping` (a feeder of a slot past the first,
        feeder.py): only until the consumer's backlog is down to CAUGHT_UP, then the open
        pull request is drained (what it brings is applied, not left to ack_wait) and it
        returns."""
        await self.ensure_consumer()
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_message)
        raw = raw_handlers(self.nc)
        if raw is not None:
            raw[self._sub._id] = self._on_raw
        self._credit = 0
        self._buffer.clear()
        progress_at = time.monotonic()  # the first batch says how much there is to backfill
        progress_applied = self.applied
        progress_started = progress_at
        # One batch is committed (on the database's side: its thread, its server) while the
        # next one arrives and is parsed here; the next is applied only once the previous
        # one is committed, so every batch reads the rows as the one before left them.
        committing: asyncio.Task[None] | None = None
        draining = False  # helping, and caught up: no more pull requests
        try:
            while True:
                if draining:
                    if not self._buffer and (self._credit <= 0 or time.monotonic() > self._deadline):
                        if committing is not None:
                            await committing
                            committing = None
                        return
                elif self._credit <= 0 or time.monotonic() > self._deadline:
                    await self._wait_for_priority()
                    await self._request()
                if not self._buffer:
                    if committing is not None:
                        await committing
                        committing = None
                        continue
                    self._arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), EXPIRES + 1)
                    # A request that brought nothing: the other feeders keep up.
                    draining = draining or (helping and not self._buffer)
                    continue
                if len(self._buffer) < self.batch and self._credit > 0:
                    await asyncio.sleep(LINGER)
                msgs = self._buffer[: self.batch]
                del self._buffer[: self.batch]
                if not draining and self._credit <= 0 and not self._behind_priority():
                    await self._request()  # the server streams the next batch while this one is applied
                parsed = self._parse(msgs)
                if committing is not None:
                    await committing
                committing = asyncio.create_task(self._commit(parsed))
                pending = parsed.pending
                draining = draining or (helping and pending < CAUGHT_UP)
                now = time.monotonic()
                done = self.applied - progress_applied  # committed, so the first batch's shows next time
                if now >= progress_at and pending > self.batch and done:
                    log.info(
                        "task index: backfilling %s: %d messages applied, %d to go (%.0f/s)",
                        self.stream,
                        self.applied,
                        pending,
                        done / max(now - progress_started, 1e-3),
                    )
                    progress_at, progress_applied, progress_started = now + PROGRESS_EVERY, self.applied, now
        finally:
            if committing is not None and not committing.done():
                # Stopped: the batch being committed gets a moment to commit and be acked, or a
                # successor would wait ack_wait for it; past that it is redelivered.
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(committing), COMMIT_GRACE)
            if self._buffer:
                # Taken but never applied: handed back at once rather than after ack_wait.
                with contextlib.suppress(Exception):
                    await self._ack([m[1] for m in self._buffer], b"-NAK")
                self._buffer.clear()
            if raw is not None and self._sub is not None:
                raw.pop(self._sub._id, None)
            if self._sub is not None:
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()

    def _behind_priority(self) -> bool:
        other = self.yield_to
        if other is None:
            return False
        # A backlog figure older than a few seconds is not trusted: that feed may be stuck.
        fresh = time.monotonic() - other.backlog_at < PROGRESS_EVERY
        # Waiting starts at a backfill's backlog and lasts until it is down to a batch, so a
        # backfill's tail is still one insert per task, and a burst's few batches never stop it.
        if self._yielding:
            self._yielding = fresh and other.backlog > other.batch
        else:
            self._yielding = fresh and other.backlog > YIELD_BATCHES * other.batch
        return self._yielding

    async def _wait_for_priority(self) -> None:
        while self._behind_priority():
            await asyncio.sleep(0.05)

    async def _request(self) -> None:
        self._credit = self.batch
        self._deadline = time.monotonic() + EXPIRES + 1
        request = {"batch": self.batch, "expires": int(EXPIRES * 1e9)}
        await self.nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}", json.dumps(request).encode(), reply=self._inbox
        )

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, hdr: bytes | None) -> None:
        if not data and is_status(hdr):
            # 404/408: nothing (more) for this request; 409: the server ended it. Ask again.
            self._credit = 0
            self._arrived.set()
            return
        self._credit -= 1
        self._buffer.append((subject.decode(), reply.decode(), data, hdr))
        self._arrived.set()

    async def _on_message(self, msg: Msg) -> None:
        """Deliveries the library's way, where headers.py could not hook the connection."""
        if not msg.data and msg.headers and "Status" in msg.headers:
            self._credit = 0
            self._arrived.set()
            return
        self._credit -= 1
        self._buffer.append((msg.subject, msg.reply, msg.data, msg.headers))
        self._arrived.set()

    def _parse(self, msgs: list[Delivery]) -> Parsed:
        pending = newest_ns = 0
        # A subject is one task's: its messages of this batch, in the order they win.
        by_task: dict[str, list[tuple[int, bytes, Headers]]] = {}
        for subject, reply, data, hdr in msgs:
            seq, pending, stored_ns = ack_position(reply)
            newest_ns = max(newest_ns, stored_ns)
            by_task.setdefault(subject, []).append((seq, data, hdr))
        facts: list[Fact] = []
        parse = self.parse
        for versions in by_task.values():
            if len(versions) > 1:
                versions.sort(key=_sequence, reverse=self.newest_wins)
            for seq, data, hdr in versions:
                fact = parse(data, hdr, seq)
                if fact is not None:  # else an unreadable message: the next one in line
                    facts.append(fact)
                    break
        self.backlog, self.backlog_at = pending, time.monotonic()
        self._backlogged = self._backlogged or pending > self.refresh_after
        return Parsed(merge(facts), [m[1] for m in msgs], pending, newest_ns)

    async def _commit(self, batch: Parsed) -> None:
        """Apply one batch in one transaction, then acknowledge its messages."""
        # The last batch of a backlog refreshes the statistics in its own transaction: the
        # moment its rows are there (a backfill counted complete), so are the figures that
        # plan their listings. Refreshed after the commit, the first listings raced it.
        refresh = batch.pending < self.batch and self._refresh_due()
        if batch.facts or refresh:
            changes = await self.backend.apply(batch.facts, now=time.time(), oldest_ms=self.oldest_ms, analyze=refresh)
        await self._ack(batch.replies)
        self.applied += len(batch.replies)
        delay = max(0.0, time.time() - batch.newest_ns / 1e9) if batch.newest_ns else None
        self.on_commit(self.stream, len(batch.replies), delay)
        if refresh:  # tried once per backlog; a failure is the backend's warning
            self._backlogged, self._refreshed_at = False, time.monotonic()
            if changes.analyzed:
                log.info("task index: %s backlog applied; statistics refreshed", self.stream)

    def _refresh_due(self) -> bool:
        # At most once per REFRESH_EVERY: at 10k tasks/s a hiccup of a few seconds is such a
        # backlog, and an ANALYZE of a large table reads thousands of pages. A backlog
        # applied sooner is refreshed at the first calm moment after it.
        return self._backlogged and time.monotonic() - self._refreshed_at >= REFRESH_EVERY

    async def _ack(self, replies: list[str], verdict: bytes = b"+ACK") -> None:
        """Each message acknowledged explicitly (see the module's doc), all in one write."""
        send = getattr(self.nc, "_send_command", None)
        flush = getattr(self.nc, "_flush_pending", None)
        if send is None or flush is None or not self.nc.is_connected:
            for reply in replies:
                await self.nc.publish(reply, verdict)
            return
        head = b"PUB %s " + str(len(verdict)).encode() + b"\r\n" + verdict + b"\r\n"
        await send(b"".join(head % reply.encode() for reply in replies))
        await flush()

    async def undelivered(self) -> int:
        """Messages the consumer has not handed to any feeder yet."""
        info = await self.nc.jetstream().consumer_info(self.stream, self.consumer)
        return info.num_pending or 0

    async def check_lag(self) -> Lag:
        """How far the consumer trails its stream, for the gauges and /readyz: messages not
        yet applied (by any replica), and the age of the oldest of them."""
        js = self.nc.jetstream()
        try:
            info = await js.consumer_info(self.stream, self.consumer)
        except NotFoundError:
            # Removed by an operator, or by the server after inactivity: make it again; the
            # feed then re-applies the streams, which changes nothing already applied.
            log.warning("task index: consumer %s is gone; creating it again", self.consumer)
            await self.ensure_consumer()
            return self.lag
        behind = (info.num_pending or 0) + (info.num_ack_pending or 0)
        seconds = 0.0
        if behind:
            floor = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
            with contextlib.suppress(Exception):
                oldest = await js.get_msg(self.stream, seq=floor + 1, next=True, subject=self.subject)
                if oldest.time is not None:
                    seconds = max(0.0, time.time() - oldest.time.timestamp())
        self.lag = Lag(behind, seconds, True)
        metrics.INDEX_LAG_MESSAGES.labels(self.stream).set(behind)
        metrics.INDEX_LAG_SECONDS.labels(self.stream).set(seconds)
        return self.lag


def stream_feeds(
    nc: NATS,
    backend: Backend,
    database_id: str,
    oldest_ms: OldestMs,
    ack_wait: float = ACK_WAIT,
    on_commit: OnCommit = count_commit,
) -> list[StreamFeed]:
    prefix = f"fngate-index-{database_id}"
    tasks = StreamFeed(
        nc, backend, c.TASKS_STREAM, f"{c.TASKS_SUBJECT}.>", f"{prefix}-tasks", True, task_fact, oldest_ms
    )
    states = StreamFeed(
        nc, backend, c.STATE_STREAM, f"{c.STATE_SUBJECT}.>", f"{prefix}-state", False, state_fact, oldest_ms
    )
    tasks.ack_wait = states.ack_wait = ack_wait
    tasks.on_commit = states.on_commit = on_commit
    tasks.yield_to = states
    tasks.newest_wins = False
    return [tasks, states]
