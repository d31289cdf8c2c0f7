"""The feeder: the process that applies the streams to the history database.

Every gateway starts one (`feeder_process.py`), and it feeds only while it holds one of the
database's feeder slots (`index.feeders`, default 2): a file lock beside a SQLite file, a
session advisory lock in PostgreSQL. The holder of slot 0 feeds all the time; so a
deployment has one feeder at work per database whatever its number of replicas, and its
batches stay large. The holder of another slot feeds only while a consumer holds more than
HELP_ABOVE messages (a backfill, a burst), side by side with the first: parsing is most of a
feeder's CPU, and two parse in parallel (feed.py, `StreamFeed.run(helping=True)`). It takes
slot 0 as soon as that is free. When a feeder's process or host dies, the operating system
or the database server frees its slot and a waiting feeder takes it within LEASE_POLL.

The slots are an economy, not a safeguard: two feeders at once are correct, because every
batch is idempotent by stream sequence (plan.py).

A process of its own, because parsing and writing every message of the deployment would
otherwise share the interpreter lock with the event loop that serves submits. It is told its
settings as one JSON line on stdin, reports what it applied as JSON lines on stdout, logs to
the gateway's stderr, and exits when stdin closes (its gateway is gone, however it died).

Run by hand: `python -m gateway.history < settings.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

from gateway import tuning
from gateway.jetstream.store import connect
from gateway.observe.logs import setup_logging

from .backend import Backend, FeedLease, open_backend
from .feed import HELP_ABOVE, StreamFeed, stream_feeds
from .headers import install as lean_headers
from .retention import Retention

log = logging.getLogger(__name__)
LEASE_POLL = 1.0  # seconds between tries for a free feeder slot
LEASE_CHECK = 2.0  # seconds between checks that the slot is still held
REPORT_EVERY = 0.5  # seconds between reports to the gateway
CLOSE_WITHIN = 2.0  # seconds a stopping feeder gives each of its connections to close
NICE = 5  # the feeder's CPU priority below the gateway's (see run); FNGATE_FEEDER_NICE overrides


@dataclass
class FeederSettings:
    servers: list[str]
    index_url: str
    data_dir: str
    ack_wait: float
    slots: int
    retention: dict[str, float]  # seconds, per configured function
    default_retention: float  # for a function this replica's config does not have
    log_level: str = "info"
    log_format: str = "text"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> FeederSettings:
        return cls(**json.loads(line))

    def retention_of(self, function: str) -> float:
        return self.retention.get(function, self.default_retention)


@dataclass
class Report:
    """What the feeder did since its last report, for the gateway's metrics and /readyz."""

    feeding: bool = False  # applying the streams now
    slot: int | None = None  # the feeder slot it holds
    applied: dict[str, int] = field(default_factory=dict)
    delays: dict[str, list[float]] = field(default_factory=dict)

    def committed(self, stream: str, messages: int, delay: float | None) -> None:
        self.applied[stream] = self.applied.get(stream, 0) + messages
        if delay is not None:
            self.delays.setdefault(stream, []).append(round(delay, 4))

    def take(self) -> str:
        report = {"feeding": self.feeding, "slot": self.slot, "applied": self.applied, "delays": self.delays}
        line = json.dumps(report)
        self.applied, self.delays = {}, {}
        return line


class LeaseLost(Exception):
    pass


