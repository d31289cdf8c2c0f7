"""Live task status: `GET /v1/tasks/{id}?wait=S` and the SSE stream `/v1/tasks/{id}/events`.

Any replica serves them, whoever runs the task. Per replica and per watched task id there
is one core NATS subscription on `fngate.state.{id}`, shared by every client of this
replica that watches that task: taken when the first one starts, dropped when the last one
leaves. Nothing runs per client while its task does not change, and no client polls
JetStream.

A message on that subject is a *candidate*: it may be a write that lost its
compare-and-set (a stop racing a worker) and was never stored. So a message only makes the
replica read the stored record (one direct get per change, shared by all its clients) and
emit it; a candidate older than the stored record is emitted first only if the stored
timeline confirms it (its timeline is a prefix of the stored one), so clients see each
stored status change in order, and never one that did not happen. A candidate newer than
what the read returned (the stream stores a write a moment after it is published) is
confirmed by reading again shortly after.

Records are versioned by the length of their timeline: every stored write stamps one more
entry. Each client has a bounded queue; when it is full the oldest record is dropped (the
newest, the terminal one included, is always kept), so a slow reader costs bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import Gauge

from gateway.errors import BadRequest, FngateError, ResourceExhausted
from gateway.tasks import constants as c
from gateway.tasks.records import Record, status_of
from gateway.web.keys import LIMITER, LIVE
from gateway.web.sse import gone

log = logging.getLogger(__name__)
Reader = Callable[[str], Awaitable[Record]]

MAX_WAIT = 60.0
QUEUE_LIMIT = 32  # records buffered per client before the oldest are dropped
MAX_WATCHERS = 20_000  # clients watching at once on one replica
MAX_CANDIDATES = 16
# An idle SSE stream gets a comment line this often: it keeps proxies from closing it. One
# timer per replica pokes all streams, rather than a timer per client.
KEEPALIVE = float(os.environ.get("FNGATE_SSE_KEEPALIVE", "15"))
# How often that timer looks at each stream's connection (no write, no wake-up unless it is
# closed): aiohttp does not cancel the handler of a client that went away, and an idle
# stream would otherwise hold its watcher, and the task's subscription, until the next
# keep-alive write failed.
GONE_CHECK = 1.0

WATCHERS = Gauge("fngate_live_watchers", "Clients waiting on a task's status (long-polls and SSE streams)")
SUBSCRIPTIONS = Gauge("fngate_live_subscriptions", "Task ids this replica follows for its waiting clients")


def version(record: Record) -> int:
    return len(record.get("timeline") or ())


class Watcher:
    """One client: the records it has yet to receive, newest last."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.records: deque[Record] = deque(maxlen=limit)
        self.version = 0
        self._ready = asyncio.Event()

    def push(self, record: Record) -> None:
        v = version(record)
        if v <= self.version:
            return
        self.version = v
        self.records.append(record)
        self._ready.set()

    def poke(self) -> None:
        """Wake the client's handler with nothing to send: the keep-alive round."""
        self._ready.set()

    async def next(self, timeout: float | None) -> Record | None:
        """The next record; None when `timeout` passed first, or when poked."""
        if not self.records:
            self._ready.clear()
            try:
                if timeout is None:
                    await self._ready.wait()  # no timer per client: idle streams cost nothing
                else:
                    await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
            if not self.records:
                return None
        return self.records.popleft()


