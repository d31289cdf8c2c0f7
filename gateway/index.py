"""A per-replica view of all tasks, derived from the streams, for listing and live counts.

Every replica follows FNGATE_TASKS (headers only) and FNGATE_STATE with ordered consumers
from the start, so the view is rebuilt from JetStream on every start: nothing here is
authoritative, and `GET /v1/tasks/{id}` always reads the stream itself.

An ordered consumer is an ephemeral consumer on one server: when that server dies (a node of
a cluster), the client is not told and the follow stops. A watchdog compares what each
follow has seen with the stream's last sequence and, when it is behind and made no progress
for a whole interval, follows again from the next sequence.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from . import constants as c
from .invocation import Invocation, parse_iso
from .status import TaskStatus
from .store import TaskStore

log = logging.getLogger(__name__)
WINDOW = 60.0
QUEUED = frozenset({TaskStatus.ENQUEUED, TaskStatus.RETRYING, TaskStatus.DEQUEUED})
RUNNING = frozenset({TaskStatus.RUNNING, TaskStatus.STOPPING})
FAILED = frozenset({TaskStatus.FAILED, TaskStatus.EXPIRED, TaskStatus.INVALID})
WATCH_INTERVAL = 5.0  # how often the follows are checked for a stall
PRUNE_EVERY = 6  # watch intervals between prunes of entries past retention
V1_ACK_TOKENS = 9  # an ack subject without domain and account hash (older servers)


def ack_position(reply: str) -> tuple[int, int]:
    """(stream sequence, messages pending) from a JetStream delivery's reply subject.

    All the index needs of a message's metadata, for every task and every state change:
    the client's full `msg.metadata` builds dataclasses and a datetime each time (about 5%
    of a trigger's time per event).
    """
    tokens = reply.split(".")
    if len(tokens) == V1_ACK_TOKENS:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[8])
    return int(tokens[Msg.Ack.StreamSeq]), int(tokens[Msg.Ack.NumPending])


@dataclass
class Follow:
    """One stream followed by an ordered consumer, and how far it got."""

    stream: str
    subject: str
    headers_only: bool
    handler: Callable[[Msg, int, int], Awaitable[None]]  # (message, stream sequence, pending)
    last_seq: int = 0
    seq_at_last_check: int = 0
    subscription: Any = None


@dataclass(slots=True)
class Entry:
    task_id: str
    function: str
    seq: int
    submitted_at: float
    status: TaskStatus = TaskStatus.ENQUEUED
    has_state: bool = False


@dataclass
class FunctionCounts:
    by_status: Counter[TaskStatus] = field(default_factory=Counter)
    submitted_total: int = 0
    recent: dict[str, deque[float]] = field(
        default_factory=lambda: {"submitted": deque(), "completed": deque(), "failed": deque()}
    )

    def note(self, kind: str, at: float) -> None:
        if time.time() - at <= WINDOW:
            self.recent[kind].append(at)

    def last_minute(self, kind: str) -> int:
        window = self.recent[kind]
        cutoff = time.time() - WINDOW
        while window and window[0] < cutoff:
            window.popleft()
        return len(window)

    def summary(self) -> dict[str, dict[str, int]]:
        s = self.by_status
        return {
            "last_minute": {k: self.last_minute(k) for k in ("submitted", "completed", "failed")},
            "totals": {
                "submitted": self.submitted_total,
                "completed": s[TaskStatus.SUCCEEDED],
                "failed": sum(s[x] for x in FAILED),
                "stopped": s[TaskStatus.STOPPED],
                "queued": sum(s[x] for x in QUEUED),
                "running": sum(s[x] for x in RUNNING),
            },
        }


class TaskIndex:
    def __init__(self, store: TaskStore, retention: float) -> None:
        self.store = store
        self.retention = retention
        self.entries: dict[str, Entry] = {}
        self.order: list[Entry] = []  # by submission sequence
        self.counts: dict[str, FunctionCounts] = {}
        self.pending_state: dict[str, tuple[TaskStatus, float | None]] = {}
        self.caught_up = asyncio.Event()
        self._tasks_caught_up = False
        self._state_caught_up = False

    def function_counts(self, function: str) -> FunctionCounts:
        counts = self.counts.get(function)
        if counts is None:
            counts = self.counts[function] = FunctionCounts()
        return counts

    async def run(self) -> None:
        self.entries.clear()
        self.order.clear()
        self.counts.clear()
        self.pending_state.clear()
        self._tasks_caught_up = self._state_caught_up = False
        self.caught_up.clear()
        follows = [
            Follow(c.TASKS_STREAM, f"{c.TASKS_SUBJECT}.>", True, self._on_task),
            Follow(c.STATE_STREAM, f"{c.STATE_SUBJECT}.>", False, self._on_state),
        ]
        for follow in follows:
            await self._subscribe(follow)
        await self._mark_empty_streams()
        try:
            for round_ in itertools.count(1):
                await asyncio.sleep(WATCH_INTERVAL)
                for follow in follows:
                    await self._revive_if_stalled(follow)
                if round_ % PRUNE_EVERY == 0:
                    self.prune()
        finally:
            for follow in follows:
                with contextlib.suppress(Exception):
                    await follow.subscription.unsubscribe()

    async def _subscribe(self, follow: Follow) -> None:
        """Follow the stream from the start, or on from the last sequence seen."""
        if follow.last_seq:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=follow.last_seq + 1)
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        if follow.headers_only:
            config.headers_only = True

        async def on_message(msg: Msg) -> None:
            seq, pending = ack_position(msg.reply)
            follow.last_seq = seq
            await follow.handler(msg, seq, pending)

        follow.subscription = await self.store.js.subscribe(
            follow.subject, stream=follow.stream, ordered_consumer=True, config=config, cb=on_message
        )

    async def _revive_if_stalled(self, follow: Follow) -> None:
        try:
            info = await self.store.js.stream_info(follow.stream)
        except Exception:  # NATS away: the client reconnects; look again next round
            return
        stalled = info.state.last_seq > follow.last_seq == follow.seq_at_last_check
        follow.seq_at_last_check = follow.last_seq
        if not stalled or info.state.messages == 0:
            return
        log.warning(
            "task index: the follow of %s stalled at %d of %d; following again from there",
            follow.stream,
            follow.last_seq,
            info.state.last_seq,
        )
        with contextlib.suppress(Exception):
            await follow.subscription.unsubscribe()
        try:
            await self._subscribe(follow)
        except Exception as exc:  # tried again next round
            log.warning("task index: cannot follow %s again yet: %s", follow.stream, exc)

    async def _mark_empty_streams(self) -> None:
        for stream, attr in ((c.TASKS_STREAM, "_tasks_caught_up"), (c.STATE_STREAM, "_state_caught_up")):
            info = await self.store.js.stream_info(stream)
            if info.state.messages == 0:
                setattr(self, attr, True)
        self._check_caught_up()

    def _check_caught_up(self) -> None:
        if self._tasks_caught_up and self._state_caught_up:
            self.caught_up.set()

    async def _on_task(self, msg: Msg, seq: int, pending: int) -> None:
        headers = msg.headers or {}
        if pending == 0 and not self._tasks_caught_up:
            self._tasks_caught_up = True
            self._check_caught_up()
        try:
            task_id, function, submitted = Invocation.identity(headers)
        except (KeyError, IndexError, ValueError):
            return
        if task_id in self.entries:
            return
        entry = Entry(task_id, function, seq, submitted)
        self.entries[task_id] = entry
        self.order.append(entry)
        counts = self.function_counts(function)
        counts.submitted_total += 1
        counts.note("submitted", submitted)
        known = self.pending_state.pop(task_id, None)
        counts.by_status[entry.status] += 1
        if known is not None:
            self._set_status(entry, known[0], known[1])

    async def _on_state(self, msg: Msg, seq: int, pending: int) -> None:
        if pending == 0 and not self._state_caught_up:
            self._state_caught_up = True
            self._check_caught_up()
        try:
            record = json.loads(msg.data)
            status = TaskStatus(record["status"])
            task_id = record["task_id"]
        except (ValueError, KeyError):
            return
        finished = parse_iso(record["finished_at"]) if record.get("finished_at") else None
        entry = self.entries.get(task_id)
        if entry is None:
            self.pending_state[task_id] = (status, finished)
            return
        self._set_status(entry, status, finished)

    def _set_status(self, entry: Entry, status: TaskStatus, finished: float | None) -> None:
        entry.has_state = True
        if status is entry.status:
            return
        counts = self.function_counts(entry.function)
        counts.by_status[entry.status] -= 1
        counts.by_status[status] += 1
        entry.status = status
        if finished is not None:
            if status is TaskStatus.SUCCEEDED:
                counts.note("completed", finished)
            elif status in FAILED:
                counts.note("failed", finished)

    def prune(self) -> None:
        cutoff = time.time() - self.retention
        keep = 0
        while keep < len(self.order) and self.order[keep].submitted_at < cutoff:
            entry = self.order[keep]
            self.entries.pop(entry.task_id, None)
            self.function_counts(entry.function).by_status[entry.status] -= 1
            keep += 1
        if keep:
            del self.order[:keep]

    def select(
        self,
        *,
        function: str | None = None,
        status: TaskStatus | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        before_seq: int | None = None,
    ) -> tuple[list[Entry], int | None]:
        """Newest first; the cursor is the stream sequence of the last entry returned."""
        end = len(self.order)
        if before_seq is not None:
            end = bisect.bisect_left(self.order, before_seq, key=lambda e: e.seq)
        found: list[Entry] = []
        for i in range(end - 1, -1, -1):
            entry = self.order[i]
            if since is not None and entry.submitted_at < since:
                break
            if until is not None and entry.submitted_at > until:
                continue
            if function is not None and entry.function != function:
                continue
            if status is not None and entry.status is not status:
                continue
            found.append(entry)
            if len(found) == limit:
                more = i > 0
                return found, (entry.seq if more else None)
        return found, None