class Feeder:
    def __init__(self, settings: FeederSettings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.backend = backend or open_backend(settings.index_url, settings.data_dir)
        self.report = Report()

    def oldest_ms(self, function: str) -> int:
        return int((time.time() - self.settings.retention_of(function)) * 1000)

    async def run(self) -> None:
        await self._open()
        nc = await connect(self.settings.servers, name="fngate-index-feeder")
        lean_headers(nc)
        database_id = await self.backend.database_id()
        try:
            while True:
                lease = await self.backend.feed_lease(range(self.settings.slots))
                if lease is None:
                    await asyncio.sleep(LEASE_POLL)
                    continue
                log.info("task index: this replica's feeder holds feeder slot %d of %s", lease.slot, self.backend.name)
                feeds = stream_feeds(
                    nc, self.backend, database_id, self.oldest_ms, self.settings.ack_wait, self.report.committed
                )
                self.report.slot = lease.slot
                try:
                    if lease.slot != 0:
                        lease = await self._help(feeds, lease)
                        self.report.slot = lease.slot
                    self.report.feeding = True
                    await self._feed(feeds, lease)
                except* LeaseLost:
                    log.warning("task index: this replica's feeder lost its slot; waiting for one again")
                finally:
                    self.report.feeding = False
                    self.report.slot = None
                    await lease.release()
        finally:
            # Bounded: closing a client that is reconnecting to a server gone for good never ends.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), CLOSE_WITHIN)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.backend.close(), CLOSE_WITHIN)

    async def _open(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.backend.open()
                return
            except Exception as exc:
                name = self.backend.name
                log.warning("task index: feeder cannot open %s yet (%s: %s)", name, type(exc).__name__, exc)
                with contextlib.suppress(Exception):
                    await self.backend.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _feed(self, feeds: list[StreamFeed], lease: FeedLease, helping: bool = False) -> None:
        """Apply the streams while the lease holds; helping, only until the feeds caught up."""
        async with asyncio.TaskGroup() as group:
            holding = group.create_task(self._hold(lease), name="index lease")
            runs = [group.create_task(feed.run(helping), name=f"index feed {feed.stream}") for feed in feeds]
            if helping:
                await asyncio.wait(runs)
                holding.cancel()
            else:  # one feeder sweeps, the one that feeds all the time
                group.create_task(Retention(self.backend, self.settings.retention_of).run(), name="index retention")

    async def _help(self, feeds: list[StreamFeed], lease: FeedLease) -> FeedLease:
        """Hold a slot past the first: feed through every backlog of more than HELP_ABOVE
        messages, and return slot 0's lease (releasing this one) once that slot is free."""
        while True:
            first = await self.backend.feed_lease(range(1))
            if first is not None:
                await lease.release()
                log.info("task index: this replica's feeder moved to feeder slot 0")
                return first
            if await self._behind(feeds):
                log.info("task index: a backlog: feeder slot %d helps apply it", lease.slot)
                self.report.feeding = True
                try:
                    await self._feed(feeds, lease, helping=True)
                finally:
                    self.report.feeding = False
                log.info("task index: caught up: feeder slot %d waits for the next backlog", lease.slot)
                continue
            await asyncio.sleep(LEASE_POLL)
            if not await lease.held():
                raise LeaseLost()

    async def _behind(self, feeds: list[StreamFeed]) -> bool:
        for feed in feeds:
            try:
                if await feed.undelivered() > HELP_ABOVE:
                    return True
            except Exception as exc:  # NATS away, a consumer not made yet: not now
                log.debug("task index: backlog of %s unknown: %s", feed.stream, exc)
        return False

    async def _hold(self, lease: FeedLease) -> None:
        while True:
            await asyncio.sleep(LEASE_CHECK)
            if not await lease.held():
                raise LeaseLost()

    async def report_loop(self) -> None:
        while True:
            sys.stdout.write(self.report.take() + "\n")
            sys.stdout.flush()
            await asyncio.sleep(REPORT_EVERY)


async def _until_stdin_closes() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)


async def main() -> int:
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if not line:
        return 0
    settings = FeederSettings.from_json(line)
    setup_logging(settings.log_level, settings.log_format)
    feeder = Feeder(settings)
    feeding = asyncio.create_task(feeder.run(), name="feeder")
    # SIGTERM (the gateway stopping): the feeds finish the batch they commit and hand back
    # what they took but did not apply, so a successor does not wait ack_wait for it.
    loop.add_signal_handler(signal.SIGTERM, feeding.cancel)
    reports = asyncio.create_task(feeder.report_loop(), name="feeder reports")
    parent = asyncio.create_task(_until_stdin_closes(), name="feeder parent")
    await asyncio.wait([feeding, reports, parent], return_when=asyncio.FIRST_COMPLETED)
    if parent.done():
        return 0  # the gateway is gone: at once; what is not committed is redelivered
    if feeding.cancelled():
        return 0  # SIGTERM: the feeds finished their batch and handed back the rest (bounded)
    exc = feeding.exception() if feeding.done() else reports.exception()
    log.error("task index: feeder failed: %s: %s", type(exc).__name__, exc)
    return 1


def run() -> None:
    # On a saturated host, accepting tasks wins over indexing them: the feeder then takes
    # larger batches (cheaper per task) and its lag, which /readyz and /metrics show, grows
    # for the burst instead of the submit latency. Nice 5, not 10: at 10, three saturated
    # gateways on 2 cores left it no CPU for seconds (lag p99 3.8 s; at 5, 0.96 s), and at
    # 0 the submit rate lost 5-10% (docs/benchmarks.md, fifth round).
    with contextlib.suppress(OSError, ValueError):
        os.nice(int(os.environ.get("FNGATE_FEEDER_NICE", NICE)))
    tuning.tune_gc()
    code = 1
    try:
        # Not asyncio.run: on the way out it cancels every task and waits for them, and a
        # NATS client reconnecting to a server that is gone never finishes; a feeder left
        # waiting there outlived its gateway. main() bounds its own clean-up instead.
        code = tuning.new_event_loop().run_until_complete(main())
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(code)  # nothing waited for: not the thread reading stdin, not a stuck task