class Watched:
    """One task id followed by this replica, for all of its clients here."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.watchers: set[Watcher] = set()
        self.subscription: Any = None
        self.subscribed: asyncio.Future[None] | None = None  # the one subscribe, awaited by all
        self.candidates: list[Record] = []
        self.dirty = False
        self.refresh: asyncio.Task[None] | None = None

    def emit(self, record: Record) -> None:
        for watcher in self.watchers:
            watcher.push(record)


class LiveStatus:
    def __init__(self, nc: NATS, read: Reader, max_watchers: int = MAX_WATCHERS) -> None:
        self.nc = nc
        self.read = read  # the service's get_task: stored record, or the submission's
        self.max_watchers = max_watchers
        self.watched: dict[str, Watched] = {}
        self.count = 0
        self._background: set[asyncio.Future[Any]] = set()
        # SSE clients, each with how to tell that it went away (gateway/web/sse.py:gone).
        self.streams: dict[Watcher, Callable[[], bool]] = {}
        self._keepalive: asyncio.Task[None] | None = None

    def add_stream(self, watcher: Watcher, gone: Callable[[], bool]) -> None:
        self.streams[watcher] = gone
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = asyncio.create_task(self._keepalives())

    def remove_stream(self, watcher: Watcher) -> None:
        self.streams.pop(watcher, None)

    async def _keepalives(self) -> None:
        """One timer for all streams of this replica, running only while there are any: every
        GONE_CHECK seconds it wakes the streams whose client went away (they end), every
        KEEPALIVE seconds all of them (they write a comment line)."""
        loop = asyncio.get_running_loop()
        next_keepalive = loop.time() + KEEPALIVE
        while self.streams:
            await asyncio.sleep(min(GONE_CHECK, KEEPALIVE))
            keepalive = loop.time() >= next_keepalive
            if keepalive:
                next_keepalive = loop.time() + KEEPALIVE
            for watcher, client_gone in list(self.streams.items()):
                if keepalive or client_gone():
                    watcher.poke()

    @contextlib.asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[Watcher]:
        """A client's view of one task, starting with its current record (TaskNotFound if none)."""
        if self.count >= self.max_watchers:
            raise ResourceExhausted(f"this replica already serves {self.max_watchers} live task watchers")
        watched = self.watched.get(task_id)
        if watched is None:
            watched = self.watched[task_id] = Watched(task_id)
            SUBSCRIPTIONS.inc()
        watcher = Watcher()
        watched.watchers.add(watcher)
        self.count += 1
        WATCHERS.inc()
        try:
            if watched.subscribed is None:
                watched.subscribed = asyncio.ensure_future(self._subscribe(watched))
            await asyncio.shield(watched.subscribed)
            watcher.push(await self.read(task_id))
            yield watcher
        finally:
            watched.watchers.discard(watcher)
            self.count -= 1
            WATCHERS.dec()
            if not watched.watchers and self.watched.get(task_id) is watched:
                del self.watched[task_id]
                SUBSCRIPTIONS.dec()
                if watched.refresh is not None:
                    watched.refresh.cancel()
                if watched.subscribed is not None:
                    watched.subscribed.add_done_callback(lambda _: self._unsubscribe(watched))

    async def _subscribe(self, watched: Watched) -> None:
        async def on_message(msg: Msg) -> None:
            self._on_message(watched, msg)

        watched.subscription = await self.nc.subscribe(f"{c.STATE_SUBJECT}.{watched.task_id}", cb=on_message)
        await self.nc.flush()  # the server knows our interest before the first read: no gap

    def _unsubscribe(self, watched: Watched) -> None:
        if watched.subscription is not None:
            subscription, watched.subscription = watched.subscription, None
            task = asyncio.ensure_future(subscription.unsubscribe())
            self._background.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # NATS away: the subscription goes with the connection

    def _on_message(self, watched: Watched, msg: Msg) -> None:
        try:
            candidate = json.loads(msg.data)
        except ValueError:
            candidate = None
        if isinstance(candidate, dict) and isinstance(candidate.get("timeline"), list):
            watched.candidates = [*watched.candidates, cast(Record, candidate)][-MAX_CANDIDATES:]
        self.changed(watched)

    def changed(self, watched: Watched) -> None:
        watched.dirty = True
        if watched.refresh is None or watched.refresh.done():
            watched.refresh = asyncio.create_task(self._refresh(watched))

    def refresh_all(self) -> None:
        """After a NATS outage: messages may have been missed, so read every watched task again."""
        for watched in list(self.watched.values()):
            self.changed(watched)

    async def _refresh(self, watched: Watched) -> None:
        delay = 0.02
        while watched.dirty or watched.candidates:
            watched.dirty = False
            try:
                stored = await self.read(watched.task_id)
            except FngateError:
                stored = None
            except Exception as exc:  # NATS away: the reconnect reads every watched task again
                log.debug("live status: cannot read %s: %s", watched.task_id, exc)
                return
            if stored is not None:
                newest = version(stored)
                pending = []
                for candidate in sorted(watched.candidates, key=version):
                    v = version(candidate)
                    if v < newest and candidate["timeline"] == stored["timeline"][:v]:
                        watched.emit(candidate)  # a stored write the read came too late to see
                    elif v > newest:
                        pending.append(candidate)  # published, maybe not stored yet
                watched.emit(stored)
                watched.candidates = pending
            if watched.candidates and not watched.dirty:
                if delay > 1.0:  # never stored: a write that lost its compare-and-set
                    watched.candidates = []
                    return
                await asyncio.sleep(delay)
                delay *= 2


def parse_wait(value: str) -> float:
    try:
        wait = float(value)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT:  # also rejects nan
        raise BadRequest(f"wait must be a number of seconds 0..{MAX_WAIT:g}")
    return wait


async def wait_for_task(request: web.Request, task_id: str, read: Reader) -> Record:
    """The record once the task is terminal, or as it is when `wait` seconds passed."""
    wait = parse_wait(request.query["wait"])
    record = await read(task_id)
    if wait == 0 or status_of(record).terminal:
        return record
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with request.app[LIVE].watch(task_id) as watcher:
        while True:
            latest = await watcher.next(max(0.0, deadline - loop.time()))
            if latest is None:
                return await read(task_id)  # timed out: the record as it now is
            if status_of(latest).terminal:
                return latest


async def task_events(request: web.Request) -> web.StreamResponse:
    """SSE: `event: status` with the record, from the current one on, until it is terminal."""
    from gateway.service import check_task_id

    task_id = check_task_id(request.match_info["id"])
    with request.app[LIMITER].slot(request):  # bounded per client, with the log streams; 429 over it
        return await _stream_events(request, task_id)


async def _stream_events(request: web.Request, task_id: str) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    live = request.app[LIVE]
    async with live.watch(task_id) as watcher:  # TaskNotFound (404) before any byte
        await response.prepare(request)
        live.add_stream(watcher, lambda: gone(request))
        try:
            while True:
                record = await watcher.next(None)
                if record is None:
                    if gone(request):
                        return response  # the client went away
                    await response.write(b": keep-alive\n\n")
                    continue
                data = json.dumps(record, separators=(",", ":"), default=str)
                await response.write(f"event: status\nid: {version(record)}\ndata: {data}\n\n".encode())
                if status_of(record).terminal:
                    break
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away mid-write
        finally:
            live.remove_stream(watcher)
    return response
