"""The task history of the deployment: the database, its feed, retention, and the queries
the API asks (listing, counts, the function of a task id)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from nats.aio.client import Client as NATS

from gateway.config.model import Config

from ..errors import FngateError, ServiceUnavailable
from .backend import Backend, open_backend
from .feed import StreamFeed, stream_feeds
from .feeder import FeederSettings
from .feeder_process import FeederPool
from .model import Counts, Cursor, Listed, TaskQuery
from .series import MAX_MINUTES, function_stats, window_start

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def unavailable_as_503() -> AsyncIterator[None]:
    """A database that fails a query (PostgreSQL away, a locked file past its timeout) is a
    503 to the caller, logged once per failure here, not an internal error."""
    try:
        yield
    except FngateError:
        raise
    except Exception as exc:
        log.warning("task index: query failed: %s: %s", type(exc).__name__, exc)
        raise ServiceUnavailable("the task index is unavailable right now; retry later") from None


LAG_INTERVAL = 2.0  # seconds between looks at the consumers' lag
Page = tuple[list[Listed], Cursor | None]


class TaskHistory:
    def __init__(self, config: Config, backend: Backend | None = None) -> None:
        self.config = config
        self.backend = backend or open_backend(config.index.url, config.nats.data_dir)
        self.feeds: list[StreamFeed] = []
        self.nc: NATS | None = None
        self.feeder: FeederPool | None = None
        self.opened = False

    def retention_of(self, function: str) -> float:
        known = self.config.functions.get(function)
        return known.async_.retention if known else self.config.max_retention

    def oldest_ms(self, function: str) -> int:
        return int((time.time() - self.retention_of(function)) * 1000)

    async def open(self) -> None:
        await self.backend.open()
        self.opened = True

    async def try_open(self, timeout: float) -> None:
        """Open at start-up when the database answers in time; otherwise `run` goes on trying
        in the background while the gateway serves (lists and counts answer 503 meanwhile)."""
        try:
            await asyncio.wait_for(self.open(), timeout)
        except Exception as exc:
            log.warning("task index: cannot open %s yet (%s: %s); retrying", self.backend.name, type(exc).__name__, exc)
            with contextlib.suppress(Exception):
                await self.backend.close()

    async def run(self, nc: NATS, servers: list[str]) -> None:
        """Open the database (a supervisor retries until it can: submits never wait for the
        index), start this replica's feeder processes (feeder.py), and watch the lag until
        either fails."""
        if not self.opened:
            try:
                await self.open()
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.backend.close()  # a half-open pool would leak on every retry
                raise
        if not self.feeds:
            self.attach(nc, await self.backend.database_id())
            for feed in self.feeds:  # before the lag is watched, which would make them again
                await feed.ensure_consumer()
        self.feeder = feeders = FeederPool(self.feeder_settings(servers))
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(feeders.run(), name="index feeder")
                group.create_task(self._watch_lag(), name="index lag")
        finally:
            await feeders.stop()  # its helpers too: the next run starts a pool of its own

    def feeder_settings(self, servers: list[str]) -> FeederSettings:
        config = self.config
        return FeederSettings(
            servers=servers,
            index_url=config.index.url,
            data_dir=str(config.nats.data_dir),
            ack_wait=config.index.ack_wait,
            slots=config.index.feeders,
            retention={name: fn.async_.retention for name, fn in config.functions.items()},
            default_retention=config.max_retention,
            log_level=config.logging.level,
            log_format=config.logging.format,
        )

    def attach(self, nc: NATS, database_id: str) -> None:
        """The consumers this replica watches (their lag) on this connection; running them
        feeds from this process instead of a feeder's (bench/history_backfill.py does)."""
        self.nc = nc
        self.feeds = stream_feeds(nc, self.backend, database_id, self.oldest_ms, self.config.index.ack_wait)

    async def _watch_lag(self) -> None:
        while True:
            for feed in self.feeds:
                try:
                    await feed.check_lag()
                except Exception as exc:  # NATS away: the gauges keep their last value
                    log.debug("task index: lag of %s unknown: %s", feed.stream, exc)
            if self.feeder is not None:
                self.feeder.backlog(max((feed.lag.messages for feed in self.feeds), default=0))
            await asyncio.sleep(LAG_INTERVAL)

    async def close(self) -> None:
        if self.feeder is not None:
            await self.feeder.stop()
        if self.opened:
            await self.backend.close()

    # --- queries ---------------------------------------------------------------------

    async def list(self, query: TaskQuery) -> Page:
        async with unavailable_as_503():
            return await self._list(query)

    async def _list(self, query: TaskQuery) -> Page:
        """One page, and the cursor of the next one (None on the last page): `limit + 1`
        rows say whether there is one. Several statuses, or a filter without a function,
        are one index range each, merged in the database (`sql.select_sql`)."""
        rows = await self.backend.select(replace(query, limit=query.limit + 1))
        if len(rows) <= query.limit:
            return rows, None
        rows = rows[: query.limit]
        last = rows[-1]
        return rows, Cursor(last.submitted_ms, last.task_id)

    async def counts(self, functions: Sequence[str]) -> dict[str, Counts]:
        async with unavailable_as_503():
            return await self.backend.counts(functions, now=time.time())

    async def function_of(self, task_id: str) -> str | None:
        return await self.backend.function_of(task_id)

    async def stats(self, function: str, minutes: int = MAX_MINUTES) -> dict[str, Any]:
        """The function's charts over the last `minutes` (series.py)."""
        now = time.time()
        since = window_start(now, minutes)
        async with unavailable_as_503():
            rows = await self.backend.minute_counts(function, since)
        return function_stats(function, rows, now=now, minutes=minutes)

    def check(self) -> dict[str, Any]:
        """The `index` entry of /readyz: the backend, and how far the feed trails the streams."""
        lags = [feed.lag for feed in self.feeds]
        return {
            "backend": self.backend.name,
            "lag_messages": sum(lag.messages for lag in lags),
            "lag_seconds": round(max((lag.seconds for lag in lags), default=0.0), 3),
            "known": bool(lags) and all(lag.checked for lag in lags),
            "feeding": self.feeder is not None and self.feeder.feeding,
            "slots": self.feeder.slots if self.feeder is not None else [],
        }
